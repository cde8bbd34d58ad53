"""The development token issuer: an ES256 key pair under the data dir, its JWKS, and minting.

Production verifies tokens against a remote JWKS (`auth.jwks_uri`); in development Envoy reads
the JWKS file written here, and `tiermesh token` / `tiermesh chat` sign with the private key.
The key pair is created on first use (private key readable by its owner only) and reused after.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.runtime import config
from services.runtime.identity import OPERATOR, SEGMENTS, TEAM_NAME


@dataclass(frozen=True)
class AuthSettings:
    issuer: str
    audience: str
    jwks_uri: str  # empty: development keys under the data dir
    jwks_cache_s: int


def settings(tree: Mapping[str, Any]) -> AuthSettings:
    node = config.section(tree, "auth")
    return AuthSettings(
        issuer=config.get_str(node, "issuer", "https://tiermesh.dev/issuer", where="auth"),
        audience=config.get_str(node, "audience", "tiermesh", where="auth"),
        jwks_uri=config.get_str(node, "jwks_uri", "", where="auth"),
        jwks_cache_s=config.get_int(node, "jwks_cache_s", 300, where="auth", lo=1, hi=86_400),
    )


def _b64(n: int, size: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(size, "big")).rstrip(b"=").decode()


@dataclass(frozen=True)
class DevKeys:
    private_path: Path
    jwks_path: Path
    kid: str

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.private_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def dev_keys(tree: Mapping[str, Any]) -> DevKeys:
    """The development key pair and JWKS, created on first use."""
    folder = config.data_dir(tree) / "jwt"
    folder.mkdir(parents=True, exist_ok=True)
    private_path, jwks_path = folder / "dev-signing-key.pem", folder / "jwks.json"
    if not private_path.exists() or not jwks_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = private_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        numbers = key.public_key().public_numbers()
        kid = uuid.uuid4().hex[:16]
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": kid,
            "x": _b64(numbers.x, 32),
            "y": _b64(numbers.y, 32),
        }
        jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n", encoding="utf-8")
        tmp.replace(private_path)
    kid = json.loads(jwks_path.read_text(encoding="utf-8"))["keys"][0]["kid"]
    return DevKeys(private_path, jwks_path, kid)


def parse_ttl(text: str) -> int:
    """`90s`, `15m`, `1h`, `7d` or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    raw = text.strip().lower()
    try:
        value = int(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else int(raw)
    except ValueError:
        raise ValueError(f"ttl {text!r} is not a duration like 90s, 15m, 1h or 7d") from None
    if not 1 <= value <= 30 * 86_400:
        raise ValueError("ttl must be from 1 second to 30 days")
    return value


def mint(
    tree: Mapping[str, Any],
    user: str,
    segment: str,
    ttl_s: int,
    now: float | None = None,
    role: str = "",
    team: str = "",
) -> str:
    """A development token for `user` in `segment` (with the `role` claim when given: only
    `operator` exists; and the `team` claim when given), signed with the dev key (ES256)."""
    if role not in ("", OPERATOR):
        raise ValueError(f"role must be {OPERATOR} or none")
    if not TEAM_NAME.fullmatch(team):
        raise ValueError("team must be at most 128 letters, digits, '.', '_' or '-'")
    if segment not in SEGMENTS:
        raise ValueError(f"segment must be one of {', '.join(SEGMENTS)}")
    if not user or len(user) > 256:
        raise ValueError("user must be 1 to 256 characters")
    auth = settings(tree)
    keys = dev_keys(tree)
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": auth.issuer,
        "aud": auth.audience,
        "sub": user,
        "segment": segment,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
    }
    if role:
        claims["role"] = role
    if team:
        claims["team"] = team
    return jwt.encode(claims, keys.private_key, algorithm="ES256", headers={"kid": keys.kid})
