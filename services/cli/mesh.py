"""The mesh, or some of its parts, on free ports with a data dir of its own: what tests and
benchmarks run, through the same supervisor as `tiermesh up`.

Every part gets its own port (and metrics and health port), its own answer-cache namespace and
rate-limit domain, so meshes never share state by accident. `Mesh` then knows how to reach each
part the way the mesh's own parts do (mutual TLS with a role's certificate) and the edge the way
a client does.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from services.cli.supervisor import StartError, Supervisor, parts_for, replica_env
from services.runtime import config, tls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PARTS = tuple(config.SERVICE_DEFAULT_PORTS)  # every part that listens somewhere
# The parts that also serve Prometheus metrics (services.<name>.metrics_port) and plaintext health.
METRICS_PARTS = tuple(config.METRICS_DEFAULT_PORTS)
HEALTH_PARTS = tuple(config.HEALTH_DEFAULT_PORTS)


def mesh_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """TIERMESH_* overrides that put every part (and every metrics endpoint) on its own free port
    and data dir."""
    env = {
        "TIERMESH_DATA_DIR": str(data_dir),
        "TIERMESH_LOG_LEVEL": "info",
        # Each test mesh caches in its own namespace: no answer from an earlier run can leak in.
        "TIERMESH_INFERENCE__CACHE__NAMESPACE": f"test-{uuid.uuid4().hex}",
        # ... and counts rate limits in its own domain.
        "TIERMESH_RATELIMIT__CONFIG__DOMAIN": f"test-{uuid.uuid4().hex}",
    }
    held = []
    try:  # hold every socket until all are chosen, so no two parts get the same port
        keys = [f"TIERMESH_SERVICES__{name.upper()}__PORT" for name in PARTS]
        keys += [f"TIERMESH_SERVICES__{name.upper()}__METRICS_PORT" for name in METRICS_PARTS]
        keys += [f"TIERMESH_SERVICES__{name.upper()}__HEALTH_PORT" for name in HEALTH_PARTS]
        for key in keys:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            env[key] = str(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    env.update(extra)
    return env


@dataclass
class Mesh:
    env: dict[str, str]
    tree: dict[str, Any]
    sup: Supervisor

    def target(self, name: str) -> str:
        return config.target(self.tree, name)

    def channel(self, name: str, role: str = tls.OPERATOR, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A channel to service `name` with the certificate of `role` (an operator by default):
        services take calls only over mutual TLS from the mesh's own parts."""
        return tls.channel(self.tree, name, role, options)

    def edge(self) -> grpc.aio.Channel:
        """A channel to the edge, as any client opens one."""
        return grpc.aio.insecure_channel(self.target("envoy"))

    def metrics_url(self, name: str) -> str:
        host, port = config.metrics_endpoint(self.tree, name)
        return f"http://{host}:{port}/metrics"

    @property
    def sim_url(self) -> str:
        host, port = config.endpoint(self.tree, "simulator")
        return f"http://{host}:{port}"

    async def sim_records(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            resp = await client.get(self.sim_url + "/_sim/requests")
            resp.raise_for_status()
            records: list[dict[str, Any]] = resp.json()
            return records

    async def sim_record(self, request_id: str) -> dict[str, Any]:
        matches = [r for r in await self.sim_records() if r["request_id"] == request_id]
        assert len(matches) == 1, f"simulator saw {len(matches)} requests with id {request_id}"
        return matches[0]

    def logs(self, name: str) -> list[str]:
        return list(self.sup[name].lines)

    def token(self, user: str = "", segment: str = "standard", ttl_s: int = 600, role: str = "", team: str = "") -> str:
        """A valid development token; by default for a fresh user, so tests never share a
        rate-limit bucket unless they mean to."""
        from gateway import keys

        return keys.mint(self.tree, user or f"tester-{uuid.uuid4().hex[:12]}", segment, ttl_s, role=role, team=team)

    def auth(self, user: str = "", segment: str = "standard") -> tuple[tuple[str, str], ...]:
        """gRPC metadata with a valid development token."""
        return (("authorization", f"Bearer {self.token(user, segment)}"),)


async def start_mesh(
    data_dir: Path, parts: Sequence[str] | None = None, replicas: Mapping[str, int] | None = None, **overrides: str
) -> Mesh:
    """Start the parts on fresh free ports (`replicas`: how many of a service, each on its own
    ports); once more on new ports if one was taken meanwhile."""
    for attempt in (1, 2):
        env = mesh_env(data_dir, **overrides)
        if replicas:
            env.update(replica_env(config.load(environ=env), replicas, lambda _port, _i: free_port()))
        tree = config.load(environ=env)
        sup = Supervisor(parts_for(tree, parts), env=env)
        try:
            await sup.start(timeout_s=60)
        except StartError as exc:
            if attempt == 2 or "in use" not in str(exc).lower():
                raise
            continue
        return Mesh(env, tree, sup)
    raise AssertionError("unreachable")
