"""tiermesh beside LiteLLM's proxy, in one run on one machine, on the same simulator: the figures
the README's "Performance" section publishes.

Method (the same for both gateways):

- The simulator answers 64 tokens, with no delay between tokens (*unpaced*: every millisecond
  measured is the gateway's own) and then at 20 ms per token (*paced*, like a real model: what a
  deployment pays per streamed token at every hop).
- tiermesh: the whole mesh (Envoy with JWT and rate limits, Router, Inference, RateLimit,
  Analytics with PostgreSQL, the Redis cache), a greeting so Knowledge is not asked, the answer
  cache bypassed, rate limits checked on every chat against Redis but high enough never to deny.
  Called over gRPC, and over gRPC-Web as the browser calls it.
- LiteLLM's proxy (`litellm[proxy]`, the version tiermesh pins, one worker, a master key, no
  database), installed into `.bench/litellm-venv` on first use, called with its OpenAI API.
- *direct*: the simulator itself over HTTP, the floor both are measured against ("added" latency
  is a gateway's figure minus direct's, at the same percentile).
- Closed loop at concurrency 1, 16 and 64 (back to back, after a warm-up); then open loop at rising
  rates to find the highest rate sustained with p99 added latency under 50 ms and no errors;
  a cache hit end to end; the Router's decision in-process.
- CPU per chat: user + system time of every process of the gateway over the measured window
  divided by the chats in it (for tiermesh: Envoy, Router, Inference, RateLimit, Analytics; the
  simulator, Redis and PostgreSQL are not counted; for LiteLLM: its one process).
- Rate limits are read from Envoy's stats after the run: a verdict that failed open is reported.

Results: `bench/results/comparison.json`, `.md` (the table) and `.png` (latency against load, CPU
per chat per process).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.load import GrpcChat, GrpcWebChat, OpenAIChat, Result, closed_loop, open_loop
from services.cli.mesh import Mesh, free_port, start_mesh
from services.runtime import config
from services.runtime.config import REPO_ROOT

LITELLM = "litellm[proxy]==1.106.2"  # exactly the version tiermesh pins (1.107.0 was compromised)
VENV = REPO_ROOT / ".bench" / "litellm-venv"
MASTER_KEY = "sk-bench-only"
RESULTS = REPO_ROOT / "bench" / "results"
PARTS = ["simulator", "inference", "analytics", "router", "ratelimit", "envoy"]
# Every chat is checked against Redis; the limits are only high enough never to deny.
BENCH_LIMITS = (
    "[{key: segment, value: standard, descriptors: [{key: user,"
    " rate_limit: {unit: second, requests_per_unit: 1000000}}]},"
    " {key: remote_address, rate_limit: {unit: second, requests_per_unit: 1000000}}]"
)
CONCURRENCIES = (1, 16, 64)
SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))  # measured per closed-loop scenario
# Open-loop rates tried, per gateway (each for long enough to give ~200 chats, 4 to 10 s).
RATES = {"tiermesh": (40, 80, 120, 160, 200, 240, 280, 320, 400), "litellm": (5, 10, 15, 20, 30, 40)}
ADDED_P99_LIMIT_MS = 50.0

Scenario = Callable[[], Awaitable[Result]]


def ensure_venv() -> Path | None:
    """LiteLLM's proxy in a virtualenv of its own (made once); None when it cannot be installed."""
    litellm = VENV / "bin" / "litellm"
    if litellm.exists():
        return litellm
    VENV.parent.mkdir(exist_ok=True)
    print(f"installing {LITELLM} into {VENV} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", LITELLM, "httptools"], check=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"LiteLLM's proxy could not be installed ({exc}); it is left out of the comparison")
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


