"""A chat streamed end to end: client -> Envoy -> Router -> Inference -> simulator (real HTTP)."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from tests.integration.mesh import Mesh, grpc_web_frame, grpc_web_frames, parse_trailers

pytestmark = pytest.mark.integration


def chat_request(text: str = "hello, how are you?", **kw: object) -> pb.ChatRequest:
    return pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)], **kw)  # type: ignore[arg-type]


def assert_whole_story(events: list[pb.ChatResponse]) -> None:
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "decision", kinds
    assert kinds[-1] == "done", kinds
    assert set(kinds[1:-1]) == {"delta"}, kinds
    assert kinds.count("delta") > 1
    text = "".join(e.delta.text for e in events if e.HasField("delta"))
    assert text.startswith("[simulated answer from sim-"), text[:80]
    done = events[-1].done
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert done.usage.cost_micro_usd > 0
    assert done.finish_reason == c.FINISH_REASON_STOP
    assert done.deployment and done.model and list(done.fallback_path) == [done.deployment]
    decision = events[0].decision
    assert decision.tier in (1, 2, 3, 4) and decision.reasons and decision.policy_version and decision.request_id


async def test_chat_streams_over_grpc_through_envoy(mesh: Mesh) -> None:
    events: list[pb.ChatResponse] = []
    first_delta_state = None
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        async for event in stub.Chat(chat_request(), timeout=30, metadata=mesh.auth()):
            events.append(event)
            if event.HasField("delta") and first_delta_state is None:
                # What the provider is doing at the moment the client holds its first token.
                first_delta_state = await mesh.sim_record(events[0].decision.request_id)
    assert_whole_story(events)
    assert first_delta_state is not None
    assert first_delta_state["state"] == "streaming", first_delta_state
    assert first_delta_state["tokens_sent"] < first_delta_state["tokens_planned"]
    final = await mesh.sim_record(events[0].decision.request_id)
    assert final["state"] == "done"
    assert events[-1].done.usage.completion_tokens == final["tokens_planned"]


async def test_chat_streams_over_grpc_web_through_envoy(mesh: Mesh) -> None:
    events: list[pb.ChatResponse] = []
    trailers: dict[str, str] = {}
    first_delta_state = None
    url = f"http://{mesh.target('envoy')}/tiermesh.router.v1.RouterService/Chat"
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "accept": "application/grpc-web+proto",
        "authorization": f"Bearer {mesh.token()}",
    }
    async with httpx.AsyncClient(http1=True, http2=False, timeout=30) as client:
        body = grpc_web_frame(chat_request("oi, tudo bem? 😀").SerializeToString())
        async with client.stream("POST", url, content=body, headers=headers) as resp:
            assert resp.status_code == 200
            assert resp.http_version == "HTTP/1.1"
            assert resp.headers["content-type"].startswith("application/grpc-web")
            async for flag, payload in grpc_web_frames(resp):
                if flag & 0x80:
                    trailers = parse_trailers(payload)
                    continue
                event = pb.ChatResponse.FromString(payload)
                events.append(event)
                if event.HasField("delta") and first_delta_state is None:
                    first_delta_state = await mesh.sim_record(events[0].decision.request_id)
    assert trailers.get("grpc-status") == "0", trailers
    assert_whole_story(events)
    assert first_delta_state is not None and first_delta_state["state"] == "streaming"


BAD_INPUT = [
    pytest.param(pb.ChatRequest(), "messages: at least one item is required", id="no-messages"),
    pytest.param(
        chat_request(""), "messages[0].content: must not be empty (1 to 32000 characters)", id="empty-message"
    ),
    pytest.param(
        chat_request("é" * 32_001), "messages[0].content: 32001 characters is over the limit of 32000", id="oversized"
    ),
    pytest.param(chat_request(tier=9), "tier: unknown value 9; use one of 1 (TIER_FAST)", id="unknown-tier"),
    pytest.param(chat_request(max_tokens=100_000), "max_tokens: 100000 is out of range", id="max-tokens"),
]


@pytest.mark.parametrize(("request_", "message"), BAD_INPUT)
async def test_bad_input_is_invalid_argument_naming_field_and_limit(
    mesh: Mesh, request_: pb.ChatRequest, message: str
) -> None:
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Chat(request_, timeout=10, metadata=mesh.auth()):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(message)


async def test_route_rejects_bad_input_too(mesh: Mesh) -> None:
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Route(pb.RouteRequest(), timeout=10, metadata=mesh.auth())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "messages: at least one item is required"
        ok = await stub.Route(pb.RouteRequest(messages=chat_request().messages), timeout=10, metadata=mesh.auth())
        assert ok.decision.tier and ok.decision.reasons


async def test_bad_input_over_grpc_web_reports_status_and_message(mesh: Mesh) -> None:
    url = f"http://{mesh.target('envoy')}/tiermesh.router.v1.RouterService/Chat"
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "authorization": f"Bearer {mesh.token()}",
    }
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(url, content=grpc_web_frame(pb.ChatRequest().SerializeToString()), headers=headers)
    status = resp.headers.get("grpc-status")
    message = resp.headers.get("grpc-message")
    if status is None:  # the status may come in a trailers frame instead of headers
        frames = resp.content
        trailers = parse_trailers(frames[5:]) if frames and frames[0] & 0x80 else {}
        status, message = trailers.get("grpc-status"), trailers.get("grpc-message")
    assert status == "3"
    assert "messages" in httpx.URL("?m=" + (message or "")).params["m"]


async def test_client_cancel_cancels_the_provider_request(mesh: Mesh) -> None:
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        call = stub.Chat(chat_request("tell me a long story"), timeout=30, metadata=mesh.auth())
        request_id = ""
        deltas = 0
        async for event in call:
            if event.HasField("decision"):
                request_id = event.decision.request_id
            if event.HasField("delta"):
                deltas += 1
                if deltas == 3:
                    call.cancel()
                    break
    deadline = time.monotonic() + 10
    record = await mesh.sim_record(request_id)
    while record["state"] != "disconnected" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        record = await mesh.sim_record(request_id)
    assert record["state"] == "disconnected", record
    assert 3 <= record["tokens_sent"] < record["tokens_planned"]
