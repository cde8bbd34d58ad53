"""Contract enums by their lower-case names (`vip` <-> SEGMENT_VIP), as config, metadata and SQL use them."""

from __future__ import annotations

from typing import Any


def value_of(enum: Any, prefix: str, name: str) -> int:
    """`value_of(Segment, "SEGMENT_", "vip")` -> SEGMENT_VIP; empty or unknown names -> 0 (unspecified)."""
    if not name:
        return 0
    try:
        return int(enum.Value(prefix + name.strip().upper()))
    except ValueError:
        return 0


def name_of(enum: Any, prefix: str, value: int) -> str:
    """`name_of(Segment, "SEGMENT_", SEGMENT_VIP)` -> "vip"; 0 (unspecified) -> ""."""
    if not value:
        return ""
    name: str = enum.Name(value)
    return name.removeprefix(prefix).lower()
