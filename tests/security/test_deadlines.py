"""A client's deadline that passes mid-stream ends the stream with DEADLINE_EXCEEDED and proper
trailers, over gRPC, gRPC-Web over HTTP/1.1 and over HTTP/2; the Router counts it as such."""

from __future__ import annotations

import uuid

import grpc
import pytest
from tiermesh.router.v1 import router_service_pb2 as pb

from services.runtime import config
from tests.integration.test_observability import scrape, value
from tests.security.conftest import Attack
from tests.security.tokens import bearer
from tests.security.wire import frame, grpc_h2, grpc_web

pytestmark = pytest.mark.integration

CHAT = "/tiermesh.router.v1.RouterService/Chat"
# A chat takes ~0.5 s here (48 tokens, 10 ms apart): a 250 ms deadline passes mid-answer.
DEADLINE = "250m"


def answer_events(messages: list[bytes]) -> list[str]:
    return [pb.ChatResponse.FromString(m).WhichOneof("event") or "" for m in messages]


async def test_a_deadline_passing_mid_stream_ends_it_with_a_status_on_every_transport(attack: Attack) -> None:
    token = attack.mesh.token(f"late-{uuid.uuid4().hex[:8]}", "enterprise")
    before = await scrape(attack.mesh, "router")
    host, port = config.endpoint(attack.mesh.tree, "envoy")
    body = frame(attack.chat_request("tell me a long story", bypass_cache=True).SerializeToString())
    replies = {
        "grpc": await grpc_h2(host, port, CHAT, body, [*bearer(token), ("grpc-timeout", DEADLINE)]),
        "grpc-web h1": await grpc_web(
            f"http://{host}:{port}{CHAT}", body, {**dict(bearer(token)), "grpc-timeout": DEADLINE}
        ),
        "grpc-web h2": await grpc_web(
            f"http://{host}:{port}{CHAT}", body, {**dict(bearer(token)), "grpc-timeout": DEADLINE}, http2=True
        ),
    }
    for transport, reply in replies.items():
        assert reply.reset is None and not reply.closed_early, (transport, reply)  # no reset, no cut connection
        assert reply.grpc_status == "4", (transport, reply)  # DEADLINE_EXCEEDED, in the trailers
        kinds = answer_events(reply.messages)
        assert kinds and kinds[0] == "decision" and "done" not in kinds, (transport, kinds)  # ended mid-stream
    # A gRPC client library sees the same status.
    async with attack.mesh.edge() as channel:
        call = channel.unary_stream(CHAT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call(body[5:], timeout=0.25, metadata=bearer(token)):
                pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = await scrape(attack.mesh, "router")
    counted = value(after, "tiermesh_grpc_requests_total", method=CHAT, code="DEADLINE_EXCEEDED") - value(
        before, "tiermesh_grpc_requests_total", method=CHAT, code="DEADLINE_EXCEEDED"
    )
    assert counted == 4
