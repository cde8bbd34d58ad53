"""Replicas behind the edge and behind each other: 2 Routers and 3 Inferences under steady load.
Calls spread over every replica; SIGTERM to one Router and one Inference mid-load fails no chat
(their open streams finish, new calls go to the survivors); started again, they are back in
rotation."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.cli.supervisor import parse_replicas, replica_name
from services.runtime import config
from tests.integration.mesh import Mesh, start_mesh

pytestmark = pytest.mark.integration

ROUTERS, INFERENCES = 2, 3
WORKERS = 8
LIMITS = (
    "[{key: segment, value: enterprise, descriptors: [{key: user,"
    " rate_limit: {unit: second, requests_per_unit: 1000000}}]},"
    " {key: remote_address, rate_limit: {unit: second, requests_per_unit: 1000000}}]"
)


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[Mesh]:
    m = await start_mesh(
        tmp_path,
        ["simulator", "inference", "router", "ratelimit", "envoy"],
        replicas={"router": ROUTERS, "inference": INFERENCES},
        # 24 tokens 15 ms apart: a ~0.4 s stream, so a SIGTERM always finds some open.
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="15",
        TIERMESH_SIMULATOR__ANSWER_TOKENS="24",
        TIERMESH_SHUTDOWN_GRACE_S="10",
        TIERMESH_INFERENCE__CACHE__ENABLED="false",
        TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=LIMITS,
        TIERMESH_INFERENCE__ANALYTICS="{enabled: false}",
    )
    yield m
    await m.sup.stop()


def served(mesh: Mesh, name: str, since: dict[str, int], message: str) -> int:
    """How many `message` log lines replica `name` wrote since the `since` marks."""
    part = mesh.sup[name]
    new = part.total_lines - since.get(name, 0)
    lines = list(part.lines)[-new:] if new else []
    count = 0
    for line in lines:
        try:
            count += json.loads(line).get("msg") == message
        except ValueError:
            continue
    return count


class Load:
    """WORKERS clients chatting through the edge back to back until stopped; every outcome kept."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.ok = 0
        self.failures: list[str] = []
        self.stop = asyncio.Event()
        self.auth = mesh.auth("steady", "enterprise")

    async def worker(self, n: int) -> None:
        async with self.mesh.edge() as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            i = 0
            while not self.stop.is_set():
                i += 1
                text = f"hello from worker {n}, chat {i}"
                request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])
                try:
                    events = [e async for e in stub.Chat(request, metadata=self.auth, timeout=30)]
                except grpc.aio.AioRpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                    continue
                if events and events[-1].HasField("done") and not events[-1].done.degraded:
                    self.ok += 1
                else:
                    self.failures.append(f"incomplete: {[e.WhichOneof('event') for e in events]}")

    async def until(self, total: int) -> None:
        while self.ok + len(self.failures) < total:
            await asyncio.sleep(0.05)


def marks(mesh: Mesh) -> dict[str, int]:
    return {name: part.total_lines for name, part in mesh.sup.parts.items()}


async def test_load_spreads_and_survives_sigterm_to_a_router_and_an_inference(replicated: Mesh) -> None:
    mesh = replicated
    routers = [replica_name("router", i) for i in range(1, ROUTERS + 1)]
    inferences = [replica_name("inference", i) for i in range(1, INFERENCES + 1)]
    assert set(routers) | set(inferences) <= set(mesh.sup.parts)
    load = Load(mesh)
    workers = [asyncio.create_task(load.worker(n)) for n in range(WORKERS)]
    try:
        # 1. Spread: every replica takes its share.
        before = marks(mesh)
        await load.until(80)
        spread = Counter({r: served(mesh, r, before, "routed") for r in routers})
        spread |= Counter({i: served(mesh, i, before, "generated") for i in inferences})
        print(f"chats per replica over the first {load.ok} chats: {dict(spread)}")
        assert all(spread[r] >= 10 for r in [*routers, *inferences]), spread

        # 2. SIGTERM one Router and one Inference mid-load; their open streams finish.
        gone = [routers[-1], inferences[-1]]
        stopping = [asyncio.create_task(mesh.sup.stop_part(mesh.sup[name], grace_s=15)) for name in gone]
        codes = await asyncio.gather(*stopping)
        assert codes == [0, 0], f"the replicas did not drain and exit cleanly: {codes}"
        before = marks(mesh)
        done_before = load.ok
        await load.until(load.ok + len(load.failures) + 60)
        survivors = Counter(
            {
                name: served(mesh, name, before, m)
                for name, m in [*((r, "routed") for r in routers[:-1]), *((i, "generated") for i in inferences[:-1])]
            }
        )
        print(f"after SIGTERM, {load.ok - done_before} chats served by the survivors: {dict(survivors)}")
        assert all(survivors[name] > 0 for name in survivors), survivors

        # 3. Started again, they are back in rotation.
        for name in gone:
            await mesh.sup.spawn(mesh.sup[name])
            await mesh.sup.wait_healthy(mesh.sup[name], timeout_s=60)
        before = marks(mesh)
        await load.until(max(220, load.ok + len(load.failures) + 60))
        back = {
            "router": served(mesh, gone[0], before, "routed"),
            "inference": served(mesh, gone[1], before, "generated"),
        }
        print(f"after the restart, the returned replicas served {back}")
        assert back["router"] > 0 and back["inference"] > 0, back
    finally:
        load.stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    print(f"{load.ok} chats, {len(load.failures)} failed")
    assert load.ok >= 200
    assert load.failures == [], load.failures[:10]


def test_replicas_are_asked_for_by_name_and_count() -> None:
    assert parse_replicas("router=2, inference=3") == {"router": 2, "inference": 3}
    for bad, says in (
        ("envoy=2", "cannot run as replicas"),
        ("router=0", "from 1 to 16"),
        ("router=x", "from 1 to 16"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_replicas(bad)


def test_every_replica_has_ports_of_its_own_and_clients_balance_over_them() -> None:
    tree = config.load(
        environ={
            "TIERMESH_SERVICES__INFERENCE__REPLICAS": "[{port: 50152, metrics_port: 9202, health_port: 50162}]",
        }
    )
    reps = config.replicas(tree, "inference")
    assert [(r.port, r.metrics_port, r.health_port) for r in reps] == [(50052, 9102, 50062), (50152, 9202, 50162)]
    assert config.balanced_target(tree, "inference") == ("ipv4:127.0.0.1:50052,127.0.0.1:50152", True)
    assert config.balanced_target(tree, "router") == ("127.0.0.1:50051", False)
    k8s = config.load(environ={"TIERMESH_SERVICES__INFERENCE__HOST": "inference"})
    assert config.balanced_target(k8s, "inference") == ("dns:///inference:50052", True)


def test_up_puts_replicas_a_hundred_ports_apart_and_keeps_embedded_knowledge_single(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli.up import _replicas

    monkeypatch.delenv("QDRANT_URL", raising=False)
    env = _replicas("router=3,knowledge=2")
    assert env == {
        "TIERMESH_SERVICES__ROUTER__REPLICAS": (
            "[{port: 50151, metrics_port: 9201, health_port: 50161},"
            " {port: 50251, metrics_port: 9301, health_port: 50261}]"
        )
    }
    assert "knowledge runs once" in capsys.readouterr().out
    monkeypatch.setenv("QDRANT_URL", "http://qdrant.example:6333")
    assert "TIERMESH_SERVICES__KNOWLEDGE__REPLICAS" in _replicas("knowledge=2")
