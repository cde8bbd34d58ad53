"""The answer cache in Redis: byte-identical requests get the same answer, replayed as a stream.

The key is a SHA-256 of a canonical JSON encoding of what determines an answer: the tier, the
messages (Unicode NFC), the generation parameters and the knowledge context id, with sorted keys
and no white space, so the same request always maps to the same key. Degraded and failed answers
are never stored (the engine only stores answers that completed normally).

Redis being down never fails a request: the cache warns once, stays out of the way for a few
seconds, and tries again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from services.inference.metrics import CACHE_REQUESTS
from services.runtime.pause import FailurePause

log = logging.getLogger("tiermesh.inference.cache")

KEY_PREFIX = "tiermesh:answer:v1:"  # bump the version when the stored format changes


def cache_key(
    tier: int,
    messages: Sequence[tuple[str, str]],
    params: dict[str, Any],
    context_id: str = "",
) -> str:
    canonical = {
        "tier": tier,
        "messages": [[role, unicodedata.normalize("NFC", content)] for role, content in messages],
        "params": {k: v for k, v in params.items() if v is not None},
        "context_id": context_id,
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return KEY_PREFIX + hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    deltas: list[str]
    model: str
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class AnswerCache:
    def __init__(
        self, url: str, ttl_s: int, namespace: str = "", timeout_s: float = 0.25, pause_s: float = 5.0
    ) -> None:
        self.ttl_s = ttl_s
        self.namespace = f"{namespace}:" if namespace else ""
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self.pause = FailurePause(1, pause_s)  # one failure and Redis is left alone for pause_s

    def _available(self) -> bool:
        return not self.pause.paused

    def _failed(self, exc: Exception) -> None:
        if self.pause.failed():
            log.warning("answer cache unavailable; serving uncached", extra={"error": f"{type(exc).__name__}: {exc}"})

    def _recovered(self) -> None:
        if self.pause.succeeded():
            log.info("answer cache available again")

    async def get(self, key: str) -> CachedAnswer | None:
        if not self._available():
            CACHE_REQUESTS.labels("error").inc()
            return None
        try:
            raw = await self.client.get(self.namespace + key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            CACHE_REQUESTS.labels("error").inc()
            return None
        self._recovered()
        answer = None
        if raw is not None:
            with contextlib.suppress(ValueError, TypeError):  # an entry from another version: a miss
                answer = CachedAnswer(**json.loads(raw))
        CACHE_REQUESTS.labels("miss" if answer is None else "hit").inc()
        return answer

    async def put(self, key: str, answer: CachedAnswer) -> None:
        if not self._available():
            return
        try:
            await self.client.set(self.namespace + key, json.dumps(asdict(answer), ensure_ascii=False), ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._recovered()

    async def aclose(self) -> None:
        await self.client.aclose()
