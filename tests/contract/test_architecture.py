"""The layers of the code are checked, not hoped for: the import contracts in pyproject.toml hold for
the tree, and a service importing another service's Python breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from services.runtime.config import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'gen' / 'python'}"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_code(tmp_path: Path) -> Path:
    for name in ("services", "gateway", "bench"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "gen", tmp_path / "gen", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_code_keeps_its_layers(tmp_path: Path) -> None:
    result = lint(copy_of_the_code(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_service_importing_another_service_breaks_the_contract(tmp_path: Path) -> None:
    tree = copy_of_the_code(tmp_path)
    (tree / "services" / "router" / "shortcut.py").write_text(
        '"""Reads Analytics\' settings directly: not allowed."""\n\nfrom services.analytics import config\n\n'
        "__all__ = ['config']\n",
        encoding="utf-8",
    )
    result = lint(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert "services.router.shortcut -> services.analytics.config" in result.stdout, result.stdout[-2000:]


def test_the_runtime_importing_a_service_breaks_the_contract(tmp_path: Path) -> None:
    tree = copy_of_the_code(tmp_path)
    (tree / "services" / "runtime" / "upward.py").write_text(
        '"""The runtime reaching up into a service: not allowed."""\n\nimport services.inference.engine\n',
        encoding="utf-8",
    )
    result = lint(tree)
    assert result.returncode != 0 and "services.runtime.upward -> services.inference.engine" in result.stdout
