"""The keyword side of search: BM25 term weights as Qdrant sparse vectors, with cross-language synonyms.

Customers ask in one language about articles written in the other, and words the embedding
model barely knows (place names, product and plan names) decide many questions. Query words are
expanded with their synonym group (`config/synonyms.yaml`: `senha` also finds `password`), and Qdrant weighs
each term by its inverse document frequency (the collection's sparse vector has the IDF modifier).

Term ids are the first 4 bytes of the term's BLAKE2b digest: stable across processes and
versions, so a stored collection stays searchable after a restart.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_TERM = re.compile(r"[a-z0-9]+")

STOPWORDS = frozenset(
    """
    a o os as um uma uns umas de da do das dos em no na nos nas para pra pro pras pros por pelo pela com sem
    que e ou mas se eu me meu minha meus minhas voce voces vc vcs ele ela eles elas isso isto esse essa este
    esta aqui ai la como qual quais quando onde quem ja tem ter tenho sou ser estou esta foi vai vou ao aos
    mais muito ate sobre so nao sim tambem tb num numa seu sua seus suas lhe
    the a an of to in on at for with without and or but if is are was were be been it its this that these
    those i me my we our you your he she they them their there here as by from so do does did can could
    how what when where which who why will would should am have has had not no yes any some about into
    """.split()
)

# Words only one of the two languages uses, folded (words both use, like `a`, `e`, `no`, `do`,
# `as`, `me`, are left out): enough to tell a shopper's sentence, or a passage, apart.
_PORTUGUESE = frozenset(
    """
    o os um uma uns umas da das dos em na nos nas para pra pro por pelo pela com sem que ou mas eu meu minha
    voce voces vc vcs ele ela isso esse essa este esta aqui como qual quando onde quem ja tem tenho sou estou
    foi vai vou ao aos mais muito ate sobre nao sim tambem tb seu sua seus suas pedido compra quero posso
    """.split()
)
_ENGLISH = frozenset(
    """
    the an of to in on at for with without and or but if is are was were be been it its this that these those
    my we our you your he she they them their there here by from does did can could how what when where which
    who why will would should am have has had not yes any some about into order buy want
    """.split()
)


def language(text: str) -> str:
    """`pt`, `en`, or `` when the text does not say (too short, code, another language)."""
    words = _TERM.findall(fold(text))
    pt = sum(w in _PORTUGUESE for w in words)
    en = sum(w in _ENGLISH for w in words)
    if pt > en:
        return "pt"
    if en > pt:
        return "en"
    return ""


# BM25 term-frequency saturation and length normalisation (Robertson's usual k1 and b); the
# average passage length is fixed rather than measured so stored weights never need rewriting.
K1, B, AVERAGE_TERMS = 1.2, 0.75, 60.0


def fold(text: str) -> str:
    """Lower case without accents: `Devolução` -> `devolucao`. Digits stay (prices, days, CEPs)."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def terms(text: str) -> list[str]:
    """Folded words of 2+ characters that are not function words."""
    return [t for t in _TERM.findall(fold(text)) if len(t) > 1 and t not in STOPWORDS]


def term_id(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "big")


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass
class Synonyms:
    """Groups of words that mean the same thing; a query word is expanded to its group."""

    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    expansion_weight: float = 0.7

    @classmethod
    def load(cls, path: Path, expansion_weight: float = 0.7) -> Synonyms:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        raw = data.get("groups") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise ValueError(f"{path}: expected a `groups:` list of word lists")
        groups: dict[str, tuple[str, ...]] = {}
        for n, group in enumerate(raw):
            if not isinstance(group, list) or not all(isinstance(w, str) and w.strip() for w in group):
                raise ValueError(f"{path}: groups[{n}] must be a list of words")
            folded = tuple(
                dict.fromkeys(t for w in group for t in _TERM.findall(fold(w)) if len(t) > 1 and t not in STOPWORDS)
            )
            for word in folded:
                groups[word] = folded
        return cls(groups, expansion_weight)

    def expand(self, words: Iterable[str]) -> dict[str, float]:
        """Query terms with weight 1, their synonyms with `expansion_weight` (never lowering a term)."""
        weights: dict[str, float] = {}
        for word in words:
            weights[word] = 1.0
        for word in list(weights):
            for other in self.groups.get(word, ()):
                weights[other] = max(weights.get(other, 0.0), self.expansion_weight)
        return weights


def document_vector(text: str) -> SparseVector:
    """BM25 term-frequency weights of a passage (IDF is applied by Qdrant at query time)."""
    counts = Counter(terms(text))
    length = sum(counts.values())
    norm = K1 * (1 - B + B * length / AVERAGE_TERMS)
    weights: dict[int, float] = {}
    for term, tf in counts.items():
        tid = term_id(term)
        weights[tid] = weights.get(tid, 0.0) + tf * (K1 + 1) / (tf + norm)
    return SparseVector(list(weights), list(weights.values()))


def query_vector(text: str, synonyms: Synonyms) -> SparseVector:
    weights: dict[int, float] = {}
    for term, weight in synonyms.expand(terms(text)).items():
        tid = term_id(term)
        weights[tid] = max(weights.get(tid, 0.0), weight)
    return SparseVector(list(weights), list(weights.values()))
