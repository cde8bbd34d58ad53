"""Spill files: what a service could not hand on before it stopped, taken back at its next start.

One record per line, appended and fsynced; `take` reads them once and renames the file to
`<name>.loaded`, so a record is queued again at most once and a copy stays on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def append(path: str, lines: Iterable[str]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def take(path: str) -> list[str]:
    """The records saved at `path` (none when there is no such file)."""
    source = Path(path)
    if not path or not source.exists():
        return []
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    source.rename(source.with_suffix(source.suffix + ".loaded"))
    return lines
