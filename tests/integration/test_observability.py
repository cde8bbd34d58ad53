"""Metrics and traces: counters that move with a chat, one trace per chat across the services, and
that trace's id in every service's log lines for it.

Two meshes: real processes behind Envoy with the `file` span exporter (what an operator gets),
and the services inside this test process with an in-memory exporter, where one trace must
hold the spans of Router, Inference and Analytics.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.runtime import config, contract, logs, observability
from services.runtime.metrics import FORBIDDEN_LABELS
from services.runtime.server import Service
from tests.integration.conftest import MESH_PARTS
from tests.integration.mesh import Mesh, eventually, start_mesh

pytestmark = pytest.mark.integration

CHAT = "/tiermesh.router.v1.RouterService/Chat"
GENERATE = "/tiermesh.inference.v1.InferenceService/Generate"
RECORD_USAGE = "/tiermesh.analytics.v1.AnalyticsService/RecordUsage"
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def chat_request(text: str) -> pb.ChatRequest:
    return pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])


async def chat(target: str, text: str, metadata: tuple[tuple[str, str], ...]) -> list[pb.ChatResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        events = [e async for e in stub.Chat(chat_request(text), timeout=30, metadata=metadata)]
    assert events[0].HasField("decision") and events[-1].HasField("done"), events
    return events


# --- real processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def traced_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    data_dir: Path = tmp_path_factory.mktemp("traced-mesh")
    m = await start_mesh(
        data_dir,
        MESH_PARTS,
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="1",
        TIERMESH_OBSERVABILITY__TRACING__EXPORTER="file",
    )
    yield m
    await m.sup.stop()


async def scrape(mesh: Mesh, name: str) -> Samples:
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.get(mesh.metrics_url(name))
    resp.raise_for_status()
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there are none yet)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_a_chat_moves_the_counters_of_every_service(traced_mesh: Mesh) -> None:
    mesh = traced_mesh
    parts = ("router", "inference", "ratelimit")
    before = {name: await scrape(mesh, name) for name in parts}
    # A question no earlier request asked: a cache miss, answered (and billed) by a provider.
    events = await chat(mesh.target("envoy"), f"hello, how are you? ({uuid.uuid4().hex[:8]})", mesh.auth())
    decision, done = events[0].decision, events[-1].done
    tier, intent = str(decision.tier), c.Intent.Name(decision.intent).removeprefix("INTENT_").lower()

    def delta(after: Samples, part: str, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before[part], name, **labels)

    async def settled() -> dict[str, Samples] | None:
        after = {name: await scrape(mesh, name) for name in parts}
        moved = delta(after["inference"], "inference", "tiermesh_grpc_requests_total", method=GENERATE, code="OK")
        return after if moved else None

    after = await eventually(settled)
    router, inference, ratelimit = after["router"], after["inference"], after["ratelimit"]

    assert delta(router, "router", "tiermesh_grpc_requests_total", service="router", method=CHAT, code="OK") == 1
    assert delta(router, "router", "tiermesh_grpc_request_duration_seconds_count", method=CHAT) == 1
    assert value(router, "tiermesh_grpc_requests_in_flight", method=CHAT) == 0
    assert delta(router, "router", "tiermesh_route_decisions_total", tier=tier, intent=intent, segment="standard") == 1
    assert delta(router, "router", "tiermesh_budget_verdicts_total", action="allow") == 1

    assert delta(inference, "inference", "tiermesh_grpc_requests_total", service="inference", method=GENERATE) == 1
    dep = done.deployment
    assert done.usage.prompt_tokens > 0 and done.usage.cost_micro_usd > 0
    prompt = delta(inference, "inference", "tiermesh_tokens_total", direction="prompt", deployment=dep)
    completion = delta(inference, "inference", "tiermesh_tokens_total", direction="completion", deployment=dep)
    assert prompt == done.usage.prompt_tokens
    assert completion == done.usage.completion_tokens
    assert delta(inference, "inference", "tiermesh_cost_micro_usd_total", deployment=dep) == done.usage.cost_micro_usd
    assert delta(inference, "inference", "tiermesh_cache_requests_total", result="miss") == 1
    assert delta(inference, "inference", "tiermesh_time_to_first_token_seconds_count", tier=tier) == 1
    assert value(inference, "tiermesh_breaker_state", deployment=dep) == 0  # closed
    assert value(inference, "tiermesh_deployment_healthy", deployment=dep) == 1

    domain = mesh.env["TIERMESH_RATELIMIT__CONFIG__DOMAIN"]
    assert delta(ratelimit, "ratelimit", "tiermesh_ratelimit_decisions_total", domain=domain, code="OK") >= 1
    assert delta(ratelimit, "ratelimit", "tiermesh_grpc_requests_total", method=SHOULD_RATE_LIMIT, code="OK") >= 1

    for part, samples in after.items():
        labels = {name for _, ls in samples for name, _ in ls}
        assert not labels & FORBIDDEN_LABELS, (part, labels & FORBIDDEN_LABELS)


def read_spans(mesh: Mesh, service: str, trace_id: str) -> list[dict[str, Any]]:
    path = config.data_dir(mesh.tree) / "traces" / f"{service}.jsonl"
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [s for s in spans if s["trace_id"] == trace_id]


def json_lines(lines: list[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


async def test_with_tracing_off_the_clients_trace_id_is_in_every_services_log_lines(mesh: Mesh) -> None:
    """The default (`exporter: off`) records no span, yet passes the caller's trace on from
    Router to Inference, so one trace id finds a request's lines in every service's log."""
    trace_id = secrets.token_hex(16)
    metadata = (*mesh.auth(), ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"))
    events = await chat(mesh.target("envoy"), f"hello there ({uuid.uuid4().hex[:8]})", metadata)
    request_id = events[0].decision.request_id

    def line(part: str, msg: str) -> dict[str, Any] | None:
        found = [r for r in json_lines(mesh.logs(part)) if r.get("request_id") == request_id and r.get("msg") == msg]
        return found[0] if found else None

    routed = await eventually(lambda: line("router", "routed"))
    generated = await eventually(lambda: line("inference", "generated"))
    assert routed["trace_id"] == generated["trace_id"] == trace_id


async def test_a_clients_traceparent_is_continued_through_envoy_router_and_inference(traced_mesh: Mesh) -> None:
    mesh = traced_mesh
    trace_id, client_span_id = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (*mesh.auth(), ("traceparent", f"00-{trace_id}-{client_span_id}-01"))
    events = await chat(mesh.target("envoy"), "hello there, tell me something", metadata)
    request_id = events[0].decision.request_id

    def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        router, inference = read_spans(mesh, "router", trace_id), read_spans(mesh, "inference", trace_id)
        ready = any(s["name"] == CHAT for s in router) and any(s["name"] == GENERATE for s in inference)
        return (router, inference) if ready else None

    router_spans, inference_spans = await eventually(both)
    assert {s["service"] for s in router_spans} == {"router"}
    assert {s["service"] for s in inference_spans} == {"inference"}
    (chat_span,) = [s for s in router_spans if s["name"] == CHAT and s["kind"] == "server"]
    (generate_call,) = [s for s in router_spans if s["name"] == GENERATE and s["kind"] == "client"]
    (generate_span,) = [s for s in inference_spans if s["name"] == GENERATE and s["kind"] == "server"]
    # Envoy passed the client's traceparent on untouched: Router's span is the client's child.
    assert chat_span["parent_span_id"] == client_span_id
    assert generate_call["parent_span_id"] == chat_span["span_id"]
    assert generate_span["parent_span_id"] == generate_call["span_id"]
    assert chat_span["status"] != "error" and generate_span["status"] != "error"
    assert generate_span["attributes"]["tiermesh.deployment"] == events[-1].done.deployment
    assert chat_span["attributes"]["tiermesh.tier"] == events[0].decision.tier

    def lines_for(part: str) -> list[dict[str, Any]]:
        return [r for r in json_lines(mesh.logs(part)) if r.get("request_id") == request_id]

    def logged(part: str, msg: str) -> list[dict[str, Any]]:
        lines = lines_for(part)
        return lines if any(r.get("msg") == msg for r in lines) else []

    router_lines = await eventually(lambda: logged("router", "routed"))
    inference_lines = await eventually(lambda: logged("inference", "generated"))
    for record in [*router_lines, *inference_lines]:
        assert record["trace_id"] == trace_id, record


# --- in one process ---------------------------------------------------------------------------


class _NoDatabase:
    """Analytics' pool getter when no database is wanted: RecordUsage only buffers."""

    async def __call__(self) -> Any:
        raise OSError("no database in this test")


