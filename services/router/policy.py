"""Tier selection: the routing policy is data (config/routing.yaml), validated when loaded.

`Router` puts the pieces together: message analysis, complexity, intent, the caller's segment
and the policy's rules, and returns a `Decision` that says in plain words why.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.router.complexity import LEVELS, ComplexityAnalyzer
from services.router.features import Analysis, analyse
from services.router.intent import INTENTS, IntentClassifier
from services.router.linear import LinearModel
from services.router.second_opinion import GATE, MIX, SecondOpinion, describe
from services.runtime import config
from services.runtime.config import REPO_ROOT, ConfigError, check_keys
from services.runtime.errors import PermissionDenied
from services.runtime.identity import SEGMENTS

POLICY_PATH = REPO_ROOT / "config" / "routing.yaml"
# What `tiermesh train-router` writes: both models in one file (`router.models_path`).
MODELS_FORMAT = "tiermesh-router-models/1"
TIER_NAMES = {1: "fast", 2: "balanced", 3: "advanced", 4: "premium"}


@dataclass(frozen=True)
class Rule:
    name: str
    complexity: frozenset[str]
    intent: frozenset[str]
    segment: frozenset[str]
    tier: int
    reason: str

    def matches(self, complexity: str, intent: str, segment: str) -> bool:
        return complexity in self.complexity and intent in self.intent and segment in self.segment


@dataclass(frozen=True)
class Policy:
    version: str
    rules: tuple[Rule, ...]
    min_intent_confidence: float
    enterprise_as: str
    max_pinned_tier: Mapping[str, int]

    def rule_segment(self, segment: str) -> str:
        return self.enterprise_as if segment == "enterprise" else segment

    def select(self, complexity: str, intent: str, segment: str) -> Rule:
        effective = self.rule_segment(segment)
        for rule in self.rules:
            if rule.matches(complexity, intent, effective):
                return rule
        raise AssertionError(f"policy {self.version} covers every case; validated at load")


def _names(raw: Any, allowed: Sequence[str], where: str) -> frozenset[str]:
    if raw is None:
        return frozenset(allowed)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: must be a non-empty list of {', '.join(allowed)}")
    unknown = [v for v in raw if v not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown value(s) {unknown}; use {', '.join(allowed)}")
    return frozenset(raw)


def parse_policy(data: Any, source: str = "policy") -> Policy:
    """Validate a policy mapping; ConfigError names the key and what is expected."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: must be a mapping with version and rules")
    check_keys(
        data, frozenset({"version", "min_intent_confidence", "enterprise_as", "max_pinned_tier", "rules"}), source
    )
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ConfigError(f"{source}.version: is required (a non-empty string)")
    conf = data.get("min_intent_confidence", 0.4)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1:
        raise ConfigError(f"{source}.min_intent_confidence: must be a number from 0 to 1, got {conf!r}")
    enterprise_as = data.get("enterprise_as", "vip")
    if enterprise_as not in SEGMENTS:
        raise ConfigError(f"{source}.enterprise_as: must be one of {', '.join(SEGMENTS)}, got {enterprise_as!r}")
    pinned_raw = data.get("max_pinned_tier", {s: 4 for s in SEGMENTS})
    if not isinstance(pinned_raw, Mapping) or set(pinned_raw) - set(SEGMENTS):
        raise ConfigError(f"{source}.max_pinned_tier: must map {', '.join(SEGMENTS)} to a tier 1-4")
    pinned: dict[str, int] = {}
    for seg in SEGMENTS:
        value = pinned_raw.get(seg, 4)
        if isinstance(value, bool) or value not in (1, 2, 3, 4):
            raise ConfigError(f"{source}.max_pinned_tier.{seg}: must be a tier 1-4, got {value!r}")
        pinned[seg] = value
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError(f"{source}.rules: must be a non-empty list")
    rules = []
    names: set[str] = set()
    for i, raw in enumerate(raw_rules):
        where = f"{source}.rules[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: must be a mapping with name, when, tier and reason")
        check_keys(raw, frozenset({"name", "when", "tier", "reason"}), where)
        name = raw.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"{where}.name: must be a unique non-empty string, got {name!r}")
        names.add(name)
        when = raw.get("when", {})
        if not isinstance(when, Mapping):
            raise ConfigError(f"{where}.when: must be a mapping of complexity, intent and segment")
        check_keys(when, frozenset({"complexity", "intent", "segment"}), f"{where}.when")
        tier = raw.get("tier")
        if isinstance(tier, bool) or tier not in (1, 2, 3, 4):
            raise ConfigError(f"{where}.tier: must be 1, 2, 3 or 4, got {tier!r}")
        reason = raw.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{where}.reason: is required: say in plain words why this tier")
        rules.append(
            Rule(
                name=name,
                complexity=_names(when.get("complexity"), LEVELS, f"{where}.when.complexity"),
                intent=_names(when.get("intent"), INTENTS, f"{where}.when.intent"),
                segment=_names(when.get("segment"), SEGMENTS, f"{where}.when.segment"),
                tier=tier,
                reason=reason.strip(),
            )
        )
    policy = Policy(version.strip(), tuple(rules), float(conf), enterprise_as, pinned)
    segments = sorted({policy.rule_segment(s) for s in SEGMENTS})
    for cx, it, seg in itertools.product(LEVELS, INTENTS, segments):
        if not any(r.matches(cx, it, seg) for r in policy.rules):
            raise ConfigError(
                f"{source}.rules: no rule covers complexity {cx}, intent {it}, segment {seg}; add one or a catch-all"
            )
    return policy


