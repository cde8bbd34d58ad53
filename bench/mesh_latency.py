"""Where a chat's latency goes: one chat at each hop (simulator direct, Inference, Router, Envoy),
called as the part in front of it calls it, and the CLI's start-up time.

Prints p50/p99 of time to first token and of the whole stream, concurrency 1, simulator with no
token delay so the figures are the mesh's own cost. (CPU per chat, and the comparison with
LiteLLM's proxy, are bench/compare.py's.)
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import httpx
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from bench.compare import BENCH_LIMITS
from bench.stats import percentile
from services.cli.mesh import start_mesh

N = 200
MESSAGES = [c.ChatMessage(role=c.CHAT_ROLE_USER, content="hello there")]
CALLER = {"router": "edge", "inference": "router"}


async def measure(name: str, once: Callable[[], Awaitable[tuple[float, float]]]) -> list[float]:
    for _ in range(20):
        await once()
    firsts, totals = [], []
    for _ in range(N):
        first, total = await once()
        firsts.append(first)
        totals.append(total)
    first50, first99 = percentile(firsts, 50) * 1000, percentile(firsts, 99) * 1000
    total50, total99 = percentile(totals, 50) * 1000, percentile(totals, 99) * 1000
    print(
        f"  {name:<28} first token p50 {first50:7.2f} ms  p99 {first99:7.2f} ms"
        f"   whole stream p50 {total50:7.2f} ms  p99 {total99:7.2f} ms"
    )
    return totals


PARTS = ("simulator", "inference", "analytics", "router", "ratelimit", "envoy")


async def main() -> None:
    database = f"tiermesh_bench_{uuid.uuid4().hex[:8]}"
    try:
        await _main(database)
    finally:
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def _main(database: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        # "hello there" is a greeting: Knowledge is never asked, so it is left out.
        mesh = await start_mesh(
            Path(tmp),
            PARTS,
            TIERMESH_ANALYTICS__DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{database}",
            TIERMESH_SIMULATOR__TOKEN_DELAY_MS="0",
            TIERMESH_LOG_LEVEL="warning",
            # Every chat is still checked against Redis; the limits are just high enough never to deny.
            TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=BENCH_LIMITS,
            TIERMESH_RATELIMIT__LOCAL_BACKSTOP="{max_tokens: 1000000, fill_interval_s: 1}",
        )
        print(f"mesh start-up ({', '.join(PARTS)}) healthy in {time.monotonic() - t0:.2f} s")
        print(f"chat latency, {N} sequential chats of 48 tokens, concurrency 1:")
        try:
            async with httpx.AsyncClient() as http:

                async def direct() -> tuple[float, float]:
                    body = {
                        "model": "sim-fast",
                        "stream": True,
                        "messages": [{"role": "user", "content": "hello there"}],
                    }
                    start = time.perf_counter()
                    first = 0.0
                    async with http.stream("POST", mesh.sim_url + "/v1/chat/completions", json=body) as resp:
                        async for line in resp.aiter_lines():
                            if not first and '"content": "' in line and '"content": ""' not in line:
                                first = time.perf_counter() - start
                    return first, time.perf_counter() - start

                await measure("simulator over raw HTTP", direct)

            async def over_grpc(
                target: str, make_call: Callable[[grpc.aio.Channel], object]
            ) -> Callable[[], Awaitable[tuple[float, float]]]:
                # Each part called as the part in front of it calls it.
                channel = mesh.edge() if target == "envoy" else mesh.channel(target, CALLER[target])

                async def once() -> tuple[float, float]:
                    start = time.perf_counter()
                    first = 0.0
                    async for event in make_call(channel):  # type: ignore[attr-defined]
                        if not first and event.HasField("delta"):
                            first = time.perf_counter() - start
                    return first, time.perf_counter() - start

                return once

            await measure(
                "Inference",
                await over_grpc(
                    "inference",
                    lambda ch: ipb_grpc.InferenceServiceStub(ch).Generate(
                        ipb.GenerateRequest(messages=MESSAGES, tier=1, bypass_cache=True)
                    ),
                ),
            )
            auth = mesh.auth("bench")
            chains = {}
            for name, target in (("Router -> Inference", "router"), ("Envoy (JWT) -> Router -> Inference", "envoy")):
                chains[target] = await measure(
                    name,
                    await over_grpc(
                        target,
                        lambda ch: pb_grpc.RouterServiceStub(ch).Chat(
                            pb.ChatRequest(messages=MESSAGES, bypass_cache=True), metadata=auth
                        ),
                    ),
                )
            added50 = (percentile(chains["envoy"], 50) - percentile(chains["router"], 50)) * 1000
            added99 = (percentile(chains["envoy"], 99) - percentile(chains["router"], 99)) * 1000
            print(f"Envoy + JWT + rate limits over Router directly: p50 {added50:+.2f} ms, p99 {added99:+.2f} ms")
        finally:
            await mesh.sup.stop()
    for cmd in (["health", "--help"], ["chat", "--help"]):
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "tiermesh"), *cmd], capture_output=True, check=True)
            runs.append(time.perf_counter() - start)
        print(f"`tiermesh {' '.join(cmd)}` start: median {statistics.median(runs) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
