"""Inference's cost over calling the provider directly, at concurrency 1 and 64, cache hits, and
the CPU each provider path spends per streamed call (lean OpenAI-compatible vs LiteLLM).

The simulator answers 48 tokens with no delay, so every figure is overhead, not model time.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc

from bench.stats import percentile
from services.cli.mesh import start_mesh

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

N = 200


async def run(once: Callable[[int], Awaitable[None]], concurrency: int, total: int) -> list[float]:
    times: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await once(i)
            times.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


def line(name: str, times: list[float], base: list[float] | None = None) -> str:
    out = f"  {name:<38} p50 {percentile(times, 50) * 1000:7.2f} ms  p99 {percentile(times, 99) * 1000:7.2f} ms"
    if base is not None:
        added50 = (percentile(times, 50) - percentile(base, 50)) * 1000
        added99 = (percentile(times, 99) - percentile(base, 99)) * 1000
        out += f"   added p50 {added50:+6.2f} ms  p99 {added99:+6.2f} ms"
    return out


async def provider_cpu(sim_url: str) -> None:
    from services.inference.config import Deployment
    from services.inference.provider import Call, Provider

    provider = Provider(100)
    await provider.warm_up()
    d = Deployment("bench", 1, "simulator", "sim-fast", 0, 0, 128_000, api_base=sim_url + "/v1")
    messages = [{"role": "user", "content": "hello there"}]
    call = Call(d, messages, 0, None, 30, "bench")
    for name, path in (("lean aiohttp SSE path", provider._lean), ("LiteLLM path", provider._litellm)):
        for _ in range(20):
            async for _ in path(call):
                pass
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(N):
            async for _ in path(call):
                pass
        cpu, wall = (time.process_time() - cpu0) / N, (time.perf_counter() - wall0) / N
        print(f"  {name:<38} CPU {cpu * 1000:6.2f} ms per streamed call (48 tokens), wall {wall * 1000:6.2f} ms")
    await provider.aclose()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = await start_mesh(
            Path(tmp),
            ["simulator", "inference"],
            TIERMESH_SIMULATOR__TOKEN_DELAY_MS="0",
            TIERMESH_LOG_LEVEL="warning",
        )
        try:
            print("Inference over a direct HTTP call to the provider (48-token streamed answers):")
            body = {
                "model": "sim-fast",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hello there"}],
            }
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(limits=limits, timeout=30) as http:

                async def direct(_: int) -> None:
                    async with http.stream("POST", mesh.sim_url + "/v1/chat/completions", json=body) as resp:
                        async for _ in resp.aiter_lines():
                            pass

                channel = mesh.channel("inference")
                stub = ipb_grpc.InferenceServiceStub(channel)

                def generate(bypass: bool, text: str = "hello there") -> Callable[[int], Awaitable[None]]:
                    async def once(_: int) -> None:
                        request = ipb.GenerateRequest(
                            messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)], tier=1, bypass_cache=bypass
                        )
                        async for _ in stub.Generate(request, timeout=30):
                            pass

                    return once

                for concurrency in (1, 64):
                    total = N if concurrency == 1 else N * 5
                    await run(direct, concurrency, 50)
                    base = await run(direct, concurrency, total)
                    await run(generate(True), concurrency, 50)
                    inf = await run(generate(True), concurrency, total)
                    print(line(f"direct to the simulator, concurrency {concurrency}", base))
                    print(line(f"through Inference, concurrency {concurrency}", inf, base))
                await generate(False, "cached question")(0)
                hits = await run(generate(False, "cached question"), 1, N)
                print(line("cache hit through Inference, conc. 1", hits))
                await channel.close()
            print("provider paths, in-process:")
            await provider_cpu(mesh.sim_url)
        finally:
            await mesh.sup.stop()


if __name__ == "__main__":
    asyncio.run(main())
