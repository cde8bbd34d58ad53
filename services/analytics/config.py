"""Analytics settings: the database, the write buffer, background jobs and monthly budgets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.runtime import config
from services.runtime.config import ConfigError

BUDGET_ACTIONS = ("downgrade", "refuse")
SEGMENTS = ("standard", "vip", "enterprise")


@dataclass(frozen=True)
class Budgets:
    """Monthly budgets (calendar month, UTC) in micro-dollars. A user's own budget overrides the
    per-user budget of their segment; a segment's total caps all its users together."""

    action: str = "downgrade"
    users: Mapping[str, int] = field(default_factory=dict)
    per_user_by_segment: Mapping[str, int] = field(default_factory=dict)
    segments: Mapping[str, int] = field(default_factory=dict)
    cache_s: float = 5.0

    @property
    def any(self) -> bool:
        return bool(self.users or self.per_user_by_segment or self.segments)


@dataclass(frozen=True)
class AnalyticsConfig:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/tiermesh"
    create_database: bool = True
    pool_size: int = 4
    buffer_size: int = 20000
    batch_size: int = 1000
    flush_interval_s: float = 0.05
    retry_max_s: float = 2.0
    stall_after_s: float = 30.0
    spill_path: str = ""
    dead_letter_path: str = ""
    rollup_interval_s: float = 60.0
    retention_days_events: int = 90
    retention_days_minute: int = 14
    retention_days_hour: int = 800
    budgets: Budgets = field(default_factory=Budgets)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def _amounts(node: Any, where: str, keys: tuple[str, ...] | None = None) -> dict[str, int]:
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: must be a mapping of name to USD per month")
    out = {}
    for key, value in node.items():
        if keys is not None and key not in keys:
            raise ConfigError(f"{where}: unknown segment {key!r}; segments are {', '.join(keys)}")
        out[str(key)] = config.usd_to_micro(value, f"{where}.{key}")
    return out


def load_budgets(tree: Mapping[str, Any]) -> Budgets:
    node = config.section(tree, "analytics", "budgets")
    where = "analytics.budgets"
    action = config.get_str(node, "action", "downgrade", where=where)
    if action not in BUDGET_ACTIONS:
        raise ConfigError(f"{where}.action: must be one of {', '.join(BUDGET_ACTIONS)}, got {action!r}")
    return Budgets(
        action=action,
        users=_amounts(node.get("users"), f"{where}.users"),
        per_user_by_segment=_amounts(node.get("per_user_by_segment"), f"{where}.per_user_by_segment", SEGMENTS),
        segments=_amounts(node.get("segments"), f"{where}.segments", SEGMENTS),
        cache_s=config.get_float(node, "cache_s", 5.0, where=where, lo=0, hi=3600),
    )


def _under(tree: Mapping[str, Any], path: str) -> str:
    """A file path from config: relative ones are under data_dir."""
    return str(config.data_dir(tree) / path) if path and not os.path.isabs(path) else path


def load(tree: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AnalyticsConfig:
    env = os.environ if environ is None else environ
    node = config.section(tree, "analytics")
    where = "analytics"
    url = env.get("TIERMESH_DATABASE_URL") or config.get_str(
        node, "database_url", AnalyticsConfig.database_url, where=where
    )
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{where}.database_url: must be a postgresql:// URL, got {url!r}")
    retention = config.section(node, "retention_days")
    spill = config.get_str(node, "spill_path", "analytics-spill.jsonl", where=where)
    rejected = config.get_str(node, "dead_letter_path", "analytics-rejected.jsonl", where=where)
    return AnalyticsConfig(
        database_url=url,
        create_database=config.get_bool(node, "create_database", True, where=where),
        pool_size=config.get_int(node, "pool_size", 4, where=where, lo=1, hi=100),
        buffer_size=config.get_int(node, "buffer_size", 20000, where=where, lo=1, hi=10_000_000),
        batch_size=config.get_int(node, "batch_size", 1000, where=where, lo=1, hi=100_000),
        flush_interval_s=config.get_float(node, "flush_interval_s", 0.05, where=where, lo=0, hi=60),
        retry_max_s=config.get_float(node, "retry_max_s", 2.0, where=where, lo=0.01, hi=300),
        stall_after_s=config.get_float(node, "stall_after_s", 30.0, where=where, lo=0.1, hi=86400),
        spill_path=_under(tree, spill),
        dead_letter_path=_under(tree, rejected),
        rollup_interval_s=config.get_float(node, "rollup_interval_s", 60.0, where=where, lo=0.1, hi=86400),
        retention_days_events=config.get_int(retention, "events", 90, where=f"{where}.retention_days", lo=1),
        retention_days_minute=config.get_int(retention, "minute", 14, where=f"{where}.retention_days", lo=1),
        retention_days_hour=config.get_int(retention, "hour", 800, where=f"{where}.retention_days", lo=1),
        budgets=load_budgets(tree),
    )
