"""Starts the parts of the mesh as child processes, waits until each is healthy, and stops them.

Used by `tiermesh up` and by the integration tests, so both run the mesh the same way. Children
get SIGTERM if the supervisor dies, their stdout is kept (last lines per part) and optionally
echoed with a readable prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.cli import probes
from services.runtime import config, tls

Probe = Callable[[], Awaitable[str]]
Echo = Callable[[str, str], None]


class StartError(RuntimeError):
    """A part exited or did not become healthy in time; the message carries its last log lines."""


@dataclass
class Part:
    name: str
    argv: list[str]
    probe: Probe
    where: str = ""
    # A part whose own dependency may be missing (Analytics without PostgreSQL) counts as started
    # once it has answered NOT_SERVING for this long: the mesh runs without it, and it says why.
    not_serving_ok_after_s: float | None = None
    # What this part's environment adds to the mesh's (a replica's own ports).
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    total_lines: int = 0  # every line ever read (`lines` keeps the last ones)
    pump: asyncio.Task[None] | None = None


_SETPRIV = shutil.which("setpriv")


def _die_with_parent(argv: list[str]) -> list[str]:
    """Have Linux SIGTERM the child when the supervisor dies, so nothing is left running.

    Done by `setpriv --pdeathsig` rather than a preexec_fn: running Python between fork and exec
    forces a plain fork(), whose gRPC fork handlers can abort the child when the parent has gRPC
    threads (the tests do); without a preexec_fn the child is started by vfork + exec."""
    return [_SETPRIV, "--pdeathsig", "TERM", "--", *argv] if _SETPRIV else argv


def format_line(raw: str) -> str:
    """A JSON log line as `HH:MM:SS level message key=value ...`; anything else unchanged."""
    try:
        rec = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(rec, dict):
        return raw
    ts = str(rec.pop("ts", ""))[11:19]
    level = str(rec.pop("level", "")).upper()
    msg = str(rec.pop("msg", ""))
    rec.pop("service", None)
    extras = " ".join(f"{k}={v}" for k, v in rec.items() if v not in ("", None))
    return " ".join(p for p in (ts, f"{level:<5}" if level else "", msg, extras) if p)


PART_NAMES = ("simulator", "inference", "knowledge", "analytics", "router", "openai", "ratelimit", "envoy")
# The browser app: run by `tiermesh up` once `make run` has built it, and by the browser tests.
WEB = "web"
# The services that may run more than once (`services.<name>.replicas`, `tiermesh up --replicas`).
REPLICABLE = ("inference", "knowledge", "analytics", "router", "ratelimit")
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
_MODULES = {"ratelimit": "gateway.ratelimit"}


def web_built() -> bool:
    """Has the web app's production build been made (`make web`)?"""
    return (WEB_DIR / ".next" / "standalone" / "server.js").is_file()


def web_command(tree: Mapping[str, Any]) -> list[str]:
    """The web app's standalone server, told where the edge is and, in development (no remote
    JWKS), where the development signing key is: its sign-in route mints tokens server-side, so
    the key never reaches a browser."""
    from gateway import keys  # only `up` and tests start the web app

    host, port = config.endpoint(tree, WEB)
    auth = keys.settings(tree)
    env = {
        "HOSTNAME": host,
        "PORT": str(port),
        "NODE_ENV": "production",
        "NEXT_TELEMETRY_DISABLED": "1",
        "TIERMESH_EDGE_URL": f"http://{config.target(tree, 'envoy')}",
        "TIERMESH_AUTH_ISSUER": auth.issuer,
        "TIERMESH_AUTH_AUDIENCE": auth.audience,
    }
    if not auth.jwks_uri:
        dev = keys.dev_keys(tree)
        env |= {"TIERMESH_DEV_KEY_FILE": str(dev.private_path), "TIERMESH_DEV_JWKS_FILE": str(dev.jwks_path)}
    node = shutil.which("node") or "node"
    return ["env", *(f"{k}={v}" for k, v in env.items()), node, str(WEB_DIR / ".next" / "standalone" / "server.js")]


