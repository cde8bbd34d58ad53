"""The provider embedding path (LiteLLM over real HTTP) against the simulator's embeddings API.

The simulator's vectors are hashed bags of words, not meaning: these tests check the wire path
(LiteLLM's call, decoding, normalisation, the dimension check, Qdrant with another dimension),
not retrieval quality, which the local model's tests cover.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.knowledge import config as kconfig
from services.knowledge.embedder import LiteLLMEmbedder
from services.knowledge.keywords import Synonyms
from services.knowledge.store import DocumentIn, KnowledgeStore
from services.runtime import config
from services.runtime.errors import Unavailable
from tests.integration.mesh import Mesh, start_mesh


@pytest.fixture(scope="module")
async def simulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    m = await start_mesh(tmp_path_factory.mktemp("sim-embed"), ["simulator"])
    yield m
    await m.sup.stop()


def provider_store(mesh: Mesh, path: Path, dimension: int, monkeypatch: pytest.MonkeyPatch) -> KnowledgeStore:
    monkeypatch.setenv("SIM_EMBED_KEY", "simulator")
    cfg = dataclasses.replace(
        kconfig.load(config.load(environ={})),
        qdrant_url="",
        qdrant_path=path,
        qdrant_collection=f"provider_{dimension}",
        embedding_provider="litellm",
    )
    embedder = LiteLLMEmbedder("openai/sim-embed", dimension, "SIM_EMBED_KEY", mesh.sim_url + "/v1")
    return KnowledgeStore(cfg, embedder, Synonyms())


async def test_provider_embeddings_round_trip(simulator: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = provider_store(simulator, tmp_path, 64, monkeypatch)
    await store.open()
    try:
        stored, chunks = await store.upsert(
            "tenant",
            [
                DocumentIn("a", "# Alpha\n\nalpha bravo charlie delta", "Alpha"),
                DocumentIn("b", "# Echo\n\necho foxtrot golf hotel", "Echo"),
            ],
        )
        assert (stored, chunks) == (2, 2)
        hits = await store.search("tenant", "foxtrot golf hotel echo", top_k=2)
        assert hits[0].document_id == "b" and hits[0].semantic_score > hits[1].semantic_score
        assert abs(hits[0].semantic_score) <= 1.0001
    finally:
        await store.close()


async def test_a_provider_dimension_other_than_configured_is_an_error(
    simulator: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = provider_store(simulator, tmp_path, 32, monkeypatch)  # the simulator answers with 64
    await store.open()
    try:
        with pytest.raises(Unavailable, match="64 dimensions, configured 32"):
            await store.upsert("tenant", [DocumentIn("a", "some text")])
    finally:
        await store.close()
