"""Every error says what to fix, with the status a client can act on. Undecodable requests are
INVALID_ARGUMENT on every service (one warning line, no traceback); gRPC-Web callers read refusals
as HTTP 200 with grpc-status; protocols the edge does not serve are refused at once without
touching a Router; the access log's gRPC status is right for gRPC-Web; browsers can read the
rate-limit headers; a request that never arrives whole is ended in bounded time."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb

from services.runtime import config
from tests.security.catalogue import RPCS, Rpc
from tests.security.conftest import Attack, eventually
from tests.security.tokens import bearer
from tests.security.wire import frame, grpc_h2, grpc_web

pytestmark = pytest.mark.integration

CHAT = "/tiermesh.router.v1.RouterService/Chat"


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def varint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def bad_utf8(descriptor: Descriptor) -> bytes | None:
    """An encoding of `descriptor` whose first reachable string field holds invalid UTF-8."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return tag(field.number, 2) + varint(3) + b"\xff\xfe\xfd"
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue
            inner = bad_utf8(field.message_type)
            if inner is not None:
                return tag(field.number, 2) + varint(len(inner)) + inner
    return None


def deep_nesting(depth: int = 300) -> bytes:
    out = b""
    for _ in range(depth):
        out = tag(99, 3) + out + tag(99, 4)  # an unknown group inside an unknown group ...
    return out


CORRUPT = {
    "truncated length": tag(1, 2) + varint(1 << 28) + b"x",
    "bad wire type": bytes([0x0F, 0x01]),
    "deep nesting": deep_nesting(),
}


async def call(attack: Attack, rpc: Rpc, payload: bytes) -> grpc.aio.AioRpcError | None:
    async with attack.mesh.channel(rpc.part) as channel:
        return await rpc.send(channel, payload)


@pytest.mark.parametrize("rpc", [r for r in RPCS if r.request.DESCRIPTOR.fields], ids=lambda r: f"{r.part}{r.path}")
async def test_an_undecodable_request_is_invalid_argument_on_every_service(attack: Attack, rpc: Rpc) -> None:
    attack.mark()
    payloads = dict(CORRUPT)
    utf8 = bad_utf8(rpc.request.DESCRIPTOR)
    if utf8 is not None:
        payloads["bad utf-8"] = utf8
    for name, payload in payloads.items():
        error = await call(attack, rpc, payload)
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error)
        assert f"not a valid {rpc.request.DESCRIPTOR.full_name}" in (error.details() or ""), (name, error.details())

    def warned() -> list[str]:
        return [line for line in attack.lines_since_mark(rpc.part) if "undecodable request refused" in line]

    lines = await eventually(lambda: len(warned()) >= len(payloads) and warned())
    assert all(json.loads(line)["level"] == "warning" for line in lines)  # one line each, no traceback
    assert not attack.errors_since_mark()


async def test_an_out_of_range_timestamp_is_invalid_argument(attack: Attack) -> None:
    request = apb.GetSpendRequest()
    request.start_time.seconds = 10**15  # far beyond year 9999
    async with attack.mesh.channel("analytics") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await apb_grpc.AnalyticsServiceStub(channel).GetSpend(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_time" in (info.value.details() or "")


async def test_unserved_protocols_are_refused_at_once_without_touching_a_router(attack: Attack) -> None:
    token = attack.mesh.token(f"proto-{uuid.uuid4().hex[:8]}", "enterprise")
    upstream, ejected = "cluster.router.upstream_rq_total", "cluster.router.outlier_detection.ejections_enforced_total"
    before = (await attack.envoy_stat(upstream), await attack.envoy_stat(ejected))
    url = f"http://{attack.mesh.target('envoy')}/tiermesh.router.v1.RouterService/Route"
    body = pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hi")]).SerializeToString()
    auth = dict(bearer(token))
    connect = await grpc_web(url, body, {**auth, "content-type": "application/proto", "connect-protocol-version": "1"})
    assert connect.status == 415 and b"tiermesh serves gRPC" in connect.body
    connect_json = await grpc_web(url, b"{}", {**auth, "content-type": "application/json"})
    assert connect_json.status == 415 and b"tiermesh serves gRPC" in connect_json.body
    web_json = await grpc_web(url, frame(b"{}"), {**auth, "content-type": "application/grpc-web+json"})
    assert (web_json.status, web_json.grpc_status) == (200, "3")
    host, port = config.endpoint(attack.mesh.tree, "envoy")
    grpc_json = await grpc_h2(
        host,
        port,
        "/tiermesh.router.v1.RouterService/Route",
        frame(b"{}"),
        [*bearer(token), ("content-type", "application/grpc+json")],
    )
    assert grpc_json.grpc_status == "3" and "tiermesh serves gRPC" in grpc_json.grpc_message
    assert (await attack.envoy_stat(upstream), await attack.envoy_stat(ejected)) == before


async def test_grpc_web_refusals_and_successes_are_read_and_logged_right(attack: Attack) -> None:
    url = f"http://{attack.mesh.target('envoy')}/tiermesh.router.v1.RouterService/Route"
    body = frame(pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hi")]).SerializeToString())
    for http2 in (False, True):
        refused = await grpc_web(url, body, {}, http2=http2)  # no token
        assert (refused.status, refused.grpc_status, refused.grpc_message) == (200, "16", "Jwt is missing")
    token = attack.mesh.token(f"web-{uuid.uuid4().hex[:8]}", "vip")
    origin = "http://localhost:3000"
    ok = await grpc_web(url, body, {**dict(bearer(token)), "origin": origin, "x-request-id": "web-ok-probe"})
    assert ok.grpc_status == "0" and ok.messages
    exposed = ok.headers["access-control-expose-headers"].split(",")
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "grpc-status"} <= set(exposed)
    request_id = ok.headers["x-request-id"]

    def logged() -> dict[str, object] | None:
        for line in attack.mesh.logs("envoy"):
            if line.startswith("{") and request_id in line:
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    entry = await eventually(logged)
    assert entry["grpc_status"] == "0" and entry["client_request_id"] == "web-ok-probe", entry


async def test_a_request_that_never_arrives_whole_is_ended_by_the_edge(attack: Attack) -> None:
    token = attack.mesh.token(f"slow-{uuid.uuid4().hex[:8]}", "vip")
    host, port = config.endpoint(attack.mesh.tree, "envoy")
    payload = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hello")]).SerializeToString()
    # A frame that promises more bytes than it carries, in a body that is complete: refused at once.
    host_port = f"{host}:{port}"
    short = await grpc_web(
        f"http://{host_port}{CHAT}", b"\x00" + struct.pack(">I", len(payload) + 50) + payload, dict(bearer(token))
    )
    assert short.grpc_status == "3" and "announces" in short.grpc_message
    # A body that never ends: the edge gives up after envoy.request_timeout_s, with a status.
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {host_port}\r\ncontent-type: application/grpc-web+proto\r\n"
        f"x-grpc-web: 1\r\nauthorization: Bearer {token}\r\ncontent-length: {len(payload) + 100}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + frame(payload))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 60)
    finally:
        writer.close()
    text = answer.decode(errors="replace").lower()
    assert text.startswith("http/1.1 200") and "grpc-status: 4" in text, text[:400]
