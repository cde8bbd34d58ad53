"""PostgreSQL access for Analytics: database creation, versioned migrations, batched idempotent
writes, spend queries. asyncpg throughout; all SQL is here.

A batch is written by COPY into a per-connection staging table, then one INSERT ... ON CONFLICT
(request_id) DO NOTHING: a batch retried after a lost connection (its commit may or may not have
happened) still leaves exactly one row per request. The same transaction NOTIFYs `usage_recorded`
with the users and segments it touched, so every replica's live watchers wake on commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.analytics.config import redact_url

log = logging.getLogger("tiermesh.analytics")
__all__ = ["redact_url"]

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x7469_6572_6D01  # pg advisory lock keys: one per job, stable across versions
ROLLUP_LOCK = 0x7469_6572_6D02
RETENTION_LOCK = 0x7469_6572_6D03
CHANNEL = "usage_recorded"

COLUMNS = (
    "request_id",
    "user_id",
    "segment",
    "tier",
    "model",
    "deployment",
    "prompt_tokens",
    "completion_tokens",
    "cost_micro_usd",
    "latency_us",
    "ttft_us",
    "cached",
    "degraded",
    "fallback_path",
    "intent",
    "complexity",
    "occurred_at",
    "client_request_id",
    "team",
)
Row = tuple[Any, ...]
INT64_MAX = 2**63 - 1


async def ensure_database(url: str) -> bool:
    """Create the database the URL names if it does not exist; True when it was created."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
    except asyncpg.DuplicateDatabaseError:
        return False
    finally:
        await admin.close()
    log.info("created database", extra={"database": name})
    return True


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not applied yet, in order, each in its own transaction. An advisory
    lock makes replicas starting together apply each one once."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for path in sorted(MIGRATIONS.glob("*.sql")):
            version = path.stem
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
            log.info("applied migration", extra={"version": version})
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def _insert_new(
    conn: asyncpg.Connection, table: str, columns: Sequence[str], rows: Sequence[Row], returning: str
) -> list[asyncpg.Record]:
    """COPY `rows` into a per-connection staging table, then INSERT those whose request id is not
    stored yet (once each); returns `returning` of the new rows. Call inside a transaction."""
    stage = f"{table}_stage"
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(stage, records=rows, columns=columns)
    cols = ", ".join(columns)
    return list(
        await conn.fetch(
            f"INSERT INTO {table} ({cols}) SELECT DISTINCT ON (request_id) {cols} FROM {stage} "  # noqa: S608
            f"ORDER BY request_id ON CONFLICT (request_id) DO NOTHING RETURNING {returning}"
        )
    )


