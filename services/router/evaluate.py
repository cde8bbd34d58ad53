"""How well the Router decides on labelled messages: the user's own (`tiermesh route --eval FILE`)
or the project's test split (`make bench-router`).

A labelled message is one JSON object per line:

    {"text": "...", "intent": "support", "complexity": "medium"}

with, optionally, `"segment"` (standard, vip or enterprise; default standard), `"tier"` (1-4, the
tier the user wants; default what the policy gives for the labelled intent and complexity in
that segment) and `"lang"` (any tag, for accuracy per language). Anything else on a line is
ignored. Tier, intent and complexity accuracy, per language, and the three confusion matrices
come out as text or as one JSON object.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.router.complexity import LEVELS
from services.router.intent import INTENTS
from services.router.policy import Router
from services.runtime.identity import SEGMENTS

TIERS = ("1", "2", "3", "4")
MAX_TEXT_CHARS = 32_000  # the contract's limit on a chat message


class LabelError(ValueError):
    """A line of a labelled file that cannot be evaluated; the message names the line and the fix."""


@dataclass(frozen=True)
class Labelled:
    text: str
    intent: str
    complexity: str
    segment: str = "standard"
    tier: int = 0  # 0: what the policy gives for the labels
    lang: str = ""


def _row(obj: Any, where: str) -> Labelled:
    if not isinstance(obj, dict):
        raise LabelError(f"{where}: each line must be a JSON object with text, intent and complexity")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise LabelError(f"{where}: 'text' must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise LabelError(f"{where}: 'text' has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    choices = {"intent": INTENTS, "complexity": LEVELS, "segment": SEGMENTS}
    values = {"segment": "standard"} | {k: obj[k] for k in choices if k in obj}
    for key, allowed in choices.items():
        if values.get(key) not in allowed:
            raise LabelError(f"{where}: '{key}' must be one of {', '.join(allowed)}, got {values.get(key)!r}")
    tier = obj.get("tier", 0)
    if tier != 0 and (isinstance(tier, bool) or tier not in (1, 2, 3, 4)):
        raise LabelError(f"{where}: 'tier' must be 1, 2, 3 or 4 (or left out), got {tier!r}")
    lang = obj.get("lang", "")
    return Labelled(text, values["intent"], values["complexity"], values["segment"], tier, str(lang)[:16])


def read_labelled(path: Path) -> list[Labelled]:
    """The labelled messages of a JSONL file; LabelError naming the first bad line."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot be read as UTF-8 text: {exc}") from None
    rows = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise LabelError(f"{path}:{n}: not JSON ({exc})") from None
        rows.append(_row(obj, f"{path}:{n}"))
    if not rows:
        raise LabelError(f"{path}: no labelled messages; write one JSON object per line")
    return rows


@dataclass
class Report:
    n: int = 0
    tier_hits: int = 0
    intent_hits: int = 0
    complexity_hits: int = 0
    second_opinions: int = 0  # decisions where the fast path was unsure and the slow path was heard
    by_lang: dict[str, list[int]] = field(default_factory=dict)  # lang -> [messages, tier hits, intent hits]
    tier_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    intent_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    complexity_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)

    def accuracy(self, hits: int) -> float:
        return hits / self.n if self.n else 0.0

    def as_dict(self) -> dict[str, Any]:
        def matrix(labels: Sequence[str], pairs: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
            return {gold: {pred: pairs[(gold, pred)] for pred in labels} for gold in labels}

        return {
            "messages": self.n,
            "tier_accuracy": round(self.accuracy(self.tier_hits), 4),
            "intent_accuracy": round(self.accuracy(self.intent_hits), 4),
            "complexity_accuracy": round(self.accuracy(self.complexity_hits), 4),
            "second_opinion_share": round(self.accuracy(self.second_opinions), 4),
            "by_language": {
                lang: {
                    "messages": n,
                    "tier_accuracy": round(tiers / n, 4),
                    "intent_accuracy": round(intents / n, 4),
                }
                for lang, (n, tiers, intents) in sorted(self.by_lang.items())
            },
            "confusion": {
                "tier": matrix(TIERS, self.tier_pairs),
                "intent": matrix(INTENTS, self.intent_pairs),
                "complexity": matrix(LEVELS, self.complexity_pairs),
            },
        }


def evaluate(router: Router, rows: Iterable[Labelled]) -> Report:
    report = Report()
    for row in rows:
        decision = router.decide(row.text, row.segment)
        gold_tier = row.tier or router.policy.select(row.complexity, row.intent, row.segment).tier
        tier_ok, intent_ok = decision.tier == gold_tier, decision.intent == row.intent
        report.n += 1
        report.tier_hits += tier_ok
        report.intent_hits += intent_ok
        report.complexity_hits += decision.complexity == row.complexity
        report.second_opinions += decision.second_opinion
        report.tier_pairs[(str(gold_tier), str(decision.tier))] += 1
        report.intent_pairs[(row.intent, decision.intent)] += 1
        report.complexity_pairs[(row.complexity, decision.complexity)] += 1
        if row.lang:
            counts = report.by_lang.setdefault(row.lang, [0, 0, 0])
            counts[0] += 1
            counts[1] += tier_ok
            counts[2] += intent_ok
    return report


def confusion(title: str, labels: Sequence[str], pairs: Counter[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label in labels) + 1
    lines = [f"{title} (rows: label, columns: decided)", " " * width + "".join(f"{lb[:9]:>10}" for lb in labels)]
    lines += [f"{gold:<{width}}" + "".join(f"{pairs[(gold, pred)]:>10}" for pred in labels) for gold in labels]
    return lines


def render(report: Report) -> str:
    lines = [
        f"{report.n} labelled messages",
        f"  tier accuracy        {report.accuracy(report.tier_hits):.3f}",
        f"  intent accuracy      {report.accuracy(report.intent_hits):.3f}",
        f"  complexity accuracy  {report.accuracy(report.complexity_hits):.3f}",
        f"  second opinion asked {report.accuracy(report.second_opinions):.3f} of messages",
    ]
    for lang, (n, tiers, intents) in sorted(report.by_lang.items()):
        lines.append(f"  {lang:<6} tier {tiers / n:.3f} · intent {intents / n:.3f} ({n} messages)")
    for title, labels, pairs in (
        ("tier", TIERS, report.tier_pairs),
        ("intent", INTENTS, report.intent_pairs),
        ("complexity", LEVELS, report.complexity_pairs),
    ):
        lines += ["", *confusion(title, labels, pairs)]
    return "\n".join(lines)
