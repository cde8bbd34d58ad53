"""Authentication at the edge, through the real Envoy: only a valid token reaches a service, and
the identity services see is the verified one."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from gateway import keys
from tests.integration.mesh import Mesh, grpc_web_frame

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(mesh: Mesh, **changes: object) -> dict[str, object]:
    auth = keys.settings(mesh.tree)
    now = int(time.time())
    base: dict[str, object] = {
        "iss": auth.issuer,
        "aud": auth.audience,
        "sub": "eve",
        "segment": "vip",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(changes)
    return base


def signed(mesh: Mesh, body: dict[str, object], key: ec.EllipticCurvePrivateKey | None = None) -> str:
    dev = keys.dev_keys(mesh.tree)
    return jwt.encode(body, key or dev.private_key, algorithm="ES256", headers={"kid": dev.kid})


def unsigned(mesh: Mesh) -> str:
    header = {"alg": "none", "typ": "JWT"}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims(mesh)).encode())}."


def hs256_with_public_key(mesh: Mesh) -> str:
    """The classic confusion attack: HMAC-sign with the public key as the secret."""
    dev = keys.dev_keys(mesh.tree)
    public_pem = dev.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": dev.kid}).encode())
    payload = b64(json.dumps(claims(mesh)).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


BAD_TOKENS: dict[str, Callable[[Mesh], str | None]] = {
    "missing": lambda m: None,
    "garbage": lambda m: "not-a-jwt",
    "expired": lambda m: signed(
        m, claims(m, iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    ),
    "not-yet-valid": lambda m: signed(m, claims(m, nbf=int(time.time()) + 3600, exp=int(time.time()) + 7200)),
    "wrong-signature": lambda m: signed(m, claims(m), ec.generate_private_key(ec.SECP256R1())),
    "alg-none": unsigned,
    "hs256-public-key": hs256_with_public_key,
    "wrong-issuer": lambda m: signed(m, claims(m, iss="https://evil.example/issuer")),
    "wrong-audience": lambda m: signed(m, claims(m, aud="someone-else")),
}


def chat_request(text: str) -> pb.ChatRequest:
    return pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])


def routed_lines(mesh: Mesh) -> int:
    return sum('"routed"' in line for line in mesh.logs("router"))


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated_before_any_service(mesh: Mesh, case: str) -> None:
    token = BAD_TOKENS[case](mesh)
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    before = routed_lines(mesh)
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Chat(chat_request(f"auth case {case}"), timeout=10, metadata=metadata):
                pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
    assert routed_lines(mesh) == before  # the Router never saw the call
    assert not [r for r in await mesh.sim_records() if r["messages"][-1]["content"] == f"auth case {case}"]


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
