"""`tiermesh route --eval`: accuracy and confusion matrices on a user's own labelled messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.router.evaluate import LabelError, Labelled, evaluate, read_labelled
from services.router.policy import Router

TIERMESH = str(Path(sys.executable).parent / "tiermesh")


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load()


def test_right_and_wrong_labels_count_where_they_should(router: Router) -> None:
    greeting = "oi, tudo bem?"
    assert router.decide(greeting).intent == "greeting"  # what the model says of it
    rows = [
        Labelled(greeting, "greeting", "low", lang="pt"),
        Labelled(greeting, "sales", "high", lang="pt"),  # a label the Router disagrees with
        Labelled(greeting, "greeting", "low", tier=4, lang="en"),  # a tier the user wants, not the policy's
    ]
    report = evaluate(router, rows)
    assert report.n == 3 and report.intent_hits == 2 and report.complexity_hits == 2
    assert report.tier_hits == 1
    assert report.intent_pairs[("sales", "greeting")] == 1
    assert report.tier_pairs[("3", "1")] == 1  # sales/high for a standard user is tier 3
    assert report.tier_pairs[("4", "1")] == 1
    out = report.as_dict()
    assert out["by_language"]["pt"] == {"messages": 2, "tier_accuracy": 0.5, "intent_accuracy": 0.5}
    assert out["confusion"]["intent"]["sales"]["greeting"] == 1 and out["tier_accuracy"] == round(1 / 3, 4)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "not JSON"),
        ('["a list"]', "JSON object"),
        ('{"intent": "faq", "complexity": "low"}', "'text'"),
        ('{"text": "  ", "intent": "faq", "complexity": "low"}', "'text'"),
        ('{"text": "hi", "intent": "FAQ", "complexity": "low"}', "'intent' must be one of"),
        ('{"text": "hi", "intent": "faq", "complexity": "easy"}', "'complexity' must be one of"),
        ('{"text": "hi", "intent": "faq", "complexity": "low", "segment": "gold"}', "'segment'"),
        ('{"text": "hi", "intent": "faq", "complexity": "low", "tier": 5}', "'tier'"),
        ('{"text": "hi", "intent": "faq", "complexity": "low", "tier": true}', "'tier'"),
    ],
)
def test_a_bad_line_is_named_with_what_to_fix(tmp_path: Path, line: str, says: str) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "hello", "intent": "greeting", "complexity": "low"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(LabelError) as bad:
        read_labelled(path)
    assert f"{path}:2: " in str(bad.value) and says in str(bad.value)


def test_an_empty_or_unreadable_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(LabelError, match="no labelled messages"):
        read_labelled(empty)
    with pytest.raises(LabelError, match="cannot be read"):
        read_labelled(tmp_path / "missing.jsonl")


def test_the_cli_prints_accuracy_and_matrices_or_json(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"text": "oi, tudo bem?", "intent": "greeting", "complexity": "low", "lang": "pt"},
        {"text": "My order arrived broken, I want a refund", "intent": "support", "complexity": "medium"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    text = subprocess.run([TIERMESH, "route", "--eval", str(path)], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "2 labelled messages" in text.stdout and "tier (rows: label, columns: decided)" in text.stdout
    as_json = subprocess.run(
        [TIERMESH, "route", "--eval", str(path), "--json"], capture_output=True, text=True, timeout=60
    )
    report = json.loads(as_json.stdout)
    assert report["messages"] == 2 and set(report["confusion"]) == {"tier", "intent", "complexity"}
    both = subprocess.run([TIERMESH, "route", "hi", "--eval", str(path)], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not both" in both.stderr
