"""The observability runtime on its own: metric definitions, tracing settings, span lines, log trace ids."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import Counter

from services.inference.breaker import HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker
from services.runtime import config, logs, metrics
from services.runtime.config import ConfigError
from services.runtime.observability import JsonLinesSpanExporter, TracingSettings


def test_defining_a_metric_again_returns_the_same_one() -> None:
    first = metrics.counter("tiermesh_test_widgets_total", "Widgets.", ["kind"])
    again = metrics.counter("tiermesh_test_widgets_total", "Widgets.", ["kind"])
    assert first is again and isinstance(first, Counter)


@pytest.mark.parametrize(
    ("define", "message"),
    [
        (lambda: metrics.counter("widgets_total", "x"), "start with 'tiermesh_'"),
        (lambda: metrics.counter("tiermesh_test_widgets", "x"), "end in '_total'"),
        (lambda: metrics.gauge("tiermesh_test_depth_total", "x"), "only counters"),
        (lambda: metrics.histogram("tiermesh_test_latency_ms", "x"), "seconds"),
        (lambda: metrics.counter("tiermesh_test_calls_total", "x", ["user"]), "one series per caller"),
        (lambda: metrics.counter("tiermesh_test_calls_total", "x", ["request_id"]), "one series per caller"),
        (lambda: metrics.gauge("tiermesh_test_widgets_total", "x", ["kind"]), "already defined as Counter"),
        (lambda: metrics.counter("tiermesh_test_widgets_total", "x", ["colour"]), "already defined"),
    ],
    ids=["prefix", "counter-suffix", "gauge-suffix", "unit", "user", "request-id", "kind", "labels"],
)
def test_bad_metric_definitions_are_refused(define: object, message: str) -> None:
    metrics.counter("tiermesh_test_widgets_total", "Widgets.", ["kind"])
    with pytest.raises(ValueError, match=re.escape(message)):
        define()  # type: ignore[operator]


def test_metrics_ports_default_per_service_and_zero_turns_them_off() -> None:
    tree = config.load(environ={"TIERMESH_SERVICES__INFERENCE__METRICS_PORT": "0"})
    assert config.metrics_endpoint(tree, "router") == ("127.0.0.1", 9101)
    assert config.metrics_endpoint(tree, "ratelimit") == ("127.0.0.1", 9105)
    assert config.metrics_endpoint(tree, "inference")[1] == 0
    assert config.metrics_endpoint({}, "analytics") == ("127.0.0.1", 9104)
    with pytest.raises(ConfigError, match=re.escape("services.router.metrics_port")):
        config.metrics_endpoint(config.load(environ={"TIERMESH_SERVICES__ROUTER__METRICS_PORT": "70000"}), "router")


def test_tracing_settings(tmp_path: Path) -> None:
    assert TracingSettings.load({}, "router") == TracingSettings()  # off, ratio 1
    # A bare `off` in YAML (or in an environment override) reads as false.
    off = config.load(environ={"TIERMESH_OBSERVABILITY__TRACING__EXPORTER": "off"})
    assert TracingSettings.load(off, "router").exporter == "off"
    tree = config.load(
        environ={"TIERMESH_DATA_DIR": str(tmp_path), "TIERMESH_OBSERVABILITY__TRACING__EXPORTER": "file"}
    )
    assert TracingSettings.load(tree, "inference").file == tmp_path / "traces" / "inference.jsonl"
    for key, raw, message in [
        ("EXPORTER", "jaeger", "exporter: must be one of off, otlp, console, file"),
        ("SAMPLE_RATIO", "1.5", "sample_ratio: must be a number from 0.0 to 1.0"),
    ]:
        bad = config.load(environ={f"TIERMESH_OBSERVABILITY__TRACING__{key}": raw})
        with pytest.raises(ConfigError, match=re.escape(message)):
            TracingSettings.load(bad, "router")
    bad = {"observability": {"tracing": {"exporter": "otlp", "endpoint": "127.0.0.1:4317"}}}
    with pytest.raises(ConfigError, match="endpoint: must be an http"):
        TracingSettings.load(bad, "router")


def test_file_exporter_writes_one_linked_span_per_line(tmp_path: Path) -> None:
    path = tmp_path / "spans" / "router.jsonl"
    exporter = JsonLinesSpanExporter("router", path=path)
    provider = TracerProvider()  # a local provider: the process-wide one is left alone
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner", attributes={"n": 1}):
        pass
    provider.shutdown()
    inner, outer_rec = (json.loads(line) for line in path.read_text().splitlines())
    ctx = outer.get_span_context()
    assert outer_rec["name"] == "outer" and outer_rec["parent_span_id"] == ""
    assert outer_rec["trace_id"] == format(ctx.trace_id, "032x") == inner["trace_id"]
    assert inner["parent_span_id"] == outer_rec["span_id"] == format(ctx.span_id, "016x")
    assert inner["service"] == "router" and inner["attributes"] == {"n": 1} and inner["kind"] == "internal"
    assert inner["start_unix_nano"] <= inner["end_unix_nano"]


def test_log_lines_carry_the_current_trace_id() -> None:
    formatter = logs.JsonFormatter("router")
    record = logging.LogRecord("tiermesh.router", logging.INFO, __file__, 1, "hello", None, None)
    assert json.loads(formatter.format(record))["trace_id"] == ""
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("rpc") as span:
        line = json.loads(formatter.format(record))
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert len(line["trace_id"]) == 32


def test_breaker_state_can_be_read_without_changing_it() -> None:
    now = [0.0]
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=1, open_s=5), clock=lambda: now[0])
    assert breaker.allow()
    breaker.record(False)
    assert breaker.observed_state() == OPEN
    now[0] = 10.0
    assert breaker.observed_state() == HALF_OPEN
    assert breaker.state == OPEN  # only reading: the transition is left to the caller's next call
    assert breaker.current_state() == HALF_OPEN
