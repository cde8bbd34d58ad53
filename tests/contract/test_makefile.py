"""`make help` lists every target with what it does, and `make unit` plus `make integration` run
every test directory there is."""

from __future__ import annotations

import re
import subprocess

from services.runtime.config import REPO_ROOT


def _make(*args: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True
    ).stdout


def test_make_help_describes_every_target() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY: (.+)$", makefile, re.M).group(1).split())  # type: ignore[union-attr]
    listed = dict(re.findall(r"^  make (\S+)\s+(.+)$", _make("help"), re.M))
    assert set(listed) == phony
    assert all(len(text) > 10 for text in listed.values())


def test_unit_and_integration_together_run_every_test_directory() -> None:
    dry = _make("-n", "unit", "integration")
    run = {path for line in dry.splitlines() if "-m pytest" in line for path in line.split("-m pytest", 1)[1].split()}
    dirs = {f"tests/{p.name}" for p in (REPO_ROOT / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert dirs <= run, f"not run by `make unit` or `make integration`: {sorted(dirs - run)}"