def load_policy(path: Path = POLICY_PATH) -> Policy:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"routing policy {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"routing policy {path} is not valid YAML: {exc}") from None
    return parse_policy(data, str(path.name))


def second_opinion(node: Mapping[str, Any]) -> SecondOpinion | None:
    """`router.second_opinion` (enabled, gate, mix, threads, max_waiting): the slow path, or None when disabled."""
    where = "router.second_opinion"
    so = config.section(node, "second_opinion")
    if not config.get_bool(so, "enabled", True, where=where):
        return None
    gate = config.get_float(so, "gate", GATE, where=where, lo=0, hi=1)
    mix = config.get_float(so, "mix", MIX, where=where, lo=0, hi=1)
    threads = config.get_int(so, "threads", 1, where=where, lo=0, hi=64)
    max_waiting = config.get_int(so, "max_waiting", 8, where=where, lo=0, hi=10_000)
    try:
        return SecondOpinion.load(gate=gate, mix=mix, threads=threads, max_waiting=max_waiting)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{where}: the second opinion's model cannot be loaded ({exc}); run `make train-router`"
        ) from None


@dataclass(frozen=True)
class Decision:
    tier: int
    intent: str
    intent_confidence: float
    complexity: str
    complexity_score: float
    segment: str
    reasons: list[str] = field(default_factory=list)
    policy_version: str = ""
    rule: str = ""
    second_opinion: bool = False  # the fast path was unsure and the embedding classifier was heard

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "tier_name": TIER_NAMES[self.tier],
            "intent": self.intent,
            "intent_confidence": round(self.intent_confidence, 4),
            "complexity": self.complexity,
            "complexity_score": round(self.complexity_score, 4),
            "segment": self.segment,
            "reasons": self.reasons,
            "policy_version": self.policy_version,
            "rule": self.rule,
            "second_opinion": self.second_opinion,
        }


@dataclass(frozen=True)
class Look:
    """What the fast path read in a message: the analysis and both models' probabilities."""

    analysis: Analysis
    intent: list[float]
    complexity_features: dict[str, float]
    complexity: list[float]


