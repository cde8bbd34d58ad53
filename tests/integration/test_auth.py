"""Authentication at the edge, through the real Envoy: the identity services see is the verified one.
(Forged and invalid tokens are attacked in tests/security/test_jwt_forgeries.py.)"""

from __future__ import annotations

import asyncio
import json

import httpx
import jwt
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from gateway import keys
from tests.integration.mesh import Mesh, grpc_web_frame

pytestmark = pytest.mark.integration


def chat_request(text: str) -> pb.ChatRequest:
    return pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])


async def test_token_in_the_query_string_is_not_accepted(mesh: Mesh) -> None:
    url = f"http://{mesh.target('envoy')}/tiermesh.router.v1.RouterService/Route?access_token={mesh.token()}"
    request = pb.RouteRequest(messages=chat_request("hi").messages)
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(
            url,
            content=grpc_web_frame(request.SerializeToString()),
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
    status = resp.headers.get("grpc-status")
    assert resp.status_code == 401 or status == "16", (resp.status_code, resp.headers)


async def test_valid_token_is_accepted_and_its_claims_are_the_identity(mesh: Mesh) -> None:
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        forged = (*mesh.auth("dana", "standard"), ("x-tiermesh-segment", "vip"), ("x-tiermesh-user", "admin"))
        reply = await stub.Route(pb.RouteRequest(messages=chat_request("hello").messages), timeout=10, metadata=forged)
    assert reply.decision.segment == c.SEGMENT_STANDARD


def test_ttl_parsing_and_minting_rules(mesh: Mesh) -> None:
    assert keys.parse_ttl("90s") == 90 and keys.parse_ttl("15m") == 900 and keys.parse_ttl("1h") == 3600
    for bad in ("", "1y", "-5", "0s", "31d"):
        with pytest.raises(ValueError):
            keys.parse_ttl(bad)
    with pytest.raises(ValueError, match="segment must be one of"):
        keys.mint(mesh.tree, "alice", "gold", 60)
    token = keys.mint(mesh.tree, "alice", "vip", 60)
    header = jwt.get_unverified_header(token)
    body = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "ES256" and header["kid"] == keys.dev_keys(mesh.tree).kid
    assert (body["sub"], body["segment"], body["exp"] - body["iat"]) == ("alice", "vip", 60)


async def test_access_logs_are_json_and_never_carry_the_token(mesh: Mesh) -> None:
    token = mesh.token("logged-user")
    async with mesh.edge() as channel:
        await pb_grpc.RouterServiceStub(channel).Route(
            pb.RouteRequest(messages=chat_request("log me").messages),
            timeout=10,
            metadata=(("authorization", f"Bearer {token}"),),
        )
    entries: list[dict[str, object]] = []
    for _ in range(100):  # Envoy flushes access logs on its own schedule
        entries = [json.loads(line) for line in mesh.logs("envoy") if line.startswith("{")]
        if any(
            e["path"] == "/tiermesh.router.v1.RouterService/Route" and str(e["grpc_status"]) == "0" for e in entries
        ):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no access log line for the call: {entries[-3:]}")
    joined = "\n".join(mesh.logs("envoy"))
    assert token not in joined and token.split(".")[1] not in joined and "Bearer" not in joined