def show(r: Result) -> Result:
    load = f"c={r.concurrency}" if r.mode == "closed" else f"{r.offered_rate:g}/s"
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.cpu_ms.items(), key=lambda kv: -kv[1]))
    print(
        f"  {r.gateway:<9} {r.scenario:<8} {r.transport:<13} {load:>7}: {r.throughput:7.1f} chats/s,"
        f" first token p50 {r.first_token_ms.get('p50', 0):7.2f} ms p99 {r.first_token_ms.get('p99', 0):7.2f},"
        f" whole p50 {r.whole_ms.get('p50', 0):7.2f} p99 {r.whole_ms.get('p99', 0):7.2f},"
        f" errors {r.errors}, CPU/chat {r.cpu_total_ms:.2f} ms ({cpu})",
        flush=True,
    )
    return r


async def highest_rate(
    gateway: str, transport: str, chat: Any, pids: dict[str, int], floor_ms: float, results: list[Result]
) -> dict[str, Any]:
    """Open loop up the gateway's RATES until two rates in a row miss: p99 added latency at or
    over the limit, a failed chat, or fewer chats done than offered. The highest that passed wins."""
    best: dict[str, Any] = {"rate": 0.0, "lowest_tried": RATES[gateway][0]}
    misses = 0
    for rate in RATES[gateway]:
        seconds = min(10.0, max(4.0, 200 / rate))
        r = show(await open_loop(chat, rate, seconds, pids, gateway=gateway, scenario="rate", transport=transport))
        results.append(r)
        added = r.whole_ms["p99"] - floor_ms
        best.setdefault("added_p99_ms_at_lowest", round(added, 2))
        if r.errors or added >= ADDED_P99_LIMIT_MS or r.throughput < rate * 0.95:
            misses += 1
            if misses == 2:
                break
            continue
        misses = 0
        best |= {"rate": rate, "added_p99_ms": round(added, 2), "cpu_total_ms": r.cpu_total_ms}
    return best


async def ratelimit_verdicts(mesh: Mesh) -> dict[str, int]:
    """Envoy's rate-limit filter counters (summed over routes): ok, over_limit, error, failure_mode_allowed."""
    host, port = config.endpoint(mesh.tree, "envoy_admin")
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{host}:{port}/stats", params={"filter": r"\.ratelimit\."})).text
    out = {"ok": 0, "over_limit": 0, "error": 0, "failure_mode_allowed": 0}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        key = name.rsplit(".", 1)[-1]
        if key in out and value.strip().isdigit():
            out[key] += int(value)
    return out


