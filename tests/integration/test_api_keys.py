"""API keys end to end, on a mesh with two Router and two Analytics replicas behind the real
Envoy: made and revoked with the `tiermesh keys` CLI, used by the official `openai` package (as
`Authorization: Bearer tm-...`), by plain HTTP (`x-api-key`) and by gRPC, refused within a second
of a revoke by every replica's key cache, and never stored or logged."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from tiermesh.analytics.v1 import admin_service_pb2 as admin_pb
from tiermesh.analytics.v1 import admin_service_pb2_grpc as admin_grpc
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.runtime import apikeys, tls
from tests.analytics.conftest import drop_database
from tests.integration.mesh import Mesh, forget_litellm_clients, off_the_minute, start_mesh

pytestmark = pytest.mark.integration

TIERMESH = str(Path(sys.executable).parent / "tiermesh")
WEB = Path(__file__).resolve().parents[2] / "web"
LIMITS = (
    "[{key: segment, value: standard, descriptors: [{key: user, rate_limit: {unit: minute, requests_per_unit: 1000}}]},"
    " {key: segment, value: vip, descriptors: [{key: user, rate_limit: {unit: minute, requests_per_unit: 1000}}]},"
    " {key: team, value: tiny, rate_limit: {unit: minute, requests_per_unit: 2}},"
    " {key: team, value: node, rate_limit: {unit: minute, requests_per_unit: 2}},"
    " {key: team, value: py-sync, rate_limit: {unit: minute, requests_per_unit: 1}},"
    " {key: team, value: py-async, rate_limit: {unit: minute, requests_per_unit: 1}},"
    " {key: team, value: py-litellm, rate_limit: {unit: minute, requests_per_unit: 1}},"
    " {key: remote_address, rate_limit: {unit: minute, requests_per_unit: 100000}}]"
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    database = f"tiermesh_keys_{uuid.uuid4().hex[:10]}"
    m = await start_mesh(
        tmp_path_factory.mktemp("keys"),
        ["simulator", "inference", "analytics", "router", "openai", "ratelimit", "envoy"],
        replicas={"router": 2, "analytics": 2},
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="1",
        TIERMESH_ANALYTICS__DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{database}",
        TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=LIMITS,
        TIERMESH_RATELIMIT__TIMEOUT_MS="2000",
        TIERMESH_ANALYTICS__BUDGETS__CACHE_S="0",  # each chat sees the spend so far
        TIERMESH_ANALYTICS__BUDGETS__TEAMS="{frugal: 0.000001}",  # spent by the team's first answer
    )
    m.env["DATABASE"] = database
    yield m
    await m.sup.stop()
    await drop_database(database)


def keys_cli(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **mesh.env}
    return subprocess.run([TIERMESH, "keys", *args], env=env, capture_output=True, text=True, timeout=30)


def create(mesh: Mesh, *args: str) -> tuple[str, str]:
    """A new key through the CLI: (id, secret)."""
    user = f"key-user-{uuid.uuid4().hex[:8]}"
    made = keys_cli(mesh, "create", "--user", user, "--segment", "vip", "--json", *args)
    assert made.returncode == 0, made.stderr
    out = json.loads(made.stdout)
    return out["key"]["id"], out["secret"]


def api(mesh: Mesh) -> str:
    return f"http://{mesh.target('envoy')}/v1"


async def models_status(mesh: Mesh, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(api(mesh) + "/models", headers=headers)
    return resp.status_code, resp.json()


async def test_a_key_works_with_the_openai_sdk_over_http_and_over_grpc(mesh: Mesh) -> None:
    key_id, secret = create(mesh, "--team", "support")
    assert apikeys.well_formed(secret) and key_id.startswith("key_")
    client = openai.AsyncOpenAI(base_url=api(mesh), api_key=secret, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Explain database sharding"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.usage and completion.usage.total_tokens > 0
    assert completion.model_extra is not None
    assert completion.model_extra["tiermesh"]["decision"]["segment"] == "vip"  # the key's segment
    stream = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = [ch async for ch in stream]
    await client.close()
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 2
    assert chunks[-1].usage is not None
    # The same key as x-api-key, and from a gRPC client: the same identity after the edge.
    assert (await models_status(mesh, {"x-api-key": secret}))[0] == 200
    async with mesh.edge() as channel:
        events = [
            e
            async for e in pb_grpc.RouterServiceStub(channel).Chat(
                pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hello")]),
                metadata=(("x-api-key", secret),),
                timeout=30,
            )
        ]
    assert events[0].decision.segment == c.SEGMENT_VIP


async def test_bad_keys_are_refused_with_a_reason(mesh: Mesh) -> None:
    unknown = apikeys.new_secret()
    for headers, reason in (
        ({"authorization": f"Bearer {unknown}"}, "not valid"),
        ({"x-api-key": unknown}, "not valid"),
        ({"x-api-key": "tm-short"}, "malformed"),
        ({"x-api-key": ""}, "malformed"),
    ):
        status, body = await models_status(mesh, headers)
        assert status == 401, (headers, body)
        error = body["error"]
        assert isinstance(error, dict) and reason in str(error["message"]) and error["code"] == "invalid_api_key"
    async with mesh.edge() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.RouterServiceStub(channel).Route(
                pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hi")]),
                metadata=(("x-api-key", unknown),),
                timeout=10,
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "not valid" in (refused.value.details() or "")


async def test_a_revoked_key_is_refused_by_every_replica_within_a_second(mesh: Mesh) -> None:
    key_id, secret = create(mesh)
    # Envoy asks both Analytics replicas in turn: both know the key.
    for _ in range(6):
        assert (await models_status(mesh, {"authorization": f"Bearer {secret}"}))[0] == 200
    revoked = keys_cli(mesh, "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout, revoked.stderr
    await asyncio.sleep(1.0)
    client = openai.AsyncOpenAI(base_url=api(mesh), api_key=secret, max_retries=0)
    for _ in range(6):  # each replica, several times over
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 401 and "revoked" in refused.value.message
    await client.close()
    listed = keys_cli(mesh, "list", "--all", "--json")
    assert listed.returncode == 0
    mine = next(k for k in json.loads(listed.stdout) if k["id"] == key_id)
    assert "revokedAt" in mine
    assert key_id not in keys_cli(mesh, "list").stdout  # live keys only by default


async def test_a_teams_keys_share_the_teams_rate_limit(mesh: Mesh) -> None:
    _, first = create(mesh, "--team", "tiny")
    _, second = create(mesh, "--team", "tiny")
    await off_the_minute()
    assert (await models_status(mesh, {"x-api-key": first}))[0] == 200
    assert (await models_status(mesh, {"x-api-key": second}))[0] == 200
    status, body = await models_status(mesh, {"x-api-key": second})  # the team's third this minute
    assert status == 429, body


async def test_keys_are_made_only_by_operators_and_checked_on_the_way_in(mesh: Mesh) -> None:
    async with tls.channel(mesh.tree, "analytics", tls.ROUTER) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await admin_grpc.AdminServiceStub(channel).CreateKey(
                admin_pb.CreateKeyRequest(user="u", segment=c.SEGMENT_VIP), timeout=10
            )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Through the edge: an operator's token or key manages keys, no one else's.
    operator_key = create(mesh, "--role", "operator")[1]
    async with mesh.edge() as channel:
        admin = admin_grpc.AdminServiceStub(channel)
        for credential in (("authorization", f"Bearer {mesh.token(role='operator')}"), ("x-api-key", operator_key)):
            listed = await admin.ListKeys(admin_pb.ListKeysRequest(), metadata=(credential,), timeout=10)
            assert listed.keys and all(k.id.startswith("key_") for k in listed.keys)
        _, plain_key = create(mesh)
        for credential in (("authorization", f"Bearer {mesh.token()}"), ("x-api-key", plain_key)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.CreateKey(
                    admin_pb.CreateKeyRequest(user="me", segment=c.SEGMENT_ENTERPRISE, role="operator"),
                    metadata=(credential,),
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for args, message in (
        (["--user", "a\x07b", "--segment", "vip"], "control characters"),
        (["--user", "u", "--segment", "vip", "--team", "no spaces"], "team"),
        (["--user", "u", "--segment", "vip", "--budget-usd", "1e12"], "budget_usd"),
        (["--user", "u", "--segment", "vip", "--budget-usd", "nan"], "budget_usd"),
        (["--user", "x" * 257, "--segment", "vip"], "256"),
        (["--user", "u", "--segment", "vip", "--expires", "soon"], "--expires"),
    ):
        made = keys_cli(mesh, "create", *args)
        assert made.returncode != 0 and message in made.stderr, (args, made.stderr)
    missing = keys_cli(mesh, "revoke", "key_0000000000000000")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    # Values PostgreSQL cannot hold (a NUL) are refused before they reach it, for every call.
    async with mesh.edge() as channel:
        admin = admin_grpc.AdminServiceStub(channel)
        operator = (("authorization", f"Bearer {mesh.token(role='operator')}"),)
        for call, request, field in (
            (admin.ListKeys, admin_pb.ListKeysRequest(user="\x00uzz"), "user"),
            (admin.RevokeKey, admin_pb.RevokeKeyRequest(id="key_\x00"), "id"),
            (admin.RevokeKey, admin_pb.RevokeKeyRequest(id="'; drop table api_keys; --"), "id"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await call(request, metadata=operator, timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad.value.details()
            assert (bad.value.details() or "").startswith(f"{field}:"), bad.value.details()


async def test_no_key_is_stored_or_logged(mesh: Mesh) -> None:
    _, secret = create(mesh)
    assert (await models_status(mesh, {"x-api-key": secret}))[0] == 200
    assert (await models_status(mesh, {"authorization": f"Bearer {apikeys.new_secret()}"}))[0] == 401
    dump = subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--data-only", mesh.env["DATABASE"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "api_keys" in dump and apikeys.digest(secret).hex() in dump  # the digest is there ...
    assert secret not in dump and not apikeys.PATTERN.search(dump)  # ... and no key at all
    for name in mesh.sup.parts:
        leaked = [line for line in mesh.logs(name) if apikeys.PATTERN.search(line)]
        assert not leaked, f"{name} logged a key: {leaked[:2]}"


async def test_a_keys_budget_applies_to_its_user(mesh: Mesh) -> None:
    _, secret = create(mesh, "--budget-usd", "0.000001")  # spent by the first answer
    client = openai.AsyncOpenAI(base_url=api(mesh), api_key=secret, max_retries=0)
    question = [{"role": "user", "content": "Explain database sharding and its trade-offs in detail"}]
    first = await client.chat.completions.create(model="auto", messages=question)  # type: ignore[arg-type]
    assert first.model_extra is not None
    tier = first.model_extra["tiermesh"]["decision"]["tier"]
    assert tier > 1
    reasons: list[str] = []
    for _ in range(50):  # until the first answer's usage is recorded
        later = await client.chat.completions.create(model="auto", messages=question)  # type: ignore[arg-type]
        assert later.model_extra is not None
        decision = later.model_extra["tiermesh"]["decision"]
        if decision["tier"] == tier - 1:
            reasons = decision["reasons"]
            break
        await asyncio.sleep(0.1)
    await client.close()
    assert reasons and "monthly budget spent" in reasons[0], reasons


async def decided(secret: str, mesh: Mesh, question: str, **headers: str) -> dict[str, object]:
    """The Router's decision for one chat through the OpenAI API with this key."""
    client = openai.AsyncOpenAI(base_url=api(mesh), api_key=secret, max_retries=0, default_headers=headers)
    answer = await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": question}])
    await client.close()
    assert answer.model_extra is not None
    decision: dict[str, object] = answer.model_extra["tiermesh"]["decision"]
    return decision


