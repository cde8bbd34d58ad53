"""The browser's door: CORS preflight, gRPC-Web text framing, and long streams not cut at the edge."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import httpx
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from tests.integration.conftest import MESH_PARTS
from tests.integration.mesh import Mesh, parse_trailers, start_mesh

pytestmark = pytest.mark.integration

CHAT_PATH = "/tiermesh.router.v1.RouterService/Chat"


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web,authorization",
    }


async def test_cors_preflight_from_the_allowed_origin_is_accepted(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.options(
            f"http://{mesh.target('envoy')}{CHAT_PATH}", headers=preflight_headers("http://localhost:3000")
        )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "authorization" in resp.headers["access-control-allow-headers"]


async def test_cors_preflight_from_another_origin_is_refused(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.options(
            f"http://{mesh.target('envoy')}{CHAT_PATH}", headers=preflight_headers("https://evil.example")
        )
    assert "access-control-allow-origin" not in resp.headers


async def test_streamed_chat_over_grpc_web_text(mesh: Mesh) -> None:
    request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="olá via texto")])
    payload = request.SerializeToString()
    body = base64.b64encode(b"\x00" + struct.pack(">I", len(payload)) + payload)
    headers = {
        "content-type": "application/grpc-web-text",
        "accept": "application/grpc-web-text",
        "x-grpc-web": "1",
        "origin": "http://localhost:3000",
        "authorization": f"Bearer {mesh.token()}",
    }
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(f"http://{mesh.target('envoy')}{CHAT_PATH}", content=body, headers=headers)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "grpc-status" in resp.headers.get("access-control-expose-headers", "")
    # The text body is a run of base64 pieces, one or more per frame.
    raw = b"".join(base64.b64decode(piece + b"=" * (-len(piece) % 4)) for piece in _pieces(resp.content))
    events, trailers = [], {}
    while raw:
        flag, size = raw[0], struct.unpack(">I", raw[1:5])[0]
        chunk, raw = raw[5 : 5 + size], raw[5 + size :]
        if flag & 0x80:
            trailers = parse_trailers(chunk)
        else:
            events.append(pb.ChatResponse.FromString(chunk))
    assert trailers.get("grpc-status") == "0"
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "decision" and kinds[-1] == "done" and "delta" in kinds


def _pieces(body: bytes) -> list[bytes]:
    """Split a grpc-web-text body into its base64 segments (each may end in padding)."""
    out, start = [], 0
    for i in range(len(body)):
        if body[i : i + 1] == b"=" and (i + 1 == len(body) or body[i + 1 : i + 2] != b"="):
            out.append(body[start : i + 1])
            start = i + 1
    if start < len(body):
        out.append(body[start:])
    return [p for p in out if p.strip(b"=")]


async def test_a_stream_longer_than_15_seconds_is_not_cut(tmp_path: Path) -> None:
    # 42 tokens at 400 ms: about 17 s, past Envoy's default 15 s route timeout.
    m = await start_mesh(
        tmp_path, MESH_PARTS, TIERMESH_SIMULATOR__TOKEN_DELAY_MS="400", TIERMESH_SIMULATOR__ANSWER_TOKENS="42"
    )
    try:
        async with m.edge() as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="long one")])
            events = [e async for e in stub.Chat(request, timeout=60, metadata=m.auth())]
    finally:
        await m.sup.stop()
    assert events[-1].HasField("done")
    assert events[-1].done.usage.completion_tokens == 42
