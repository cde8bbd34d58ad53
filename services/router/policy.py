"""The bootstrap routing rule: a placeholder policy until the learned router lands.

It looks at the last user message only: greetings and short questions go to the fast tier,
code goes to the advanced tier, long messages to the balanced tier, and vip/enterprise users
move one tier up. Every decision says it came from this rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tiermesh.common.v1 import common_pb2 as c

POLICY_VERSION = "bootstrap-1"
_CODE = re.compile(r"```|Traceback \(most recent call last\)|\bSELECT\b.+\bFROM\b|^\s*(def|class|import) ", re.M | re.I)


@dataclass(frozen=True)
class Decision:
    tier: int
    intent: int
    intent_confidence: float
    complexity: int
    complexity_score: float
    segment: int
    reasons: list[str] = field(default_factory=list)
    policy_version: str = POLICY_VERSION


def decide(text: str, segment: int, pinned_tier: int = 0) -> Decision:
    words = len(text.split())
    has_code = bool(_CODE.search(text))
    complexity: int
    tier: int
    if has_code:
        complexity, score, tier, why = c.COMPLEXITY_HIGH, 0.9, c.TIER_ADVANCED, "the message contains code"
    elif words > 60:
        complexity, score, tier, why = c.COMPLEXITY_MEDIUM, 0.5, c.TIER_BALANCED, f"the message is long ({words} words)"
    else:
        complexity, score, tier, why = c.COMPLEXITY_LOW, 0.1, c.TIER_FAST, f"the message is short ({words} words)"
    reasons = [f"bootstrap rule: {why}"]
    if segment in (c.SEGMENT_VIP, c.SEGMENT_ENTERPRISE) and tier < c.TIER_PREMIUM:
        tier += 1
        reasons.append(
            f"{c.Segment.Name(c.Segment.ValueType(segment)).removeprefix('SEGMENT_').lower()} users get one tier up"
        )
    if pinned_tier:
        tier = pinned_tier
        reasons.insert(0, f"tier {pinned_tier} was requested by the client")
    return Decision(
        tier=tier,
        intent=c.INTENT_UNSPECIFIED,
        intent_confidence=0.0,
        complexity=complexity,
        complexity_score=score,
        segment=segment,
        reasons=reasons,
    )
