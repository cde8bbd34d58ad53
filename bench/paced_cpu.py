"""How deltas are flushed, measured: CPU per streamed chat at a real model's pace (20 ms per token,
64 tokens, 16 chats at once through Envoy, the answer cache off) for several values of
`inference.flush_interval_ms`: 0 sends every piece of text as it arrives, larger values merge the
text that arrives within the interval after the last message (the first text always leaves at once).
Messages per answer, CPU per chat per process, and what a reader sees: time to first token and the
longest gap between two pieces of text."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.compare import BENCH_LIMITS, PARTS
from bench.load import GrpcChat, chat_request, closed_loop
from bench.stats import Histogram
from services.cli.mesh import start_mesh
from services.runtime import config

CONCURRENCY = 16
SECONDS = 10.0
INTERVALS = (0, 100)


class CountingChat(GrpcChat):
    """A gRPC chat through Envoy that also counts messages and the gaps between pieces of text."""

    def __init__(self, target: str, token: str) -> None:
        super().__init__(target, token)
        self.messages = 0
        self.answers = 0
        self.gaps = Histogram()

    async def __call__(self, n: int) -> float:
        first = last = 0.0
        count = 0
        async for event in self.stub.Chat(chat_request(n, self.bypass_cache), metadata=self.metadata):
            count += 1
            if event.HasField("delta"):
                now = time.perf_counter()
                if last:
                    self.gaps.record(now - last)
                first, last = first or now, now
        self.messages += count
        self.answers += 1
        return first


async def measure(flush_ms: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = await start_mesh(
            Path(tmp),
            PARTS,
            TIERMESH_SIMULATOR__TOKEN_DELAY_MS="20",
            TIERMESH_SIMULATOR__ANSWER_TOKENS="64",
            TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=BENCH_LIMITS,
            TIERMESH_INFERENCE__CACHE__ENABLED="false",
            TIERMESH_INFERENCE__FLUSH_INTERVAL_MS=str(flush_ms),
        )
        try:
            pids = {n: p.proc.pid for n, p in mesh.sup.parts.items() if p.proc is not None and n != "simulator"}
            chat = CountingChat(mesh.target("envoy"), mesh.token("bench-paced", "standard"))
            r = await closed_loop(
                chat,
                CONCURRENCY,
                SECONDS,
                pids,
                warmup_s=3.0,
                stagger_s=1.4,  # clients out of step, as real callers are
                gateway="tiermesh",
                scenario="paced",
                transport="grpc",
            )
            await chat.close()
        finally:
            await mesh.sup.stop()
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.cpu_ms.items(), key=lambda kv: -kv[1]))
    print(
        f"  flush_interval_ms {flush_ms:>3}: {chat.messages / max(1, chat.answers):5.1f} messages per answer,"
        f" first token p50 {r.first_token_ms['p50']:6.1f} ms, gap between text p50 {chat.gaps.ms(50):5.1f} ms"
        f" max {chat.gaps.ms(100):5.1f} ms, CPU per chat {r.cpu_total_ms:5.2f} ms ({parts})",
        flush=True,
    )


async def main() -> None:
    default = config.get_int(
        config.section(config.load(environ={}), "inference"), "flush_interval_ms", 50, where="inference"
    )
    print(f"paced chats (20 ms per token, 64 tokens, {CONCURRENCY} at once, through Envoy), by flush interval:")
    for interval in sorted({INTERVALS[0], default, *INTERVALS[1:]}):
        await measure(interval)


if __name__ == "__main__":
    asyncio.run(main())
