"""Inference under injected provider faults (the simulator over real HTTP): the exact path, the
attempts and their delays, the events the client saw, and the usage and cost reported."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc

from tests.integration.mesh import Mesh, start_mesh
from tests.integration.mesh import deployment as dep
from tests.integration.test_observability import scrape, value

pytestmark = pytest.mark.integration

ANSWER_TOKENS = 12


FAULT_MESH = {
    "TIERMESH_SIMULATOR__TOKEN_DELAY_MS": "5",
    "TIERMESH_SIMULATOR__ANSWER_TOKENS": str(ANSWER_TOKENS),
    "TIERMESH_INFERENCE__FIRST_TOKEN_TIMEOUT_S": "0.5",
    "TIERMESH_INFERENCE__RETRY": (
        "{max_attempts: 2, base_delay_s: 0.05, max_delay_s: 0.2, budget_ratio: 1, budget_max_tokens: 1000}"
    ),
    "TIERMESH_INFERENCE__BREAKER": "{consecutive_failures: 1000, min_calls: 1000}",
    "TIERMESH_INFERENCE__CACHE__ENABLED": "false",
    "TIERMESH_INFERENCE__DEFAULT_RESPONSE__ENABLED": "false",
    # Cheapest first: each tier's faulty deployment is tried before the one that works.
    "TIERMESH_INFERENCE__TIERS__1": f"[{dep('ok1', 'sim-ok', 2)}, {dep('err500', 'sim:fault=500', 1)}]",
    "TIERMESH_INFERENCE__TIERS__2": f"[{dep('limited', 'sim:fault=429:retry_after=1', 1)}, {dep('ok2', 'sim-ok', 2)}]",
    "TIERMESH_INFERENCE__TIERS__3": (
        f"[{dep('hangs', 'sim:fault=hang', 1)}, {dep('cut0', 'sim:fault=cut:0', 2)}, {dep('ok3', 'sim-ok', 3)}]"
    ),
    "TIERMESH_INFERENCE__TIERS__4": (
        f"[{dep('cut3', 'sim:fault=cut:3', 1)}, {dep('small', 'sim:ctx=5', 2, window=1000)},"
        f" {dep('ok4', 'sim-ok', 3, window=200_000)}]"
    ),
}


@pytest.fixture(scope="module")
async def faults(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    m = await start_mesh(tmp_path_factory.mktemp("faults"), ["simulator", "inference"], **FAULT_MESH)
    yield m
    await m.sup.stop()


async def generate(mesh: Mesh, tier: int, text: str = "hi", timeout: float = 20) -> list[ipb.GenerateResponse]:
    async with mesh.channel("inference") as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        request = ipb.GenerateRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)], tier=tier)  # type: ignore[arg-type]
        return [e async for e in stub.Generate(request, timeout=timeout)]


def kinds(events: list[ipb.GenerateResponse]) -> list[str]:
    out: list[str] = []
    for e in events:
        kind = e.WhichOneof("event") or ""
        if kind == "model_selected":
            kind += ":" + e.model_selected.deployment
        if not (out and out[-1] == kind == "delta"):
            out.append(kind)
    return out


def attempts(done: ipb.GenerateDone) -> list[tuple[str, str]]:
    return [(a.deployment, a.outcome) for a in done.attempts]


def price(p_tokens: int, c_tokens: int, usd_in: float) -> int:
    return round(p_tokens * usd_in + c_tokens * usd_in * 2)


async def test_http_500_retried_with_backoff_then_fallback(faults: Mesh) -> None:
    events = await generate(faults, 1)
    assert kinds(events) == ["model_selected:err500", "model_selected:ok1", "delta", "done"]
    done = events[-1].done
    assert list(done.fallback_path) == ["err500", "ok1"]
    assert attempts(done) == [("err500", "HTTP 500"), ("err500", "HTTP 500"), ("ok1", "ok")]
    assert done.attempts[0].delay_ms == 0
    assert 0 <= done.attempts[1].delay_ms <= 50  # full jitter within the first backoff step
    assert done.usage.completion_tokens == ANSWER_TOKENS
    assert done.usage.cost_micro_usd == price(done.usage.prompt_tokens, ANSWER_TOKENS, 2)
    assert not done.degraded and not done.cached


async def test_429_waits_for_retry_after_then_falls_back(faults: Mesh) -> None:
    events = await generate(faults, 2)
    done = events[-1].done
    assert attempts(done) == [("limited", "HTTP 429"), ("limited", "HTTP 429"), ("ok2", "ok")]
    assert done.attempts[1].delay_ms >= 1000  # Retry-After: 1
    assert list(done.fallback_path) == ["limited", "ok2"]
    assert done.usage.cost_micro_usd == price(done.usage.prompt_tokens, ANSWER_TOKENS, 2)


async def test_hang_and_cut_before_first_token_fall_back(faults: Mesh) -> None:
    ttft = "tiermesh_time_to_first_token_seconds"
    before = await scrape(faults, "inference")
    events = await generate(faults, 3)
    after = await scrape(faults, "inference")
    assert kinds(events) == ["model_selected:hangs", "model_selected:cut0", "model_selected:ok3", "delta", "done"]
    done = events[-1].done
    assert attempts(done) == [
        ("hangs", "timeout"),
        ("hangs", "timeout"),
        ("cut0", "stream cut after 0 tokens"),
        ("cut0", "stream cut after 0 tokens"),
        ("ok3", "ok"),
    ]
    assert all(450 <= a.duration_ms < 2000 for a in done.attempts[:2])  # the first-token timeout, 0.5 s
    assert done.usage.completion_tokens == ANSWER_TOKENS  # nothing was billed for the failed calls
    # Time to first token is what the caller waited: from the request, through the failed calls.
    assert value(after, ttft + "_count", tier="3") == value(before, ttft + "_count", tier="3") + 1
    waited = value(after, ttft + "_sum", tier="3") - value(before, ttft + "_sum", tier="3")
    assert waited >= sum(a.duration_ms for a in done.attempts[:4]) / 1000


async def test_cut_after_tokens_restarts_on_a_larger_window_fallback(faults: Mesh) -> None:
    events = await generate(faults, 4)
    assert kinds(events) == [
        "model_selected:cut3",
        "delta",
        "model_selected:small",
        "model_selected:ok4",
        "restart",
        "delta",
        "done",
    ]
    partial = "".join(
        e.delta.text for e in events[: [k.WhichOneof("event") for k in events].index("restart")] if e.HasField("delta")
    )
    restart = next(e.restart for e in events if e.HasField("restart"))
    assert restart.failed_deployment == "cut3"
    assert restart.discarded_chars == len(partial) > 0
    assert "cut after 3 tokens" in restart.reason
    after = "".join(
        e.delta.text for e in events[[k.WhichOneof("event") for k in events].index("restart") :] if e.HasField("delta")
    )
    assert after.startswith("[simulated answer from sim-ok]")
    done = events[-1].done
    assert attempts(done) == [("cut3", "stream cut after 3 tokens"), ("small", "context too long"), ("ok4", "ok")]
    assert list(done.fallback_path) == ["cut3", "small", "ok4"]
    # The 3 tokens cut3 generated are billed too (counted with the tokenizer).
    assert done.usage.completion_tokens > ANSWER_TOKENS
    assert done.usage.cost_micro_usd > price(done.usage.prompt_tokens // 2, ANSWER_TOKENS, 3)


async def test_every_deployment_failing_without_default_is_unavailable(
    faults: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {
        **FAULT_MESH,
        "TIERMESH_INFERENCE__TIERS__1": f"[{dep('a', 'sim:fault=500', 1)}, {dep('b', 'sim:fault=cut:0', 2)}]",
    }
    mesh = await start_mesh(tmp_path_factory.mktemp("nodefault"), ["simulator", "inference"], **env)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await generate(mesh, 1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        details = info.value.details() or ""
        assert details.startswith("no model of tier 1 could answer: a failed: HTTP 500")
        assert "b failed: the stream was cut after 0 tokens" in details
    finally:
        await mesh.sup.stop()


async def test_every_deployment_failing_sends_the_default_response_degraded(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = {
        **FAULT_MESH,
        "TIERMESH_INFERENCE__DEFAULT_RESPONSE__ENABLED": "true",
        "TIERMESH_INFERENCE__DEFAULT_RESPONSE__TEXT": "Sorry, try again soon.",
        "TIERMESH_INFERENCE__CACHE__ENABLED": "true",
        "TIERMESH_INFERENCE__TIERS__1": (
            f"[{dep('a', 'sim:fault=500', 1)}, {dep('b', 'sim:fault=429:retry_after=0', 2)}]"
        ),
    }
    mesh = await start_mesh(tmp_path_factory.mktemp("default"), ["simulator", "inference"], **env)
    try:
        text = f"degraded {uuid.uuid4()}"
        for _ in range(2):  # the second is not a cache hit: degraded answers are never cached
            events = await generate(mesh, 1, text)
            done = events[-1].done
            assert "".join(e.delta.text for e in events if e.HasField("delta")) == "Sorry, try again soon."
            assert done.degraded and not done.cached
            assert list(done.fallback_path) == ["a", "b", "default-response"]
            assert [a.outcome for a in done.attempts] == ["HTTP 500", "HTTP 500", "HTTP 429", "HTTP 429"]
    finally:
        await mesh.sup.stop()


async def test_slow_tokens_are_one_message_each_and_a_burst_is_coalesced(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from services.simulator.server import answer_tokens

    mesh = await start_mesh(
        tmp_path_factory.mktemp("coalesce"),
        ["simulator", "inference"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="40",
        TIERMESH_SIMULATOR__ANSWER_TOKENS="10",
        TIERMESH_INFERENCE__CACHE__ENABLED="false",
        TIERMESH_INFERENCE__FLUSH_INTERVAL_MS="0",
    )
    try:
        slow = await generate(mesh, 1)
        slow_deltas = [e.delta.text for e in slow if e.HasField("delta")]
        expected = answer_tokens("sim-fast", [{"role": "user", "content": "hi"}], 10)
        assert slow_deltas == expected  # one message per token
    finally:
        await mesh.sup.stop()
    mesh = await start_mesh(
        tmp_path_factory.mktemp("burst"),
        ["simulator", "inference"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="0",
        TIERMESH_SIMULATOR__ANSWER_TOKENS="2000",
        TIERMESH_INFERENCE__CACHE__ENABLED="false",
    )
    try:
        burst = await generate(mesh, 1)
        deltas = [e.delta.text for e in burst if e.HasField("delta")]
        expected = answer_tokens("sim-fast", [{"role": "user", "content": "hi"}], 2000)
        assert "".join(deltas) == "".join(expected)
        assert len(deltas) < len(expected) / 4, f"{len(deltas)} messages for {len(expected)} tokens"
    finally:
        await mesh.sup.stop()


async def test_paced_tokens_go_out_at_most_once_per_flush_interval_after_the_first(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A real model's pace (20 ms per token here) with a 100 ms flush interval: the first token
    alone and at once, then the rest in a few messages, not one each; nothing lost or reordered."""
    from services.simulator.server import answer_tokens

    mesh = await start_mesh(
        tmp_path_factory.mktemp("paced"),
        ["simulator", "inference"],
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="20",
        TIERMESH_SIMULATOR__ANSWER_TOKENS="20",
        TIERMESH_INFERENCE__CACHE__ENABLED="false",
        TIERMESH_INFERENCE__FLUSH_INTERVAL_MS="100",
    )
    try:
        events = await generate(mesh, 1)
        deltas = [e.delta.text for e in events if e.HasField("delta")]
        expected = answer_tokens("sim-fast", [{"role": "user", "content": "hi"}], 20)
        assert deltas[0] == expected[0]  # the first token is never held back
        assert "".join(deltas) == "".join(expected)
        assert 2 <= len(deltas) <= 8, f"{len(deltas)} messages for 20 tokens over ~400 ms"
        assert events[-1].HasField("done")
    finally:
        await mesh.sup.stop()


