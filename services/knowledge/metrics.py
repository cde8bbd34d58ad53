"""Knowledge's metrics: how fast searches answer and how much the knowledge base takes in."""

from __future__ import annotations

from services.runtime import metrics

SEARCH_DURATION = metrics.histogram(
    "tiermesh_knowledge_search_duration_seconds",
    "Time to answer a search (embedding the query, hybrid scoring), whatever its outcome.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 1.0, 2.5),
)
SEARCH_RESULTS = metrics.counter(
    "tiermesh_knowledge_search_results_total",
    "Searches by whether any passage scored over min_score: found or empty.",
    ["result"],
)
DOCUMENTS_UPSERTED = metrics.counter(
    "tiermesh_knowledge_documents_upserted_total",
    "Documents stored or replaced (an unchanged document counts, though it is not embedded again).",
)
CHUNKS_UPSERTED = metrics.counter(
    "tiermesh_knowledge_chunks_upserted_total",
    "Passages embedded and written.",
)
DOCUMENTS_DELETED = metrics.counter(
    "tiermesh_knowledge_documents_deleted_total",
    "Documents deleted.",
)
