"""The retrieval question sets `make bench-knowledge` reports on: each question names articles
that exist, says its language, and every split covers every article."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.knowledge_eval import ARTICLES, SPLITS, load_questions

ARTICLE_IDS = {p.name.removesuffix(".md") for p in ARTICLES.glob("*.md")}


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_each_split_asks_about_every_article_in_both_languages(split: str) -> None:
    rows = load_questions(*SPLITS[split])
    ids = Counter(r["id"] for r in rows)
    assert [i for i, n in ids.items() if n > 1] == []
    for r in rows:
        assert set(r) == {"id", "question", "lang", "expected"}, r["id"]
        assert r["lang"] in ("pt", "en") and r["question"].strip(), r["id"]
        assert 1 <= len(r["expected"]) <= 2 and set(r["expected"]) <= ARTICLE_IDS, r["id"]
    assert {e for r in rows for e in r["expected"]} == ARTICLE_IDS
    languages = Counter(r["lang"] for r in rows)
    assert min(languages["pt"], languages["en"]) >= len(rows) // 4
    assert any(all(not e.endswith(f".{r['lang']}") for e in r["expected"]) for r in rows)  # across languages
