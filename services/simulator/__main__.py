"""Entry point: `python -m services.simulator` serves the OpenAI-compatible simulator."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from services.runtime import config, logs
from services.runtime.server import run
from services.simulator.faults import Behaviour
from services.simulator.server import Simulator


async def main() -> None:
    tree = config.load()
    sim_cfg = config.section(tree, "simulator")
    log = logs.setup("simulator", config.get_str(tree, "log_level", "info", where=""))
    host, port = config.endpoint(tree, "simulator")
    default = Behaviour(
        token_delay_ms=config.get_float(sim_cfg, "token_delay_ms", 20.0, where="simulator", hi=60_000),
        tokens=config.get_int(sim_cfg, "answer_tokens", 48, where="simulator", lo=1, hi=100_000),
    )
    runner = web.AppRunner(Simulator(default).app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("listening", extra={"address": f"http://{host}:{port}/v1", "token_delay_ms": default.token_delay_ms})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    log.info("stopped")


if __name__ == "__main__":
    run(main)
