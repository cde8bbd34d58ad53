"""Ranking with a passage's document beside it (services.knowledge.store.rank): an article about
the question throughout outranks a lone passage that matches as well on its own, a short article
is not held back for being short, and the score stays on the scale `min_score` is set on."""

from __future__ import annotations

import dataclasses
import random

import pytest

from services.knowledge.config import KnowledgeConfig
from services.knowledge.store import Candidate, rank, with_document_context

CFG = KnowledgeConfig(
    semantic_weight=0.8, keyword_saturation=4.0, cross_language_boost=0.04, document_weight=0.3, document_passages=2
)


def passage(doc: str, index: int, cosine: float, keyword: float = 0.0, lang: str = "en", count: int | None = 5):
    payload = {"document_id": doc, "chunk_id": f"{doc}#{index}", "chunk_index": index, "lang": lang, "text": "t"}
    if count is not None:
        payload["passages"] = count
    return Candidate(payload, cosine, keyword)


def test_an_article_about_the_question_throughout_outranks_a_lone_passage_as_close() -> None:
    found = [
        passage("returns", 0, 0.84),
        passage("returns", 1, 0.82),
        passage("returns", 2, 0.81),
        passage("blender-manual", 3, 0.845),  # its other passages were not even among the candidates
        passage("careers", 0, 0.70),
    ]
    assert rank(dataclasses.replace(CFG, document_weight=0.0), "en", found, 3)[0].document_id == "blender-manual"
    hits = rank(CFG, "en", found, 3)
    assert [h.document_id for h in hits[:2]] == ["returns", "returns"]
    assert hits[0].chunk_id == "returns#0"


def test_weight_zero_leaves_every_score_as_it_was() -> None:
    scores = [0.9, 0.5, 0.7]
    assert with_document_context(scores, ["a", "a", "b"], [3, 3, 3], 0.0, 2) == scores


def test_a_one_passage_article_is_neither_helped_nor_held_back() -> None:
    blended = with_document_context([0.8, 0.6, 0.7], ["faq", "long", "long"], [1, 9, 9], 0.3, 2)
    assert blended[0] == pytest.approx(0.8)


def test_missing_siblings_count_as_the_weakest_candidate_unless_the_article_has_none() -> None:
    # "a" has 5 passages and only one was found: its others scored no better than the weakest (0.5).
    scores, docs = [0.8, 0.5], ["a", "b"]
    found_alone = with_document_context(scores, docs, [5, 1], 0.3, 2)
    assert found_alone[0] == pytest.approx((0.8 + 0.3 * 0.5) / 1.3)
    # A count unknown (None): only the siblings found count, the passage stands in for the rest.
    assert with_document_context(scores, docs, [None, 1], 0.3, 2)[0] == pytest.approx(0.8)
    unknown = with_document_context([0.8, 0.6, 0.5], ["a", "a", "b"], [None, None, 1], 0.3, 2)
    assert unknown[0] == pytest.approx((0.8 + 0.3 * (0.6 + 0.8) / 2) / 1.3)
    # A two-passage article whose other passage was not found: one sibling at the weakest, one as itself.
    two = with_document_context(scores, docs, [2, 1], 0.3, 2)
    assert two[0] == pytest.approx((0.8 + 0.3 * (0.5 + 0.8) / 2) / 1.3)


def test_the_blend_stays_within_the_passages_own_scores() -> None:
    scores = [0.91, 0.42, 0.77, 0.66, 0.58, 0.80]
    docs = ["a", "a", "b", "b", "b", "c"]
    blended = with_document_context(scores, docs, [4, 4, 3, 3, 3, 1], 0.3, 2)
    assert all(min(scores) <= b <= max(scores) for b in blended)


def test_min_score_reads_the_blended_score_and_hits_come_best_first() -> None:
    found = [passage("a", 0, 0.90), passage("a", 1, 0.50), passage("b", 0, 0.86, count=1)]
    everything = rank(CFG, "en", found, 10)
    assert [h.score for h in everything] == sorted((h.score for h in everything), reverse=True)
    cut = (everything[0].score + everything[1].score) / 2
    kept = rank(CFG, "en", found, 10, min_score=cut)
    assert kept == everything[:1]
    # The own score a passage reports beside the blend is unchanged: its cosine and keyword score.
    assert {h.semantic_score for h in everything} == {0.90, 0.50, 0.86}


def test_a_passage_in_the_other_language_gets_the_crossing_boost() -> None:
    found = [passage("pt-article", 0, 0.80, lang="pt", count=1), passage("en-article", 0, 0.82, lang="en", count=1)]
    assert rank(CFG, "en", found, 2)[0].document_id == "pt-article"  # 0.80 + 0.04 > 0.82
    assert rank(CFG, "", found, 2)[0].document_id == "en-article"  # language unknown: no boost


def test_each_passage_is_blended_with_its_own_documents_best_others() -> None:
    """Against the definition written out the long way, on many documents and ties."""
    rng = random.Random(7)
    scores = [round(rng.uniform(0.3, 0.95), 2) for _ in range(300)]
    docs = [f"d{rng.randrange(12)}" for _ in scores]
    counts: list[int | None] = [rng.choice([None, 1, 3, 40]) for _ in scores]
    weakest = min(scores)
    for siblings in (1, 2, 3):
        got = with_document_context(scores, docs, counts, 0.3, siblings)
        for i, s in enumerate(scores):
            others = sorted((scores[j] for j in range(len(scores)) if docs[j] == docs[i] and j != i), reverse=True)
            others = others[:siblings]
            exist = len(others) if counts[i] is None else min(siblings, counts[i] - 1)
            others += [weakest] * max(0, exist - len(others))
            others += [s] * (siblings - len(others))
            assert got[i] == pytest.approx((s + 0.3 * sum(others) / siblings) / 1.3)


def test_one_article_cannot_take_every_place() -> None:
    """Passages of one article rank together: with a cap per document, the next articles (often
    the one written in the other language) fill the places the best article would have taken,
    and a passage the cap skips is never replaced by one scoring below `min_score`."""
    flat = dataclasses.replace(CFG, document_weight=0.0)
    found = [passage("frete", i, 0.9 - i * 0.01) for i in range(5)]
    found += [passage("portugal", 0, 0.80, lang="pt"), passage("prazos", 0, 0.79)]
    found += [passage("portugal", 1, 0.70, lang="pt"), passage("careers", 0, 0.2)]
    ids = lambda hits: [h.chunk_id for h in hits]  # noqa: E731
    assert ids(rank(flat, "en", found, 4)) == ["frete#0", "frete#1", "frete#2", "frete#3"]
    capped = rank(flat, "en", found, 4, per_document=2)
    assert ids(capped) == ["frete#0", "frete#1", "portugal#0", "prazos#0"]
    assert [h.score for h in capped] == sorted((h.score for h in capped), reverse=True)
    # 0 or a cap at top_k or above changes nothing; fewer passages than top_k are all kept.
    assert ids(rank(flat, "en", found, 4, per_document=4)) == ids(rank(flat, "en", found, 4))
    assert ids(rank(flat, "en", found[:3], 4, per_document=1)) == ["frete#0"]
    assert rank(flat, "en", [], 4, per_document=2) == []
    # The cap never lets in what min_score keeps out.
    assert "careers#0" not in ids(rank(flat, "en", found, 8, min_score=0.5, per_document=1))
