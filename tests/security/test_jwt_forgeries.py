"""Forged and invalid tokens never get past the edge, over gRPC or gRPC-Web, and no service sees them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.mesh import Mesh
from tests.security.conftest import Attack
from tests.security.tokens import bearer, claims, hs256_with_public_key, signed, unsigned
from tests.security.wire import frame, grpc_web

pytestmark = pytest.mark.integration

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


def routed(attack: Attack) -> int:
    return sum('"routed"' in line for line in attack.mesh.logs("router"))


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_a_bad_token_is_unauthenticated_before_any_service(attack: Attack, case: str) -> None:
    token = BAD_TOKENS[case](attack.mesh)
    text = f"forgery {case} {uuid.uuid4().hex[:8]}"
    before = routed(attack)
    events, error = await attack.chat(text, bearer(token), timeout=10)
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert not events
    url = f"http://{attack.mesh.target('envoy')}/tiermesh.router.v1.RouterService/Chat"
    body = frame(attack.chat_request(text).SerializeToString())
    for http2 in (False, True):
        web = await grpc_web(url, body, dict(bearer(token)), http2=http2)
        # gRPC-Web clients read a refusal from HTTP 200 and grpc-status, as gRPC clients do.
        assert (web.status, web.grpc_status) == (200, "16"), (http2, web)
    assert routed(attack) == before  # the Router never saw any of them
    assert not [r for r in await attack.mesh.sim_records() if r["messages"][-1]["content"] == text]
