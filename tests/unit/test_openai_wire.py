"""OpenAI's wire format both ways: what the SDKs send is parsed or refused with OpenAI's error object
(and a message that says what to send), Chat's events become OpenAI's chunks in OpenAI's order, and
gRPC statuses become the HTTP statuses OpenAI clients act on."""

from __future__ import annotations

import json

import grpc
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb

from services.openai.wire import DONE, ApiError, Stream, from_grpc, parse_request


def body(**fields: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "olá, tudo bem?"}], **fields}).encode()


def test_an_sdk_request_becomes_a_chat_request() -> None:
    req = parse_request(
        body(
            model="tier-2",
            stream=True,
            stream_options={"include_usage": True},
            max_completion_tokens=64,
            temperature=0.5,
            user="alice",
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "como "}, {"type": "text", "text": "pago?"}]},
            ],
        )
    )
    chat = req.chat_request()
    assert req.stream and req.include_usage
    assert chat.tier == 2 and chat.max_tokens == 64 and chat.temperature == 0.5
    assert [(m.role, m.content) for m in chat.messages] == [
        (c.CHAT_ROLE_SYSTEM, "be brief"),
        (c.CHAT_ROLE_USER, "como pago?"),
    ]
    routed = parse_request(body())
    assert (
        routed.model == "auto" and routed.chat_request().tier == 0 and not routed.chat_request().HasField("temperature")
    )


@pytest.mark.parametrize(
    ("raw", "status", "param", "says"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[]", 400, None, "JSON object"),
        (body(messages=[]), 400, "messages", "non-empty list"),
        (body(messages=[{"role": "tool", "content": "x"}]), 400, "messages[0].role", "must be one of"),
        (
            body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            400,
            "messages[0].content",
            "text parts",
        ),
        (body(model="gpt-9"), 404, "model", "does not exist"),
        (body(temperature=3), 400, "temperature", "0 to 2"),
        (body(temperature=float("nan")), 400, "temperature", "number"),
        (body(max_tokens=0), 400, "max_tokens", "1 to"),
        (body(max_tokens=2**40), 400, "max_tokens", "out of range"),
        (body(n=2), 400, "n", "out of range"),
        (body(stream_options={"include_usage": True}), 400, "stream_options", "only allowed when stream"),
        (body(tools=[{"type": "function"}]), 400, "tools", "not supported"),
        (body(frobnicate=1), 400, "frobnicate", "Unrecognized request argument"),
    ],
)
def test_what_cannot_be_honoured_is_refused_in_openais_error_format(
    raw: bytes, status: int, param: str | None, says: str
) -> None:
    with pytest.raises(ApiError) as caught:
        parse_request(raw)
    err = caught.value
    assert err.status == status and err.param == param and says in err.message
    payload = json.loads(err.body())["error"]
    assert set(payload) == {"message", "type", "param", "code"} and payload["message"] == err.message


def chat_events() -> list[pb.ChatResponse]:
    return [
        pb.ChatResponse(decision=pb.RouteDecision(tier=2, intent=c.INTENT_FAQ, reasons=["faq"], request_id="r1")),
        pb.ChatResponse(delta=c.TextDelta(text="Olá")),
        pb.ChatResponse(delta=c.TextDelta(text=", tudo")),
        pb.ChatResponse(
            done=pb.ChatDone(
                usage=c.Usage(prompt_tokens=7, completion_tokens=3, cost_micro_usd=1500),
                model="m",
                deployment="d",
                finish_reason=c.FINISH_REASON_LENGTH,
            )
        ),
    ]


def sse(lines: list[bytes]) -> list[dict[str, object] | str]:
    out: list[dict[str, object] | str] = []
    for line in lines:
        assert line.startswith(b"data: ") and line.endswith(b"\n\n")
        data = line[6:-2].decode()
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_events_become_openais_chunks_in_openais_order(include_usage: bool) -> None:
    stream = Stream("chatcmpl-1", 1700000000, "auto", include_usage)
    lines = [line for event in chat_events() for line in stream.events(event)]
    chunks = sse(lines)
    assert lines[-1] == DONE and chunks[-1] == "[DONE]"
    objects = [ch for ch in chunks if isinstance(ch, dict)]
    assert all(o["object"] == "chat.completion.chunk" and o["id"] == "chatcmpl-1" for o in objects)
    choices = [o["choices"][0] for o in objects if o["choices"]]  # type: ignore[index]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(ch["delta"].get("content", "") for ch in choices) == "Olá, tudo"
    assert [ch["finish_reason"] for ch in choices][-1] == "length"
    assert all(ch["finish_reason"] is None for ch in choices[:-1])
    usage_chunks = [o for o in objects if not o["choices"]]
    if include_usage:
        (last,) = usage_chunks
        assert last["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        assert all(o["usage"] is None for o in objects if o["choices"])
    else:
        assert not usage_chunks and all("usage" not in o for o in objects)
    assert objects[0]["tiermesh"]["decision"]["tier"] == 2  # type: ignore[index]


def test_a_restart_drops_the_discarded_text_from_the_completion() -> None:
    stream = Stream("chatcmpl-2", 1, "tier-1")
    events = chat_events()
    events.insert(2, pb.ChatResponse(restart=c.StreamRestart(failed_deployment="a", reason="cut", discarded_chars=3)))
    for event in events:
        stream.events(event)
    done = stream.completion()
    assert done["object"] == "chat.completion"
    assert done["choices"][0]["message"] == {"role": "assistant", "content": ", tudo", "refusal": None}
    assert done["choices"][0]["finish_reason"] == "length"
    assert done["usage"]["total_tokens"] == 10
    assert done["tiermesh"]["done"]["cost_usd"] == 0.0015


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 408),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNAVAILABLE, 503),
    ],
)
def test_grpc_statuses_become_the_http_statuses_openai_clients_act_on(code: grpc.StatusCode, status: int) -> None:
    err = from_grpc(code, "messages[0].content: 32001 characters is over the limit of 32000", retry_after_s=3)
    assert err.status == status
    assert json.loads(err.body())["error"]["message"].startswith("messages[0].content")
    assert err.headers == ({"retry-after": "3"} if status == 429 else {})


def test_the_official_openai_types_accept_every_chunk_and_the_completion() -> None:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    stream = Stream("chatcmpl-3", 1700000000, "auto", include_usage=True)
    chunks = [ch for event in chat_events() for ch in sse(stream.events(event)) if isinstance(ch, dict)]
    parsed = [ChatCompletionChunk.model_validate(ch) for ch in chunks]
    assert "".join(p.choices[0].delta.content or "" for p in parsed if p.choices) == "Olá, tudo"
    assert parsed[-1].usage is not None and parsed[-1].usage.total_tokens == 10
    completion = ChatCompletion.model_validate(stream.completion())
    assert completion.choices[0].message.content == "Olá, tudo" and completion.choices[0].finish_reason == "length"


def test_a_text_chunk_is_exactly_the_json_of_its_chunk_whatever_the_text() -> None:
    for include_usage in (False, True):
        stream = Stream("chatcmpl-x", 1, "auto", include_usage)
        for text in ('say "hi"\n', "olá 李 🚀", "\\u0000", "</script>", ""):
            event = pb.ChatResponse(delta=c.TextDelta(text=text))
            (chunk,) = stream.events(event)
            assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
            obj = json.loads(chunk[6:])
            assert obj["choices"][0]["delta"] == {"content": text} and obj["choices"][0]["finish_reason"] is None
            assert ("usage" in obj) == include_usage
            assert chunk == stream._chunk({"content": text}, None)
