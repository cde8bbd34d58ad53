"""Percentiles of timings, the one way the benchmarks compute them: an HDR histogram (three
significant digits, from a nanosecond to an hour)."""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram


class Histogram:
    """Durations in seconds, kept in nanoseconds (1 ns to 1 h, three significant digits)."""

    def __init__(self) -> None:
        self._h = HdrHistogram(1, 3_600_000_000_000, 3)

    def record(self, seconds: float) -> None:
        self._h.record_value(max(1, round(seconds * 1e9)))

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def ms(self, p: float) -> float:
        """The `p`th percentile (0-100) in milliseconds (NaN when nothing was recorded)."""
        return self._h.get_value_at_percentile(p) / 1e6 if self.count else float("nan")

    def summary(self) -> dict[str, float]:
        return {f"p{p:g}": round(self.ms(p), 3) for p in (50, 90, 99)} | {
            "max": round(self._h.get_max_value() / 1e6, 3)
        }


def percentile(seconds: Iterable[float], p: float) -> float:
    """The `p`th percentile (0-100) of durations in seconds, in seconds."""
    histogram = Histogram()
    for s in seconds:
        histogram.record(s)
    return histogram.ms(p) / 1000
