"""Knowledge wiring: config, the embedding model, Qdrant, the gRPC server and its lifecycle.

The server listens at once and reports NOT_SERVING until the embedding model is loaded and the
Qdrant collection is open; calls before that get UNAVAILABLE.
"""

from __future__ import annotations

from tiermesh.knowledge.v1 import knowledge_service_pb2 as pb

from services.knowledge import config as knowledge_config
from services.knowledge.config import KnowledgeConfig
from services.knowledge.embedder import Embedder, LiteLLMEmbedder, local_embedder
from services.knowledge.keywords import Synonyms
from services.knowledge.servicer import KnowledgeServicer
from services.knowledge.store import KnowledgeStore
from services.runtime import config, contract, logs, observability, tls
from services.runtime.config import ConfigError
from services.runtime.server import serve

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def build_store(cfg: KnowledgeConfig) -> KnowledgeStore:
    embedder: Embedder
    if cfg.embedding_provider == "litellm":
        embedder = LiteLLMEmbedder(
            cfg.embedding_model, cfg.embedding_dimension, cfg.embedding_api_key_env, cfg.embedding_api_base
        )
    else:
        embedder = local_embedder(cfg.embedding_model, cfg.embedding_batch_size, cfg.embedding_threads)
    synonyms = Synonyms()
    if cfg.synonyms_path is not None:
        try:
            synonyms = Synonyms.load(cfg.synonyms_path, cfg.synonym_weight)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"knowledge.synonyms_path: {exc}") from None
    return KnowledgeStore(cfg, embedder, synonyms)


async def main() -> None:
    tree = config.load()
    log = logs.setup("knowledge", config.get_str(tree, "log_level", "info", where=""))
    observability.setup("knowledge", tree)
    cfg = knowledge_config.load(tree)
    store = build_store(cfg)

    async def ready() -> bool:
        await store.open()
        where = cfg.qdrant_url or str(cfg.qdrant_path)
        log.info("knowledge store open", extra={"qdrant": where, "embedding": store.embedder.name})
        return True

    served = contract.served(pb.DESCRIPTOR.services_by_name["KnowledgeService"], KnowledgeServicer(store))
    await serve(
        "knowledge",
        tree,
        log,
        served,
        ready=ready,
        on_stop=store.close,
        # A document may hold 2,000,000 code points (up to 8 MB of UTF-8 on its own).
        max_message_bytes=MAX_MESSAGE_BYTES,
        # Chats search (the Router); only an operator changes what is in the knowledge base.
        callers={
            served.path("Search"): (tls.ROUTER, tls.OPERATOR),
            # The OpenAI-compatible API's /v1/embeddings.
            served.path("Embed"): (tls.OPENAI, tls.ROUTER, tls.OPERATOR),
            served.path("UpsertDocuments"): (tls.OPERATOR,),
            served.path("DeleteDocuments"): (tls.OPERATOR,),
        },
    )
