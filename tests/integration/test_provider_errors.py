"""Provider failures reach the client as canonical gRPC statuses with a message that says what
happened (fallbacks and retries come on top of this; here each tier has a single deployment)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc

from tests.integration.mesh import Mesh, start_mesh

pytestmark = pytest.mark.integration


def tier(name: str, model: str) -> str:
    return (
        f"[{{name: {name}, provider: simulator, model: '{model}',"
        " input_usd_per_mtok: 1, output_usd_per_mtok: 2, context_window: 1000}]"
    )


@pytest.fixture(scope="module")
async def faulty(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    m = await start_mesh(
        tmp_path_factory.mktemp("faulty"),
        ["simulator", "inference"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="5",
        TIERMESH_INFERENCE__TIERS__1=tier("broken", "sim:fault=500"),
        TIERMESH_INFERENCE__TIERS__2=tier("limited", "sim:fault=429:retry_after=3"),
        TIERMESH_INFERENCE__TIERS__3=tier("cut", "sim:fault=cut:3"),
        TIERMESH_INFERENCE__TIERS__4=tier("hangs", "sim:fault=hang"),
    )
    yield m
    await m.sup.stop()


async def generate(
    mesh: Mesh, tier_: int, timeout: float = 10
) -> tuple[list[ipb.GenerateResponse], grpc.aio.AioRpcError]:
    events: list[ipb.GenerateResponse] = []
    async with grpc.aio.insecure_channel(mesh.target("inference")) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        request = ipb.GenerateRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hi")], tier=tier_)  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for event in stub.Generate(request, timeout=timeout):
                events.append(event)
    return events, info.value


async def test_http_500_is_unavailable(faulty: Mesh) -> None:
    events, err = await generate(faulty, 1)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "broken failed: HTTP 500" in (err.details() or "")
    assert [e.WhichOneof("event") for e in events] == ["model_selected"]


async def test_http_429_is_unavailable_and_names_the_rate_limit(faulty: Mesh) -> None:
    _, err = await generate(faulty, 2)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "limited failed: HTTP 429" in (err.details() or "")


async def test_stream_cut_after_tokens_ends_unavailable_after_the_partial_text(faulty: Mesh) -> None:
    events, err = await generate(faulty, 3)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "cut failed" in (err.details() or "")
    assert [e.WhichOneof("event") for e in events] == ["model_selected", "delta", "delta", "delta"]


async def test_hanging_provider_ends_at_the_deadline_and_is_disconnected(faulty: Mesh) -> None:
    _, err = await generate(faulty, 4, timeout=1.0)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while (record := (await faulty.sim_records())[-1])["state"] != "disconnected" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert record["state"] == "disconnected"
