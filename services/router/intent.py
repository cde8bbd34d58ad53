"""Intent detection: a linear model over word and character n-grams, trained on labelled data.

Words are folded (lower case, no accents), so `não`, `nao` and `NÃO` are one feature; character
4-grams inside words carry typos and informal spellings (`obg`, `vcs`, `precisaria`) to the
words they resemble. Below `min_confidence` the label falls back to `other`, the safe choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from services.router.features import FUNCTION_WORDS, PROSE_SAMPLE, Analysis
from services.router.linear import LinearModel, softmax_argmax

MODEL_PATH = Path(__file__).with_name("intent_model.json")
INTENTS = ("greeting", "faq", "support", "sales", "technical", "other")
MAX_WORDS = 40  # what someone wants is said early; long messages add code flags, not words


def _pieces(word: str) -> list[str]:
    """The distinct 4-letter pieces of a word, with `<` and `>` marking its ends."""
    if len(word) <= 3 or word[0] == "_":
        return []
    padded = "<" + word + ">"
    return list(dict.fromkeys(padded[i : i + 4] for i in range(len(padded) - 3)))


# Slices of a padded word's 4-letter pieces, made once: `_piece_set` cuts a word with C calls only.
# Words come from the prose sample, so none is longer than it.
_PIECE_SLICES = tuple(slice(i, i + 4) for i in range(PROSE_SAMPLE))


def _piece_set(word: str) -> set[str]:
    """`_pieces(word)` as a set (scoring sums them, so order does not matter): twice as fast,
    which is most of what a word the Router has not met yet costs."""
    if len(word) <= 3 or word[0] == "_":
        return set()
    padded = "<" + word + ">"
    return set(map(padded.__getitem__, _PIECE_SLICES[: len(padded) - 3]))


def features(a: Analysis) -> dict[str, float]:
    """The message's features (for training; `IntentClassifier.scores` computes the same sum
    faster). Each distinct word counts once, with its 4-letter pieces (a piece shared by two
    different words counts twice); each distinct word pair once; then the flags."""
    words = a.words[:MAX_WORDS]
    feats: dict[str, float] = {}
    for w in dict.fromkeys(words):
        feats["w:" + w] = 1.0
        for piece in _pieces(w):
            feats["c:" + piece] = feats.get("c:" + piece, 0.0) + 1.0
    for p, w in zip(("<s>", *words), words, strict=False):
        feats["b:" + p + " " + w] = 1.0
    for flag in _flags(a, words):
        feats[flag] = 1.0
    return feats


def _flags(a: Analysis, words: tuple[str, ...]) -> list[str]:
    flags = ["k:lang_" + a.language]
    if not words:
        flags.append("k:no_words")
    elif len(words) <= 3:
        flags.append("k:short")
    flags += ["k:code_" + kind for kind in a.code]
    if a.questions:
        flags.append("k:question")
    if a.emoji:
        flags.append("k:emoji")
    return flags


@dataclass(frozen=True)
class IntentResult:
    label: str
    confidence: float
    predicted: str  # the model's label before the low-confidence fallback
    evidence: tuple[str, ...]  # the features that pushed the label most


Vector = tuple[float, ...]
WORD_CACHE_SIZE = 50_000  # words whose summed weights are kept; Zipf makes most lookups hits


K = TypeVar("K")
_UNEXPLAINING = FUNCTION_WORDS | {"<s>"}


Evidence = tuple[float, str, str]  # (margin, feature, what a reader is shown), so ties sort by feature


def _evidence(table: dict[K, Vector], feature: Callable[[K], str]) -> list[dict[K, Evidence]]:
    """For each class, the features that favour it over the mean of the others (margin > 0 only),
    with their margin, name and readable form, computed once so an explanation is a lookup."""
    n = len(INTENTS)
    out: list[dict[K, Evidence]] = [{} for _ in range(n)]
    for key, v in table.items():
        total = sum(v)
        name = feature(key)
        for k in range(n):
            margin = v[k] - (total - v[k]) / (n - 1)
            if margin > 0:
                out[k][key] = (margin, name, _readable(name))
    return out


class IntentClassifier:
    """Scores a message with the trained model.

    The model file names features with a kind prefix (`w:` word, `b:` word pair, `c:` letter
    piece, `k:` flag); here they are split into one table per kind keyed by the bare text, so
    scoring a message looks words up without building a prefixed string for each. It gives
    exactly the scores of `LinearModel.scores(features(a))` (tested)."""

    def __init__(self, model: LinearModel, min_confidence: float) -> None:
        if tuple(model.classes) != INTENTS:
            raise ValueError(f"intent model classes {model.classes} are not {INTENTS}")
        self.model = model
        self.min_confidence = min_confidence
        self._words: dict[str, Vector] = {}
        self._pairs: dict[tuple[str, str], Vector] = {}
        self._pieces: dict[str, Vector] = {}
        self._flags: dict[str, Vector] = {}
        for name, w in model.weights.items():
            kind, _, text = name.partition(":")
            if kind == "w":
                self._words[text] = w
            elif kind == "b":
                prev, _, word = text.partition(" ")
                self._pairs[(prev, word)] = w
            elif kind == "c":
                self._pieces[text] = w
            else:
                self._flags[name] = w
        self._zero: Vector = (0.0,) * len(INTENTS)
        self._word_cache: dict[str, Vector] = {}
        # How much each word and word pair favours each class over the others, kept per class and
        # only where positive, so the evidence for a class is a lookup. Function words ("de",
        # "the") count in the score but explain nothing to a reader: they are left out here.
        self._word_evidence = _evidence(
            {w: v for w, v in self._words.items() if w not in FUNCTION_WORDS}, lambda w: "w:" + w
        )
        self._pair_evidence = _evidence(
            {pair: v for pair, v in self._pairs.items() if not set(pair) <= _UNEXPLAINING},
            lambda pair: "b:" + pair[0] + " " + pair[1],
        )

    @classmethod
    def load(cls, min_confidence: float, path: Path = MODEL_PATH) -> IntentClassifier:
        return cls(LinearModel.load(path), min_confidence)

    def _word_vector(self, word: str) -> Vector | None:
        """The summed weights of a word and its letter pieces, memoized (bounded)."""
        vec = self._word_cache.get(word)
        if vec is None:
            known = [*filter(None, map(self._pieces.get, _piece_set(word)))]
            whole = self._words.get(word)
            if whole is not None:
                known.append(whole)
            vec = tuple(map(sum, zip(*known, strict=True))) if known else self._zero
            if len(self._word_cache) < WORD_CACHE_SIZE:
                self._word_cache[word] = vec
        return vec if vec is not self._zero else None

    def scores(self, a: Analysis) -> list[float]:
        words = a.words[:MAX_WORDS]
        known = [
            *filter(None, map(self._word_vector, set(words))),
            *filter(None, map(self._pairs.get, set(zip(("<s>", *words), words, strict=False)))),
            *filter(None, map(self._flags.get, _flags(a, words))),
        ]
        bias = self.model.bias
        if not known:
            return list(bias)
        return [b + s for b, s in zip(bias, map(sum, zip(*known, strict=True)), strict=True)]

    def probabilities(self, a: Analysis) -> list[float]:
        return softmax_argmax(self.scores(a))[1]

    def classify(self, a: Analysis, explain: bool = True) -> IntentResult:
        return self.conclude(a, self.probabilities(a), explain)

    def conclude(self, a: Analysis, probs: list[float], explain: bool = True) -> IntentResult:
        """The label of these probabilities (the model's, or blended with a second opinion), and its evidence."""
        k = probs.index(max(probs))
        predicted = INTENTS[k]
        confidence = probs[k]
        label = predicted if confidence >= self.min_confidence else "other"
        evidence: tuple[str, ...] = ()
        if explain:
            words = a.words[:MAX_WORDS]
            word_ev, pair_ev = self._word_evidence[k], self._pair_evidence[k]
            # Set intersections: the lookups run in C, whatever the message's length.
            scored = [word_ev[w] for w in word_ev.keys() & set(words)]
            scored += [pair_ev[pair] for pair in pair_ev.keys() & set(zip(("<s>", *words), words, strict=False))]
            scored.sort(reverse=True)  # a few dozen at most: one sort is cheaper than a heap
            evidence = tuple(dict.fromkeys(readable for _, _, readable in scored[:5]))[:3]
        return IntentResult(label, confidence, predicted, evidence)


_PLACEHOLDERS = {"_code_": "a code block", "_url_": "a link"}


def _readable(feature: str) -> str:
    """A word (`w:`) or word-pair (`b:`) feature as a reader would quote it."""
    kind, _, value = feature.partition(":")
    if value in _PLACEHOLDERS:
        return _PLACEHOLDERS[value]
    if kind == "w" and set(value) <= {"0"}:
        return "a number"
    return "“" + value.removeprefix("<s> ") + "”"
