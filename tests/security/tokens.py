"""Tokens an attacker would try: forged, expired, for someone else, or with odd claims."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import keys
from tests.integration.mesh import Mesh

ABSENT = object()  # a claim left out of the token


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(mesh: Mesh, **changes: Any) -> dict[str, Any]:
    """Valid claims for the mesh's issuer and audience, changed as asked (ABSENT drops one)."""
    auth = keys.settings(mesh.tree)
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": auth.issuer,
        "aud": auth.audience,
        "sub": "eve",
        "segment": "standard",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ABSENT}


def signed(mesh: Mesh, body: dict[str, Any], key: ec.EllipticCurvePrivateKey | None = None) -> str:
    """Signed with the development key (the real one, unless `key` is given)."""
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


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()
