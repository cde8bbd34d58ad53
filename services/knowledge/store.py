"""Documents in, passages out: chunking, embedding and Qdrant storage behind three calls.

All tenants share one Qdrant collection; every point carries its tenant's `collection` in the
payload (indexed as the tenant key), and every read, write and delete filters on it first, so no
call can see or touch another tenant's passages.

A document's passages have deterministic point ids (tenant, document, position). Replacing a
document overwrites its passages in place and then removes the ones past its new length, so a
search during the replacement finds the old or the new text, never nothing. A document whose
content (and the settings that shape its passages) did not change is not embedded again.

In embedded local mode searches read a copy of the passages kept in memory (memory_index.py),
re-read from Qdrant after every write; a Qdrant server is asked directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import re
import uuid
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm

from services.knowledge import keywords
from services.knowledge.chunking import Chunker, Passage
from services.knowledge.config import KnowledgeConfig
from services.knowledge.embedder import Embedder
from services.knowledge.memory_index import Candidate, MemoryIndex
from services.knowledge.memory_index import Passage as Stored
from services.runtime.config import ConfigError
from services.runtime.errors import InvalidArgument, Unavailable

log = logging.getLogger("tiermesh.knowledge")

DENSE, SPARSE = "dense", "keywords"
_POINT_NAMESPACE = uuid.UUID("0b9d1d44-2a5e-4b8e-9d0e-7f3c1c6a4e21")
METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WRITE_BATCH = 128
_READ_PAGE = 512


@dataclass(frozen=True)
class DocumentIn:
    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    document_id: str
    chunk_id: str
    title: str
    text: str
    start: int
    end: int
    score: float
    semantic_score: float
    keyword_score: float
    metadata: Mapping[str, str]


def check_metadata_keys(metadata: Mapping[str, str], where: str) -> None:
    for key in metadata:
        if not METADATA_KEY.match(key):
            raise InvalidArgument(f"{where}: key {key[:70]!r} must be 1 to 64 letters, digits, '_' or '-'")


def _point_id(collection: str, document_id: str, index: int) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{collection}\x00{document_id}\x00{index}"))


def _tenant(collection: str) -> qm.FieldCondition:
    return qm.FieldCondition(key="collection", match=qm.MatchValue(value=collection))


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, keys: Sequence[tuple[str, str]]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))  # one global order: two writers never wait on each other crosswise
        taken: list[tuple[str, str]] = []
        try:
            for key in ordered:
                lock, users = self._locks.get(key, (asyncio.Lock(), 0))
                self._locks[key] = (lock, users + 1)
                taken.append(key)
                await lock.acquire()
            yield
        finally:
            for key in reversed(taken):
                lock, users = self._locks[key]
                if lock.locked():
                    lock.release()
                if users <= 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class KnowledgeStore:
    def __init__(self, cfg: KnowledgeConfig, embedder: Embedder, synonyms: keywords.Synonyms | None = None) -> None:
        self.cfg = cfg
        self.embedder = embedder
        self.synonyms = synonyms or keywords.Synonyms()
        self.client: AsyncQdrantClient | None = None
        self.chunker: Chunker | None = None
        self._locks = _KeyedLocks()
        self._fingerprint = ""
        self._one_model = False  # every stored passage is known to be this model's (local mode)
        # Embedded local mode searches a copy of its points in memory (services.knowledge.memory_index).
        self._memory: MemoryIndex | None = None

    @property
    def local(self) -> bool:
        return not self.cfg.qdrant_url

    async def open(self) -> None:
        await self.embedder.start()
        # Title and headings are embedded with each passage: keep room for them under the model's limit.
        budget = max(16, min(self.cfg.chunk_max_tokens, self.embedder.max_tokens - 48))
        self.chunker = Chunker(self.embedder.count_tokens, budget, min(self.cfg.chunk_overlap_tokens, budget // 2 - 1))
        self._fingerprint = f"{self.embedder.name}/{self.embedder.dimension}/{budget}/{self.chunker.overlap_tokens}/kw2"
        if self.local:
            assert self.cfg.qdrant_path is not None
            self.cfg.qdrant_path.mkdir(parents=True, exist_ok=True)
            self.client = AsyncQdrantClient(path=str(self.cfg.qdrant_path))
        else:
            self.client = AsyncQdrantClient(
                url=self.cfg.qdrant_url, api_key=self.cfg.qdrant_api_key or None, timeout=10
            )
        await self._ensure_collection()
        if self.local:
            self._memory = MemoryIndex(self.embedder.dimension)
            await self._remember(None)
            log.info("passages held in memory for search", extra={"passages": len(self._memory)})

    async def _remember(self, collection: str | None, document_ids: Sequence[str] = ()) -> None:
        """Read what Qdrant now stores for these documents of `collection` (every point when
        `collection` is None) into the memory index, dropping what it held for them."""
        if self._memory is None:
            return
        client = self._client()
        flt = None
        if collection is not None:
            flt = qm.Filter(
                must=[
                    _tenant(collection),
                    qm.FieldCondition(key="document_id", match=qm.MatchAny(any=list(document_ids))),
                ]
            )
        kept: list[tuple[str, Stored]] = []
        offset: Any = None
        while True:
            points, offset = await client.scroll(
                self.cfg.qdrant_collection,
                scroll_filter=flt,
                limit=_READ_PAGE,
                offset=offset,
                with_payload=True,
                with_vectors=True,
            )
            for p in points:
                vectors = p.vector if isinstance(p.vector, dict) else {}
                sparse = vectors.get(SPARSE)
                dense = vectors.get(DENSE)
                if not isinstance(dense, list):
                    continue  # nothing to search it by
                words = sparse if isinstance(sparse, qm.SparseVector) else qm.SparseVector(indices=[], values=[])
                kept.append((str(p.id), Stored.of(p.payload or {}, dense, words.indices, words.values)))
            if offset is None:
                break
        drop = [] if collection is None else self._memory.ids_where(collection, document_ids)
        self._memory.replace(kept, drop)

    async def _ensure_collection(self) -> None:
        assert self.client is not None
        name = self.cfg.qdrant_collection
        if await self.client.collection_exists(name):
            info = await self.client.get_collection(name)
            vectors = info.config.params.vectors
            size = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
            if size != self.embedder.dimension:
                raise ConfigError(
                    f"Qdrant collection {name!r} holds {size}-dimension vectors but the embedding model "
                    f"{self.embedder.name} gives {self.embedder.dimension}: set knowledge.qdrant.collection "
                    "to a new name (and ingest again) or delete the old collection"
                )
            await self._index(name, [("model", qm.PayloadSchemaType.KEYWORD)])
            await self._warn_of_other_models(name)
            await self._count_passages(name)
            return
        self._one_model = self.local
        await self.client.create_collection(
            name,
            vectors_config={DENSE: qm.VectorParams(size=self.embedder.dimension, distance=qm.Distance.COSINE)},
            sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
        )
        indexes: list[tuple[str, qm.PayloadSchemaType | qm.KeywordIndexParams]] = [
            ("collection", qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)),
            ("document_id", qm.PayloadSchemaType.KEYWORD),
            ("chunk_index", qm.PayloadSchemaType.INTEGER),
            ("model", qm.PayloadSchemaType.KEYWORD),
        ]
        await self._index(name, indexes)
        log.info("created Qdrant collection", extra={"collection": name, "dimension": self.embedder.dimension})

    async def _index(
        self, name: str, indexes: Sequence[tuple[str, qm.PayloadSchemaType | qm.KeywordIndexParams]]
    ) -> None:
        assert self.client is not None
        with warnings.catch_warnings():
            # Embedded local mode scans every point anyway and warns that indexes do nothing there;
            # a Qdrant server uses them (the tenant index keeps each tenant's points together).
            warnings.filterwarnings("ignore", message="Payload indexes have no effect", category=UserWarning)
            for key, schema in indexes:
                await self.client.create_payload_index(name, key, field_schema=schema)

    async def _warn_of_other_models(self, name: str) -> None:
        """Passages another embedding model wrote live in another vector space: searching them would
        rank at random, so searches leave them out until their documents are upserted again."""
        assert self.client is not None
        other = qm.Filter(must_not=[qm.FieldCondition(key="model", match=qm.MatchValue(value=self.embedder.name))])
        # An estimate: an exact count would read every point of a large collection at each start.
        stale = (await self.client.count(name, count_filter=other, exact=self.local)).count
        # Embedded local mode locks its directory to this process, which writes with this model
        # only: with no other model's passages now, searches need not check each point's model.
        self._one_model = self.local and stale == 0
        if stale:
            log.warning(
                "passages embedded by another model are not searched until their documents are ingested again",
                extra={"passages_about": stale, "model": self.embedder.name, "collection": name},
            )

    async def _count_passages(self, name: str) -> None:
        """Points written before each carried its document's passage count (`passages`, which
        ranking reads) get it, once: the number of the document's points. Only points still
        without it are written, so a document upserted meanwhile keeps its own count."""
        assert self.client is not None
        lacking = qm.IsEmptyCondition(is_empty=qm.PayloadField(key="passages"))
        counted: set[tuple[str, str]] = set()
        while True:
            points, _ = await self.client.scroll(
                name, scroll_filter=qm.Filter(must=[lacking]), limit=256, with_payload=["collection", "document_id"]
            )
            found = {
                (str(p.payload.get("collection", "")), str(p.payload.get("document_id", "")))
                for p in points
                if p.payload
            }
            new = found - counted
            if not new:  # nothing left, or only points no document can claim
                break
            for collection, document_id in new:
                of_document: list[qm.Condition] = [
                    _tenant(collection),
                    qm.FieldCondition(key="document_id", match=qm.MatchValue(value=document_id)),
                ]
                n = (await self.client.count(name, count_filter=qm.Filter(must=of_document), exact=True)).count
                await self.client.set_payload(
                    name, {"passages": n}, points=qm.Filter(must=[*of_document, lacking]), wait=True
                )
                counted.add((collection, document_id))
        if counted:
            log.info(
                "passage counts added to documents stored before they were kept", extra={"documents": len(counted)}
            )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.embedder.close()

    def _client(self) -> AsyncQdrantClient:
        if self.client is None:
            raise Unavailable("the knowledge store is not open yet")
        return self.client

    def _hash(self, doc: DocumentIn) -> str:
        body = json.dumps([self._fingerprint, doc.title, doc.text, dict(sorted(doc.metadata.items()))])
        return hashlib.sha256(body.encode()).hexdigest()

    async def _stored_hashes(self, collection: str, ids: Sequence[str]) -> dict[str, str]:
        """doc id -> content hash of the stored version, for the ids that exist."""
        points, _ = await self._client().scroll(
            self.cfg.qdrant_collection,
            scroll_filter=qm.Filter(
                must=[
                    _tenant(collection),
                    qm.FieldCondition(key="document_id", match=qm.MatchAny(any=list(ids))),
                    qm.FieldCondition(key="chunk_index", match=qm.MatchValue(value=0)),
                ]
            ),
            limit=len(ids) + 1,
            with_payload=["document_id", "doc_hash"],
        )
        return {str(p.payload["document_id"]): str(p.payload.get("doc_hash", "")) for p in points if p.payload}

    def _embedding_text(self, title: str, passage: Passage) -> str:
        heads = " > ".join(h for h in passage.headings if h != title)
        return "\n".join(part for part in (title, heads, passage.text) if part)

    async def upsert(self, collection: str, documents: Sequence[DocumentIn]) -> tuple[int, int]:
        """Store documents (same id replaces); returns (documents stored, passages written)."""
        if self.chunker is None:
            raise Unavailable("the knowledge store is not open yet")
        chunker = self.chunker
        client = self._client()
        async with self._locks.hold([(collection, d.id) for d in documents]):
            stored = await self._stored_hashes(collection, [d.id for d in documents])
            changed = [(d, h) for d in documents if stored.get(d.id) != (h := self._hash(d))]
            cut = await asyncio.to_thread(lambda: [chunker.chunk(d.text) for d, _ in changed])
            texts = [
                self._embedding_text(d.title, p)
                for (d, _), passages in zip(changed, cut, strict=True)
                for p in passages
            ]
            vectors = await self.embedder.embed(texts) if texts else np.zeros((0, self.embedder.dimension))
            points: list[qm.PointStruct] = []
            row = 0
            for (doc, digest), passages in zip(changed, cut, strict=True):
                for p in passages:
                    sparse = keywords.document_vector(texts[row])
                    points.append(
                        qm.PointStruct(
                            id=_point_id(collection, doc.id, p.index),
                            vector={
                                DENSE: vectors[row].tolist(),
                                SPARSE: qm.SparseVector(indices=sparse.indices, values=sparse.values),
                            },
                            payload={
                                "collection": collection,
                                "document_id": doc.id,
                                "chunk_index": p.index,
                                "passages": len(passages),
                                "chunk_id": p.chunk_id(doc.id),
                                "title": doc.title,
                                "text": p.text,
                                "start": p.start,
                                "end": p.end,
                                "doc_hash": digest,
                                "lang": keywords.language(p.text),
                                "model": self.embedder.name,
                                "meta": dict(doc.metadata),
                            },
                        )
                    )
                    row += 1
            try:
                for i in range(0, len(points), _WRITE_BATCH):
                    await client.upsert(self.cfg.qdrant_collection, points[i : i + _WRITE_BATCH], wait=True)
                for (doc, _), passages in zip(changed, cut, strict=True):
                    if doc.id in stored:  # the old version may have had more passages
                        await self._delete_where(
                            _tenant(collection),
                            qm.FieldCondition(key="document_id", match=qm.MatchValue(value=doc.id)),
                            qm.FieldCondition(key="chunk_index", range=qm.Range(gte=len(passages))),
                        )
            finally:  # searched as stored, a write that failed part way included
                if changed:
                    await self._remember(collection, [d.id for d, _ in changed])
        return len(documents), len(points)

    async def _delete_where(self, *conditions: qm.FieldCondition) -> None:
        selector = qm.FilterSelector(filter=qm.Filter(must=list(conditions)))
        await self._client().delete(self.cfg.qdrant_collection, points_selector=selector, wait=True)

    async def delete(self, collection: str, document_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(document_ids))
        async with self._locks.hold([(collection, i) for i in ids]):
            existing = await self._stored_hashes(collection, ids)
            if existing:
                try:
                    await self._delete_where(
                        _tenant(collection),
                        qm.FieldCondition(key="document_id", match=qm.MatchAny(any=list(existing))),
                    )
                finally:
                    await self._remember(collection, list(existing))
        return len(existing)

    async def search(
        self,
        collection: str,
        query: str,
        top_k: int = 5,
        filters: Mapping[str, str] | None = None,
        min_score: float = 0.0,
        per_document: int = 0,
    ) -> list[Hit]:
        found = await self.candidates(collection, query, filters, at_least=top_k)
        return rank(self.cfg, keywords.language(query), found, top_k, min_score, per_document)

    async def candidates(
        self, collection: str, query: str, filters: Mapping[str, str] | None = None, at_least: int = 0
    ) -> list[Candidate]:
        """The passages worth scoring for `query`: the `candidates` (or `at_least`) nearest by
        meaning and as many best by keywords, each with its cosine and its raw keyword score. What they
        are does not depend on the ranking's weights (`rank` applies those)."""
        client = self._client()
        dense = (await self.embedder.embed([query], query=True))[0]
        sparse = keywords.query_vector(query, self.synonyms)
        limit = max(self.cfg.candidates, at_least)
        model = None if self._one_model else self.embedder.name
        if self._memory is not None:
            return self._memory.search(dense, (sparse.indices, sparse.values), collection, limit, model, filters)
        conditions: list[qm.Condition] = [_tenant(collection)]
        if model is not None:
            conditions.append(qm.FieldCondition(key="model", match=qm.MatchValue(value=model)))
        conditions += [
            qm.FieldCondition(key=f"meta.{k}", match=qm.MatchValue(value=v)) for k, v in (filters or {}).items()
        ]
        flt = qm.Filter(must=conditions)
        requests = [qm.QueryRequest(query=dense.tolist(), using=DENSE, filter=flt, limit=limit, with_payload=True)]
        if sparse.indices:
            requests.append(
                qm.QueryRequest(
                    query=qm.SparseVector(indices=sparse.indices, values=sparse.values),
                    using=SPARSE,
                    filter=flt,
                    limit=limit,
                    with_payload=True,
                    with_vector=[DENSE],
                )
            )
        results = await client.query_batch_points(self.cfg.qdrant_collection, requests)
        payloads: dict[str, dict[str, Any]] = {}
        semantic: dict[str, float] = {}
        keyword: dict[str, float] = {}
        for p in results[0].points:
            semantic[str(p.id)] = float(p.score)
            payloads[str(p.id)] = p.payload or {}
        if len(results) > 1:
            for p in results[1].points:
                pid = str(p.id)
                keyword[pid] = float(p.score)
                payloads[pid] = p.payload or {}
                if pid not in semantic and isinstance(p.vector, dict) and DENSE in p.vector:
                    semantic[pid] = float(np.dot(dense, np.asarray(p.vector[DENSE], dtype=np.float32)))
            # Passages found by meaning only: what do their words score? When the keyword query
            # came back short of its limit it returned every passage sharing a word with the
            # question, so the others score 0 and need no second look.
            unscored = [pid for pid in semantic if pid not in keyword] if len(results[1].points) >= limit else []
            if unscored:
                extra = await client.query_points(
                    self.cfg.qdrant_collection,
                    query=qm.SparseVector(indices=sparse.indices, values=sparse.values),
                    using=SPARSE,
                    # These ids came from the filtered query above: they are this tenant's.
                    query_filter=qm.Filter(must=[qm.HasIdCondition(has_id=list(unscored))]),
                    limit=len(unscored),
                    with_payload=False,  # the scores alone: the payloads came with the first query
                )
                keyword.update({str(p.id): float(p.score) for p in extra.points})
        return [Candidate(payload, semantic.get(pid, 0.0), keyword.get(pid, 0.0)) for pid, payload in payloads.items()]


