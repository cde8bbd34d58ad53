"""Test helpers over the mesh launcher (services.cli.mesh): waiting for a condition, and gRPC-Web
framing as a browser's client speaks it."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from services.cli.mesh import HEALTH_PARTS, METRICS_PARTS, PARTS, Mesh, free_port, mesh_env, start_mesh

__all__ = [
    "HEALTH_PARTS",
    "METRICS_PARTS",
    "PARTS",
    "Mesh",
    "deployment",
    "eventually",
    "forget_litellm_clients",
    "free_port",
    "grpc_web_frame",
    "grpc_web_frames",
    "mesh_env",
    "off_the_minute",
    "parse_trailers",
    "start_mesh",
]


def deployment(name: str, model: str, price: float, window: int = 100_000) -> str:
    """A simulator deployment for `inference.tiers.<n>` (YAML): `model` may carry the simulator's
    behaviour (`sim:fault=cut:3`); output costs twice the input `price` (USD per million tokens)."""
    return (
        f"{{name: {name}, provider: simulator, model: '{model}', input_usd_per_mtok: {price},"
        f" output_usd_per_mtok: {price * 2}, context_window: {window}}}"
    )


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.05)


# gRPC-Web framing: 1 flag byte (0x80 = trailers) + 4-byte big-endian length + payload.


def grpc_web_frame(payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(payload)) + payload


async def grpc_web_frames(response: httpx.Response) -> AsyncIterator[tuple[int, bytes]]:
    """Yield (flag, payload) frames from a streamed gRPC-Web (binary) response as they arrive."""
    buf = b""
    async for chunk in response.aiter_raw():
        buf += chunk
        while len(buf) >= 5:
            flag, size = buf[0], struct.unpack(">I", buf[1:5])[0]
            if len(buf) < 5 + size:
                break
            yield flag, buf[5 : 5 + size]
            buf = buf[5 + size :]


def parse_trailers(payload: bytes) -> dict[str, str]:
    out = {}
    for line in payload.decode().split("\r\n"):
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip().lower()] = value.strip()
    return out


async def off_the_minute(needed_s: float = 10.0) -> None:
    """Wait, when the current minute has less than `needed_s` left, for the next one: rate limits
    count in windows aligned to the minute, and a test that fills one must not straddle two."""
    left = 60.0 - time.time() % 60.0
    if left < needed_s:
        await asyncio.sleep(left + 0.2)


def forget_litellm_clients() -> None:
    """Close the HTTP clients LiteLLM keeps between calls (and their connections to the mesh),
    and forget them, so the next call makes a fresh one."""
    import inspect

    import litellm

    cache = litellm.in_memory_llm_clients_cache
    for client in list(getattr(cache, "cache_dict", {}).values()):
        close = getattr(client, "close", None)
        if callable(close) and not inspect.iscoroutinefunction(close):
            close()
    cache.flush_cache()  # type: ignore[no-untyped-call]
