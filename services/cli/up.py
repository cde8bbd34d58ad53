"""`tiermesh up`: the whole mesh on this machine, with prefixed logs, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from services.cli.supervisor import (
    PART_NAMES,
    WEB,
    StartError,
    Supervisor,
    format_line,
    parse_replicas,
    parts_for,
    replica_env,
    web_built,
)
from services.runtime import config, tls

_WIDTH = 10


def _echo(name: str, line: str) -> None:
    sys.stdout.write(f"{name:<{_WIDTH}}| {format_line(line)}\n")
    sys.stdout.flush()


async def _ingest(tree: dict[str, object], paths: list[str]) -> bool:
    import grpc

    from services.cli.knowledge import collect, ingest_documents

    collection = config.default_collection(tree)
    docs, _ = collect(paths, print)
    print(f"ingesting {len(docs)} documents into the knowledge base (collection {collection!r})", flush=True)
    async with tls.channel(tree, "knowledge", tls.OPERATOR) as channel:
        try:
            await ingest_documents(channel, collection, docs, lambda line: print(line, flush=True))
        except grpc.aio.AioRpcError as exc:
            print(f"tiermesh up: ingest failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    return True


def _replicas(spec: str) -> dict[str, str]:
    """The environment that runs the replicas `spec` asks for (`router=2,inference=3`): replica i
    of a port p listens on p + 100 * (i - 1). Knowledge in embedded mode is one process: more
    replicas need a Qdrant server, so it stays one and says so."""
    counts = parse_replicas(spec)
    tree = config.load()
    if counts.get("knowledge", 1) > 1 and not (
        config.section(tree, "knowledge", "qdrant").get("url") or os.environ.get("QDRANT_URL")
    ):
        print(
            "knowledge runs once: its embedded Qdrant (local mode) is one process; set knowledge.qdrant.url "
            "(or QDRANT_URL) to a Qdrant server to run more replicas",
            flush=True,
        )
        counts.pop("knowledge")
    return replica_env(tree, counts, lambda port, i: port + 100 * (i - 1))


async def up(timeout_s: float, ingest_paths: list[str] | None = None, replicas: str = "") -> int:
    if replicas:
        try:
            os.environ.update(_replicas(replicas))
        except (ValueError, config.ConfigError) as exc:
            print(f"tiermesh up: --replicas: {exc}", file=sys.stderr)
            return 2
    tree = config.load()
    names = [*PART_NAMES, WEB] if web_built() else list(PART_NAMES)
    if not web_built():
        print("the web app is not built, so it is not started: `make run` (or `make web`) builds it", flush=True)
    sup = Supervisor(parts_for(tree, names), echo=_echo)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        await sup.start(timeout_s)
    except StartError as exc:
        print(f"tiermesh up: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    print(f"\ntiermesh is up (healthy in {took:.1f} s):")
    for part in sup.parts.values():
        note = ""
        if part.not_serving_ok_after_s is not None and await part.probe() != "SERVING":
            note = "   NOT_SERVING: its database is unreachable (see its log); chats work, usage is buffered"
        print(f"  {part.name:<{_WIDTH}} {part.where}{note}")
    if ingest_paths and "knowledge" in sup.parts and not await _ingest(tree, ingest_paths):
        await sup.stop()
        return 1
    if WEB in sup.parts:
        host, port = config.endpoint(tree, WEB)
        print(f"Chat in a browser: http://{host}:{port}", flush=True)
    if "openai" in sup.parts:
        print(
            f"OpenAI SDKs: base URL http://{config.target(tree, 'envoy')}/v1 (a `tiermesh keys create` key)", flush=True
        )
    print('Try: .venv/bin/tiermesh chat "how do I pay with Pix?"   ·   Ctrl-C stops everything\n', flush=True)
    waiter = asyncio.ensure_future(sup.wait_any_exit())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if waiter in done:
        part = waiter.result()
        print(
            f"tiermesh up: {part.name} exited with code {part.proc.returncode if part.proc else '?'}; stopping",
            file=sys.stderr,
        )
        code = 1
    else:
        waiter.cancel()
    print("stopping ...", flush=True)
    await sup.stop()
    return code
