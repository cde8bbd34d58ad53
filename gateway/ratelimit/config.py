"""Rate limit rules, in the shape of envoyproxy/ratelimit's configuration.

    domain: tiermesh
    descriptors:
      - key: segment            # matched against the request's descriptor entries, in order
        value: vip              # a value narrows the match; no value matches any value
        descriptors:
          - key: user
            rate_limit: {unit: minute, requests_per_unit: 100}
            shadow_mode: false  # count and report, never deny

A descriptor entry without a value in the rules gets its own counter per value seen (per user).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.runtime.config import ConfigError, check_keys, get_bool

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400}


@dataclass(frozen=True)
class Limit:
    requests_per_unit: int
    unit: str
    name: str

    @property
    def seconds(self) -> int:
        return UNITS[self.unit]


@dataclass(frozen=True)
class Node:
    key: str
    value: str | None
    limit: Limit | None
    shadow: bool
    children: tuple[Node, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class RateLimitConfig:
    domain: str
    descriptors: tuple[Node, ...]

    def find(self, entries: Sequence[tuple[str, str]]) -> tuple[Node | None, str]:
        """The most specific rule for a descriptor (its entries in order), and the counter key
        path for it; (None, "") when no rule has a limit for it."""
        nodes, path, found, found_path = self.descriptors, [], None, ""
        for key, value in entries:
            match = next((n for n in nodes if n.key == key and n.value == value), None) or next(
                (n for n in nodes if n.key == key and n.value is None), None
            )
            if match is None:
                return None, ""
            path.append(f"{key}_{value}")
            if match.limit is not None:
                found, found_path = match, "_".join(path)
            nodes = match.children
        return (found, found_path) if found is not None and len(path) == len(entries) else (None, "")


def _node(raw: Any, where: str) -> Node:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with key (and value, rate_limit, descriptors)")
    check_keys(raw, frozenset({"key", "value", "rate_limit", "descriptors", "shadow_mode"}), where)
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}.key: is required (a non-empty string)")
    value = raw.get("value")
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.value: must be a string")
    limit = None
    if raw.get("rate_limit") is not None:
        rl = raw["rate_limit"]
        if not isinstance(rl, Mapping):
            raise ConfigError(f"{where}.rate_limit: must hold unit and requests_per_unit")
        check_keys(rl, frozenset({"unit", "requests_per_unit", "name"}), f"{where}.rate_limit")
        unit = rl.get("unit")
        if unit not in UNITS:
            raise ConfigError(f"{where}.rate_limit.unit: must be one of {', '.join(UNITS)}, got {unit!r}")
        rpu = rl.get("requests_per_unit")
        if isinstance(rpu, bool) or not isinstance(rpu, int) or rpu < 0:
            raise ConfigError(f"{where}.rate_limit.requests_per_unit: must be an integer >= 0, got {rpu!r}")
        name = rl.get("name") or f"{key}={value or '*'}"
        limit = Limit(rpu, unit, str(name))
    children_raw = raw.get("descriptors") or []
    if not isinstance(children_raw, list):
        raise ConfigError(f"{where}.descriptors: must be a list")
    children = tuple(_node(c, f"{where}.descriptors[{i}]") for i, c in enumerate(children_raw))
    if limit is None and not children:
        raise ConfigError(f"{where}: needs a rate_limit or nested descriptors")
    return Node(key, value, limit, get_bool(raw, "shadow_mode", False, where=where), children)


def parse(raw: Any) -> RateLimitConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("ratelimit.config: must be a mapping with domain and descriptors")
    check_keys(raw, frozenset({"domain", "descriptors"}), "ratelimit.config")
    domain = raw.get("domain")
    if not isinstance(domain, str) or not domain:
        raise ConfigError("ratelimit.config.domain: is required (a non-empty string)")
    items = raw.get("descriptors")
    if not isinstance(items, list) or not items:
        raise ConfigError("ratelimit.config.descriptors: must be a non-empty list")
    return RateLimitConfig(domain, tuple(_node(n, f"ratelimit.config.descriptors[{i}]") for i, n in enumerate(items)))
