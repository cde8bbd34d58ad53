"""The answer cache in real Redis: identical requests replay identically, bypass works, and a Redis
that dies mid-test never fails a request."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc

from services.inference.cache import cache_key
from tests.integration.mesh import Mesh, start_mesh

pytestmark = pytest.mark.integration


def test_key_is_canonical() -> None:
    msgs = [("user", "Olá, café?")]
    a = cache_key(1, msgs, {"max_tokens": 100, "temperature": 0.5})
    b = cache_key(1, msgs, {"temperature": 0.5, "max_tokens": 100})  # other order, same request
    assert a == b
    assert (
        cache_key(1, [("user", "Ola\u0301, cafe\u0301?")], {"max_tokens": 100, "temperature": 0.5}) == a
    )  # NFD == NFC
    assert cache_key(2, msgs, {"max_tokens": 100, "temperature": 0.5}) != a
    assert cache_key(1, msgs, {"max_tokens": 100, "temperature": 0.5}, context_id="kb:42") != a
    assert cache_key(1, msgs, {"max_tokens": 101, "temperature": 0.5}) != a


async def generate(
    mesh: Mesh, text: str, bypass: bool = False, temperature: float | None = None
) -> list[ipb.GenerateResponse]:
    async with mesh.channel("inference") as channel:
        request = ipb.GenerateRequest(
            messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)], tier=c.TIER_FAST, bypass_cache=bypass
        )
        if temperature is not None:
            request.temperature = temperature
        return [e async for e in ipb_grpc.InferenceServiceStub(channel).Generate(request, timeout=20)]


async def stored_count(mesh: Mesh, redis_url: str = "redis://127.0.0.1:6379/0") -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        pattern = mesh.env["TIERMESH_INFERENCE__CACHE__NAMESPACE"] + ":*"
        return len(await client.keys(pattern))
    finally:
        await client.aclose(close_connection_pool=True)


async def stored(mesh: Mesh, count: int, redis_url: str = "redis://127.0.0.1:6379/0") -> None:
    """Wait until the mesh's cache namespace holds `count` answers (they are written just after
    the client got its answer)."""
    for _ in range(100):
        if await stored_count(mesh, redis_url) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the cache never held {count} answers")


def text_of(events: list[ipb.GenerateResponse]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


async def test_identical_request_is_replayed_identically(mesh: Mesh) -> None:
    text = f"cache me {uuid.uuid4()}"
    keys = await stored_count(mesh)
    first = await generate(mesh, text, temperature=0.2)
    await stored(mesh, keys + 1)
    second = await generate(mesh, text, temperature=0.2)
    assert not first[-1].done.cached and second[-1].done.cached
    assert text_of(second) == text_of(first)
    assert second[0].model_selected == first[0].model_selected
    one, two = first[-1].done, second[-1].done
    assert (two.usage.prompt_tokens, two.usage.completion_tokens) == (
        one.usage.prompt_tokens,
        one.usage.completion_tokens,
    )
    assert one.usage.cost_micro_usd > 0 and two.usage.cost_micro_usd == 0  # a hit costs nothing
    assert (two.model, two.deployment, two.finish_reason) == (one.model, one.deployment, one.finish_reason)
    seen = [r for r in await mesh.sim_records() if r["messages"][-1]["content"] == text]
    assert len(seen) == 1  # the provider answered once

    other_params = await generate(mesh, text, temperature=0.3)
    assert not other_params[-1].done.cached


async def test_bypass_asks_the_provider_again(mesh: Mesh) -> None:
    text = f"fresh please {uuid.uuid4()}"
    await generate(mesh, text)
    fresh = await generate(mesh, text, bypass=True)
    assert not fresh[-1].done.cached
    assert len([r for r in await mesh.sim_records() if r["messages"][-1]["content"] == text]) == 2


@pytest.fixture
async def mesh_on_private_redis(
    tmp_path: Path, private_redis: tuple[int, subprocess.Popen[bytes]]
) -> AsyncIterator[tuple[Mesh, subprocess.Popen[bytes]]]:
    port, proc = private_redis
    m = await start_mesh(
        tmp_path / "mesh",
        ["simulator", "inference"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="0",
        TIERMESH_INFERENCE__CACHE__URL=f"redis://127.0.0.1:{port}/0",
    )
    yield m, proc
    await m.sup.stop()


async def test_redis_stopped_mid_test_never_fails_a_request(
    mesh_on_private_redis: tuple[Mesh, subprocess.Popen[bytes]],
) -> None:
    mesh, redis_proc = mesh_on_private_redis
    before = await generate(mesh, "before the outage")
    await stored(mesh, 1, mesh.env["TIERMESH_INFERENCE__CACHE__URL"])
    assert (await generate(mesh, "before the outage"))[-1].done.cached
    redis_proc.terminate()
    redis_proc.wait(timeout=10)
    for i in range(6):
        events = await generate(mesh, "during the outage" if i % 2 else "before the outage")
        assert events[-1].HasField("done") and not events[-1].done.cached
        assert text_of(events)
    assert text_of(await generate(mesh, "before the outage")) == text_of(before)
    await asyncio.sleep(0.2)
    warnings = [line for line in mesh.logs("inference") if "answer cache unavailable" in line]
    assert len(warnings) == 1, warnings  # warned once, not per request