def rank(
    cfg: KnowledgeConfig,
    asked_in: str,
    found: Sequence[Candidate],
    top_k: int,
    min_score: float = 0.0,
    per_document: int = 0,
) -> list[Hit]:
    """Score and order the candidates of a question asked in language `asked_in` ('' unknown),
    and keep the best `top_k` with at most `per_document` (0: any number) of one document.

    A passage's own score is semantic_weight * cosine + (1 - semantic_weight) * keyword (the BM25
    score squashed as s / (s + keyword_saturation)), with cross_language_boost on the cosine of a
    passage written in the other language. It is then blended with its document's
    (`with_document_context`), so a passage of an article that is about the question throughout
    ranks above a lone passage that shares a few words with it; the blend stays on the same scale,
    so `min_score` reads it as it reads a passage's own score."""
    w, sat = cfg.semantic_weight, cfg.keyword_saturation
    own: list[float] = []
    for c in found:
        written_in = str(c.payload.get("lang", ""))
        # The embedding model puts any two texts of one language a little closer than texts of
        # two: a passage written in the other language gets that back.
        crossing = cfg.cross_language_boost if asked_in and written_in and written_in != asked_in else 0.0
        own.append(w * max(c.cosine + crossing, 0.0) + (1 - w) * _squashed(c.keyword, sat))
    documents = [str(c.payload.get("document_id", "")) for c in found]
    blended = with_document_context(
        own, documents, [_passage_count(c.payload) for c in found], cfg.document_weight, cfg.document_passages
    )
    kept = [i for i, score in enumerate(blended) if score >= min_score]
    kept.sort(key=lambda i: (-blended[i], str(found[i].payload.get("chunk_id", ""))))
    if per_document:
        kept = _at_most_per_document(kept, documents, per_document, top_k)
    return [_hit(found[i], blended[i], sat) for i in kept[:top_k]]


