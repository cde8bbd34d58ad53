"""The in-memory search of the embedded store: each tenant sees only its passages, the nearest by
meaning and the best by keywords are both found, and keyword scores carry Qdrant's IDF."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.knowledge.memory_index import MemoryIndex, Passage

DIM = 4


def passage(tenant: str, doc: str, dense: list[float], terms: dict[int, float], **extra: object) -> Passage:
    payload = {"collection": tenant, "document_id": doc, "chunk_id": f"{doc}#0", "model": "m", **extra}
    return Passage.of(payload, dense, list(terms), list(terms.values()))


def index_of(**points: Passage) -> MemoryIndex:
    index = MemoryIndex(DIM)
    index.replace(points.items())
    return index


def found(index: MemoryIndex, dense: list[float], terms: dict[int, float], tenant: str = "shop", **kw: object):
    hits = index.search(np.array(dense, dtype=np.float32), (list(terms), list(terms.values())), tenant, **kw)
    return {str(h.payload["document_id"]): h for h in hits}


def test_keyword_scores_carry_qdrants_idf_over_every_stored_passage() -> None:
    index = index_of(
        a=passage("shop", "a", [1, 0, 0, 0], {7: 0.5, 8: 1.0}),
        b=passage("shop", "b", [0, 1, 0, 0], {7: 2.0}),
        c=passage("shop", "c", [0, 0, 1, 0], {9: 1.0}),
        other=passage("rival", "x", [0, 0, 0, 1], {8: 1.0}),  # counts in the IDF, never in the results
    )
    hits = found(index, [0, 0, 0, 1], {7: 1.0, 8: 0.5}, limit=10)
    idf = lambda df: math.log((4 - df + 0.5) / (df + 0.5) + 1)  # noqa: E731 - Qdrant's formula, n = 4
    assert hits["a"].keyword == pytest.approx(0.5 * idf(2) + 1.0 * 0.5 * idf(2), rel=1e-6)
    assert hits["b"].keyword == pytest.approx(2.0 * idf(2), rel=1e-6)
    assert hits["c"].keyword == 0.0 and "x" not in hits
    assert hits["a"].cosine == pytest.approx(0.0, abs=1e-7)


def test_a_tenant_sees_only_its_own_passages_and_filters_narrow_them() -> None:
    index = index_of(
        mine=passage("shop", "mine", [1, 0, 0, 0], {1: 1.0}, meta={"locale": "pt"}),
        theirs=passage("rival", "theirs", [1, 0, 0, 0], {1: 1.0}, meta={"locale": "pt"}),
        old=passage("shop", "old", [1, 0, 0, 0], {1: 1.0}, model="older", meta={"locale": "en"}),
    )
    assert set(found(index, [1, 0, 0, 0], {1: 1.0}, limit=5)) == {"mine", "old"}
    assert set(found(index, [1, 0, 0, 0], {1: 1.0}, limit=5, model="m")) == {"mine"}
    assert set(found(index, [1, 0, 0, 0], {1: 1.0}, limit=5, meta={"locale": "en"})) == {"old"}
    assert found(index, [1, 0, 0, 0], {1: 1.0}, tenant="nobody", limit=5) == {}


def test_the_nearest_by_meaning_and_the_best_by_words_are_both_candidates() -> None:
    index = index_of(
        near=passage("shop", "near", [1, 0, 0, 0], {}),
        close=passage("shop", "close", [0.9, 0.1, 0, 0], {}),
        worded=passage("shop", "worded", [0, 0, 0, 1], {5: 1.0}),
        far=passage("shop", "far", [0, 0, 1, 0], {}),
    )
    hits = found(index, [1, 0, 0, 0], {5: 1.0}, limit=1)
    assert set(hits) == {"near", "worded"}  # one by meaning, one by words
    assert hits["near"].cosine == pytest.approx(1.0) and hits["worded"].keyword > 0


def test_replacing_a_document_drops_its_old_passages_and_vectors_are_kept_unit_length() -> None:
    index = index_of(a0=passage("shop", "a", [3, 0, 0, 0], {1: 1.0}), a1=passage("shop", "a", [0, 3, 0, 0], {2: 1.0}))
    assert sorted(index.ids_where("shop", ["a"])) == ["a0", "a1"]
    hits = index.search(np.array([1, 0, 0, 0], dtype=np.float32), ([], []), "shop", limit=5)
    assert sorted(round(h.cosine, 6) for h in hits) == [0.0, 1.0]
    index.replace([("a0", passage("shop", "a", [0, 0, 1, 0], {3: 1.0}))], drop=index.ids_where("shop", ["a"]))
    assert len(index) == 1
    assert found(index, [0, 1, 0, 0], {2: 1.0}, limit=5)["a"].keyword == 0.0
    index.replace([], drop=["a0"])
    assert found(index, [0, 0, 1, 0], {3: 1.0}, limit=5) == {}


def test_bad_vectors_are_refused() -> None:
    index = index_of(kept=passage("shop", "kept", [1, 0, 0, 0], {}))
    with pytest.raises(ValueError, match="4-wide"):
        index.replace([("ok", passage("shop", "a", [1, 0, 0, 0], {})), ("p", passage("shop", "a", [1, 0, 0], {}))])
    assert len(index) == 1 and set(found(index, [1, 0, 0, 0], {}, limit=5)) == {"kept"}  # nothing half-done
    with pytest.raises(ValueError, match="one value per index"):
        Passage.of({}, [1, 0, 0, 0], [1, 2], [1.0])
