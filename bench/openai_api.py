"""What the OpenAI-compatible API adds to a chat: the same greeting through the same edge, once as
gRPC (RouterService.Chat) and once as OpenAI's streamed `/v1/chat/completions` (server-sent
events over HTTP/1.1), unpaced at 1 and 16 at once and paced (20 ms per token) at 16.

Both clients use the answer cache as a caller does (no bypass) and never ask the same greeting
twice, so every chat is a cache miss on both paths. Printed per scenario: first token and whole
stream p50, CPU per chat of every process, and then what the API adds over gRPC: latency, the
mesh's CPU in all, and the API process's own CPU.

    .venv/bin/python -m bench.openai_api
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from bench.compare import BENCH_LIMITS, show
from bench.load import GrpcChat, OpenAIChat, Result, closed_loop
from services.cli.mesh import start_mesh

PARTS = ["simulator", "inference", "analytics", "router", "openai", "ratelimit", "envoy"]
SCENARIOS = ((0, 1), (0, 16), (20, 16))  # (ms per token, concurrency)
SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
# Greeting words that keep each scenario's messages apart (and the Router's decision the same).
SALTS = ("friend", "pal", "mate", "buddy", "folks", "team")


def added(grpc: Result, api: Result) -> str:
    first = api.first_token_ms["p50"] - grpc.first_token_ms["p50"]
    whole = api.whole_ms["p50"] - grpc.whole_ms["p50"]
    cpu = api.cpu_total_ms - grpc.cpu_total_ms
    own = api.cpu_ms.get("openai", 0.0)
    return (
        f"    the OpenAI API adds: first token p50 {first:+.1f} ms, whole stream p50 {whole:+.1f} ms, "
        f"mesh CPU per chat {cpu:+.2f} ms (the API process itself {own:.2f} ms)"
    )


async def one_pace(delay_ms: int, scenarios: list[tuple[int, int]], folder: Path, salts: list[str]) -> None:
    mesh = await start_mesh(
        folder / f"pace-{delay_ms}",
        PARTS,
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS=str(delay_ms),
        TIERMESH_SIMULATOR__ANSWER_TOKENS="64",
        TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=BENCH_LIMITS,
        TIERMESH_RATELIMIT__LOCAL_BACKSTOP="{max_tokens: 1000000, fill_interval_s: 1}",
    )
    try:
        pids = {n: p.proc.pid for n, p in mesh.sup.parts.items() if p.proc is not None and n != "simulator"}
        token = mesh.token("bench", "standard")
        pace = "unpaced" if delay_ms == 0 else "paced"
        stagger = 0.0 if delay_ms == 0 else 1.4
        seconds = SECONDS if delay_ms == 0 else SECONDS + 8
        for _, conc in scenarios:
            grpc_chat = GrpcChat(mesh.target("envoy"), token, bypass_cache=False, salt=salts.pop() + " ")
            api_chat = OpenAIChat(f"http://{mesh.target('envoy')}", "auto", token, text=f"hello there {salts.pop()}")
            results = []
            for transport, chat in (("grpc", grpc_chat), ("openai-sse", api_chat)):
                r = await closed_loop(
                    chat,
                    conc,
                    seconds,
                    pids,
                    warmup_s=1.0 + stagger,
                    stagger_s=stagger,
                    gateway="tiermesh",
                    scenario=pace,
                    transport=transport,
                )
                results.append(show(r))
                await chat.close()
            print(added(*results), flush=True)
    finally:
        await mesh.sup.stop()


async def main() -> None:
    print("the OpenAI-compatible API against gRPC, through the same edge (64-token greetings, cache misses):")
    salts = list(SALTS)
    with tempfile.TemporaryDirectory() as tmp:
        for delay_ms in sorted({d for d, _ in SCENARIOS}):
            await one_pace(delay_ms, [s for s in SCENARIOS if s[0] == delay_ms], Path(tmp), salts)


if __name__ == "__main__":
    asyncio.run(main())
