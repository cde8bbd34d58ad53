"""`make soak`: the whole mesh under moderate load for 30 minutes (by default), every process's RSS
sampled every 10 s, and its growth reported: from the first sample after warm-up to the mean of the
last minute, so one transient peak does not read as a leak. Not part of `make bench`.

Load: CLIENTS streamed chats back to back through Envoy (the simulator at 20 ms per token, the
answer cache on, a mix of repeated and new questions, some that search the knowledge base), with the rate
limits lifted for the soak's own user.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from bench.compare import BENCH_LIMITS
from bench.startup import rss_mb
from services.cli.mesh import Mesh, start_mesh

CLIENTS = 8
SAMPLE_S = 10.0
QUESTIONS = ("oi, tudo bem?", "como pago com pix?", "qual o prazo de entrega para Recife?", "how do refunds work?")


async def load(mesh: Mesh, stop: asyncio.Event, counts: list[int], failures: Counter[str], minutes: float) -> None:
    # A token that outlives the soak (the development default lasts 10 minutes).
    auth = (("authorization", f"Bearer {mesh.token('soak', 'standard', ttl_s=int(minutes * 60) + 3600)}"),)
    numbers = itertools.count()

    async def client() -> None:
        async with mesh.edge() as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            while not stop.is_set():
                n = next(numbers)
                # every other chat repeats a question (cache hits), the rest are new
                text = QUESTIONS[n % len(QUESTIONS)] if n % 2 else f"{QUESTIONS[n % len(QUESTIONS)]} ({n})"
                request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])
                try:
                    async for _ in stub.Chat(request, metadata=auth, timeout=60):
                        pass
                    counts[0] += 1
                except grpc.aio.AioRpcError as exc:  # counted by status and reported; the soak goes on
                    counts[1] += 1
                    failures[exc.code().name] += 1
                    await asyncio.sleep(1.0)  # a failing mesh is not hammered into failing more

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def main(minutes: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = await start_mesh(
            Path(tmp),
            None,
            TIERMESH_SIMULATOR__TOKEN_DELAY_MS="20",
            TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=BENCH_LIMITS,
        )
        stop = asyncio.Event()
        counts = [0, 0]
        failures: Counter[str] = Counter()
        runner = asyncio.create_task(load(mesh, stop, counts, failures, minutes))
        try:
            pids = {name: part.proc.pid for name, part in mesh.sup.parts.items() if part.proc is not None}
            await asyncio.sleep(min(60.0, minutes * 60 / 5))  # warm-up: caches, pools, first imports
            samples: dict[str, list[float]] = {name: [] for name in pids}
            anon: dict[str, list[float]] = {name: [] for name in pids}
            started = time.monotonic()
            while time.monotonic() - started < minutes * 60:
                for name, pid in pids.items():
                    samples[name].append(rss_mb(pid))
                    anon[name].append(rss_mb(pid, "RssAnon"))
                await asyncio.sleep(SAMPLE_S)
        finally:
            stop.set()
            await asyncio.gather(runner, return_exceptions=True)
            await mesh.sup.stop()
    tail = max(1, int(60 / SAMPLE_S))
    failed = ", ".join(f"{code} {n}" for code, n in failures.most_common()) or "none"
    print(
        f"soak: {minutes:g} min, {CLIENTS} clients, {counts[0]} chats, {counts[1]} failed ({failed}); RSS per process:"
    )

    # RSS counts the pages of mapped files too (an embedding model's weights, paged in when it
    # loads), so anonymous memory, where a leak would show, is reported beside it.
    def growth(xs: list[float]) -> tuple[float, float]:
        """(the mean of the last minute, its growth over the first sample in %)."""
        last = sum(xs[-tail:]) / len(xs[-tail:])
        return last, (last - xs[0]) / xs[0] * 100 if xs[0] else 0.0

    for name, xs in samples.items():
        (last, grew), ys = growth(xs), anon[name]
        anon_last, anon_grew = growth(ys)
        print(
            f"  {name:<10} {xs[0]:7.1f} MB -> {last:7.1f} MB  ({grew:+5.1f}%)   peak {max(xs):7.1f} MB   "
            f"anonymous {ys[0]:7.1f} MB -> {anon_last:7.1f} MB ({anon_grew:+5.1f}%)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    asyncio.run(main(parser.parse_args().minutes))
