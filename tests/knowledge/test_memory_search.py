"""Embedded local mode searches its passages in memory: it ranks as Qdrant's own local query does,
and it follows every write (new, replaced and deleted documents, other tenants, a restart)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import knowledge_eval
from services.knowledge import config as kconfig
from services.knowledge import keywords
from services.knowledge.server import build_store
from services.knowledge.store import DocumentIn, KnowledgeStore, rank
from services.runtime import config

TENANT = "helpcenter-quality"  # the help centre, as test_knowledge_service ingests it (unchanged documents are kept)


async def ranked(store: KnowledgeStore, question: str, in_memory: bool) -> list[tuple[str, float]]:
    memory = store._memory
    store._memory = memory if in_memory else None
    try:
        found = await store.candidates(TENANT, question, at_least=knowledge_eval.TOP_K)
    finally:
        store._memory = memory
    return [(h.chunk_id, h.score) for h in rank(store.cfg, keywords.language(question), found, knowledge_eval.TOP_K)]


async def test_memory_search_ranks_as_qdrants_local_query(store: KnowledgeStore) -> None:
    assert store._memory is not None, "local mode searches in memory"
    await knowledge_eval.ingest_samples(store, TENANT)
    questions = knowledge_eval.load_questions(*knowledge_eval.SPLITS["test"])[::3]
    assert len(questions) >= 40
    for q in questions:
        question = str(q["question"])
        ours, qdrants = await ranked(store, question, True), await ranked(store, question, False)
        assert [c for c, _ in ours] == [c for c, _ in qdrants], question
        assert [s for _, s in ours] == pytest.approx([s for _, s in qdrants], abs=1e-6), question


async def _documents(store: KnowledgeStore, tenant: str, question: str) -> list[str]:
    return [h.document_id for h in await store.search(tenant, question, top_k=5)]


async def test_memory_search_follows_every_write_and_a_restart(tmp_path: Path) -> None:
    cfg = dataclasses.replace(kconfig.load(config.load(environ={})), qdrant_url="", qdrant_path=tmp_path)
    long_text = "\n\n".join(
        f"## Part {i}\n\n" + f"Parcel lockers in part {i} keep orders for days. " * 30 for i in range(4)
    )
    store = build_store(cfg)
    await store.open()
    try:
        assert store._memory is not None and len(store._memory) == 0
        await store.upsert("a", [DocumentIn("lockers", long_text, "Parcel lockers")])
        await store.upsert("b", [DocumentIn("lockers", "Lockers are not offered here.", "Lockers")])
        written = len(store._memory)
        assert written > 2
        assert await _documents(store, "a", "parcel lockers") == ["lockers"] * min(5, written - 1)
        # Replaced by a shorter text: its old passages are gone from searches at once.
        await store.upsert("a", [DocumentIn("lockers", "Parcel lockers hold an order for 3 days.", "Parcel lockers")])
        assert len(store._memory) == 2
        hits = await store.search("a", "parcel lockers", top_k=5)
        assert [h.text for h in hits] == ["Parcel lockers hold an order for 3 days."]
        await store.upsert("a", [DocumentIn("pix", "O Pix é confirmado na hora.", "Pix")])
        assert await store.delete("a", ["lockers"]) == 1
        assert await _documents(store, "a", "parcel lockers") == ["pix"]
        assert await _documents(store, "b", "parcel lockers") == ["lockers"]  # another tenant's, untouched
    finally:
        await store.close()
    reopened = build_store(cfg)
    await reopened.open()
    try:
        assert reopened._memory is not None and len(reopened._memory) == 2
        assert await _documents(reopened, "a", "pix na hora") == ["pix"]
        assert await _documents(reopened, "b", "lockers") == ["lockers"]
    finally:
        await reopened.close()
