"""Health probes for every part of the mesh: gRPC health for services, HTTP for the rest."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"


async def grpc_health(target: str, timeout_s: float = 1.0, service: str = "") -> str:
    """The grpc.health.v1 status of `target` (SERVING, NOT_SERVING ...), or why it is unreachable."""
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.aio.AioRpcError as exc:
        return (
            "UNREACHABLE"
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            else exc.code().name
        )


def _http_get(url: str, timeout_s: float) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback URLs from config
        return resp.status, resp.read(200).decode(errors="replace")


async def http_ok(url: str, timeout_s: float = 1.0, expect: str = "") -> str:
    """SERVING when `url` answers 200 (and its body contains `expect`), else what went wrong."""
    try:
        status, body = await asyncio.to_thread(_http_get, url, timeout_s)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, urllib.error.URLError):
        return "UNREACHABLE"
    if status == 200 and expect in body:
        return SERVING
    return f"HTTP {status} {body.strip()[:40]}"
