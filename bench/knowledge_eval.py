"""Retrieval quality on the sample help centre: recall@1, recall@5 and MRR over data/knowledge/eval.jsonl.

The sample articles are ingested into a fresh embedded Qdrant with the configured embedding model
and ranking; each question is searched and its chunks folded into a ranking of documents (a
document ranks where its best passage does). A question counts as found at rank r when one of its
expected documents is r-th. `python -m bench.knowledge_eval` (or `make bench-knowledge`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.knowledge import config as kconfig
from services.knowledge.documents import discover, read_document
from services.knowledge.server import build_store
from services.knowledge.store import DocumentIn, KnowledgeStore
from services.runtime import config

REPO = Path(__file__).resolve().parent.parent
ARTICLES = REPO / "data" / "knowledge" / "helpcenter"
QUESTIONS = REPO / "data" / "knowledge" / "eval.jsonl"
COLLECTION = "helpcenter-eval"


@dataclass
class Result:
    question: str
    lang: str
    expected: list[str]
    ranking: list[str]

    @property
    def rank(self) -> int | None:
        found = [self.ranking.index(e) + 1 for e in self.expected if e in self.ranking]
        return min(found) if found else None


@dataclass
class Scores:
    n: int
    recall_1: float
    recall_5: float
    mrr: float


def score(results: Sequence[Result]) -> Scores:
    n = len(results)
    ranks = [r.rank for r in results]
    return Scores(
        n=n,
        recall_1=sum(1 for k in ranks if k == 1) / n,
        recall_5=sum(1 for k in ranks if k is not None and k <= 5) / n,
        mrr=sum(1 / k for k in ranks if k is not None) / n,
    )


def load_questions() -> list[dict[str, object]]:
    return [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]


async def ingest_samples(store: KnowledgeStore, collection: str = COLLECTION) -> int:
    docs = [read_document(f, root) for f, root in discover([ARTICLES])]
    await store.upsert(collection, [DocumentIn(d.id, d.text, d.title, d.metadata) for d in docs])
    return len(docs)


async def evaluate(store: KnowledgeStore, collection: str = COLLECTION) -> tuple[list[Result], list[float]]:
    results: list[Result] = []
    latencies: list[float] = []
    for q in load_questions():
        started = time.perf_counter()
        hits = await store.search(collection, str(q["question"]), top_k=30)
        latencies.append(time.perf_counter() - started)
        ranking = list(dict.fromkeys(h.document_id for h in hits))
        results.append(Result(str(q["question"]), str(q["lang"]), [str(e) for e in q["expected"]], ranking))  # type: ignore[attr-defined]
    return results, latencies


async def run(store_dir: Path, **overrides: object) -> tuple[list[Result], list[float], int]:
    tree = config.load()
    cfg = dataclasses.replace(kconfig.load(tree), qdrant_url="", qdrant_path=store_dir, **overrides)  # type: ignore[arg-type]
    store = build_store(cfg)
    await store.open()
    try:
        n = await ingest_samples(store)
        results, latencies = await evaluate(store)
    finally:
        await store.close()
    return results, latencies, n


def report(results: Sequence[Result], latencies: Sequence[float], documents: int) -> None:
    print(f"knowledge retrieval: {documents} documents, {len(results)} questions (document-level ranking)")
    print(f"{'set':<8} {'n':>4} {'recall@1':>9} {'recall@5':>9} {'MRR':>7}")
    for name, subset in (("all", results), *((lang, [r for r in results if r.lang == lang]) for lang in ("pt", "en"))):
        if subset:
            s = score(subset)
            print(f"{name:<8} {s.n:>4} {s.recall_1:>9.3f} {s.recall_5:>9.3f} {s.mrr:>7.3f}")
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(f"search latency in-process (embed + Qdrant local): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    misses = [r for r in results if r.rank is None or r.rank > 5]
    if misses:
        print("not in the top 5:")
        for r in misses:
            print(f"  [{r.lang}] {r.question!r}: expected {r.expected}, got {r.ranking[:3]}")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="tiermesh-bench-") as tmp:
        results, latencies, n = asyncio.run(run(Path(tmp)))
    report(results, latencies, n)


if __name__ == "__main__":
    main()
