"""The limits written in the contracts are the limits the server enforces, with clear messages."""

from __future__ import annotations

import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.knowledge.v1 import knowledge_service_pb2 as kpb
from tiermesh.router.v1 import router_service_pb2 as pb

from services.runtime.errors import InvalidArgument
from services.runtime.validation import validate


def user(text: str) -> c.ChatMessage:
    return c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)


def rejects(message: object) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate(message)  # type: ignore[arg-type]
    return str(info.value)


def test_a_normal_request_passes() -> None:
    validate(pb.ChatRequest(messages=[user("olá, tudo bem? 👋")], max_tokens=8192, temperature=2.0, tier=4))


def test_no_messages_names_the_field() -> None:
    assert rejects(pb.ChatRequest()) == "messages: at least one item is required"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_or_blank_message_is_rejected_with_the_limit(text: str) -> None:
    msg = rejects(pb.ChatRequest(messages=[user("hi"), user(text)]))
    assert msg == "messages[1].content: must not be empty (1 to 32000 characters)"


def test_oversized_message_names_size_and_limit() -> None:
    msg = rejects(pb.ChatRequest(messages=[user("x" * 32_001)]))
    assert msg == "messages[0].content: 32001 characters is over the limit of 32000"


def test_size_limit_counts_characters_not_bytes() -> None:
    # 32,000 four-byte emoji are 128,000 bytes but exactly at the limit in characters.
    validate(pb.ChatRequest(messages=[user("😀" * 32_000)]))
    assert "32001 characters" in rejects(pb.ChatRequest(messages=[user("😀" * 32_001)]))


def test_too_many_messages() -> None:
    msg = rejects(pb.ChatRequest(messages=[user("hi")] * 65))
    assert msg == "messages: 65 items is over the limit of 64"


def test_unknown_tier_lists_the_valid_ones() -> None:
    msg = rejects(pb.ChatRequest(messages=[user("hi")], tier=7))  # type: ignore[arg-type]
    assert msg.startswith("tier: unknown value 7; use one of 1 (TIER_FAST)")
    assert "4 (TIER_PREMIUM)" in msg


def test_inference_requires_a_tier() -> None:
    msg = rejects(ipb.GenerateRequest(messages=[user("hi")]))
    assert msg.startswith("tier: is required")


def test_role_must_be_set() -> None:
    msg = rejects(pb.ChatRequest(messages=[c.ChatMessage(content="hi")]))
    assert msg.startswith("messages[0].role: is required")


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            pb.ChatRequest(messages=[user("hi")], max_tokens=8193),
            "max_tokens: 8193 is out of range; use a value from 0 to 8192",
        ),
        (
            pb.ChatRequest(messages=[user("hi")], temperature=2.5),
            "temperature: 2.5 is out of range; use a value from 0 to 2",
        ),
        (pb.ChatRequest(messages=[user("hi")], temperature=float("nan")), "temperature: must be a number"),
    ],
)
def test_number_ranges(request_: pb.ChatRequest, expected: str) -> None:
    assert rejects(request_) == expected


def test_maps_and_nested_documents() -> None:
    doc = kpb.Document(id="a", text="body", metadata={"k" * 65: "v"})
    msg = rejects(kpb.UpsertDocumentsRequest(collection="c", documents=[doc]))
    assert msg.startswith("documents[0].metadata key")
    assert "over the limit of 64" in msg
