"""`tiermesh health`: the health of every part `tiermesh up` runs."""

from __future__ import annotations

import asyncio
import json

from services.cli import probes
from services.cli.supervisor import probes_for
from services.runtime import config


async def health(as_json: bool) -> int:
    tree = config.load()
    checks = probes_for(tree)
    names = list(checks)
    statuses = await asyncio.gather(*(probe() for probe, _ in checks.values()))
    wheres = [where for _, where in checks.values()]
    if as_json:
        print(json.dumps({n: {"status": s, "address": w} for n, s, w in zip(names, statuses, wheres, strict=True)}))
    else:
        for n, s, w in zip(names, statuses, wheres, strict=True):
            print(f"{n:<10} {s:<12} {w}")
        if any(s != probes.SERVING for s in statuses):
            print("\nSome parts are not serving: start the mesh with `make run` (or `tiermesh up`).")
    return 0 if all(s == probes.SERVING for s in statuses) else 1
