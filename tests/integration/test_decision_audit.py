"""Sampled route decisions on real parts: the Router samples them, Analytics stores them in
PostgreSQL beside the usage of the same request, and `tiermesh route --stats` says which rules
fired and what they cost. The message is stored only as its SHA-256."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from tests.analytics.conftest import drop_database
from tests.integration.mesh import Mesh, start_mesh

pytestmark = pytest.mark.integration

TIERMESH = str(Path(sys.executable).parent / "tiermesh")
MESSAGES = ("hello there", "quanto custa o plano anual para 40 pessoas?", "oi, tudo bem?")


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    database = f"tiermesh_audit_{uuid.uuid4().hex[:10]}"
    m = await start_mesh(
        tmp_path_factory.mktemp("audit"),
        ["simulator", "inference", "analytics", "router"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="1",
        TIERMESH_ANALYTICS__DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{database}",
        TIERMESH_ROUTER__AUDIT="{sample_rate: 1, messages: hash, linger_ms: 50}",
    )
    m.env["DATABASE"] = database
    yield m
    await m.sup.stop()
    await drop_database(database)


def stats(mesh: Mesh) -> dict[str, Any]:
    done = subprocess.run(
        [TIERMESH, "route", "--stats", "--since", "1h", "--json"],
        env={**os.environ, **mesh.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


async def test_sampled_decisions_are_stored_with_their_outcome_and_without_the_message(mesh: Mesh) -> None:
    async with mesh.channel("router") as channel:
        chat = pb_grpc.RouterServiceStub(channel).Chat
        for text in MESSAGES:
            request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)], bypass_cache=True)
            events = [e async for e in chat(request, timeout=30)]
            assert events[-1].HasField("done")
    report: dict[str, Any] = {}
    for _ in range(100):  # until the sample and the usage are both stored
        report = stats(mesh)
        if int(report["decisions"]) == 3 and sum(int(r["answered"]) for r in report["rules"]) == 3:
            break
        await asyncio.sleep(0.1)
    rules = {r["rule"]: r for r in report["rules"]}
    assert int(report["decisions"]) == 3 and sum(int(r["decisions"]) for r in rules.values()) == 3
    assert all(int(r["costMicroUsd"]) > 0 and r["latencyP50Ms"] > 0 for r in rules.values())
    greeting = rules["simple-greeting-or-faq"]
    assert greeting["tier"] == "TIER_FAST" and int(greeting["decisions"]) == 2
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{mesh.env['DATABASE']}")
    try:
        rows = await conn.fetch("SELECT message_sha256, message, message_chars, reasons FROM route_decisions")
    finally:
        await conn.close()
    assert sorted(r["message_sha256"] for r in rows) == sorted(hashlib.sha256(t.encode()).hexdigest() for t in MESSAGES)
    assert all(r["message"] is None and r["reasons"] for r in rows)
    assert sorted(r["message_chars"] for r in rows) == sorted(len(t) for t in MESSAGES)
    human = subprocess.run(
        [TIERMESH, "route", "--stats"], env={**os.environ, **mesh.env}, capture_output=True, text=True, timeout=30
    )
    assert "simple-greeting-or-faq" in human.stdout and "sampled route decisions over the last 24h: 3" in human.stdout


async def test_decisions_that_heard_the_second_opinion_are_counted_per_rule(mesh: Mesh) -> None:
    """Many facts about one problem: the fast models are unsure of its complexity, the decision
    says so on the wire, and the sampled record and `--stats` count it."""
    unsure = (
        "meu pedido ta parado em 'aguardando pagamento' mas o pix foi pago na hora, tenho o comprovante aqui. "
        "ja faz 2 dias. numero do pedido BR-552019"
    )
    before = {r["rule"]: int(r.get("secondOpinions", 0)) for r in stats(mesh)["rules"]}
    async with mesh.channel("router") as channel:
        request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=unsure)], bypass_cache=True)
        events = [e async for e in pb_grpc.RouterServiceStub(channel).Chat(request, timeout=30)]
    decision = events[0].decision
    assert decision.second_opinion and any(r.startswith("second opinion asked") for r in decision.reasons)
    counted: dict[str, int] = {}
    for _ in range(100):  # until the sample is stored
        counted = {r["rule"]: int(r.get("secondOpinions", 0)) for r in stats(mesh)["rules"]}
        if sum(counted.values()) > sum(before.values()):
            break
        await asyncio.sleep(0.1)
    grown = [rule for rule, n in counted.items() if n > before.get(rule, 0)]
    assert len(grown) == 1 and counted[grown[0]] == before.get(grown[0], 0) + 1
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{mesh.env['DATABASE']}")
    try:
        row = await conn.fetchrow(
            "SELECT second_opinion, rule FROM route_decisions WHERE request_id = $1", decision.request_id
        )
    finally:
        await conn.close()
    assert row is not None and row["second_opinion"] is True and row["rule"] == grown[0]
    human = subprocess.run(
        [TIERMESH, "route", "--stats"], env={**os.environ, **mesh.env}, capture_output=True, text=True, timeout=30
    )
    assert "2nd opinion" in human.stdout
