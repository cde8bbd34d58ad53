"""SIGTERM to Router: NOT_SERVING at once, new calls refused, the open stream still completes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.cli import probes
from services.runtime import config
from services.runtime.server import LIVENESS
from tests.integration.mesh import Mesh, start_mesh

pytestmark = pytest.mark.integration


@pytest.fixture
async def own_mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    # Its own processes: this test kills the Router. 60 tokens at 40 ms: a 2.4 s answer.
    m = await start_mesh(
        tmp_path,
        ["simulator", "inference", "router"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="40",
        TIERMESH_SIMULATOR__ANSWER_TOKENS="60",
        TIERMESH_SHUTDOWN_GRACE_S="15",
    )
    yield m
    await m.sup.stop()


async def test_sigterm_drains_open_stream_and_refuses_new_calls(own_mesh: Mesh) -> None:
    router = own_mesh.sup["router"]
    assert router.proc is not None
    host, health_port = config.health_endpoint(own_mesh.tree, "router")
    request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="a long answer, please")])
    events: list[pb.ChatResponse] = []
    health_after_sigterm = alive_while_draining = ""
    refused: grpc.aio.AioRpcError | None = None
    async with own_mesh.channel("router") as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        async for event in stub.Chat(request, timeout=30):
            events.append(event)
            if len(events) == 3:  # decision + two deltas: the stream is open and mid-answer
                router.proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    health_after_sigterm = await probes.grpc_health(f"{host}:{health_port}")
                    if health_after_sigterm == "NOT_SERVING":
                        break
                    await asyncio.sleep(0.02)
                # ... but alive: a liveness probe must not have it killed while it drains.
                alive_while_draining = await probes.grpc_health(f"{host}:{health_port}", service=LIVENESS)
                async with own_mesh.channel("router") as other:
                    try:
                        async for _ in pb_grpc.RouterServiceStub(other).Chat(request, timeout=5):
                            pass
                    except grpc.aio.AioRpcError as exc:
                        refused = exc
                assert router.proc.returncode is None, "the router must not exit while a stream is open"
    assert health_after_sigterm == "NOT_SERVING"
    assert alive_while_draining == "SERVING"
    assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (refused.details() or "")
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "done", "the open stream was cut instead of drained"
    assert events[-1].done.usage.completion_tokens == 60
    assert await asyncio.wait_for(router.proc.wait(), 15) == 0
    assert any('"drained"' in line for line in own_mesh.logs("router"))
