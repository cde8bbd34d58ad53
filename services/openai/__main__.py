"""Entry point: `python -m services.openai` serves the OpenAI-compatible API behind the edge.

It listens on `services.openai.port` (HTTPS demanding a mesh certificate when TLS is on: only
Envoy reaches it) and answers `GET /health` on `services.openai.health_port` without TLS. On
SIGTERM it says `draining`, lets answers in flight finish within `shutdown_grace_s`, and stops.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from services.openai.server import build
from services.runtime import config, logs, tls
from services.runtime.server import run


async def main() -> None:
    tree = config.load()
    log = logs.setup("openai", config.get_str(tree, "log_level", "info", where=""))
    api = build(tree)
    host, port = config.endpoint(tree, "openai")
    _, health_port = config.health_endpoint(tree, "openai")
    grace_s = config.get_float(tree, "shutdown_grace_s", 20.0, where="", hi=3600)
    runner = web.AppRunner(api.app(), handler_cancellation=True, access_log=None, shutdown_timeout=grace_s)
    health = web.AppRunner(api.health_app(), access_log=None)
    await runner.setup()
    await health.setup()
    await web.TCPSite(runner, host, port, ssl_context=tls.server_ssl_context(tree, tls.OPENAI)).start()
    await web.TCPSite(health, host, health_port).start()
    scheme = "https" if tls.enabled(tree) else "http"
    log.info("listening", extra={"address": f"{scheme}://{host}:{port}/v1", "health": f"http://{host}:{health_port}"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    api.draining = True
    log.info("draining", extra={"grace_s": grace_s})
    await runner.cleanup()
    await health.cleanup()
    log.info("stopped")


if __name__ == "__main__":
    run(main)
