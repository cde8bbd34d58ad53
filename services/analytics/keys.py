"""API keys: the operators' AdminService (make, list, revoke) and the edge's key check.

Envoy asks `envoy.service.auth.v3.Authorization/Check` (ext_authz) about every request that
carries a key, and only those. The answer comes from memory: `KeyCache` holds the digest of every
live key, loaded at start and kept current by PostgreSQL LISTEN on `api_keys_changed`, which
every replica's create and revoke announce in the same transaction. A revoked key is refused by
every replica well within a second; a full reload every `refresh_s` (and after the listener
reconnects) repairs anything a lost notification missed. A key that passes becomes the same
identity headers a JWT's claims would (`x-tiermesh-user`, `-segment`, `-role`, and `-team`), and
the key itself is removed from the request, so no service behind the edge ever sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from tiermesh.analytics.v1 import admin_service_pb2 as pb
from tiermesh.common.v1 import common_pb2 as c
from tiermesh_authz.v3 import external_auth_pb2 as authz

from services.analytics import db
from services.analytics.servicer import reachable
from services.analytics.writer import CONNECTION_ERRORS
from services.runtime import apikeys, identity, tls
from services.runtime.backoff import Backoff
from services.runtime.enums import name_of
from services.runtime.errors import InvalidArgument, NotFound, PermissionDenied
from services.runtime.server import Context
from services.runtime.validation import validate

log = logging.getLogger("tiermesh.analytics")

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
KEY_ID = re.compile(r"key_[0-9a-f]{16}")  # what CreateKey makes
MICRO = 1_000_000
OVERWRITE = authz.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# What the key check passes on: a request's own credentials stop at the edge.
REMOVED = ("authorization", apikeys.API_KEY_HEADER)


@dataclass(frozen=True)
class Key:
    id: str
    user: str
    segment: str
    team: str
    role: str
    budget_micro_usd: int
    expires_at: datetime | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Key:
        return cls(
            row["id"],
            row["user_id"],
            row["segment"],
            row["team"],
            row["role"],
            row["budget_micro_usd"],
            row["expires_at"],
        )

    def headers(self) -> list[tuple[str, str]]:
        """The identity this key stands for, as the edge passes it on."""
        out = [(identity.USER, self.user), (identity.SEGMENT, self.segment), (identity.KEY, self.id)]
        if self.role:
            out.append((identity.ROLE, self.role))
        if self.team:
            out.append((identity.TEAM, self.team))
        if self.budget_micro_usd:
            out.append((identity.BUDGET, str(self.budget_micro_usd)))
        return out


class KeyCache:
    """Every live key by digest, in memory, following the database (see the module's doc)."""

    def __init__(
        self,
        database_url: str,
        pool: Callable[[], Awaitable[asyncpg.Pool]],
        refresh_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database_url = database_url
        self.pool = pool
        self.refresh_s = refresh_s
        self.clock = clock
        self.by_digest: dict[bytes, Key] = {}
        self.digest_of: dict[str, bytes] = {}
        self.loaded = False
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def lookup(self, key_digest: bytes) -> Key | None:
        found = self.by_digest.get(key_digest)
        if found is None or (found.expires_at is not None and found.expires_at.timestamp() <= self.clock()):
            return None
        return found

    def replace_all(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.by_digest = {bytes(r["key_digest"]): Key.of(r) for r in rows}
        self.digest_of = {k.id: d for d, k in self.by_digest.items()}
        self.loaded = True

    def update(self, ids: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> None:
        """Forget the keys `ids` name, then keep those of them that are still live (`rows`)."""
        for key_id in ids:
            digest = self.digest_of.pop(key_id, None)
            if digest is not None:
                self.by_digest.pop(digest, None)
        for r in rows:
            digest = bytes(r["key_digest"])
            self.by_digest[digest] = Key.of(r)
            self.digest_of[r["id"]] = digest

    def changed(self, key_id: str) -> None:
        """A key was made or revoked (here or on another replica): look it up again soon."""
        self._pending.add(key_id)
        self._wake.set()

    async def reload(self) -> None:
        pool = await self.pool()
        async with pool.acquire() as conn:
            self.replace_all(await db.live_keys(conn))

    async def _refresh_pending(self) -> None:
        ids, self._pending = list(self._pending), set()
        pool = await self.pool()
        async with pool.acquire() as conn:
            self.update(ids, await db.live_keys(conn, ids))

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="api-key-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        backoff, attempt = Backoff(0.2, 5.0), 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.database_url, timeout=5)
                await conn.add_listener(db.KEYS_CHANNEL, lambda _c, _p, _ch, key_id: self.changed(key_id))
                await self.reload()  # after listening: no change can fall between the two
                attempt = 0
                next_full = time.monotonic() + self.refresh_s
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, self.refresh_s))
                    self._wake.clear()
                    if self._pending:
                        await self._refresh_pending()
                    if time.monotonic() >= next_full:
                        await self.reload()
                        next_full = time.monotonic() + self.refresh_s
            except asyncio.CancelledError:
                raise
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                attempt += 1
                log.warning("API key cache: the database is unreachable; retrying", extra={"reason": str(exc)})
                await asyncio.sleep(backoff.delay(attempt))
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def key_message(row: Mapping[str, Any]) -> pb.ApiKey:
    return pb.ApiKey(
        id=row["id"],
        user=row["user_id"],
        segment=c.Segment.Value("SEGMENT_" + row["segment"].upper()),
        team=row["team"],
        budget_usd=row["budget_micro_usd"] / MICRO,
        role=row["role"],
        created_at=_timestamp(row["created_at"]),
        expires_at=_timestamp(row["expires_at"]),
        revoked_at=_timestamp(row["revoked_at"]),
    )


def operator_only(context: Context) -> None:
    """Through the edge, only a token or key with the operator role manages keys (the edge
    checked it too); an operator's tool with its own certificate always may."""
    who = tls.edge_reader(context)
    if who is not None and not who[1]:
        raise PermissionDenied("API keys are managed with the operator role only")


class AdminServicer:
    """tiermesh.analytics.v1.AdminService: operators make, list and revoke keys."""

    def __init__(self, pool: Callable[[], Awaitable[asyncpg.Pool]], cache: KeyCache) -> None:
        self.pool = pool
        self.cache = cache

    async def _conn_pool(self) -> asyncpg.Pool:
        return await reachable(self.pool, "the key store (PostgreSQL)")

    async def CreateKey(self, request: pb.CreateKeyRequest, context: Context) -> pb.CreateKeyResponse:
        operator_only(context)
        validate(request)
        if not request.user.strip():
            raise InvalidArgument("user: must be 1 to 256 characters without control characters")
        _check_user(request.user)
        if not identity.TEAM_NAME.fullmatch(request.team):
            raise InvalidArgument("team: use at most 128 letters, digits, '.', '_' or '-'")
        if request.role not in ("", identity.OPERATOR):
            raise InvalidArgument(f"role: must be '{identity.OPERATOR}' or empty, got {request.role!r}")
        secret = apikeys.new_secret()
        expires = datetime.now(UTC) + timedelta(seconds=request.expires_in_s) if request.expires_in_s else None
        pool = await self._conn_pool()
        async with pool.acquire() as conn:
            row = await db.create_key(
                conn,
                f"key_{secrets.token_hex(8)}",
                apikeys.digest(secret),
                request.user,
                name_of(c.Segment, "SEGMENT_", request.segment),
                request.team,
                request.role,
                round(request.budget_usd * MICRO),
                expires,
            )
        self.cache.update((), [row])  # usable here at once; other replicas follow the notification
        log.info("API key created", extra={"key_id": row["id"], "user": request.user, "segment": row["segment"]})
        return pb.CreateKeyResponse(key=key_message(row), secret=secret)

    async def ListKeys(self, request: pb.ListKeysRequest, context: Context) -> pb.ListKeysResponse:
        operator_only(context)
        validate(request)
        _check_user(request.user)  # no key can be a user's that CreateKey would refuse
        pool = await self._conn_pool()
        async with pool.acquire() as conn:
            rows = await db.list_keys(conn, request.user, request.include_revoked)
        return pb.ListKeysResponse(keys=[key_message(r) for r in rows])

    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: Context) -> pb.RevokeKeyResponse:
        operator_only(context)
        validate(request)
        if not KEY_ID.fullmatch(request.id):
            raise InvalidArgument(
                f"id: {request.id[:40]!r} is not a key id (key_ and 16 hex digits); `tiermesh keys list` shows them"
            )
        pool = await self._conn_pool()
        async with pool.acquire() as conn:
            row = await db.revoke_key(conn, request.id)
        if row is None:
            raise NotFound(f"id: no key {request.id!r}; `tiermesh keys list` shows the ids")
        self.cache.update([row["id"]], ())
        log.info("API key revoked", extra={"key_id": row["id"], "user": row["user_id"]})
        return pb.RevokeKeyResponse(key=key_message(row))


def _check_user(user: str) -> None:
    """A user named in a key, or asked about: no control characters (PostgreSQL cannot store NUL)."""
    if CONTROL.search(user):
        raise InvalidArgument("user: must be 1 to 256 characters without control characters")


def _denied(status: int, message: str) -> authz.CheckResponse:
    code = {401: 16, 503: 14}.get(status, 7)  # google.rpc codes: UNAUTHENTICATED, UNAVAILABLE
    return authz.CheckResponse(
        status=authz.Status(code=code, message=message),
        denied_response=authz.DeniedHttpResponse(status=authz.HttpStatus(code=status), body=message),
    )


class KeyCheck:
    """envoy.service.auth.v3.Authorization: the edge's question about a request's API key."""

    def __init__(self, cache: KeyCache) -> None:
        self.cache = cache

    async def Check(self, request: authz.CheckRequest, context: Context) -> authz.CheckResponse:
        headers = request.attributes.request.http.headers
        key = apikeys.from_headers(headers)
        if key is None:
            return _denied(401, "no API key: send it as 'x-api-key: tm-...' or 'Authorization: Bearer tm-...'")
        if not apikeys.well_formed(key):
            return _denied(401, "the API key is malformed: a key is 'tm-' followed by 43 characters")
        if not self.cache.loaded:
            return _denied(503, "API keys cannot be checked yet (the key store is unreachable): retry shortly")
        found = self.cache.lookup(apikeys.digest(key))
        if found is None:
            return _denied(401, "the API key is not valid: it is unknown, revoked or expired")
        return authz.CheckResponse(
            status=authz.Status(code=0),
            ok_response=authz.OkHttpResponse(
                headers=[
                    authz.HeaderValueOption(header=authz.HeaderValue(key=k, value=v), append_action=OVERWRITE)
                    for k, v in found.headers()
                ],
                headers_to_remove=list(REMOVED),
            ),
        )
