"""Analytics settings: the database, the write buffer and background jobs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.runtime import config
from services.runtime.config import ConfigError


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


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


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
    )