def _at_most_per_document(ranked: Sequence[int], documents: Sequence[str], cap: int, top_k: int) -> list[int]:
    """The first `top_k` of `ranked` (indices, best first) with at most `cap` of any one document.
    A document's passages rank together (the article blend), so without a cap the best article
    alone can fill every place and the next, often the one in the other language, goes unseen."""
    out: list[int] = []
    taken: dict[str, int] = {}
    for i in ranked:
        if len(out) == top_k:
            break
        doc = documents[i]
        if taken.get(doc, 0) < cap:
            taken[doc] = taken.get(doc, 0) + 1
            out.append(i)
    return out


def _hit(c: Candidate, score: float, saturation: float) -> Hit:
    payload = c.payload
    return Hit(
        document_id=str(payload.get("document_id", "")),
        chunk_id=str(payload.get("chunk_id", "")),
        title=str(payload.get("title", "")),
        text=str(payload.get("text", "")),
        start=int(payload.get("start", 0)),
        end=int(payload.get("end", 0)),
        score=score,
        semantic_score=c.cosine,
        keyword_score=_squashed(c.keyword, saturation),
        metadata={str(k): str(v) for k, v in (payload.get("meta") or {}).items()},
    )


def _squashed(keyword: float, saturation: float) -> float:
    """A raw BM25 score squashed to 0 to 1: s / (s + saturation)."""
    return keyword / (keyword + saturation) if keyword > 0 else 0.0


