"""Tracing and metrics for a service process, set up the same way everywhere by `setup`.

Each service's `main()` calls `setup(service, tree)` right after `logs.setup(...)` and before it
opens any channel. It does three things:

1. Tracing (OpenTelemetry), from `observability.tracing`:

       exporter      off | otlp | console | file   (default off)
       endpoint      the OTLP/gRPC collector, for `otlp` (default http://127.0.0.1:4317)
       file          JSON lines, one span a line, for `file`; relative paths are under data_dir,
                     `{service}` is replaced by the service name (default traces/{service}.jsonl)
       sample_ratio  share of new traces recorded, 0 to 1 (default 1.0); a caller's sampling
                     decision, when it sends one, is kept

   `off` exports nothing but still runs a real tracer: every RPC gets a span, the caller's
   `traceparent` is continued and passed on downstream, and every log line inside an RPC carries
   its trace id. `console` writes the same JSON lines as `file`, to stderr (stdout is the logs).
   The resource's `service.name` is `tiermesh-<service>`.

2. gRPC client side: while spans are recorded, every `grpc.aio` channel opened afterwards creates
   a client span per call and sends `traceparent`, whatever its (de)serializers, unary or
   streaming. With `off`, no client span would be kept, so none is made: channels from
   `tls.channel` only add the current `traceparent` to each call's metadata, which costs a
   string format instead of an interceptor (a task and a wrapped iterator per call, about a
   tenth of a chat's CPU). (The server side is in `services.runtime.server`: every Service
   continues the caller's trace.)

3. Prometheus: `/metrics` on `services.<service>.metrics_port` (see `services.runtime.metrics`).

Only the first call in a process installs the tracer provider (OpenTelemetry allows one global
provider); later calls keep it, re-apply the client instrumentation if it was removed, and
start the metrics endpoint they name.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

from services.runtime import config, metrics, tls
from services.runtime.config import ConfigError

EXPORTERS = ("off", "otlp", "console", "file")
DEFAULT_ENDPOINT = "http://127.0.0.1:4317"
DEFAULT_FILE = "traces/{service}.jsonl"


@dataclass(frozen=True)
class TracingSettings:
    exporter: str = "off"
    endpoint: str = DEFAULT_ENDPOINT
    file: Path | None = None
    sample_ratio: float = 1.0

    @classmethod
    def load(cls, tree: Mapping[str, Any], service: str) -> TracingSettings:
        node = config.section(tree, "observability", "tracing")
        where = "observability.tracing"
        if node.get("exporter") is False:  # YAML reads a bare `off` (TIERMESH_..._EXPORTER=off) as false
            node["exporter"] = "off"
        exporter = config.get_str(node, "exporter", "off", where=where).strip().lower()
        if exporter not in EXPORTERS:
            raise ConfigError(f"{where}.exporter: must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
        endpoint = config.get_str(node, "endpoint", DEFAULT_ENDPOINT, where=where)
        if exporter == "otlp" and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.endpoint: must be an http:// or https:// URL, got {endpoint!r}")
        file = None
        if exporter == "file":
            raw = config.get_str(node, "file", DEFAULT_FILE, where=where).replace("{service}", service)
            if not raw.strip():
                raise ConfigError(f"{where}.file: must name a file when exporter is file")
            file = Path(raw) if Path(raw).is_absolute() else config.data_dir(tree) / raw
        return cls(
            exporter=exporter,
            endpoint=endpoint,
            file=file,
            sample_ratio=config.get_float(node, "sample_ratio", 1.0, where=where, lo=0.0, hi=1.0),
        )


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x") if value else ""


def span_record(span: ReadableSpan, service: str) -> dict[str, Any]:
    """One span as the flat JSON object the file and console exporters write."""
    ctx = span.context
    parent = span.parent
    return {
        "trace_id": _hex(ctx.trace_id, 32) if ctx is not None else "",
        "span_id": _hex(ctx.span_id, 16) if ctx is not None else "",
        "parent_span_id": _hex(parent.span_id, 16) if parent is not None else "",
        "name": span.name,
        "kind": span.kind.name.lower(),
        "service": service,
        "start_unix_nano": span.start_time,
        "end_unix_nano": span.end_time,
        "status": span.status.status_code.name.lower(),
        "attributes": dict(span.attributes or {}),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Writes each finished span as one JSON line (to a file, or to a stream such as stderr)."""

    def __init__(self, service: str, path: Path | None = None, stream: IO[str] | None = None) -> None:
        if (path is None) == (stream is None):
            raise ValueError("give a path or a stream")
        self.service = service
        self._lock = threading.Lock()
        self._owned = path is not None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out: IO[str] = path.open("a", encoding="utf-8", buffering=1)
        else:
            assert stream is not None
            self._out = stream

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_record(s, self.service), default=str) + "\n" for s in spans)
        with self._lock:
            if self._out.closed:
                return SpanExportResult.FAILURE
            self._out.write(text)
            self._out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._owned and not self._out.closed:
                self._out.close()


