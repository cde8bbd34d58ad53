"""tiermesh beside LiteLLM's proxy, in one run, on the same simulator.

LiteLLM's proxy (`litellm[proxy]`, the version tiermesh pins, with httptools, one worker, a master
key, no database) is installed into a virtualenv of its own under `.bench/` on first use and
started on the simulator the mesh uses (64-token answers, no token delay, so the figures are each
gateway's own cost). Both are driven the same way: sequential streamed chats at concurrency 1, then
64 at once; tiermesh over gRPC through Envoy (JWT, rate limits that never deny, the answer cache
bypassed), LiteLLM over its OpenAI-compatible HTTP API with Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from bench.mesh_latency import BENCH_LIMITS, cpu_seconds
from bench.stats import percentile
from services.cli.mesh import Mesh, free_port, start_mesh
from services.runtime.config import REPO_ROOT

LITELLM = "litellm[proxy]==1.106.2"  # exactly the version tiermesh pins (1.107.0 was compromised)
VENV = REPO_ROOT / ".bench" / "litellm-venv"
MASTER_KEY = "sk-bench-only"
SEQUENTIAL = 200
CONCURRENT = 64
CONCURRENT_CHATS = 640
PARTS = ["simulator", "inference", "analytics", "router", "ratelimit", "envoy"]

Once = Callable[[int], Awaitable[tuple[float, float]]]  # chat number -> (first token, whole stream) in s


def ensure_venv() -> Path | None:
    """The proxy's own virtualenv (made once); None when it cannot be installed here."""
    litellm = VENV / "bin" / "litellm"
    if litellm.exists():
        return litellm
    VENV.parent.mkdir(exist_ok=True)
    print(f"installing {LITELLM} into {VENV} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", LITELLM, "httptools"], check=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"LiteLLM's proxy could not be installed ({exc}); the comparison is skipped")
        return None
    return litellm


async def start_proxy(litellm: Path, sim_url: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    cfg = folder / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: sim-fast\n"
        "    litellm_params: {model: openai/sim-fast, api_base: " + sim_url + "/v1, api_key: sim}\n"
        "general_settings: {master_key: " + MASTER_KEY + "}\n"
        "litellm_settings: {telemetry: false}\n",
        encoding="utf-8",
    )
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    proc = subprocess.Popen(
        [str(litellm), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env,
        stdout=(folder / "litellm.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(url + "/health/liveliness", timeout=1)).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
    proc.kill()
    raise SystemExit(f"LiteLLM's proxy did not start; see {folder / 'litellm.log'}")


def tiermesh_chat(mesh: Mesh) -> tuple[Once, Callable[[], Awaitable[None]]]:
    channel = mesh.edge()
    stub = pb_grpc.RouterServiceStub(channel)
    auth = mesh.auth("bench-peer")

    async def once(n: int) -> tuple[float, float]:
        request = pb.ChatRequest(
            messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=f"hello there {n}")], bypass_cache=True
        )
        started = time.perf_counter()
        first = 0.0
        async for event in stub.Chat(request, metadata=auth):
            if not first and event.HasField("delta"):
                first = time.perf_counter() - started
        return first, time.perf_counter() - started

    return once, channel.close


def litellm_chat(url: str) -> tuple[Once, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=CONCURRENT * 2))
    headers = {"authorization": f"Bearer {MASTER_KEY}"}

    async def once(n: int) -> tuple[float, float]:
        body = {"model": "sim-fast", "stream": True, "messages": [{"role": "user", "content": f"hello there {n}"}]}
        started = time.perf_counter()
        first = 0.0
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not first and line.startswith("data: {"):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):  # text, not the role chunk
                        first = time.perf_counter() - started
        return first, time.perf_counter() - started

    return once, client.aclose


async def drive(once: Once, pids: dict[str, int]) -> dict[str, float]:
    """Sequential then concurrent chats: percentiles, throughput and CPU per chat."""
    for i in range(20):
        await once(i)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    firsts, totals = [], []
    started = time.perf_counter()
    for i in range(SEQUENTIAL):
        first, total = await once(i)
        firsts.append(first)
        totals.append(total)
    sequential_rate = SEQUENTIAL / (time.perf_counter() - started)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    queue = iter(range(CONCURRENT_CHATS))

    async def client() -> None:
        for i in queue:
            await once(i)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENT)))
    concurrent_rate = CONCURRENT_CHATS / (time.perf_counter() - started)
    return {
        "first_p50_ms": percentile(firsts, 50) * 1000,
        "whole_p50_ms": percentile(totals, 50) * 1000,
        "rate_c1": sequential_rate,
        "rate_c64": concurrent_rate,
        "cpu_ms": sum(after[n] - before[n] for n in pids) / SEQUENTIAL * 1000,
    }


async def main() -> None:
    litellm = ensure_venv()
    if litellm is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mesh = await start_mesh(
            folder / "mesh",
            PARTS,
            TIERMESH_SIMULATOR__TOKEN_DELAY_MS="0",
            TIERMESH_SIMULATOR__ANSWER_TOKENS="64",
            TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=BENCH_LIMITS,
        )
        proxy = None
        try:
            pids = {n: p.proc.pid for n, p in mesh.sup.parts.items() if p.proc is not None and n != "simulator"}
            once, close = tiermesh_chat(mesh)
            ours = await drive(once, pids)
            await close()
            proxy, url = await start_proxy(litellm, mesh.sim_url, folder)
            once, close = litellm_chat(url)
            theirs = await drive(once, {"litellm": proxy.pid})
            await close()
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(timeout=30)
            await mesh.sup.stop()
    print(
        f"tiermesh beside LiteLLM's proxy ({LITELLM.split('==')[1]}, one worker), same simulator, 64 tokens, no delay:"
    )
    print("| per streamed chat | tiermesh via Envoy | LiteLLM proxy | ratio |")
    print("| --- | --- | --- | --- |")
    rows = (
        ("c=1: first token p50", "first_p50_ms", "ms", False),
        ("c=1: whole stream p50", "whole_p50_ms", "ms", False),
        ("c=1: throughput", "rate_c1", "/s", True),
        ("c=64: throughput", "rate_c64", "/s", True),
        ("CPU per chat, c=1 (every process of the gateway)", "cpu_ms", "ms", False),
    )
    for label, key, unit, higher_better in rows:
        ratio = ours[key] / theirs[key] if higher_better else theirs[key] / ours[key]
        print(f"| {label} | {ours[key]:.1f} {unit} | {theirs[key]:.1f} {unit} | tiermesh {ratio:.1f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
