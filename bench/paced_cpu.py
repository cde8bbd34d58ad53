"""CPU per streamed chat at a real model's pace: 20 ms per token, 64 tokens, 16 chats at once,
through Envoy, with the answer cache off; once with every piece of text sent as it arrives
(`inference.flush_interval_ms` 0) and once with the default flush interval, to show what
merging text within the interval saves at every hop."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from bench.mesh_latency import BENCH_LIMITS, cpu_seconds
from services.cli.mesh import Mesh, start_mesh
from services.runtime import config

CONCURRENCY = 16
CHATS_PER_CLIENT = 10
PARTS = ["simulator", "inference", "analytics", "router", "ratelimit", "envoy"]


async def run(mesh: Mesh, chats_per_client: int) -> tuple[int, int]:
    """(chats, delta messages) of CONCURRENCY clients chatting back to back."""
    auth = mesh.auth("bench-paced")
    counts = [0, 0]

    async def client(n: int) -> None:
        async with mesh.edge() as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            for i in range(chats_per_client):
                text = f"hello from client {n}, chat {i}"
                request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])
                async for event in stub.Chat(request, metadata=auth):
                    counts[1] += event.HasField("delta")
                counts[0] += 1

    await asyncio.gather(*(client(n) for n in range(CONCURRENCY)))
    return counts[0], counts[1]


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
            pids = {name: part.proc.pid for name, part in mesh.sup.parts.items() if part.proc is not None}
            await run(mesh, 2)  # warm-up
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            chats, deltas = await run(mesh, CHATS_PER_CLIENT)
            took = time.monotonic() - started
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        finally:
            await mesh.sup.stop()
    per = {name: (after[name] - before[name]) / chats * 1000 for name in pids}
    mesh_ms = sum(v for name, v in per.items() if name != "simulator")
    parts = ", ".join(
        f"{name} {v:.2f}" for name, v in sorted(per.items(), key=lambda kv: -kv[1]) if name != "simulator"
    )
    print(
        f"  flush_interval_ms {flush_ms:>3}: {deltas / chats:5.1f} messages per answer, {chats / took:5.1f} chats/s,"
        f" CPU per chat: mesh {mesh_ms:5.2f} ms = {parts} (simulator {per['simulator']:.2f}, not counted)"
    )
    sys.stdout.flush()


async def main() -> None:
    default = config.get_int(
        config.section(config.load(environ={}), "inference"), "flush_interval_ms", 40, where="inference"
    )
    print(f"paced chats (20 ms per token, 64 tokens, {CONCURRENCY} at once, through Envoy):")
    await measure(0)
    await measure(default)


if __name__ == "__main__":
    asyncio.run(main())
