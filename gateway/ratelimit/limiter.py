"""Fixed-window counters in Redis, as envoyproxy/ratelimit keeps them: one pipelined round trip of
INCRBY + EXPIRE per descriptor for the whole request. A Redis error never denies: the caller
decides (fail open by default)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as redis

from gateway.ratelimit.config import Node

log = logging.getLogger("tiermesh.ratelimit")


@dataclass(frozen=True)
class Verdict:
    over: bool
    remaining: int
    reset_s: int


class FixedWindow:
    def __init__(self, url: str, timeout_s: float, clock: Callable[[], float] = time.time) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.clock = clock

    async def check(self, domain: str, matches: Sequence[tuple[Node, str]], hits: int) -> list[Verdict]:
        now = self.clock()
        pipe = self.client.pipeline(transaction=False)
        keys = []
        for node, path in matches:
            assert node.limit is not None
            window = node.limit.seconds
            start = int(now // window) * window
            key = f"{domain}_{path}_{start}"
            keys.append((node, start + window - now))
            pipe.incrby(key, hits)
            pipe.expire(key, window)
        results = await pipe.execute()
        out = []
        for (node, left), count in zip(keys, results[0::2], strict=True):
            assert node.limit is not None
            limit = node.limit.requests_per_unit
            out.append(
                Verdict(over=int(count) > limit, remaining=max(0, limit - int(count)), reset_s=max(1, round(left)))
            )
        return out

    async def aclose(self) -> None:
        await self.client.aclose()
