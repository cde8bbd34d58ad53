"""A multinomial logistic regression over named features: tiny, offline, explainable.

Weights are a JSON file written by `python -m services.router.train`; prediction is a sum of
the weights of the features present, so every decision can name the features that drove it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Features = Mapping[str, float]


@dataclass(frozen=True)
class LinearModel:
    classes: tuple[str, ...]
    weights: dict[str, tuple[float, ...]]
    bias: tuple[float, ...]
    meta: dict[str, Any]

    def scores(self, features: Features) -> list[float]:
        out = list(self.bias)
        weights = self.weights
        for name, value in features.items():
            w = weights.get(name)
            if w is not None:
                out = [o + x * value for o, x in zip(out, w, strict=True)]
        return out

    def predict(self, features: Features) -> tuple[int, list[float]]:
        """(best class index, probabilities)."""
        return softmax_argmax(self.scores(features))

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "bias": [round(b, 5) for b in self.bias],
            "weights": {f: [round(x, 5) for x in w] for f, w in sorted(self.weights.items())},
            "meta": self.meta,
        }

    @classmethod
    def load(cls, path: Path) -> LinearModel:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")), str(path))

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "model") -> LinearModel:
        classes = tuple(data["classes"])
        weights = {f: tuple(float(x) for x in w) for f, w in data["weights"].items()}
        if any(len(w) != len(classes) for w in weights.values()) or len(data["bias"]) != len(classes):
            raise ValueError(f"{where}: every weight vector must have one value per class ({len(classes)})")
        return cls(classes, weights, tuple(float(b) for b in data["bias"]), dict(data.get("meta", {})))


def softmax_argmax(scores: Sequence[float]) -> tuple[int, list[float]]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    probs = [e / total for e in exps]
    return probs.index(max(probs)), probs


def train(
    examples: Sequence[tuple[Features, int]],
    classes: Sequence[str],
    *,
    epochs: int = 40,
    l2: float = 1e-4,
    learning_rate: float = 0.5,
    seed: int = 7,
    min_count: int = 1,
    average_from: float = 1.0,
    meta: dict[str, Any] | None = None,
) -> LinearModel:
    """Fit by AdaGrad on the log loss with L2; deterministic for a given seed.

    With `average_from` < 1, the returned weights are the mean of the end-of-epoch weights from
    that fraction of the epochs on (Polyak averaging): far less sensitive to the shuffle order."""
    counts: dict[str, int] = {}
    for feats, _ in examples:
        for name in feats:
            counts[name] = counts.get(name, 0) + 1
    keep = {name for name, c in counts.items() if c >= min_count}
    n = len(classes)
    weights: dict[str, list[float]] = {name: [0.0] * n for name in keep}
    grad_sq: dict[str, list[float]] = {name: [1e-8] * n for name in keep}
    bias = [0.0] * n
    bias_sq = [1e-8] * n
    order = list(range(len(examples)))
    rng = random.Random(seed)  # noqa: S311 - reproducible shuffling, not security
    first_averaged = min(epochs - 1, int(epochs * average_from))
    sums: dict[str, list[float]] = {name: [0.0] * n for name in keep}
    bias_sum = [0.0] * n
    for epoch in range(epochs):
        rng.shuffle(order)
        for i in order:
            feats, label = examples[i]
            active = [(name, value) for name, value in feats.items() if name in keep]
            scores = list(bias)
            for name, value in active:
                w = weights[name]
                for k in range(n):
                    scores[k] += w[k] * value
            _, probs = softmax_argmax(scores)
            for k in range(n):
                g = probs[k] - (1.0 if k == label else 0.0)
                bias_sq[k] += g * g
                bias[k] -= learning_rate * g / math.sqrt(bias_sq[k])
                for name, value in active:
                    gk = g * value + l2 * weights[name][k]
                    grad_sq[name][k] += gk * gk
                    weights[name][k] -= learning_rate * gk / math.sqrt(grad_sq[name][k])
        if epoch >= first_averaged:
            for name, w in weights.items():
                acc = sums[name]
                for k in range(n):
                    acc[k] += w[k]
            for k in range(n):
                bias_sum[k] += bias[k]
    snapshots = epochs - first_averaged
    weights = {name: [x / snapshots for x in acc] for name, acc in sums.items()}
    bias = [b / snapshots for b in bias_sum]
    pruned = {name: tuple(w) for name, w in weights.items() if max(abs(x) for x in w) > 1e-3}
    return LinearModel(tuple(classes), pruned, tuple(bias), meta or {})


def accuracy(model: LinearModel, examples: Iterable[tuple[Features, int]]) -> float:
    pairs = list(examples)
    return sum(model.predict(f)[0] == y for f, y in pairs) / len(pairs) if pairs else 0.0
