"""Routing through the running services: identity from metadata only, decisions on the wire,
`tiermesh route` without a mesh, and a bad policy stopping the Router at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.cli.supervisor import StartError
from services.router.policy import load_policy
from tests.integration.mesh import Mesh, start_mesh

pytestmark = pytest.mark.integration

HARD = (
    "Please review this design: we run 30 microservices on Kubernetes and want to move our order "
    "pipeline to event sourcing. Compare Kafka and RabbitMQ for it, list the risks, and give a step "
    "by step migration plan with a rollback strategy and how to test each stage."
)


def route_request(text: str) -> pb.RouteRequest:
    return pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])


async def route(channel: grpc.aio.Channel, text: str, metadata: tuple[tuple[str, str], ...] = ()) -> pb.RouteDecision:
    async with channel:
        reply = await pb_grpc.RouterServiceStub(channel).Route(route_request(text), metadata=metadata, timeout=10)
        return reply.decision


async def test_segment_comes_from_the_identity_header(mesh: Mesh) -> None:
    # Calling as the edge: the only caller whose identity headers the Router honours.
    standard = await route(mesh.channel("router", "edge"), HARD)
    vip = await route(
        mesh.channel("router", "edge"), HARD, (("x-tiermesh-segment", "vip"), ("x-tiermesh-user", "alice"))
    )
    enterprise = await route(mesh.channel("router", "edge"), HARD, (("x-tiermesh-segment", "enterprise"),))
    assert standard.segment == c.SEGMENT_STANDARD and standard.complexity == c.COMPLEXITY_HIGH
    assert (standard.tier, vip.tier, enterprise.tier) == (3, 4, 4)
    assert vip.segment == c.SEGMENT_VIP and enterprise.segment == c.SEGMENT_ENTERPRISE
    assert any("follows the vip rules" in r for r in enterprise.reasons)


async def test_client_sent_identity_headers_are_stripped_at_the_edge(mesh: Mesh) -> None:
    claimed = await route(
        mesh.edge(),
        HARD,
        (*mesh.auth("bob", "standard"), ("x-tiermesh-segment", "vip"), ("x-tiermesh-user", "mallory")),
    )
    assert claimed.segment == c.SEGMENT_STANDARD
    assert claimed.tier == 3
    vip = await route(mesh.edge(), HARD, mesh.auth("carol", "vip"))
    assert vip.segment == c.SEGMENT_VIP and vip.tier == 4  # the verified claim is what counts


async def test_chat_decision_carries_the_whole_explanation(mesh: Mesh) -> None:
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="Oi! Vocês aceitam Pix?")])
        first = None
        async for event in stub.Chat(request, timeout=30, metadata=mesh.auth()):
            first = first or event
    assert first is not None and first.HasField("decision")
    d = first.decision
    assert d.tier == 1 and d.intent == c.INTENT_FAQ and d.complexity == c.COMPLEXITY_LOW
    assert 0 < d.intent_confidence <= 1 and 0 <= d.complexity_score <= 1
    assert d.policy_version == load_policy().version
    assert [r.split(" ")[0] for r in d.reasons] == ["tier", "complexity", "intent", "segment"]


async def test_pinning_beyond_the_segment_is_permission_denied(mesh: Mesh) -> None:
    async with mesh.channel("router") as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        request = pb.RouteRequest(messages=route_request("hi").messages, tier=c.TIER_PREMIUM)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Route(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "standard users may pin tiers 1 to 2" in (info.value.details() or "")


async def test_invalid_policy_stops_the_router_with_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "version: x\nrules:\n  - {name: only, when: {complexity: [low]}, tier: 1, reason: r}\n", encoding="utf-8"
    )
    with pytest.raises(StartError) as info:
        await start_mesh(tmp_path, ["router"], TIERMESH_ROUTER__POLICY_PATH=str(bad))
    message = str(info.value)
    assert "router exited with code 2" in message
    assert "configuration error: policy.yaml.rules: no rule covers complexity medium" in message


def test_route_cli_json_without_a_mesh(tmp_path: Path) -> None:
    tiermesh = str(Path(sys.executable).parent / "tiermesh")
    env = {**os.environ, "TIERMESH_SERVICES__ROUTER__PORT": "1"}  # nothing listens: route is in-process
    out = subprocess.run(
        [tiermesh, "route", "--segment", "vip", "--json", "Olá, quanto custa o plano anual para 20 pessoas?"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=30,
    )
    data = json.loads(out.stdout)
    assert isinstance(data["tier"], int) and 1 <= data["tier"] <= 4
    assert data["intent"] == "sales" and data["segment"] == "vip"
    assert data["complexity"] in ("low", "medium", "high")
    assert isinstance(data["reasons"], list) and all(isinstance(r, str) for r in data["reasons"])
    text = subprocess.run([tiermesh, "route", "hello there"], capture_output=True, text=True, check=True, timeout=30)
    assert text.stdout.startswith("→ tier 1 · fast") and "  why: " in text.stdout
    bad = subprocess.run([tiermesh, "route", "--segment", "gold", "hi"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "invalid choice: 'gold'" in bad.stderr


async def test_an_unsure_decision_hears_the_second_opinion_through_the_edge(mesh: Mesh) -> None:
    """Many facts about one problem: the fast models lean high (0.54); the Router service asks the
    embedding classifier (on its worker thread), and the decision, and its reasons, say so."""
    unsure = (
        "meu pedido ta parado em 'aguardando pagamento' mas o pix foi pago na hora, tenho o comprovante aqui. "
        "ja faz 2 dias. numero do pedido BR-552019"
    )
    decisions = [await route(mesh.edge(), unsure, mesh.auth("dora", "standard")) for _ in range(2)]
    for d in decisions:
        assert d.complexity == c.COMPLEXITY_MEDIUM and d.tier == 2
        second = [r for r in d.reasons if r.startswith("second opinion asked")]
        assert len(second) == 1 and "complexity medium" in second[0]
    sure = await route(mesh.edge(), "Oi! Vocês aceitam Pix?", mesh.auth("dora", "standard"))
    assert not any(r.startswith("second opinion") for r in sure.reasons)