def probes_for(tree: Mapping[str, Any]) -> dict[str, tuple[Probe, str]]:
    """Each part's health probe and the address it serves, by part name."""
    sim_host, sim_port = config.endpoint(tree, "simulator")
    admin_host, admin_port = config.endpoint(tree, "envoy_admin")
    out: dict[str, tuple[Probe, str]] = {
        "simulator": (
            lambda: probes.http_ok(f"http://{sim_host}:{sim_port}/health"),
            f"http://{sim_host}:{sim_port}/v1",
        ),
    }
    scheme = "grpcs" if tls.enabled(tree) else "grpc"
    for name in ("inference", "knowledge", "analytics", "router", "ratelimit"):
        for i, r in enumerate(config.replicas(tree, name), start=1):
            out[replica_name(name, i)] = (
                functools.partial(probes.grpc_health, f"{r.host}:{r.health_port}"),
                f"{scheme}://{r.host}:{r.port} (health grpc://{r.host}:{r.health_port})",
            )
    api_host, api_port = config.endpoint(tree, "openai")
    api_health = config.health_endpoint(tree, "openai")[1]
    out["openai"] = (
        lambda: probes.http_ok(f"http://{api_host}:{api_health}/health", expect="ok"),
        f"{'https' if tls.enabled(tree) else 'http'}://{api_host}:{api_port}/v1 (health http://{api_host}:{api_health})",
    )
    out["envoy"] = (
        lambda: probes.http_ok(f"http://{admin_host}:{admin_port}/ready", expect="LIVE"),
        f"grpc+grpc-web://{config.target(tree, 'envoy')} (admin http://{admin_host}:{admin_port})",
    )
    web_host, web_port = config.endpoint(tree, WEB)
    out[WEB] = (
        lambda: probes.http_ok(f"http://{web_host}:{web_port}/api/health", expect="ok"),
        f"http://{web_host}:{web_port} (the browser app)",
    )
    return out


def parts_for(tree: Mapping[str, Any], names: Sequence[str] | None = None) -> list[Part]:
    """The parts `tiermesh up` runs, in start order; writes and validates Envoy's config."""
    chosen = list(names or PART_NAMES)
    unknown = [n for n in chosen if n not in (*PART_NAMES, WEB)]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; parts are {', '.join((*PART_NAMES, WEB))}")
    if WEB in chosen and not web_built():
        raise ValueError(f"the web app is not built: run `make web` (or `make run`), which builds {WEB_DIR}")
    checks = probes_for(tree)
    tls.ensure_dev_certs(tree)  # every part finds its certificate (made once, renewed near expiry)
    parts = []
    for name in chosen:
        if name == "envoy":
            from gateway import envoy  # only `up` and tests build the Envoy config

            path = envoy.write(tree)
            envoy.validate(path)
            argv = envoy.command(path)
        elif name == WEB:
            argv = web_command(tree)
        else:
            argv = [sys.executable, "-m", _MODULES.get(name, f"services.{name}")]
        wait = 5.0 if name == "analytics" else None
        if name not in REPLICABLE:
            probe, where = checks[name]
            parts.append(Part(name, argv, probe, where, not_serving_ok_after_s=wait))
            continue
        for i, r in enumerate(config.replicas(tree, name), start=1):
            key = f"TIERMESH_SERVICES__{name.upper()}__"
            own = {
                f"{key}PORT": str(r.port),
                f"{key}METRICS_PORT": str(r.metrics_port),
                f"{key}HEALTH_PORT": str(r.health_port),
            }
            probe, where = checks[replica_name(name, i)]
            parts.append(
                Part(replica_name(name, i), argv, probe, where, not_serving_ok_after_s=wait, env=own if i > 1 else {})
            )
    return parts


def parse_replicas(text: str) -> dict[str, int]:
    """`router=2,inference=3` -> {"router": 2, "inference": 3}; ValueError naming what is wrong."""
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("=")
        if name not in REPLICABLE:
            raise ValueError(f"{name!r} cannot run as replicas here; these can: {', '.join(REPLICABLE)}")
        if not count.isdigit() or not 1 <= int(count) <= 16:
            raise ValueError(f"{item!r}: give each service a count from 1 to 16, like router=2")
        out[name] = int(count)
    return out


