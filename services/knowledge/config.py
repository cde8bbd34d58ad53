"""Knowledge settings: where vectors live, which embedding model, how documents are cut and ranked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.runtime import config
from services.runtime.config import ConfigError

EMBEDDING_PROVIDERS = ("local", "litellm")
# The models the `local` provider runs (services/knowledge/embedder.py).
LOCAL_MODELS = (
    "multilingual-e5-small",
    "multilingual-e5-small-enpt",
    "use-multilingual-v3",
    "multilingual-e5-small+use-multilingual-v3",
    "all-MiniLM-L6-v2",
)


@dataclass(frozen=True)
class KnowledgeConfig:
    default_collection: str = "default"
    # Qdrant: embedded local mode in `qdrant_path` unless `qdrant_url` (or $QDRANT_URL) is set.
    qdrant_path: Path | None = None
    qdrant_url: str = ""
    qdrant_api_key: str = ""
    qdrant_collection: str = "tiermesh_passages"
    embedding_provider: str = "local"
    embedding_model: str = "multilingual-e5-small+use-multilingual-v3"
    embedding_dimension: int = 384
    embedding_api_key_env: str = ""
    embedding_api_base: str = ""
    embedding_batch_size: int = 32
    embedding_threads: int = 0  # 0: the engine's default (one per core)
    chunk_max_tokens: int = 200
    chunk_overlap_tokens: int = 40
    # Ranking: score = semantic_weight * cosine + (1 - semantic_weight) * keyword, where the BM25
    # keyword score s is squashed to s / (s + keyword_saturation).
    semantic_weight: float = 0.4
    keyword_saturation: float = 6.0
    candidates: int = 40
    # Added to the cosine of a passage written in the other language than the question (pt/en).
    cross_language_boost: float = 0.0
    # A passage's score is blended with its document's: (own + document_weight * the mean of the
    # document's `document_passages` best other candidate passages) / (1 + document_weight).
    document_weight: float = 0.0
    document_passages: int = 2
    synonyms_path: Path | None = None
    synonym_weight: float = 0.7


def _path(raw: str, base: Path) -> Path:
    p = Path(raw)
    return p if p.is_absolute() else base / p


def load(tree: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> KnowledgeConfig:
    env = os.environ if environ is None else environ
    node = config.section(tree, "knowledge")
    where = "knowledge"
    qdrant = config.section(node, "qdrant")
    embedding = config.section(node, "embedding")
    chunking = config.section(node, "chunking")
    search = config.section(node, "search")

    provider = config.get_str(embedding, "provider", "local", where=f"{where}.embedding")
    if provider not in EMBEDDING_PROVIDERS:
        raise ConfigError(
            f"{where}.embedding.provider: must be one of {', '.join(EMBEDDING_PROVIDERS)}, got {provider!r}"
        )
    model = config.get_str(embedding, "model", "multilingual-e5-small+use-multilingual-v3", where=f"{where}.embedding")
    if provider == "local" and model not in LOCAL_MODELS:
        raise ConfigError(
            f"{where}.embedding.model: the local provider runs {', '.join(LOCAL_MODELS)}, got {model!r}"
            " (a provider's model needs provider: litellm)"
        )
    max_tokens = config.get_int(chunking, "max_tokens", 200, where=f"{where}.chunking", lo=16, hi=8192)
    overlap = config.get_int(chunking, "overlap_tokens", 40, where=f"{where}.chunking", lo=0, hi=4096)
    if overlap * 2 >= max_tokens:
        raise ConfigError(
            f"{where}.chunking.overlap_tokens: must be under half of max_tokens ({max_tokens}), got {overlap}"
        )
    url = env.get("QDRANT_URL") or config.get_str(qdrant, "url", "", where=f"{where}.qdrant")
    key_env = config.get_str(qdrant, "api_key_env", "QDRANT_API_KEY", where=f"{where}.qdrant")
    synonyms = config.get_str(node, "synonyms_path", "config/synonyms.yaml", where=where)
    return KnowledgeConfig(
        default_collection=config.default_collection(tree),
        qdrant_path=None
        if url
        else _path(config.get_str(qdrant, "path", "qdrant", where=f"{where}.qdrant"), config.data_dir(tree)),
        qdrant_url=url,
        qdrant_api_key=env.get(key_env, "") if key_env else "",
        qdrant_collection=config.get_str(qdrant, "collection", "tiermesh_passages", where=f"{where}.qdrant"),
        embedding_provider=provider,
        embedding_model=model,
        embedding_dimension=config.get_int(embedding, "dimension", 384, where=f"{where}.embedding", lo=1, hi=65536),
        embedding_api_key_env=config.get_str(embedding, "api_key_env", "", where=f"{where}.embedding"),
        embedding_api_base=config.get_str(embedding, "api_base", "", where=f"{where}.embedding"),
        embedding_batch_size=config.get_int(embedding, "batch_size", 32, where=f"{where}.embedding", lo=1, hi=1024),
        embedding_threads=config.get_int(embedding, "threads", 0, where=f"{where}.embedding", lo=0, hi=256),
        chunk_max_tokens=max_tokens,
        chunk_overlap_tokens=overlap,
        semantic_weight=config.get_float(search, "semantic_weight", 0.4, where=f"{where}.search", lo=0, hi=1),
        keyword_saturation=config.get_float(
            search, "keyword_saturation", 6.0, where=f"{where}.search", lo=0.01, hi=1000
        ),
        candidates=config.get_int(search, "candidates", 40, where=f"{where}.search", lo=1, hi=1000),
        cross_language_boost=config.get_float(
            search, "cross_language_boost", 0.0, where=f"{where}.search", lo=0, hi=0.5
        ),
        document_weight=config.get_float(search, "document_weight", 0.0, where=f"{where}.search", lo=0, hi=10),
        document_passages=config.get_int(search, "document_passages", 2, where=f"{where}.search", lo=1, hi=50),
        synonyms_path=_path(synonyms, config.REPO_ROOT) if synonyms else None,
        synonym_weight=config.get_float(search, "synonym_weight", 0.7, where=f"{where}.search", lo=0, hi=1),
    )
