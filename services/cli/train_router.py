"""`tiermesh train-router --data DIR`: retrain the Router's models on the project's data and the
user's own labelled messages, and keep the result only when it decides at least as well as the
shipped models on the shipped test set.

DIR holds `*.jsonl` files in `tiermesh route --eval`'s format (text, intent, complexity; a `tier`
or `segment` there is not used for training). Messages that are also in the shipped test set are
left out of training, so that the comparison stays fair. The new models go to one file
(`--out`, by default `<data_dir>/router-models.json`); the Router and `tiermesh route` use it
once `router.models_path` names it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from services.router import train
from services.router.complexity import ComplexityAnalyzer
from services.router.evaluate import LabelError, Labelled, evaluate, read_labelled
from services.router.intent import IntentClassifier
from services.router.policy import Router
from services.router.second_opinion import EMBEDDING_MODEL, HEAD_WORDS
from services.runtime import config

SEGMENTS_COMPARED = ("standard", "vip")


def _scores(router: Router, test: list[Labelled]) -> dict[str, float]:
    """Tier accuracy (standard and vip users together), intent and complexity accuracy."""
    reports = [evaluate(router, [Labelled(r.text, r.intent, r.complexity, s) for r in test]) for s in SEGMENTS_COMPARED]
    return {
        "tier": sum(r.accuracy(r.tier_hits) for r in reports) / len(reports),
        "intent": reports[0].accuracy(reports[0].intent_hits),
        "complexity": reports[0].accuracy(reports[0].complexity_hits),
    }


def train_router(data: str, out: str | None) -> int:
    started = time.monotonic()
    folder = Path(data)
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        print(f"tiermesh train-router: {folder} holds no *.jsonl files of labelled messages", file=sys.stderr)
        return 2
    try:
        theirs = [row for path in files for row in read_labelled(path)]
    except LabelError as exc:
        print(f"tiermesh train-router: {exc}", file=sys.stderr)
        return 2
    test = [Labelled(r["text"], r["intent"], r["complexity"]) for r in train.load_rows("test")]
    independent = train.load_rows("independent")
    held_out = {r.text.strip().casefold() for r in test} | {r["text"].strip().casefold() for r in independent}
    usable = [r for r in theirs if r.text.strip().casefold() not in held_out]
    if len(usable) < len(theirs):
        print(f"left out {len(theirs) - len(usable)} of your messages: they are in the shipped test sets")
    tree = config.load()
    shipped = Router.from_config({**tree, "router": {**config.section(tree, "router"), "models_path": ""}})
    rows = [{"text": r.text, "intent": r.intent, "complexity": r.complexity} for r in usable]
    intent_model, cx_model = train.fit(rows)
    embeddings = train.embeddings_cache(config.data_dir(tree), EMBEDDING_MODEL, HEAD_WORDS)
    second = train.fit_second_opinion(rows, embeddings) if shipped.second is not None else None
    policy = shipped.policy
    candidate = Router(
        policy,
        IntentClassifier(intent_model, policy.min_intent_confidence),
        ComplexityAnalyzer(cx_model),
        shipped.second.with_heads(second) if shipped.second is not None and second is not None else None,
    )
    before, after = _scores(shipped, test), _scores(candidate, test)
    print(f"on the shipped test set ({len(test)} messages):       shipped   retrained")
    for key in ("tier", "intent", "complexity"):
        print(f"  {key + ' accuracy':<22}                {before[key]:.3f}       {after[key]:.3f}")
    if after["tier"] < before["tier"]:
        print(
            "tiermesh train-router: refused: the retrained models choose the right tier less often than the "
            "shipped ones on the shipped test set; check your labels against data/routing/README.md",
            file=sys.stderr,
        )
        return 1
    target = Path(out) if out else config.data_dir(tree) / "router-models.json"
    meta = {"trained_on": len(train.load_rows("train")) + len(usable), "yours": len(usable), "test": after}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        json.dumps(train.bundle(intent_model, cx_model, meta, second), ensure_ascii=False, separators=(",", ":"))
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {target} in {time.monotonic() - started:.0f} s; use it with router.models_path: {target.resolve()}")
    print(f"  (or TIERMESH_ROUTER__MODELS_PATH={target.resolve()}), then restart the Router")
    return 0