class Router:
    """Decides a tier for a message; pure and in-process. The fast path takes microseconds; when
    it is unsure, a second opinion (second_opinion.py) takes milliseconds."""

    def __init__(
        self,
        policy: Policy,
        intents: IntentClassifier,
        complexity: ComplexityAnalyzer,
        second: SecondOpinion | None = None,
    ) -> None:
        self.policy = policy
        self.intents = intents
        self.complexity = complexity
        self.second = second

    @classmethod
    def load(
        cls, policy_path: Path = POLICY_PATH, models_path: Path | None = None, second: SecondOpinion | None = None
    ) -> Router:
        """The Router of this policy, with the shipped models or those of a `tiermesh
        train-router` file (`models_path`; its second opinion's heads too, when `second` is on)."""
        policy = load_policy(policy_path)
        try:
            if models_path is None:
                intents = IntentClassifier.load(policy.min_intent_confidence)
                complexity = ComplexityAnalyzer.load()
            else:
                bundle = json.loads(models_path.read_text(encoding="utf-8"))
                if not isinstance(bundle, dict) or bundle.get("format") != MODELS_FORMAT:
                    raise ValueError(f"{models_path} is not a file `tiermesh train-router` wrote")
                intents = IntentClassifier(LinearModel.from_json(bundle["intent"]), policy.min_intent_confidence)
                complexity = ComplexityAnalyzer(LinearModel.from_json(bundle["complexity"]))
                if second is not None and "second_opinion" in bundle:
                    second = second.with_heads(bundle["second_opinion"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            where = models_path or "the shipped ones: run `make train-router`"
            raise ConfigError(f"routing models cannot be loaded ({exc}); models: {where}") from None
        return cls(policy, intents, complexity, second)

    @classmethod
    def from_config(cls, tree: Mapping[str, Any]) -> Router:
        """The Router as the config says: `router.policy_path` and `router.models_path` (empty
        for the shipped models), relative paths from the repository's root, and
        `router.second_opinion`."""
        node = config.section(tree, "router")

        def path(key: str, default: str) -> Path | None:
            raw = config.get_str(node, key, default, where="router")
            if not raw:
                return None
            return Path(raw) if Path(raw).is_absolute() else config.REPO_ROOT / raw

        return cls.load(
            path("policy_path", "config/routing.yaml") or POLICY_PATH, path("models_path", ""), second_opinion(node)
        )

    def look(self, text: str) -> Look:
        """The fast path's reading of a message."""
        a = analyse(text)
        feats, cx = self.complexity.probabilities(a)
        return Look(a, self.intents.probabilities(a), feats, cx)

    def wants_second_opinion(self, look: Look) -> bool:
        return self.second is not None and self.second.needed(look.intent, look.complexity)

    def decide(self, text: str, segment: str = "standard", pinned_tier: int = 0) -> Decision:
        """A decision, asking the second opinion here when the fast path is unsure (the service
        asks it on a worker thread instead, then calls `conclude`)."""
        look = self.look(text)
        vector = self.second.embed(text) if self.second is not None and self.wants_second_opinion(look) else None
        return self.conclude(look, segment, pinned_tier, vector)

    def conclude(
        self,
        look: Look,
        segment: str = "standard",
        pinned_tier: int = 0,
        vector: Sequence[float] | None = None,
        busy: int = 0,
    ) -> Decision:
        """The decision for what the fast path read, and the second opinion's embedding if one was
        asked; `busy` says it was wanted but skipped because that many were already waiting."""
        a = look.analysis
        intent_probs, cx_probs = look.intent, look.complexity
        second_reason = ""
        skipped_reason = ""
        if busy and vector is None:
            skipped_reason = (
                f"second opinion skipped: {busy} already waiting (router.second_opinion.max_waiting); "
                "decided on the fast models alone"
            )
        if vector is not None and self.second is not None:
            opinion = self.second.opinion(vector, look.complexity_features)
            second_reason = (
                f"second opinion asked (fast path unsure: intent {describe(intent_probs, INTENTS)}, complexity "
                f"{describe(cx_probs, LEVELS)}): the multilingual embedding says intent "
                f"{describe(opinion.intent, INTENTS)}, complexity {describe(opinion.complexity, LEVELS)}; "
                f"decided on both, weighted {1 - self.second.mix:.2f}/{self.second.mix:.2f}"
            )
            intent_probs = self.second.blend(intent_probs, opinion.intent)
            cx_probs = self.second.blend(cx_probs, opinion.complexity)
        cx = self.complexity.conclude(a, look.complexity_features, cx_probs)
        it = self.intents.conclude(a, intent_probs)
        if segment not in SEGMENTS:
            segment = "standard"
        rule = self.policy.select(cx.level, it.label, segment)
        tier = rule.tier
        reasons = [f"tier {tier} ({TIER_NAMES[tier]}): {rule.reason} [rule {rule.name}]"]
        reasons.append(f"complexity {cx.level} (score {cx.score:.2f}): " + ", ".join(cx.reasons))
        if it.label == it.predicted:
            evidence = f" from {', '.join(it.evidence)}" if it.evidence else ""
            reasons.append(f"intent {it.label} (confidence {it.confidence:.2f}){evidence}")
        else:
            reasons.append(
                f"intent unclear (best guess {it.predicted} at {it.confidence:.2f}, below "
                f"{self.policy.min_intent_confidence:.2f}): treated as other"
            )
        if second_reason or skipped_reason:
            reasons.append(second_reason or skipped_reason)
        seg_reason = f"segment {segment} from the authenticated identity"
        if segment == "enterprise" and self.policy.enterprise_as != "enterprise":
            seg_reason += f" (follows the {self.policy.enterprise_as} rules)"
        reasons.append(seg_reason)
        if pinned_tier:
            limit = self.policy.max_pinned_tier[segment]
            if pinned_tier > limit:
                raise PermissionDenied(
                    f"tier: {segment} users may pin tiers 1 to {limit}, not {pinned_tier}; "
                    "leave tier unset to let the router decide"
                )
            reasons.insert(
                0, f"tier {pinned_tier} ({TIER_NAMES[pinned_tier]}) pinned by the client (policy would choose {tier})"
            )
            tier = pinned_tier
        return Decision(
            tier=tier,
            intent=it.label,
            intent_confidence=it.confidence,
            complexity=cx.level,
            complexity_score=cx.score,
            segment=segment,
            reasons=reasons,
            policy_version=self.policy.version,
            rule=rule.name,
            second_opinion=bool(second_reason),
        )
