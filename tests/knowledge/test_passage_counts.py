"""Each stored passage carries its document's passage count, which ranking reads (a one-passage
article is neither helped nor held back by the article blend); a store written before the count
was kept gets it when Knowledge starts, without embedding anything again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from qdrant_client import models as qm

from services.knowledge import config as kconfig
from services.knowledge import keywords
from services.knowledge.server import build_store
from services.knowledge.store import DocumentIn, KnowledgeStore, rank
from services.runtime import config

PIX = DocumentIn("pix", "O Pix é confirmado na hora e tem 5% de desconto. O código vale por 30 minutos.", "Pix")
GUIDE = DocumentIn(
    "guide",
    "\n\n".join(
        f"## Step {i}\n\n" + f"Step {i} of the setup guide explains the settings page, section {i}, in detail. " * 25
        for i in range(1, 6)
    ),
    "Setup guide",
)


async def counts(store: KnowledgeStore) -> dict[str, set[int | None]]:
    assert store.client is not None
    points, _ = await store.client.scroll(
        store.cfg.qdrant_collection, limit=1000, with_payload=["document_id", "passages"]
    )
    seen: dict[str, set[int | None]] = {}
    for p in points:
        assert p.payload is not None
        seen.setdefault(str(p.payload["document_id"]), set()).add(p.payload.get("passages"))
    return seen


async def test_a_store_without_passage_counts_gets_them_at_start(tmp_path: Path) -> None:
    cfg = dataclasses.replace(kconfig.load(config.load(environ={})), qdrant_url="", qdrant_path=tmp_path)
    store = build_store(cfg)
    await store.open()
    _, written = await store.upsert("shop", [PIX, GUIDE])
    assert written > 2
    stored = await counts(store)
    assert stored["pix"] == {1} and stored["guide"] == {written - 1}
    assert store.client is not None
    await store.client.delete_payload(cfg.qdrant_collection, keys=["passages"], points=qm.Filter(must=[]))
    assert await counts(store) == {"pix": {None}, "guide": {None}}
    await store.close()

    reopened = build_store(cfg)
    await reopened.open()
    try:
        assert await counts(reopened) == stored
        # The one-passage article's score is its own: the blend neither lifts nor lowers it.
        query = "o pix tem desconto?"
        found = await reopened.candidates("shop", query)
        lang = keywords.language(query)
        blended = {h.chunk_id: h.score for h in rank(cfg, lang, found, 10)}
        alone = {h.chunk_id: h.score for h in rank(dataclasses.replace(cfg, document_weight=0.0), lang, found, 10)}
        pix = next(c for c in blended if c.startswith("pix"))
        assert blended[pix] == pytest.approx(alone[pix], abs=1e-12)
        assert any(abs(blended[c] - alone[c]) > 1e-3 for c in blended if c.startswith("guide"))
    finally:
        await reopened.close()
