"""Money as people read it. Amounts are integer micro-dollars everywhere (never a float); shown,
they are exact US dollars to the micro-dollar: `$0.000065`, `$1,234.500000`."""

from __future__ import annotations


def usd(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    dollars, rest = divmod(abs(micro), 1_000_000)
    return f"{sign}${dollars:,}.{rest:06d}"