async def test_a_teams_budget_caps_what_all_its_keys_spend_together(mesh: Mesh) -> None:
    question = "Explain the trade-offs of consistent hashing versus range partitioning in detail"  # not cached
    _, first = create(mesh, "--team", "frugal")
    _, teammate = create(mesh, "--team", "frugal")  # another user of the same team
    _, outsider = create(mesh)
    tier = (await decided(first, mesh, question))["tier"]
    assert isinstance(tier, int) and tier > 1
    reasons: list[str] = []
    for _ in range(50):  # until the first answer's usage is recorded
        decision = await decided(teammate, mesh, question)
        if decision["tier"] == tier - 1:
            reasons = decision["reasons"]  # type: ignore[assignment]
            break
        await asyncio.sleep(0.1)
    assert reasons and reasons[0].startswith(f"downgraded from tier {tier} to {tier - 1}: the frugal team's"), reasons
    # Neither a key of no team nor one that claims the team in a header of its own is held to it.
    assert (await decided(outsider, mesh, question))["tier"] == tier
    assert (await decided(outsider, mesh, question, **{"x-tiermesh-team": "frugal"}))["tier"] == tier
    # A token whose signed `team` claim names the team is held to it, as the team's keys are.
    async with mesh.edge() as channel:
        request = pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=question)])
        for team, held in (("frugal", True), ("", False)):
            token = mesh.token(segment="vip", team=team)
            reply = await pb_grpc.RouterServiceStub(channel).Route(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
            assert (reply.decision.tier == tier - 1) is held, (team, list(reply.decision.reasons))
            assert ("the frugal team's" in reply.decision.reasons[0]) is held
    # What the team spent, read by an operator.
    out = subprocess.run(
        [TIERMESH, "spend", "--team", "frugal", "--since", "1h", "--json"],
        env={**os.environ, **mesh.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert int(report["totals"]["requests"]) >= 2 and int(report["totals"]["costMicroUsd"]) > 1
    teams = {g["key"] for g in report["groups"] if g["dimension"] == "SPEND_DIMENSION_TEAM"}
    assert teams == {"frugal"}


async def test_the_official_openai_npm_package_from_node(mesh: Mesh) -> None:
    _, live = create(mesh)
    revoked_id, revoked = create(mesh)
    _, team = create(mesh, "--team", "node")
    assert keys_cli(mesh, "revoke", revoked_id).returncode == 0
    await asyncio.sleep(1.0)
    env = {
        **os.environ,
        "TIERMESH_OPENAI_BASE_URL": api(mesh),
        "TIERMESH_API_KEY": live,
        "TIERMESH_REVOKED_KEY": revoked,
        "TIERMESH_TEAM_KEY": team,
        "TIERMESH_TEAM_PER_MINUTE": "2",
    }
    await off_the_minute(20.0)  # the Node tests take a few seconds before the team's calls
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--test",
        "clients/openai-sdk.test.mjs",
        cwd=WEB,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    report = out.decode()
    assert proc.returncode == 0, report
    assert "# pass 5" in report and "# fail 0" in report, report


def ask(client: str, base_url: str, key: str, content: str) -> None:
    """One non-streamed chat with one of the Python clients, raising what the client raises."""
    messages = [{"role": "user", "content": content}]
    if client == "litellm":
        import litellm

        try:
            litellm.completion(
                model="openai/auto", api_base=base_url, api_key=key, messages=messages, max_retries=0, num_retries=0
            )
        finally:
            forget_litellm_clients()
        return
    if client == "sync":
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as sync_client:
            sync_client.chat.completions.create(model="auto", messages=messages)  # type: ignore[arg-type]
        return

    async def once() -> None:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as async_client:
            await async_client.chat.completions.create(model="auto", messages=messages)  # type: ignore[arg-type]

    asyncio.run(once())


@pytest.mark.parametrize("client", ["sync", "async", "litellm"])
async def test_each_python_client_sees_a_revoked_key_a_rate_limit_and_a_bad_request(mesh: Mesh, client: str) -> None:
    revoked_id, revoked = create(mesh)
    _, limited = create(mesh, "--team", f"py-{client}")
    _, live = create(mesh)
    assert keys_cli(mesh, "revoke", revoked_id).returncode == 0
    await asyncio.sleep(1.0)
    await off_the_minute()
    url = api(mesh)

    def statuses() -> list[tuple[int, str, str]]:
        out = []
        for key, content in ((revoked, "hi"), (live, "x" * 32_001), (limited, "hi"), (limited, "hi")):
            try:
                ask(client, url, key, content)
                out.append((200, "", ""))
            except openai.APIStatusError as exc:  # LiteLLM's errors are the openai package's too
                # LiteLLM keeps the provider's headers apart from its own response object.
                headers = getattr(exc, "litellm_response_headers", None) or exc.response.headers
                out.append((exc.status_code, str(exc), headers.get("retry-after", "")))
        return out

    revoked_status, bad, first, limited_status = await asyncio.to_thread(statuses)
    assert revoked_status[0] == 401 and "revoked" in revoked_status[1]
    assert bad[0] == 400 and "32000" in bad[1]  # the contract's limit, in OpenAI's error object
    assert first[0] == 200
    assert limited_status[0] == 429 and 1 <= int(limited_status[2]) <= 60


async def test_a_key_for_a_user_named_in_any_script_works_end_to_end(mesh: Mesh) -> None:
    made = keys_cli(mesh, "create", "--user", "josé 李 🚀", "--segment", "enterprise", "--json")
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["secret"]
    client = openai.AsyncOpenAI(base_url=api(mesh), api_key=secret, max_retries=0)
    completion = await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "olá"}])
    await client.close()
    assert completion.model_extra is not None
    assert completion.model_extra["tiermesh"]["decision"]["segment"] == "enterprise"
    async with mesh.edge() as channel:
        events = [
            e
            async for e in pb_grpc.RouterServiceStub(channel).Chat(
                pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="oi")]),
                metadata=(("x-api-key", secret),),
                timeout=30,
            )
        ]
    assert events[0].decision.segment == c.SEGMENT_ENTERPRISE and events[-1].HasField("done")
    # Both chats are billed to the key's user, by name, whatever its script.
    async with tls.channel(mesh.tree, "analytics", tls.OPERATOR) as channel:
        spend = apb_grpc.AnalyticsServiceStub(channel)
        for _ in range(50):
            reply = await spend.GetSpend(apb.GetSpendRequest(user="josé 李 🚀"), timeout=10)
            if reply.totals.requests >= 2:
                break
            await asyncio.sleep(0.1)
    assert reply.totals.requests == 2 and reply.totals.cost_micro_usd > 0