def _processor(settings: TracingSettings, service: str) -> SimpleSpanProcessor | BatchSpanProcessor | None:
    if settings.exporter == "file":
        assert settings.file is not None
        # Written as each span ends, so a reader (a test, `tail -f`) sees a request's spans at once.
        return SimpleSpanProcessor(JsonLinesSpanExporter(service, path=settings.file))
    if settings.exporter == "console":
        return SimpleSpanProcessor(JsonLinesSpanExporter(service, stream=sys.stderr))
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.endpoint, insecure=settings.endpoint.startswith("http://"))
        return BatchSpanProcessor(exporter)
    return None


_installed: TracerProvider | None = None
_install_lock = threading.Lock()


def _install_tracing(service: str, settings: TracingSettings) -> None:
    global _installed
    with _install_lock:
        if _installed is None:
            # With no exporter nothing records spans (they would only be thrown away, at a cost on
            # every call); ids are still made and passed on, so logs and callers keep trace ids.
            sampler = (
                ALWAYS_OFF if settings.exporter == "off" else ParentBased(TraceIdRatioBased(settings.sample_ratio))
            )
            provider = TracerProvider(
                resource=Resource.create({"service.name": f"tiermesh-{service}"}), sampler=sampler
            )
            processor = _processor(settings, service)
            if processor is not None:
                provider.add_span_processor(processor)
            trace.set_tracer_provider(provider)
            _installed = provider
        if _installed.sampler is not ALWAYS_OFF:
            tls.wrap_channel = None
            from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

            # A process-wide patch of grpc.aio's channel constructors; the instrumentor is a singleton
            # and knows whether it is applied (a test may have taken it off again).
            instrumentor = GrpcAioInstrumentorClient()  # type: ignore[no-untyped-call]
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument()
        else:
            tls.wrap_channel = PropagatingChannel


class _Propagating:
    """A multi-callable whose calls carry the caller's `traceparent` (and `tracestate`)."""

    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            extra = [("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}")]
            if ctx.trace_state:
                extra.append(("tracestate", ctx.trace_state.to_header()))
            metadata = (*(metadata or ()), *extra)
        return self._call(*args, metadata=metadata, **kwargs)


class PropagatingChannel:
    """A `grpc.aio.Channel` whose calls carry the current trace, without an interceptor."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    async def __aenter__(self) -> PropagatingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close(None)

    def unary_unary(self, *args: Any, **kwargs: Any) -> _Propagating:
        return _Propagating(self._channel.unary_unary(*args, **kwargs))

    def unary_stream(self, *args: Any, **kwargs: Any) -> _Propagating:
        return _Propagating(self._channel.unary_stream(*args, **kwargs))

    def stream_unary(self, *args: Any, **kwargs: Any) -> _Propagating:
        return _Propagating(self._channel.stream_unary(*args, **kwargs))

    def stream_stream(self, *args: Any, **kwargs: Any) -> _Propagating:
        return _Propagating(self._channel.stream_stream(*args, **kwargs))


def setup(service: str, tree: Mapping[str, Any]) -> None:
    """Install tracing (once per process) and serve this service's metrics; see the module doc."""
    settings = TracingSettings.load(tree, service)
    host, port = config.metrics_endpoint(tree, service)
    _install_tracing(service, settings)
    metrics.serve(host, port)
