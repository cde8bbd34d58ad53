"""API keys: what one looks like, how it is told apart from a JWT, and how it is stored.

A key is `tm-` followed by 43 characters of base64url (256 random bits), so a secret scanner can
spot one by its shape (`PATTERN`) and nothing can guess one. Only its SHA-256 digest is stored:
with that much entropy a salted slow hash would add nothing but CPU per request. A client sends
it as `x-api-key: tm-...` or `Authorization: Bearer tm-...`; a bearer credential without the
prefix is a JWT.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Mapping

PREFIX = "tm-"
PATTERN = re.compile(r"tm-[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
API_KEY_HEADER = "x-api-key"
BEARER = "bearer "
REDACTED = "tm-[redacted]"


def new_secret() -> str:
    """A fresh key: `tm-` and 32 random bytes as unpadded base64url."""
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def digest(secret: str) -> bytes:
    """What is stored and looked up instead of the key."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def from_headers(headers: Mapping[str, str]) -> str | None:
    """The key a request carries (`x-api-key`, else a bearer credential starting `tm-`), as
    sent; None when it carries none (it may carry a JWT)."""
    key = headers.get(API_KEY_HEADER)
    if key is not None:
        return key.strip()
    auth = headers.get("authorization", "")
    if auth[: len(BEARER)].lower() == BEARER and auth[len(BEARER) :].strip().startswith(PREFIX):
        return auth[len(BEARER) :].strip()
    return None


def well_formed(key: str) -> bool:
    return PATTERN.fullmatch(key) is not None


def redact(text: str) -> str:
    """`text` with anything shaped like a key replaced, so no log line can carry one."""
    return PATTERN.sub(REDACTED, text) if PREFIX in text else text
