"""API keys: their shape, where a request carries one, redaction in logs, and the edge's cache of
live keys (expiry by an injected clock, revocation by id)."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from typing import Any

from services.analytics.keys import KeyCache
from services.runtime import apikeys, logs


def test_keys_are_random_prefixed_and_recognisable() -> None:
    made = {apikeys.new_secret() for _ in range(100)}
    assert len(made) == 100
    assert all(k.startswith("tm-") and len(k) == 46 and apikeys.well_formed(k) for k in made)
    assert not apikeys.well_formed("tm-short") and not apikeys.well_formed("eyJhbGciOi.x.y")
    key = next(iter(made))
    assert apikeys.digest(key) != apikeys.digest(key[:-1] + ("A" if key[-1] != "A" else "B"))


def test_a_request_carries_a_key_in_x_api_key_or_as_a_tm_bearer_and_a_jwt_is_not_one() -> None:
    key = apikeys.new_secret()
    assert apikeys.from_headers({"x-api-key": f" {key} "}) == key
    assert apikeys.from_headers({"authorization": f"Bearer {key}"}) == key
    assert apikeys.from_headers({"authorization": f"bearer {key}"}) == key
    assert apikeys.from_headers({"authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig"}) is None
    assert apikeys.from_headers({}) is None
    assert apikeys.from_headers({"x-api-key": ""}) == ""  # present but empty: malformed, not absent


def test_a_key_never_reaches_a_log_line() -> None:
    key = apikeys.new_secret()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter("test"))
    log = logging.getLogger("tiermesh.test.keys")
    log.addHandler(handler)
    try:
        log.warning("refused %s", key, extra={"header": f"Bearer {key}"})
        try:
            raise ValueError(f"bad key {key}")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert key not in text and not apikeys.PATTERN.search(text)
    first = json.loads(text.splitlines()[0])
    assert first["msg"] == f"refused {apikeys.REDACTED}" and first["header"] == f"Bearer {apikeys.REDACTED}"


def row(key_id: str, secret: str, expires_at: datetime | None = None) -> dict[str, Any]:
    return {
        "id": key_id,
        "key_digest": apikeys.digest(secret),
        "user_id": "u",
        "segment": "vip",
        "team": "",
        "role": "",
        "budget_micro_usd": 0,
        "expires_at": expires_at,
    }


async def never() -> Any:
    raise AssertionError("no database in this test")


def test_the_cache_forgets_revoked_keys_and_refuses_expired_ones() -> None:
    now = [datetime(2026, 12, 1, tzinfo=UTC).timestamp()]
    cache = KeyCache("postgresql://unused", never, clock=lambda: now[0])
    first, second = apikeys.new_secret(), apikeys.new_secret()
    cache.replace_all([row("key_1", first), row("key_2", second, datetime(2026, 12, 2, tzinfo=UTC))])
    assert cache.lookup(apikeys.digest(first)) is not None
    assert cache.lookup(apikeys.digest(second)) is not None
    now[0] += 86_400  # the second key's expiry
    assert cache.lookup(apikeys.digest(second)) is None
    cache.update(["key_1"], [])  # revoked: the database returns no live row for it
    assert cache.lookup(apikeys.digest(first)) is None
    cache.update(["key_3"], [row("key_3", first)])  # a new key with its own id
    found = cache.lookup(apikeys.digest(first))
    assert found is not None and found.id == "key_3"
    assert dict(found.headers())["x-tiermesh-segment"] == "vip"
