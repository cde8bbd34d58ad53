"""`tiermesh ingest` and `tiermesh search`: fill the knowledge base from files and query it.

Files are read here (Markdown, plain text, HTML) and sent to the Knowledge service in batches
that stay well under gRPC's message limit; the service chunks and embeds them. Nothing heavy is
imported: no model runs in the CLI.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from tiermesh.knowledge.v1 import knowledge_service_pb2 as pb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as pb_grpc

from services.knowledge.documents import SkippedFile, SourceDocument, discover, read_document
from services.runtime import config, tls

MAX_BATCH_DOCS = 32
MAX_BATCH_CHARS = 1_500_000  # code points per request (a larger document goes alone)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # what Knowledge accepts: one document at the contract's limit fits

Printer = Callable[[str], None]


def _batches(docs: Sequence[SourceDocument]) -> list[list[SourceDocument]]:
    out: list[list[SourceDocument]] = []
    current: list[SourceDocument] = []
    size = 0
    for doc in docs:
        if current and (len(current) >= MAX_BATCH_DOCS or size + len(doc.text) > MAX_BATCH_CHARS):
            out.append(current)
            current, size = [], 0
        current.append(doc)
        size += len(doc.text)
    if current:
        out.append(current)
    return out


def collect(paths: Sequence[str], say: Printer) -> tuple[list[SourceDocument], int]:
    """Documents read from the paths, and how many files were skipped (each reported)."""
    docs: list[SourceDocument] = []
    skipped = 0
    seen: dict[str, Path] = {}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            say(f"skipped {raw}: no such file or folder")
            skipped += 1
            continue
        for file, root in discover([p]):
            try:
                doc = read_document(file, root)
            except (SkippedFile, OSError) as exc:
                say(f"skipped {exc}")
                skipped += 1
                continue
            if doc.id in seen:
                say(f"skipped {file}: its id {doc.id!r} is already taken by {seen[doc.id]}")
                skipped += 1
                continue
            seen[doc.id] = file
            docs.append(doc)
    return docs, skipped


async def ingest_documents(
    channel: grpc.aio.Channel, collection: str, docs: Sequence[SourceDocument], say: Printer, timeout_s: float = 300
) -> tuple[int, int]:
    """Upsert documents batch by batch, reporting progress; returns (documents, chunks written)."""
    stub = pb_grpc.KnowledgeServiceStub(channel)
    done_docs = chunks = 0
    for batch in _batches(docs):
        request = pb.UpsertDocumentsRequest(
            collection=collection,
            documents=[pb.Document(id=d.id, title=d.title, text=d.text, metadata=d.metadata) for d in batch],
        )
        reply = await stub.UpsertDocuments(request, timeout=timeout_s)
        done_docs += reply.documents_upserted
        chunks += reply.chunks_written
        say(f"  {done_docs}/{len(docs)} documents  ({chunks} passages written; unchanged documents are skipped)")
    return done_docs, chunks


def _target(tree: dict[str, object], override: str | None) -> str:
    return override or config.target(tree, "knowledge")


async def ingest(paths: Sequence[str], collection: str | None, target: str | None, timeout_s: float) -> int:
    tree = config.load()
    collection = collection or config.default_collection(tree)
    addr = _target(tree, target)
    docs, skipped = collect(paths, print)
    if not docs:
        print("tiermesh ingest: no Markdown, text or HTML documents found", file=sys.stderr)
        return 1
    print(f"ingesting {len(docs)} documents into collection {collection!r} at {addr}")
    started = time.monotonic()
    async with tls.channel(
        tree, "knowledge", tls.OPERATOR, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES)], target=addr
    ) as channel:
        try:
            n, chunks = await ingest_documents(channel, collection, docs, print, timeout_s)
        except grpc.aio.AioRpcError as exc:
            print(
                f"tiermesh ingest: {exc.code().name}: {exc.details()} (is Knowledge running at {addr}? `make run`)",
                file=sys.stderr,
            )
            return 1
    took = time.monotonic() - started
    print(
        f"done: {n} documents, {chunks} passages written in {took:.1f} s"
        + (f"; {skipped} files skipped" if skipped else "")
    )
    return 0 if not skipped else 3


async def search(
    query: str, top_k: int, collection: str | None, target: str | None, as_json: bool, per_document: int = 0
) -> int:
    tree = config.load()
    collection = collection or config.default_collection(tree)
    addr = _target(tree, target)
    async with tls.channel(tree, "knowledge", tls.OPERATOR, target=addr) as channel:
        try:
            reply = await pb_grpc.KnowledgeServiceStub(channel).Search(
                pb.SearchRequest(collection=collection, query=query, top_k=top_k, max_per_document=per_document),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            hint = (
                ""
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                else f" (is Knowledge running at {addr}? `make run`)"
            )
            print(f"tiermesh search: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
            return 1
    rows = [
        {
            "document_id": ch.document_id,
            "chunk_id": ch.chunk_id,
            "title": ch.title,
            "score": round(ch.score, 4),
            "semantic_score": round(ch.semantic_score, 4),
            "keyword_score": round(ch.keyword_score, 4),
            "start": ch.start,
            "end": ch.end,
            "text": ch.text,
        }
        for ch in reply.chunks
    ]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no passages in collection {collection!r} match")
        return 0
    for i, r in enumerate(rows, 1):
        snippet = " ".join(str(r["text"]).split())
        snippet = snippet if len(snippet) <= 160 else snippet[:157] + "..."
        print(f"{i:>2}. {r['score']:.3f}  {r['document_id']}  ({r['title']})")
        print(f"    {snippet}")
    return 0
