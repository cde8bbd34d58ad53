"""KnowledgeService RPCs: validate, then hand over to the store."""

from __future__ import annotations

import time

from tiermesh.knowledge.v1 import knowledge_service_pb2 as pb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as pb_grpc

from services.knowledge import metrics
from services.knowledge.store import DocumentIn, KnowledgeStore, check_metadata_keys
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.server import Context
from services.runtime.validation import validate

DEFAULT_TOP_K = 5


class KnowledgeServicer(pb_grpc.KnowledgeServiceServicer):
    def __init__(self, store: KnowledgeStore) -> None:
        self.store = store

    async def UpsertDocuments(self, request: pb.UpsertDocumentsRequest, context: Context) -> pb.UpsertDocumentsResponse:
        validate(request)
        seen: dict[str, int] = {}
        docs: list[DocumentIn] = []
        for i, d in enumerate(request.documents):
            if not d.text.strip():
                raise InvalidArgument(f"documents[{i}].text: must not be only white space")
            if not d.id.strip():
                raise InvalidArgument(f"documents[{i}].id: must not be only white space")
            if d.id in seen:
                raise InvalidArgument(f"documents[{i}].id: {d.id[:80]!r} already appears as documents[{seen[d.id]}]")
            seen[d.id] = i
            check_metadata_keys(d.metadata, f"documents[{i}].metadata")
            docs.append(DocumentIn(id=d.id, text=d.text, title=d.title, metadata=dict(d.metadata)))
        stored, chunks = await self.store.upsert(request.collection, docs)
        metrics.DOCUMENTS_UPSERTED.inc(stored)
        metrics.CHUNKS_UPSERTED.inc(chunks)
        return pb.UpsertDocumentsResponse(documents_upserted=stored, chunks_written=chunks)

    async def DeleteDocuments(self, request: pb.DeleteDocumentsRequest, context: Context) -> pb.DeleteDocumentsResponse:
        validate(request)
        for i, doc_id in enumerate(request.document_ids):
            if not doc_id:
                raise InvalidArgument(f"document_ids[{i}]: must not be empty")
        deleted = await self.store.delete(request.collection, list(request.document_ids))
        metrics.DOCUMENTS_DELETED.inc(deleted)
        return pb.DeleteDocumentsResponse(documents_deleted=deleted)

    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        validate(request)
        if not request.query.strip():
            raise InvalidArgument("query: must not be only white space")
        check_metadata_keys(request.filters, "filters")
        started = time.perf_counter()
        try:
            hits = await self.store.search(
                request.collection,
                request.query,
                top_k=request.top_k or DEFAULT_TOP_K,
                filters=dict(request.filters),
                min_score=request.min_score,
                per_document=request.max_per_document,
            )
        finally:
            metrics.SEARCH_DURATION.observe(time.perf_counter() - started)
        metrics.SEARCH_RESULTS.labels("found" if hits else "empty").inc()
        return pb.SearchResponse(
            chunks=[
                pb.Chunk(
                    document_id=h.document_id,
                    chunk_id=h.chunk_id,
                    title=h.title,
                    text=h.text,
                    start=h.start,
                    end=h.end,
                    score=h.score,
                    semantic_score=h.semantic_score,
                    keyword_score=h.keyword_score,
                    metadata=h.metadata,
                )
                for h in hits
            ]
        )

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        validate(request)
        embedder = self.store.embedder
        if request.model and request.model != embedder.name:
            raise NotFound(f"model: this knowledge base embeds with {embedder.name!r}, not {request.model[:100]!r}")
        texts = list(request.texts)
        counts = embedder.count_tokens(texts)
        vectors = await embedder.embed(texts, query=True)  # symmetric use: E5 asks for its query prefix
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(values=vector.tolist(), truncated=n > embedder.max_tokens)
                for vector, n in zip(vectors, counts, strict=True)
            ],
            model=embedder.name,
            prompt_tokens=sum(min(n, embedder.max_tokens) for n in counts),
        )