async def test_client_deadline_bounds_the_whole_chain(faults: Mesh) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(faults, 3, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    await asyncio.sleep(0)


async def test_usage_is_counted_with_the_tokenizer_when_the_provider_sends_none(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import litellm

    env = {**FAULT_MESH, "TIERMESH_INFERENCE__TIERS__1": f"[{dep('quiet', 'sim:usage=off', 2)}]"}
    mesh = await start_mesh(tmp_path_factory.mktemp("nousage"), ["simulator", "inference"], **env)
    try:
        events = await generate(mesh, 1, "quantos tokens tem esta pergunta?")
    finally:
        await mesh.sup.stop()
    done = events[-1].done
    answer = "".join(e.delta.text for e in events if e.HasField("delta"))
    expected_prompt = litellm.token_counter(
        model="gpt-4o", messages=[{"role": "user", "content": "quantos tokens tem esta pergunta?"}]
    )
    expected_completion = litellm.token_counter(model="gpt-4o", text=answer)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (expected_prompt, expected_completion)
    assert done.usage.cost_micro_usd == price(expected_prompt, expected_completion, 2)


async def test_breaker_opens_and_then_rejects_without_calling(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {
        **FAULT_MESH,
        "TIERMESH_INFERENCE__RETRY": "{max_attempts: 1}",
        "TIERMESH_INFERENCE__BREAKER": "{consecutive_failures: 2, min_calls: 1000, open_s: 30}",
        "TIERMESH_INFERENCE__TIERS__1": f"[{dep('flaky', 'sim:fault=500', 1)}, {dep('steady', 'sim-ok', 2)}]",
    }
    mesh = await start_mesh(tmp_path_factory.mktemp("breaker"), ["simulator", "inference"], **env)
    try:
        for _ in range(2):
            assert attempts((await generate(mesh, 1))[-1].done) == [("flaky", "HTTP 500"), ("steady", "ok")]
        calls_before = len([r for r in await mesh.sim_records() if r["model"] == "sim:fault=500"])
        for _ in range(3):
            events = await generate(mesh, 1)
            # While open, the flaky deployment is no longer the cheapest *usable* one: steady goes first.
            assert attempts(events[-1].done) == [("steady", "ok")]
            assert kinds(events)[0] == "model_selected:steady"
        calls_after = len([r for r in await mesh.sim_records() if r["model"] == "sim:fault=500"])
        assert calls_after == calls_before == 2  # not called while open
        async with mesh.channel("inference") as channel:
            listing = await ipb_grpc.InferenceServiceStub(channel).ListModels(ipb.ListModelsRequest(tier=c.TIER_FAST))
        states = {m.deployment: (m.breaker_state, m.healthy) for m in listing.models}
        assert states == {"flaky": ("open", False), "steady": ("closed", True)}
        assert [m.deployment for m in listing.models] == ["steady", "flaky"]  # usable ones first
    finally:
        await mesh.sup.stop()


async def test_health_checks_put_a_dead_deployment_last(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.integration.mesh import free_port

    dead = (
        f"{{name: dead, provider: openai_compatible, model: m, api_base: 'http://127.0.0.1:{free_port()}/v1',"
        " input_usd_per_mtok: 0.5, output_usd_per_mtok: 1, context_window: 100000}"
    )
    env = {
        **FAULT_MESH,
        "TIERMESH_INFERENCE__HEALTH_INTERVAL_S": "0.2",
        "TIERMESH_INFERENCE__TIERS__1": f"[{dead}, {dep('alive', 'sim-ok', 2)}]",
    }
    mesh = await start_mesh(tmp_path_factory.mktemp("health"), ["simulator", "inference"], **env)
    try:
        async with mesh.channel("inference") as channel:
            stub = ipb_grpc.InferenceServiceStub(channel)
            for _ in range(50):
                listing = await stub.ListModels(ipb.ListModelsRequest(tier=c.TIER_FAST))
                if not {m.deployment: m.healthy for m in listing.models}["dead"]:
                    break
                await asyncio.sleep(0.1)
        assert [(m.deployment, m.healthy) for m in listing.models] == [("alive", True), ("dead", False)]
        events = await generate(mesh, 1)
        assert attempts(events[-1].done) == [("alive", "ok")]  # the cheaper but dead one is not tried first
    finally:
        await mesh.sup.stop()


async def test_a_deployment_at_its_rpm_quota_is_passed_over(tmp_path_factory: pytest.TempPathFactory) -> None:
    capped = (
        "{name: capped, provider: simulator, model: sim-capped, input_usd_per_mtok: 1, output_usd_per_mtok: 2,"
        " context_window: 100000, rpm: 2}"
    )
    env = {**FAULT_MESH, "TIERMESH_INFERENCE__TIERS__1": f"[{capped}, {dep('spare', 'sim-ok', 2)}]"}
    mesh = await start_mesh(tmp_path_factory.mktemp("quota"), ["simulator", "inference"], **env)
    try:
        answered = [(await generate(mesh, 1))[-1].done.deployment for _ in range(4)]
        capped_calls = len([r for r in await mesh.sim_records() if r["model"] == "sim-capped"])
    finally:
        await mesh.sup.stop()
    assert answered == ["capped", "capped", "spare", "spare"]
    assert capped_calls == 2