async def one_pace(delay_ms: int, litellm: Path | None, folder: Path, results: list[Result]) -> dict[str, Any]:
    pace = "unpaced" if delay_ms == 0 else "paced"
    extra: dict[str, Any] = {}
    mesh = await start_mesh(
        folder / pace,
        PARTS,
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS=str(delay_ms),
        TIERMESH_SIMULATOR__ANSWER_TOKENS="64",
        TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=BENCH_LIMITS,
        TIERMESH_RATELIMIT__LOCAL_BACKSTOP="{max_tokens: 1000000, fill_interval_s: 1}",
    )
    proxy = None
    try:
        pids = {n: p.proc.pid for n, p in mesh.sup.parts.items() if p.proc is not None and n != "simulator"}
        # A paced chat takes 1.3 s: longer windows, and clients started out of step (see closed_loop).
        seconds = SECONDS if delay_ms == 0 else SECONDS + 8
        stagger = 0.0 if delay_ms == 0 else 1.4
        token = mesh.token("bench", "standard")
        edge_url = "http://" + mesh.target("envoy")

        async def scenario(gateway: str, transport: str, chat: Any, conc: int, pids_: dict[str, int]) -> Result:
            r = await closed_loop(
                chat,
                conc,
                seconds,
                pids_,
                warmup_s=1.0 + stagger,
                stagger_s=stagger,
                gateway=gateway,
                scenario=pace,
                transport=transport,
            )
            results.append(show(r))
            return r

        direct = OpenAIChat(mesh.sim_url, "sim-fast")
        floor = await scenario("direct", "openai-sse", direct, 1, {})
        grpc_chat = GrpcChat(mesh.target("envoy"), token)
        for conc in CONCURRENCIES:
            await scenario("tiermesh", "grpc", grpc_chat, conc, pids)
        web1 = GrpcWebChat(edge_url, token)
        web2 = GrpcWebChat(edge_url, token, http2=True)
        await scenario("tiermesh", "grpc-web-h1", web1, 1, pids)
        await scenario("tiermesh", "grpc-web-h2", web2, 16, pids)
        await web1.close()
        await web2.close()
        if delay_ms == 0:
            cached = GrpcChat(mesh.target("envoy"), token, bypass_cache=False, text="hello there")
            await cached(0)  # the answer is cached from here on
            r = await closed_loop(cached, 1, seconds, pids, gateway="tiermesh", scenario="cache-hit", transport="grpc")
            results.append(show(r))
            await cached.close()
            extra["tiermesh_rate"] = await highest_rate(
                "tiermesh", "grpc", grpc_chat, pids, floor.whole_ms["p50"], results
            )
        await grpc_chat.close()
        extra["ratelimit"] = await ratelimit_verdicts(mesh)
        print(f"  rate-limit verdicts at the edge ({pace}): {extra['ratelimit']}", flush=True)
        if litellm is not None:
            proxy, url = await start_proxy(litellm, mesh.sim_url, folder / pace)
            peer = OpenAIChat(url, "sim-fast", MASTER_KEY)
            for conc in CONCURRENCIES:
                await scenario("litellm", "openai-sse", peer, conc, {"litellm": proxy.pid})
            if delay_ms == 0:
                extra["litellm_rate"] = await highest_rate(
                    "litellm", "openai-sse", peer, {"litellm": proxy.pid}, floor.whole_ms["p50"], results
                )
            await peer.close()
        await direct.close()
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)
        await mesh.sup.stop()
    return extra


def router_decision() -> dict[str, float]:
    """The Router's decision in-process (features, both classifiers, policy) on the test split."""
    from bench.router_eval import timed
    from bench.stats import Histogram
    from services.router.policy import Router
    from services.router.train import load_rows

    router = Router.load()
    texts = [row["text"] for row in load_rows("test")]
    timed(router, texts, 1)  # warm-up
    histogram = Histogram()
    for seconds in timed(router, texts, 20):
        histogram.record(seconds)
    out = {f"{k}_us": round(v * 1000, 1) for k, v in histogram.summary().items()}
    print(f"  router decision in-process ({histogram.count} decisions): {out}", flush=True)
    return out


async def run() -> dict[str, Any]:
    litellm = ensure_venv()
    results: list[Result] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        print("unpaced (64 tokens, no delay between tokens):", flush=True)
        unpaced = await one_pace(0, litellm, Path(tmp), results)
        print("paced (64 tokens, 20 ms per token):", flush=True)
        paced = await one_pace(20, litellm, Path(tmp), results)
    report = {
        "machine": machine(),
        "litellm": LITELLM.split("==")[1] if litellm is not None else None,
        "seconds": round(time.monotonic() - started, 1),
        "results": [r.as_dict() for r in results],
        "highest_rate": {"tiermesh": unpaced.get("tiermesh_rate"), "litellm": unpaced.get("litellm_rate")},
        "ratelimit": {"unpaced": unpaced["ratelimit"], "paced": paced["ratelimit"]},
        "router_decision": router_decision(),
    }
    return report


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(), "kernel": platform.release()}


def main() -> None:
    from bench import report as publish

    report = asyncio.run(run())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "comparison.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    table = publish.markdown(report)
    (RESULTS / "comparison.md").write_text(table, encoding="utf-8")
    publish.chart(report, RESULTS / "comparison.png")
    print()
    print(table)
    print(f"written: {RESULTS / 'comparison.json'}, comparison.md, comparison.png ({report['seconds']} s)")


if __name__ == "__main__":
    main()
