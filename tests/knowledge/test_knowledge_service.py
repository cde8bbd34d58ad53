"""KnowledgeService against the real embedding model and real Qdrant (embedded local mode), over gRPC."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from tiermesh.knowledge.v1 import knowledge_service_pb2 as pb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as pb_grpc

from bench import knowledge_eval
from services.knowledge.store import KnowledgeStore

Stub = pb_grpc.KnowledgeServiceStub

PIX = pb.Document(
    id="pix",
    title="Paying with Pix",
    text="# Paying with Pix\n\nPix payments are confirmed within seconds. Scan the QR code in your bank app.",
    metadata={"lang": "en", "topic": "payment"},
)
RETURNS = pb.Document(
    id="returns",
    title="Returns",
    text="# Returns\n\nYou can return any item within 30 days. Pickup of the parcel is free of charge.",
    metadata={"lang": "en", "topic": "returns"},
)
BOLETO = pb.Document(
    id="boleto",
    title="Boleto bancário",
    text="# Boleto bancário\n\nO boleto vence em 3 dias úteis e a compensação leva até 2 dias úteis.",
    metadata={"lang": "pt", "topic": "payment"},
)


def fresh() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def upsert(stub: Stub, collection: str, *docs: pb.Document) -> pb.UpsertDocumentsResponse:
    return await stub.UpsertDocuments(pb.UpsertDocumentsRequest(collection=collection, documents=docs), timeout=120)


async def search(stub: Stub, collection: str, query: str, top_k: int = 5, **kw: object) -> list[pb.Chunk]:
    reply = await stub.Search(pb.SearchRequest(collection=collection, query=query, top_k=top_k, **kw), timeout=30)  # type: ignore[arg-type]
    return list(reply.chunks)


async def test_upsert_search_delete_round_trip(knowledge: Stub) -> None:
    col = fresh()
    reply = await upsert(knowledge, col, PIX, RETURNS, BOLETO)
    assert reply.documents_upserted == 3 and reply.chunks_written >= 3

    hits = await search(knowledge, col, "how long until my pix payment is confirmed?")
    assert hits[0].document_id == "pix"
    top = hits[0]
    assert top.title == "Paying with Pix" and "QR code" in top.text
    assert PIX.text[top.start : top.end] == top.text
    assert 0 < top.score <= 1 and -1 <= top.semantic_score <= 1 and 0 <= top.keyword_score <= 1
    assert dict(top.metadata) == {"lang": "en", "topic": "payment"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert (await search(knowledge, col, "can I send the item back?"))[0].document_id == "returns"

    deleted = await knowledge.DeleteDocuments(pb.DeleteDocumentsRequest(collection=col, document_ids=["pix", "nope"]))
    assert deleted.documents_deleted == 1
    assert "pix" not in {h.document_id for h in await search(knowledge, col, "pix payment QR code", top_k=20)}
    again = await knowledge.DeleteDocuments(pb.DeleteDocumentsRequest(collection=col, document_ids=["pix"]))
    assert again.documents_deleted == 0


async def test_same_id_replaces_the_whole_document(knowledge: Stub) -> None:
    col = fresh()
    long_text = "# Delivery\n\n" + "\n\n".join(
        f"Region {i}: parcels to zone {i} arrive in {i + 2} business days by courier." for i in range(80)
    )
    first = await upsert(knowledge, col, pb.Document(id="ship", title="Delivery", text=long_text))
    assert first.chunks_written > 3
    unchanged = await upsert(knowledge, col, pb.Document(id="ship", title="Delivery", text=long_text))
    assert unchanged.documents_upserted == 1 and unchanged.chunks_written == 0  # not embedded again

    short = "# Delivery\n\nWe now deliver everywhere in exactly one day with drones."
    replaced = await upsert(knowledge, col, pb.Document(id="ship", title="Delivery v2", text=short))
    assert replaced.chunks_written == 1
    hits = await search(knowledge, col, "parcels to zone 40 arrive in business days by courier", top_k=50)
    assert [(h.document_id, h.title, h.text) for h in hits] == [("ship", "Delivery v2", short)]


async def test_no_result_crosses_tenants(knowledge: Stub) -> None:
    a, b = fresh(), fresh()
    await upsert(knowledge, a, PIX)
    await upsert(knowledge, b, pb.Document(id="pix", title="Other tenant's Pix", text="Tenant B's own Pix page."))
    for query in ("pix", "Paying with Pix QR code", "Tenant B's own Pix page."):
        assert {h.title for h in await search(knowledge, a, query, top_k=50)} == {"Paying with Pix"}
        assert {h.title for h in await search(knowledge, b, query, top_k=50)} == {"Other tenant's Pix"}
    assert await search(knowledge, fresh(), "pix") == []
    # Deleting in one tenant leaves the same id of another tenant alone.
    await knowledge.DeleteDocuments(pb.DeleteDocumentsRequest(collection=a, document_ids=["pix"]))
    assert [h.title for h in await search(knowledge, b, "pix")] == ["Other tenant's Pix"]


async def test_metadata_filters_and_min_score(knowledge: Stub) -> None:
    col = fresh()
    await upsert(knowledge, col, PIX, RETURNS, BOLETO)
    payment = await search(knowledge, col, "how do I pay?", top_k=10, filters={"topic": "payment"})
    assert {h.document_id for h in payment} == {"pix", "boleto"}
    pt = await search(knowledge, col, "how do I pay?", top_k=10, filters={"topic": "payment", "lang": "pt"})
    assert {h.document_id for h in pt} == {"boleto"}
    assert await search(knowledge, col, "how do I pay?", filters={"topic": "shoes"}) == []
    everything = await search(knowledge, col, "pix QR code", top_k=10)
    cut = (everything[0].score + everything[-1].score) / 2
    strict = await search(knowledge, col, "pix QR code", top_k=10, min_score=cut)
    assert strict and all(h.score >= cut for h in strict) and len(strict) < len(everything)


async def test_unicode_ids_titles_text_and_queries(knowledge: Stub) -> None:
    col = "tenant-ção-😀"
    doc = pb.Document(
        id="guia/ação-🚚",
        title="Guia de devolução 📦",
        text="# Devolução 📦\n\nA devolução é gratuita: leve o pacote aos Correios. 日本語の説明も あります。",
        metadata={"regiao": "sudeste-ção"},
    )
    await upsert(knowledge, col, doc)
    hits = await search(knowledge, col, "devolução gratuita nos Correios 📦", filters={"regiao": "sudeste-ção"})
    assert hits[0].document_id == "guia/ação-🚚" and hits[0].title == "Guia de devolução 📦"
    assert doc.text[hits[0].start : hits[0].end] == hits[0].text
    assert (await search(knowledge, col, "日本語"))[0].document_id == "guia/ação-🚚"


async def test_concurrent_upserts(knowledge: Stub) -> None:
    col = fresh()
    docs = [
        pb.Document(id=f"doc-{i}", title=f"Doc {i}", text=f"# Doc {i}\n\nThe secret code of document {i} is K{i:04d}X.")
        for i in range(40)
    ]
    replies = await asyncio.gather(*(upsert(knowledge, col, d) for d in docs))
    assert sum(r.documents_upserted for r in replies) == 40
    # The same document written concurrently with different texts ends as exactly one of them, whole.
    versions = [
        pb.Document(id="race", title=f"v{i}", text=f"# Race\n\nVersion {i} of the race document.") for i in range(8)
    ]
    await asyncio.gather(*(upsert(knowledge, col, v) for v in versions))
    race = [h for h in await search(knowledge, col, "race document version", top_k=50) if h.document_id == "race"]
    assert len(race) == 1 and race[0].text.endswith(f"Version {race[0].title[1:]} of the race document.")
    for i in (0, 17, 39):
        assert (await search(knowledge, col, f"secret code of document {i} K{i:04d}X"))[0].document_id == f"doc-{i}"


async def test_a_large_document_is_chunked_and_every_chunk_is_retrievable(knowledge: Stub) -> None:
    col = fresh()
    sections = []
    for i in range(40):
        sections.append(
            f"## Warehouse {i}\n\n"
            + " ".join(f"Warehouse {i} stores item SKU-{i}-{j} on shelf {j} of aisle {i * 7 % 13}." for j in range(12))
        )
    text = "# Inventory handbook\n\n" + "\n\n".join(sections)
    reply = await upsert(knowledge, col, pb.Document(id="handbook", title="Inventory handbook", text=text))
    assert reply.chunks_written >= 40
    seen: dict[str, pb.Chunk] = {}
    for i in range(40):
        for h in await search(knowledge, col, f"Warehouse {i} SKU-{i}-0 shelf", top_k=50):
            seen[h.chunk_id] = h
    assert len(seen) == reply.chunks_written, "every passage comes back for a query about its own content"
    covered = set()
    for h in seen.values():
        assert text[h.start : h.end] == h.text
        covered.update(range(h.start, h.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


async def test_max_per_document_lets_the_next_documents_in(knowledge: Stub) -> None:
    col = fresh()
    step = "## Pix step {0}\n\nPix payment step {0}: open your bank app and scan the Pix QR code."
    sections = [step.format(i) for i in range(6)]
    long_pix = pb.Document(id="pix-guide", title="Pix, step by step", text="\n\n".join(sections))
    reply = await upsert(knowledge, col, long_pix, PIX, BOLETO, RETURNS)
    assert reply.chunks_written >= 6
    question = "how do I pay with a Pix QR code?"
    uncapped = await search(knowledge, col, question, top_k=4)
    assert [h.document_id for h in uncapped].count("pix-guide") >= 3  # one article takes the places
    capped = await search(knowledge, col, question, top_k=4, max_per_document=1)
    assert len(capped) == 4 and len({h.document_id for h in capped}) == 4
    assert [h.score for h in capped] == sorted((h.score for h in capped), reverse=True)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.UpsertDocumentsRequest(collection="c"), "documents"),
        (pb.UpsertDocumentsRequest(documents=[PIX]), "collection"),
        (pb.UpsertDocumentsRequest(collection="c", documents=[pb.Document(id="x", text="   ")]), "documents[0].text"),
        (pb.UpsertDocumentsRequest(collection="c", documents=[pb.Document(id="", text="a")]), "documents[0].id"),
        (pb.UpsertDocumentsRequest(collection="c", documents=[PIX, PIX]), "documents[1].id"),
        (pb.UpsertDocumentsRequest(collection="c", documents=[pb.Document(id="x", text="a" * 2_000_001)]), "2000000"),
        (
            pb.UpsertDocumentsRequest(collection="c", documents=[pb.Document(id="x", text="a", metadata={"a.b": "1"})]),
            "documents[0].metadata",
        ),
        (pb.SearchRequest(collection="c"), "query"),
        (pb.SearchRequest(collection="c", query="  \n "), "query"),
        (pb.SearchRequest(collection="c", query="q" * 4097), "4096"),
        (pb.SearchRequest(collection="c", query="q", top_k=51), "top_k"),
        (pb.SearchRequest(collection="c", query="q", min_score=1.5), "min_score"),
        (pb.SearchRequest(collection="c", query="q", max_per_document=51), "max_per_document"),
        (pb.DeleteDocumentsRequest(collection="c"), "document_ids"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(knowledge: Stub, request_: object, message: str) -> None:
    method = {
        pb.UpsertDocumentsRequest: knowledge.UpsertDocuments,
        pb.SearchRequest: knowledge.Search,
        pb.DeleteDocumentsRequest: knowledge.DeleteDocuments,
    }[type(request_)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await method(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


async def test_a_bad_batch_stores_nothing(knowledge: Stub) -> None:
    col = fresh()
    with pytest.raises(grpc.aio.AioRpcError):
        await upsert(knowledge, col, PIX, pb.Document(id="bad", text=" "))
    assert await search(knowledge, col, "pix") == []


async def test_sample_help_centre_retrieval_quality(store: KnowledgeStore) -> None:
    """The acceptance bar of the retrieval evaluation: the expected article in the top 5 for 90% of questions."""
    await knowledge_eval.ingest_samples(store, "helpcenter-quality")
    results, _ = await knowledge_eval.evaluate(store, "helpcenter-quality")
    scores = knowledge_eval.score(results)
    assert scores.n >= 60 and {r.lang for r in results} == {"pt", "en"}
    assert scores.recall_5 >= 0.9, f"recall@5 {scores.recall_5:.3f}"
