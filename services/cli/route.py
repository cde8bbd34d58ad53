"""`tiermesh route`: the route decision for a message, in-process (no mesh, no model call)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.router.policy import TIER_NAMES, Router
from services.runtime import config
from services.runtime.errors import TiermeshError


def route(message: str, segment: str, as_json: bool, tier: int = 0) -> int:
    if not message.strip():
        print("tiermesh route: the message is empty; pass the text to route", file=sys.stderr)
        return 2
    try:
        decision = Router.from_config(config.load()).decide(message, segment, tier)
    except TiermeshError as exc:
        print(f"tiermesh route: {exc.code.name}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(decision.to_json(), ensure_ascii=False))
        return 0
    print(f"\u2192 tier {decision.tier} \u00b7 {TIER_NAMES[decision.tier]}   (policy {decision.policy_version})")
    print(
        f"  intent {decision.intent} ({decision.intent_confidence:.2f}) \u00b7 complexity {decision.complexity}"
        f" ({decision.complexity_score:.2f}) \u00b7 segment {decision.segment}"
    )
    for reason in decision.reasons:
        print(f"  why: {reason}")
    return 0


def route_eval(path: str, as_json: bool) -> int:
    """`tiermesh route --eval FILE.jsonl`: how the shipped model and policy decide on the user's
    own labelled messages."""
    from services.router.evaluate import LabelError, evaluate, read_labelled, render

    try:
        rows = read_labelled(Path(path))
    except LabelError as exc:
        print(f"tiermesh route --eval: {exc}", file=sys.stderr)
        return 2
    report = evaluate(Router.from_config(config.load()), rows)
    print(json.dumps(report.as_dict()) if as_json else render(report))
    return 0