def replica_env(
    tree: Mapping[str, Any], counts: Mapping[str, int], port_for: Callable[[int, int], int]
) -> dict[str, str]:
    """The configuration (as TIERMESH_* variables) that runs `counts` replicas of each service:
    replica i (from 2) of a port p listens on `port_for(p, i)`."""
    env = {}
    for name, count in counts.items():
        first = config.replicas(tree, name)[0]
        extra = []
        for i in range(2, count + 1):
            metrics = port_for(first.metrics_port, i) if first.metrics_port else 0
            port, health = port_for(first.port, i), port_for(first.health_port, i)
            extra.append(f"{{port: {port}, metrics_port: {metrics}, health_port: {health}}}")
        env[f"TIERMESH_SERVICES__{name.upper()}__REPLICAS"] = f"[{', '.join(extra)}]"
    return env


def replica_name(name: str, i: int) -> str:
    """The part name of replica `i` (from 1): `router`, then `router-2`, `router-3` ..."""
    return name if i == 1 else f"{name}-{i}"


class Supervisor:
    def __init__(self, parts: list[Part], *, env: Mapping[str, str] | None = None, echo: Echo | None = None) -> None:
        self.parts = {p.name: p for p in parts}
        self.env = {
            # gRPC's own INFO lines (a refused TLS handshake, say) are not the services' JSON logs.
            "GRPC_VERBOSITY": "ERROR",
            **os.environ,
            **(env or {}),
            "PYTHONUNBUFFERED": "1",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        self.echo = echo

    def __getitem__(self, name: str) -> Part:
        return self.parts[name]

    async def _pump(self, part: Part) -> None:
        assert part.proc is not None and part.proc.stdout is not None
        async for raw in part.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            part.lines.append(line)
            part.total_lines += 1
            if self.echo is not None:
                self.echo(part.name, line)

    async def spawn(self, part: Part) -> None:
        part.proc = await asyncio.create_subprocess_exec(
            *_die_with_parent(part.argv),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={**self.env, **part.env},
            limit=1 << 20,
        )
        part.pump = asyncio.create_task(self._pump(part))

    def _tail(self, part: Part, n: int = 25) -> str:
        return "\n".join(list(part.lines)[-n:])

    async def wait_healthy(self, part: Part, timeout_s: float) -> float:
        started = time.monotonic()
        status = "not checked"
        not_serving_since: float | None = None
        while time.monotonic() - started < timeout_s:
            if part.proc is not None and part.proc.returncode is not None:
                raise StartError(f"{part.name} exited with code {part.proc.returncode}:\n{self._tail(part)}")
            status = await part.probe()
            if status == probes.SERVING:
                return time.monotonic() - started
            if status == "NOT_SERVING" and part.not_serving_ok_after_s is not None:
                not_serving_since = not_serving_since or time.monotonic()
                if time.monotonic() - not_serving_since >= part.not_serving_ok_after_s:
                    return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise StartError(f"{part.name} not healthy after {timeout_s:.0f} s (last status {status}):\n{self._tail(part)}")

    async def start(self, timeout_s: float = 60.0) -> dict[str, float]:
        """Start every part at once, then wait for all; returns seconds until each was healthy."""
        t0 = time.monotonic()
        for part in self.parts.values():
            await self.spawn(part)
        try:
            await asyncio.gather(*(self.wait_healthy(p, timeout_s) for p in self.parts.values()))
        except BaseException:
            await self.stop()
            raise
        return {"all": time.monotonic() - t0}

    async def wait_any_exit(self) -> Part:
        """Return the first part whose process exits."""
        waits = {asyncio.ensure_future(p.proc.wait()): p for p in self.parts.values() if p.proc is not None}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for fut in pending:
            fut.cancel()
        return waits[next(iter(done))]

    async def stop_part(self, part: Part, grace_s: float = 10.0) -> int | None:
        proc = part.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if part.pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(part.pump, 2)
        return proc.returncode

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every part, edge first, so no new work arrives while the rest drain."""
        for part in reversed(list(self.parts.values())):
            await self.stop_part(part, grace_s)
