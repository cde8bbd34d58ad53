"""Complexity analysis: named features of a message, combined by a small learned model.

The features are the ones a person would name (length, sentences and questions, sub-tasks,
technical-term density, code of each kind, analytical asks); their weights are fitted on the
labelled data by `python -m services.router.train`. The score is the expected level on a 0-1
scale (low 0, medium 0.5, high 1) and the level is the most probable one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from services.router.features import Analysis, fold
from services.router.linear import LinearModel

MODEL_PATH = Path(__file__).with_name("complexity_model.json")
LEVELS = ("low", "medium", "high")

# Asks for analysis, comparison, planning or review, in English and Portuguese (folded).
_ANALYTICAL_WORDS = frozenset(
    fold(w)
    for w in (
        "compare",
        "comparison",
        "compared",
        "tradeoff",
        "tradeoffs",
        "trade-offs",
        "analyze",
        "analyse",
        "analysis",
        "strategy",
        "architecture",
        "detailed",
        "evaluate",
        "recommend",
        "recommendation",
        "essay",
        "refactor",
        "optimize",
        "migrate",
        "migration",
        "comparar",
        "compare",
        "comparação",
        "comparativo",
        "analise",
        "análise",
        "analisar",
        "estratégia",
        "arquitetura",
        "detalhadamente",
        "avaliar",
        "avalie",
        "recomende",
        "recomendação",
        "planejamento",
        "redação",
        "revisar",
        "revise",
        "refatorar",
        "otimizar",
        "migrar",
        "migração",
    )
)
_ANALYTICAL_PHRASES = tuple(
    fold(p)
    for p in (
        "pros and cons",
        "step by step",
        "in detail",
        "design a",
        "plan for",
        "explain why",
        "review my",
        "review this",
        "prós e contras",
        "vantagens e desvantagens",
        "passo a passo",
        "em detalhes",
    )
)
_LOG200 = math.log1p(200)


def features(a: Analysis) -> dict[str, float]:
    """Named, scaled features (0 to about 1); absent ones are left out."""
    f = {
        "length": math.log1p(a.word_count) / _LOG200,
        "sentences": min(a.sentences, 12) / 12,
        "questions": min(a.questions, 6) / 6,
        "list_items": min(a.list_items, 8) / 8,
        "technical_terms": min(a.tech_density * 4, 1.0),
    }
    analytical = len(_ANALYTICAL_WORDS.intersection(a.words)) + sum(map(a.prose.__contains__, _ANALYTICAL_PHRASES))
    if analytical:
        f["analytical_asks"] = min(analytical, 3) / 3
    if a.code:
        f["code"] = 1.0
        f["code_kinds"] = min(len(a.code), 5) / 5
    if a.code_lines:
        f["code_lines"] = math.log1p(a.code_lines) / math.log1p(100)
    for kind in ("fenced", "unfenced", "stack_trace", "sql", "diff", "json_yaml", "shell"):
        if kind in a.code:
            f[kind] = 1.0
    if a.word_count > 150:
        f["very_long"] = 1.0
    return f


@dataclass(frozen=True)
class ComplexityResult:
    level: str
    score: float
    features: dict[str, float]
    reasons: tuple[str, ...]


_CODE_NAMES = {
    "fenced": "a code block",
    "unfenced": "pasted code",
    "inline": "inline code",
    "stack_trace": "a stack trace",
    "sql": "SQL",
    "shell": "shell commands",
    "json_yaml": "JSON/YAML",
    "diff": "a diff",
    "file_path": "file paths",
}


def describe(a: Analysis) -> tuple[str, ...]:
    """What was measured, in plain words."""
    parts = [f"{a.word_count} words"]
    if a.questions > 1:
        parts.append(f"{a.questions} questions")
    if a.list_items > 1:
        parts.append(f"{a.list_items} listed items")
    if a.code:
        parts.append("contains " + ", ".join(_CODE_NAMES[k] for k in a.code))
    if a.word_count and a.tech_terms:
        parts.append(f"{a.tech_terms} technical terms")
    return tuple(parts)


class ComplexityAnalyzer:
    def __init__(self, model: LinearModel) -> None:
        if tuple(model.classes) != LEVELS:
            raise ValueError(f"complexity model classes {model.classes} are not {LEVELS}")
        self.model = model

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> ComplexityAnalyzer:
        return cls(LinearModel.load(path))

    def probabilities(self, a: Analysis) -> tuple[dict[str, float], list[float]]:
        feats = features(a)
        return feats, self.model.predict(feats)[1]

    def analyse(self, a: Analysis) -> ComplexityResult:
        return self.conclude(a, *self.probabilities(a))

    def conclude(self, a: Analysis, feats: dict[str, float], probs: list[float]) -> ComplexityResult:
        """The level of these probabilities (the model's, or blended with a second opinion)."""
        k = probs.index(max(probs))
        score = probs[1] * 0.5 + probs[2]
        return ComplexityResult(LEVELS[k], round(score, 4), feats, describe(a))