async def insert_batch(conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
    """Store a batch; returns how many rows were new (duplicates of stored requests are skipped)."""
    async with conn.transaction():
        inserted = await _insert_new(conn, "usage_events", COLUMNS, rows, "user_id, segment")
        if inserted:
            users = sorted({r["user_id"] for r in inserted})
            segments = sorted({r["segment"] for r in inserted})
            payload = json.dumps({"users": users, "segments": segments})
            if len(payload) > 7000:  # NOTIFY payloads stop at 8000 bytes: then everyone looks
                payload = json.dumps({"all": True})
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
    return len(inserted)


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0


GROUP_COLUMNS = {"user": "user_id", "segment": "segment", "tier": "tier::text", "model": "model", "team": "team"}
_SUMS = (
    "count(*) AS requests, coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
    "coalesce(sum(completion_tokens), 0) AS completion_tokens, coalesce(sum(cost_micro_usd), 0) AS cost_micro_usd"
)


def _where(start: datetime, end: datetime | None, user: str, segment: str, team: str = "") -> tuple[str, list[Any]]:
    clauses: list[str] = ["occurred_at >= $1"]
    args: list[Any] = [start]
    if end is not None:
        args.append(end)
        clauses.append(f"occurred_at < ${len(args)}")
    if user:
        args.append(user)
        clauses.append(f"user_id = ${len(args)}")
    if segment:
        args.append(segment)
        clauses.append(f"segment = ${len(args)}")
    if team:
        args.append(team)
        clauses.append(f"team = ${len(args)}")
    return " AND ".join(clauses), args


def _totals(record: Any) -> Totals:
    # PostgreSQL sums bigints as numeric, which never overflows; a report carries int64, so a sum
    # beyond it (only reachable by a flood of maximal events) reads as the largest value instead.
    return Totals(
        min(int(record["requests"]), INT64_MAX),
        min(int(record["prompt_tokens"]), INT64_MAX),
        min(int(record["completion_tokens"]), INT64_MAX),
        min(int(record["cost_micro_usd"]), INT64_MAX),
    )


async def totals(
    conn: asyncpg.Connection | asyncpg.Pool,
    start: datetime,
    end: datetime | None,
    user: str = "",
    segment: str = "",
    team: str = "",
) -> Totals:
    where, args = _where(start, end, user, segment, team)
    return _totals(await conn.fetchrow(f"SELECT {_SUMS} FROM usage_events WHERE {where}", *args))  # noqa: S608


async def groups(
    conn: asyncpg.Connection | asyncpg.Pool,
    dimension: str,
    start: datetime,
    end: datetime | None,
    user: str = "",
    segment: str = "",
    team: str = "",
    limit: int = 1000,
) -> list[tuple[str, Totals]]:
    column = GROUP_COLUMNS[dimension]
    where, args = _where(start, end, user, segment, team)
    rows = await conn.fetch(
        f"SELECT {column} AS key, {_SUMS} FROM usage_events WHERE {where} "  # noqa: S608
        f"GROUP BY 1 ORDER BY cost_micro_usd DESC, key LIMIT {int(limit)}",
        *args,
    )
    return [(str(r["key"]), _totals(r)) for r in rows]


async def bucketed(
    conn: asyncpg.Connection | asyncpg.Pool,
    bucket_s: int,
    dimension: str | None,
    start: datetime,
    end: datetime | None,
    user: str = "",
    segment: str = "",
    team: str = "",
    limit: int = 1000,
) -> list[tuple[datetime, str, Totals]]:
    """Spend per time bucket of `bucket_s` seconds aligned to `start` (and per value of
    `dimension` within each, the `limit` costliest; the key is empty without a dimension)."""
    where, args = _where(start, end, user, segment, team)
    args.append(timedelta(seconds=bucket_s))
    key = GROUP_COLUMNS[dimension] if dimension else "''"
    rows = await conn.fetch(
        f"SELECT at, key, requests, prompt_tokens, completion_tokens, cost_micro_usd FROM ("  # noqa: S608
        f"SELECT date_bin(${len(args)}, occurred_at, $1) AS at, {key} AS key, {_SUMS}, "
        f"row_number() OVER (PARTITION BY date_bin(${len(args)}, occurred_at, $1) "
        f"ORDER BY coalesce(sum(cost_micro_usd), 0) DESC, {key}) AS rank "
        f"FROM usage_events WHERE {where} GROUP BY 1, 2) ranked WHERE rank <= {int(limit)} ORDER BY at, rank",
        *args,
    )
    return [(r["at"], str(r["key"]), _totals(r)) for r in rows]


async def rollup(conn: asyncpg.Connection, lag_s: float = 10.0) -> bool:
    """Recompute the minute and hour buckets touched by events recorded since the last run.
    Runs only where the advisory lock is free (one replica at a time); False when skipped.

    The window ends `lag_s` before now: a row's recorded_at is its transaction's start, so a
    write still committing could carry a time just before now and be missed by a window ending
    at now. Write transactions last milliseconds; the lag covers them many times over."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", ROLLUP_LOCK):
            return False
        now = await conn.fetchval("SELECT now() - make_interval(secs => $1)", lag_s)
        since = await conn.fetchval("SELECT watermark FROM job_state WHERE job = 'rollup'") or datetime.min.replace(
            tzinfo=now.tzinfo
        )
        for table, unit in (("spend_minute", "minute"), ("spend_hour", "hour")):
            await conn.execute(
                f"""
                WITH touched AS (
                    SELECT DISTINCT date_trunc('{unit}', occurred_at) AS bucket
                    FROM usage_events WHERE recorded_at >= $1 AND recorded_at < $2
                )
                INSERT INTO {table} AS t (bucket, user_id, segment, tier, model, requests, prompt_tokens,
                                          completion_tokens, cost_micro_usd)
                SELECT date_trunc('{unit}', e.occurred_at), e.user_id, e.segment, e.tier, e.model, count(*),
                       least(sum(e.prompt_tokens), {INT64_MAX}), least(sum(e.completion_tokens), {INT64_MAX}),
                       least(sum(e.cost_micro_usd), {INT64_MAX})
                FROM usage_events e JOIN touched ON date_trunc('{unit}', e.occurred_at) = touched.bucket
                GROUP BY 1, 2, 3, 4, 5
                ON CONFLICT (bucket, user_id, segment, tier, model) DO UPDATE SET
                    requests = EXCLUDED.requests, prompt_tokens = EXCLUDED.prompt_tokens,
                    completion_tokens = EXCLUDED.completion_tokens, cost_micro_usd = EXCLUDED.cost_micro_usd
                """,  # noqa: S608 - table and unit come from the fixed tuple above
                since,
                now,
            )
        await conn.execute(
            "INSERT INTO job_state (job, watermark) VALUES ('rollup', $1) "
            "ON CONFLICT (job) DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()",
            now,
        )
    return True


async def apply_retention(
    conn: asyncpg.Connection, events_days: int, minute_days: int, hour_days: int
) -> dict[str, int]:
    """Delete what is past its retention; one replica at a time. Returns rows deleted per table."""
    deleted: dict[str, int] = {}
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RETENTION_LOCK):
            return deleted
        for table, column, days in (
            ("usage_events", "occurred_at", events_days),
            ("route_decisions", "occurred_at", events_days),
            ("spend_minute", "bucket", minute_days),
            ("spend_hour", "bucket", hour_days),
        ):
            status = await conn.execute(
                f"DELETE FROM {table} WHERE {column} < now() - make_interval(days => $1)",  # noqa: S608
                days,
            )
            deleted[table] = int(status.split()[-1])
    return deleted


def affected(payload: str) -> tuple[set[str], set[str], bool]:
    """(users, segments, everything) from a NOTIFY payload."""
    try:
        data = json.loads(payload)
    except ValueError:
        return set(), set(), True
    if not isinstance(data, dict) or data.get("all"):
        return set(), set(), True
    users: Iterable[str] = data.get("users", [])
    segments: Iterable[str] = data.get("segments", [])
    return set(users), set(segments), False


# --- sampled route decisions -------------------------------------------------------------------

DECISION_COLUMNS = (
    "request_id",
    "occurred_at",
    "rule",
    "tier",
    "intent",
    "intent_confidence",
    "complexity",
    "complexity_score",
    "segment",
    "policy_version",
    "reasons",
    "message_sha256",
    "message_chars",
    "message",
    "second_opinion",
)


async def insert_decisions(conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
    """Store sampled decisions once per request id; returns how many were new."""
    async with conn.transaction():
        return len(await _insert_new(conn, "route_decisions", DECISION_COLUMNS, rows, "request_id"))


async def route_stats(pool: asyncpg.Pool, start: datetime, end: datetime | None) -> list[asyncpg.Record]:
    """Per rule and tier: the sampled decisions of the range and their outcomes (usage by request id)."""
    return list(
        await pool.fetch(
            "SELECT d.rule, d.tier, count(*) AS decisions, count(u.request_id) AS answered, "
            "coalesce(sum(u.cost_micro_usd), 0)::bigint AS cost_micro_usd, "
            "coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY u.latency_us), 0) AS latency_p50_us, "
            "count(*) FILTER (WHERE cardinality(u.fallback_path) > 1) AS fell_back, "
            "count(*) FILTER (WHERE u.degraded) AS degraded, count(*) FILTER (WHERE u.cached) AS cached, "
            "count(*) FILTER (WHERE d.second_opinion) AS second_opinions "
            "FROM route_decisions d LEFT JOIN usage_events u ON u.request_id = d.request_id "
            "WHERE d.occurred_at >= $1 AND ($2::timestamptz IS NULL OR d.occurred_at < $2) "
            "GROUP BY d.rule, d.tier ORDER BY decisions DESC, d.rule, d.tier",
            start,
            end,
        )
    )


# --- API keys ------------------------------------------------------------------------------------

KEYS_CHANNEL = "api_keys_changed"
KEY_COLUMNS = "id, key_digest, user_id, segment, team, role, budget_micro_usd, created_at, expires_at, revoked_at"
MAX_LISTED_KEYS = 10_000


async def create_key(
    conn: asyncpg.Connection,
    key_id: str,
    key_digest: bytes,
    user: str,
    segment: str,
    team: str,
    role: str,
    budget_micro_usd: int,
    expires_at: datetime | None,
) -> asyncpg.Record:
    """Store a new key (its digest only) and announce it; returns its row."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO api_keys (id, key_digest, user_id, segment, team, role, budget_micro_usd, expires_at) "  # noqa: S608
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {KEY_COLUMNS}",
            key_id,
            key_digest,
            user,
            segment,
            team,
            role,
            budget_micro_usd,
            expires_at,
        )
        await conn.execute("SELECT pg_notify($1, $2)", KEYS_CHANNEL, key_id)
    return row


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> asyncpg.Record | None:
    """Revoke a key (once: a second revoke keeps the first time) and announce it; None when no
    key has this id."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {KEY_COLUMNS}",  # noqa: S608
            key_id,
        )
        if row is not None:
            await conn.execute("SELECT pg_notify($1, $2)", KEYS_CHANNEL, key_id)
    return row


async def list_keys(conn: asyncpg.Connection, user: str, include_revoked: bool) -> list[asyncpg.Record]:
    """Keys, newest first: one user's or everyone's; live ones only unless `include_revoked`."""
    live = "" if include_revoked else " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
    return list(
        await conn.fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1 = '' OR user_id = $1){live} "  # noqa: S608
            "ORDER BY created_at DESC, id LIMIT $2",
            user,
            MAX_LISTED_KEYS,
        )
    )


async def live_keys(conn: asyncpg.Connection, ids: Sequence[str] | None = None) -> list[asyncpg.Record]:
    """Every key that may still be used (or only those of `ids`), for the edge's key cache."""
    query = (
        f"SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"  # noqa: S608
    )
    if ids is None:
        return list(await conn.fetch(query))
    return list(await conn.fetch(query + " AND id = ANY($1)", list(ids)))