def _passage_count(payload: Mapping[str, Any]) -> int | None:
    count = payload.get("passages")
    return count if isinstance(count, int) and count > 0 else None


def with_document_context(
    scores: Sequence[float],
    documents: Sequence[str],
    passages: Sequence[int | None],
    weight: float,
    siblings: int,
) -> list[float]:
    """Each score blended with its document's: (own + weight * context) / (1 + weight), where
    context is the mean of the `siblings` best other candidates from the same document. A sibling
    that was not among the candidates counts as the weakest candidate did (it scored no better);
    one that does not exist (the document has fewer passages, `passages`) counts as the passage
    itself, so a short document is neither helped nor held back by its length. Where the count is
    unknown (None) only the siblings found count, and the passage stands in for the rest.
    weight 0 leaves every score as it is."""
    if weight <= 0 or not scores:
        return list(scores)
    weakest = min(scores)
    by_document: dict[str, list[int]] = {}
    for i, doc in enumerate(documents):
        by_document.setdefault(doc, []).append(i)
    blended = list(scores)
    for members in by_document.values():
        # Any passage's best others are among its document's siblings + 1 best: one sort a document.
        best = heapq.nlargest(siblings + 1, members, key=lambda i: scores[i])
        for i in members:
            others = [scores[j] for j in best if j != i][:siblings]
            total = passages[i]
            existing = len(others) if total is None else min(siblings, total - 1)
            while len(others) < existing:
                others.append(weakest)
            while len(others) < siblings:
                others.append(scores[i])
            blended[i] = (scores[i] + weight * sum(others) / siblings) / (1 + weight)
    return blended