@dataclass
class InProcess:
    router_target: str
    spans: InMemorySpanExporter
    log_lines: list[str]
    usage_sent: Callable[[], int]


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logs.JsonFormatter("test"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _service(name: str, full_name: str, register: Callable[[grpc.aio.Server], None]) -> Service:
    return Service(
        name,
        service_names=[full_name],
        register=register,
        host="127.0.0.1",
        port=0,
        grace_s=1,
        logger=logging.getLogger(f"tiermesh.{name}.test"),
    )


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[InProcess]:
    """Simulator, Analytics, Inference and Router inside this process, traced into memory.

    Analytics runs without a database (its RecordUsage buffers what it accepts). The client
    instrumentation `observability.setup` applies is taken off again at the end, so later tests'
    channels are plain ones; the tracer provider stays (OpenTelemetry sets it once per process)."""
    from services.analytics.live import Live
    from services.analytics.servicer import AnalyticsServicer
    from services.analytics.writer import UsageWriter
    from services.inference import config as inference_config
    from services.inference.engine import Engine
    from services.inference.provider import Provider
    from services.inference.servicer import InferenceServicer
    from services.inference.usage import UsageReporter
    from services.router.policy import Router
    from services.router.servicer import RouterServicer, serialize_chat
    from services.simulator.faults import Behaviour
    from services.simulator.server import Simulator

    runner = web.AppRunner(Simulator(Behaviour(tokens=12)).app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sim_port = runner.addresses[0][1]
    tree = config.load(
        environ={
            "TIERMESH_DATA_DIR": str(tmp_path),
            # Recording on (to a file under tmp_path); the in-memory exporter is added beside it.
            "TIERMESH_OBSERVABILITY__TRACING__EXPORTER": "file",
            "TIERMESH_INFERENCE__SIMULATOR_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
            "TIERMESH_INFERENCE__CACHE__ENABLED": "false",
        }
    )
    observability.setup("tests", tree)
    provider_ = trace.get_tracer_provider()
    assert isinstance(provider_, TracerProvider)
    exporter = InMemorySpanExporter()
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    lines: list[str] = []
    handler = _Collect(lines)
    tiermesh_log = logging.getLogger("tiermesh")
    old_level = tiermesh_log.level
    tiermesh_log.addHandler(handler)
    tiermesh_log.setLevel(logging.INFO)

    no_db = _NoDatabase()
    analytics_servicer = AnalyticsServicer(UsageWriter(no_db, capacity=100, batch_size=10), Live(""), no_db)
    analytics = _service(
        "analytics",
        apb.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
        lambda server: apb_grpc.add_AnalyticsServiceServicer_to_server(analytics_servicer, server),
    )
    await analytics.start()

    cfg = inference_config.load(tree)
    provider = Provider(cfg.max_connections)
    reporter = UsageReporter(grpc.aio.insecure_channel(f"127.0.0.1:{analytics.port}"))
    reporter.start()
    inference_servicer = InferenceServicer(cfg, Engine(cfg, provider), reporter)
    inference = _service(
        "inference",
        ipb.DESCRIPTOR.services_by_name["InferenceService"].full_name,
        lambda server: ipb_grpc.add_InferenceServiceServicer_to_server(inference_servicer, server),
    )
    await inference.start()

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}")  # instrumented by setup
    generate_raw = channel.unary_stream(
        GENERATE, request_serializer=ipb.GenerateRequest.SerializeToString, response_deserializer=None
    )
    router_servicer = RouterServicer(Router.load(config.REPO_ROOT / "config" / "routing.yaml"), generate_raw, 30.0)
    served = contract.served(pb.DESCRIPTOR.services_by_name["RouterService"], router_servicer, {"Chat": serialize_chat})
    router = _service("router", served.name, served.register)
    await router.start()
    try:
        yield InProcess(f"127.0.0.1:{router.port}", exporter, lines, lambda: reporter.sent)
    finally:
        await router.shutdown("test over")
        await channel.close(None)
        await inference.shutdown("test over")
        await reporter.stop(timeout_s=1)
        await provider.aclose()
        await analytics.shutdown("test over")
        await runner.cleanup()
        tiermesh_log.removeHandler(handler)
        tiermesh_log.setLevel(old_level)
        exporter.shutdown()
        GrpcAioInstrumentorClient().uninstrument()  # type: ignore[no-untyped-call]


def _hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return trace.format_trace_id(span.context.trace_id)


async def test_one_chat_is_one_trace_across_router_inference_and_analytics(in_process: InProcess) -> None:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("client") as root:
        events = await chat(in_process.router_target, "hello, how are you?", ())
    trace_id = trace.format_trace_id(root.get_span_context().trace_id)
    await eventually(lambda: in_process.usage_sent() >= 1)

    def spans() -> list[ReadableSpan] | None:
        found = [s for s in in_process.spans.get_finished_spans() if _hex_trace(s) == trace_id]
        names = {(s.name, s.kind) for s in found}
        return found if (RECORD_USAGE, trace.SpanKind.SERVER) in names else None

    found = await eventually(spans)
    by_key = {(s.name, s.kind): s for s in found}
    for name in (CHAT, GENERATE, RECORD_USAGE):  # each service answered inside the chat's trace
        assert (name, trace.SpanKind.SERVER) in by_key, name
        assert (name, trace.SpanKind.CLIENT) in by_key, name
    ids = {s.context.span_id for s in found if s.context is not None}
    for span in found:  # one tree: every span's parent is in the trace (the root has none)
        assert span.parent is None or span.parent.span_id in ids, span.name

    def parent_of(name: str, kind: trace.SpanKind) -> int:
        parent = by_key[(name, kind)].parent
        assert parent is not None
        return parent.span_id

    def id_of(name: str, kind: trace.SpanKind) -> int:
        ctx = by_key[(name, kind)].context
        assert ctx is not None
        return ctx.span_id

    server, client = trace.SpanKind.SERVER, trace.SpanKind.CLIENT
    assert parent_of(CHAT, server) == id_of(CHAT, client)
    assert parent_of(GENERATE, client) == id_of(CHAT, server)
    assert parent_of(GENERATE, server) == id_of(GENERATE, client)
    assert parent_of(RECORD_USAGE, client) == id_of(GENERATE, server)
    assert parent_of(RECORD_USAGE, server) == id_of(RECORD_USAGE, client)
    assert events[-1].done.usage.completion_tokens > 0

    records = [json.loads(line) for line in in_process.log_lines]
    routed = [r for r in records if r["msg"] == "routed"]
    generated = [r for r in records if r["msg"] == "generated"]
    assert routed and generated
    for record in [*routed, *generated]:
        assert record["trace_id"] == trace_id, record
