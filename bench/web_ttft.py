"""Time to the first visible token in a real browser, beside gRPC's time to first token, in one run.

One mesh with the web app (the simulator paced at 20 ms per token, as a real model streams);
20 chats typed into Debian's chromium (playwright-core) and timed from the Enter key to the first
text on screen, then 20 chats over gRPC through the same Envoy, timed from the call to the first
delta. The difference is what the browser path adds: gRPC-Web, fetch streaming and React.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from bench.stats import percentile
from services.cli.mesh import Mesh, free_port, start_mesh
from services.cli.supervisor import PART_NAMES, WEB, WEB_DIR, web_built

CHATS = 20
LIMITS = "[{key: remote_address, rate_limit: {unit: second, requests_per_unit: 1000000}}]"


async def grpc_first_tokens(mesh: Mesh, n: int) -> list[float]:
    auth = mesh.auth("bench-grpc", "enterprise")
    out = []
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        for i in range(n + 3):
            request = pb.ChatRequest(
                messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=f"hello there, chat number {i} {time.time()}")]
            )
            started = time.perf_counter()
            first = None
            async for event in stub.Chat(request, metadata=auth):
                if first is None and event.HasField("delta"):
                    first = time.perf_counter() - started
            if i >= 3 and first is not None:
                out.append(first * 1000)
    return out


async def browser_first_tokens(mesh: Mesh, web_url: str, n: int) -> list[float]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(WEB_DIR / "bench" / "ttft.mjs"),
        str(n),
        cwd=WEB_DIR,
        env={**os.environ, "TIERMESH_WEB_URL": web_url, "TIERMESH_CHROMIUM": shutil.which("chromium") or ""},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the browser run failed: {err.decode()[-2000:]}")
    figures: list[float] = json.loads(out.decode().strip().splitlines()[-1])["first_token_ms"]
    return figures


async def main() -> None:
    if not web_built() or not shutil.which("chromium"):
        print("web TTFT: skipped (run `make web browser` first)")
        return
    web_port = free_port()
    origin = f"http://127.0.0.1:{web_port}"
    with tempfile.TemporaryDirectory() as tmp:
        mesh = await start_mesh(
            Path(tmp),
            [*PART_NAMES, WEB],
            TIERMESH_SERVICES__WEB__PORT=str(web_port),
            TIERMESH_ENVOY__CORS_ORIGINS=json.dumps([origin]),
            TIERMESH_SIMULATOR__TOKEN_DELAY_MS="20",
            TIERMESH_SIMULATOR__ANSWER_TOKENS="32",
            TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=LIMITS,
        )
        try:
            browser = await browser_first_tokens(mesh, origin, CHATS)
            grpc_ = await grpc_first_tokens(mesh, CHATS)
        finally:
            await mesh.sup.stop()
    print(f"time to first token, {CHATS} chats each, simulator at 20 ms per token, through Envoy:")
    for name, xs in (("browser (visible on screen)", browser), ("gRPC client (first delta)", grpc_)):
        p50, p90 = (percentile([x / 1000 for x in xs], p) * 1000 for p in (50, 90))
        print(f"  {name:<28} p50 {p50:7.1f} ms  p90 {p90:7.1f} ms  max {max(xs):7.1f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
