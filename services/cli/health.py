"""`tiermesh health`: the health of every part `tiermesh up` runs."""

from __future__ import annotations

import asyncio
import json

from services.cli import probes
from services.cli.supervisor import WEB, probes_for, web_built
from services.runtime import config


async def health(as_json: bool) -> int:
    tree = config.load()
    checks = probes_for(tree)
    names = list(checks)
    statuses = await asyncio.gather(*(probe() for probe, _ in checks.values()))
    if not web_built():  # `tiermesh up` does not start an app that was never built
        statuses[names.index(WEB)] = "NOT_BUILT"
    wheres = [where for _, where in checks.values()]
    if as_json:
        print(json.dumps({n: {"status": s, "address": w} for n, s, w in zip(names, statuses, wheres, strict=True)}))
    else:
        for n, s, w in zip(names, statuses, wheres, strict=True):
            print(f"{n:<10} {s:<12} {w}")
        status = dict(zip(names, statuses, strict=True))
        if status.get("analytics") == "NOT_SERVING":
            from services.analytics.config import load as analytics_config
            from services.analytics.config import redact_url

            url = redact_url(analytics_config(tree).database_url)
            print(
                f"\nanalytics is up but cannot reach PostgreSQL at {url}: chats work and usage is buffered. "
                "Start PostgreSQL (e.g. `pg_ctlcluster 15 main start`) or set analytics.database_url."
            )
        elif any(s not in (probes.SERVING, "NOT_BUILT") for s in statuses):
            print("\nSome parts are not serving: start the mesh with `make run` (or `tiermesh up`).")
    return 0 if all(s in (probes.SERVING, "NOT_BUILT") for s in statuses) else 1
