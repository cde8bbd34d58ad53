"""`tiermesh train-router --data DIR`: retrains with a user's labelled messages, keeps the models
only when they are not worse than the shipped ones on the shipped test set, and the Router (here
`tiermesh route`) loads them by config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.router.train import load_rows

TIERMESH = str(Path(sys.executable).parent / "tiermesh")


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TIERMESH, *args], capture_output=True, text=True, timeout=180, env={**os.environ, **env})


def write(folder: Path, rows: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def test_models_as_good_are_written_and_used_by_config(tmp_path: Path) -> None:
    in_test = load_rows("test")[0]
    # A message of the shipped test set is left out, so these models are the shipped ones retrained
    # on the same data: exactly as good, so kept.
    data = write(
        tmp_path / "data",
        [{"text": in_test["text"], "intent": in_test["intent"], "complexity": in_test["complexity"]}],
    )
    out = tmp_path / "models.json"
    made = cli("train-router", "--data", str(data), "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert "left out 1 of your messages" in made.stdout  # the test sets stay unseen
    assert "tier accuracy" in made.stdout and out.is_file()
    bundle = json.loads(out.read_text())
    assert bundle["meta"]["yours"] == 0
    # The second opinion is retrained too, on the same rows, and travels in the same file.
    assert bundle["second_opinion"]["meta"]["trained_on"] == len(load_rows("train"))
    routed = cli("route", "--json", "oi, tudo bem?", TIERMESH_ROUTER__MODELS_PATH=str(out))
    assert routed.returncode == 0, routed.stderr
    assert json.loads(routed.stdout)["intent"] == "greeting"
    unsure = "meu pedido ta parado mas o pix foi pago na hora, tenho o comprovante. ja faz 2 dias. pedido BR-552019"
    heard = cli("route", "--json", unsure, TIERMESH_ROUTER__MODELS_PATH=str(out))
    assert heard.returncode == 0, heard.stderr
    decision = json.loads(heard.stdout)
    assert decision["second_opinion"] is True and any(r.startswith("second opinion asked") for r in decision["reasons"])


def test_models_worse_on_the_shipped_test_set_are_refused(tmp_path: Path) -> None:
    greetings = [r["text"] for r in load_rows("train") if r["intent"] == "greeting"]
    # Every greeting the project knows, labelled as hard technical work: routing would pay for it.
    poisoned = [{"text": t, "intent": "technical", "complexity": "high"} for t in greetings for _ in range(4)]
    out = tmp_path / "models.json"
    refused = cli("train-router", "--data", str(write(tmp_path / "data", poisoned)), "--out", str(out))
    assert refused.returncode == 1 and "refused" in refused.stderr
    assert not out.exists()


def test_no_data_or_bad_labels_say_what_to_fix(tmp_path: Path) -> None:
    empty = cli("train-router", "--data", str(tmp_path))
    assert empty.returncode == 2 and "no *.jsonl" in empty.stderr
    bad = write(tmp_path / "bad", [{"text": "hi", "intent": "hello", "complexity": "low"}])
    refused = cli("train-router", "--data", str(bad))
    assert refused.returncode == 2 and "mine.jsonl:1: 'intent' must be one of" in refused.stderr


def test_a_models_file_that_is_not_one_is_a_configuration_error(tmp_path: Path) -> None:
    wrong = tmp_path / "models.json"
    wrong.write_text('{"intent": {}, "complexity": {}}', encoding="utf-8")
    routed = cli("route", "hello", TIERMESH_ROUTER__MODELS_PATH=str(wrong))
    assert routed.returncode == 2 and "not a file `tiermesh train-router` wrote" in routed.stderr
