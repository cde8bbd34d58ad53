"""Percentiles of timings, the one way the benchmarks compute them: an HDR histogram (three
significant digits, from a nanosecond to an hour)."""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram


def percentile(seconds: Iterable[float], p: float) -> float:
    """The `p`th percentile (0-100) of durations in seconds, in seconds."""
    histogram = HdrHistogram(1, 3_600_000_000_000, 3)
    for s in seconds:
        histogram.record_value(max(1, round(s * 1e9)))
    return float(histogram.get_value_at_percentile(p)) / 1e9
