"""Runs a grpc.aio server the same way for every service.

What every service gets:

- mutual TLS on its port when `tls.enabled` (see services.runtime.tls), with an optional list of
  the roles allowed to call each method (PERMISSION_DENIED for anyone else);
- grpc.health.v1 health (SERVING only once `ready()` says so; Check, Watch and List) on the same
  port and, without TLS, on `services.<name>.health_port` for probes, which serves nothing else;
- server reflection (grpc.reflection.v1 and v1alpha);
- a request id per call (from `x-request-id` or new) in every log line, and a span per call that
  continues the caller's trace (`traceparent`);
- RPC metrics (`tiermesh_grpc_*`, see services.runtime.metrics), DEADLINE_EXCEEDED counted as such;
- the error tree mapped to gRPC statuses; a request that cannot be decoded (bad protobuf, bad
  UTF-8, nesting too deep) is INVALID_ARGUMENT with one warning line, never UNKNOWN;
- deadlines ended by the service itself, with a DEADLINE_EXCEEDED status and proper trailers, a
  little before gRPC's transport would reset the stream. Envoy hands a client's `grpc-timeout` on
  as `x-tiermesh-grpc-timeout` (honoured from the edge only), so for clients of the edge the
  transport never races the service at all;
- a graceful drain: on SIGTERM or SIGINT the health turns NOT_SERVING at once, new calls are
  refused with UNAVAILABLE, in-flight calls (streams included) run to their end within
  `shutdown_grace_s`, then the server stops and the process exits.

Streaming handlers are driven by the runtime (each message written with `context.write`), so a
handler's generator is always closed in the task that ran it, however the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime import identity, logs, metrics, reflection
from services.runtime.contract import Served
from services.runtime.errors import DeadlineExceeded, TiermeshError

HEALTH_SERVICE = "grpc.health.v1.Health"
# The health service name a liveness probe asks for: SERVING from start to exit.
LIVENESS = "tiermesh.liveness"
# What a draining server answers a new call: nothing was done, so another instance may take it.
DRAINING = "server is shutting down; retry on another instance"
_UNCOUNTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Statuses that mean the server failed (OpenTelemetry's rule for server spans); the rest are the
# caller's doing and leave the span's status unset.
_SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})

log = logging.getLogger("tiermesh.runtime")
_tracer = trace.get_tracer("tiermesh.runtime")

_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# How long before the deadline the service ends a call itself, so its DEADLINE_EXCEEDED and
# trailers leave before gRPC's transport would reset the stream and before the client's own timer
# fires (a tenth of a short deadline).
DEADLINE_MARGIN_S = 0.05
_deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def parse_grpc_timeout(text: str) -> float | None:
    """Seconds from a `grpc-timeout` value (`250m`, `3S`); None when malformed."""
    if not 2 <= len(text) <= 9 or not text[:-1].isdigit() or text[-1] not in _UNITS:
        return None
    return int(text[:-1]) * _UNITS[text[-1]]


def _has_edge_deadline(metadata: Sequence[tuple[str, Any]]) -> bool:
    return any(key == identity.DEADLINE for key, _ in metadata)


def time_remaining(context: Any) -> float | None:
    """Seconds left before this call's deadline (the one the runtime enforces); None without one."""
    deadline = _deadline_var.get()
    if deadline is not None:
        return deadline - asyncio.get_running_loop().time()
    remaining: float | None = context.time_remaining()
    return remaining


Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class Drain:
    """Tracks in-flight calls and whether the server is draining."""

    draining: bool = False
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == "x-request-id" and value:
            text = value.decode() if isinstance(value, bytes) else value
            return text[:128]
    return uuid.uuid4().hex


def _status_name(context: Context, default: str) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions keep the raw status number
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), default)
    return default


class Undecodable:
    """What the runtime's deserializer hands on for bytes that are not a valid request."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def safe_deserializer(deserialize: Callable[[bytes], Any] | None, type_name: str) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises: gRPC would answer its exception with UNKNOWN and log a
    traceback; the runtime answers Undecodable with INVALID_ARGUMENT instead."""
    if deserialize is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except (DecodeError, ValueError, TypeError, RecursionError) as exc:
            return Undecodable(f"the request is not a valid {type_name}: {str(exc)[:200] or type(exc).__name__}")

    return decode


def _type_name(deserialize: Any) -> str:
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "protobuf message"))


def _failure_code(context: Context, exc: BaseException) -> str:
    if isinstance(exc, TiermeshError):
        return exc.code.name
    if isinstance(exc, grpc.aio.AbortError):
        return _status_name(context, "UNKNOWN")
    return grpc.StatusCode.INTERNAL.name


def _deadline_passed(context: Context) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class _Call:
    """One RPC's bookkeeping: metrics from creation until `finish`, and its server span."""

    __slots__ = ("_method_metrics", "_started", "_task", "_token", "span")

    def __init__(
        self, method_metrics: _MethodMetrics, method: str, metadata: Sequence[tuple[str, Any]], traced: bool = True
    ) -> None:
        self._method_metrics = method_metrics
        self._started = time.perf_counter()
        method_metrics.in_flight.inc()
        self.span: trace.Span | None = None
        if traced:
            carrier = {k: v for k, v in metadata if k in ("traceparent", "tracestate") and isinstance(v, str)}
            parent = propagate.extract(carrier) if carrier else None
            self.span = _tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
            self._token = otel_context.attach(trace.set_span_in_context(self.span))
            self._task = asyncio.current_task()

    def finish(self, code: str, message: str = "") -> None:
        mm = self._method_metrics
        mm.in_flight.dec()
        mm.duration.observe(time.perf_counter() - self._started)
        mm.code(code).inc()
        span = self.span
        if span is None:
            return
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, code).value[0])
            if code in _SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, message or code))
        span.end()
        # A context token can only be reset in the task that set it; a call finished elsewhere
        # (never, since the runtime drives every stream) leaves its task's context to die with it.
        if asyncio.current_task() is self._task:
            otel_context.detach(self._token)


class _MethodMetrics:
    """The metric children of one method, looked up once (a label lookup per call adds up)."""

    __slots__ = ("_codes", "_labels", "duration", "in_flight")

    def __init__(self, service: str, method: str) -> None:
        self._labels = (service, method)
        self.in_flight = metrics.GRPC_IN_FLIGHT.labels(service, method)
        self.duration = metrics.GRPC_DURATION.labels(service, method)
        self._codes: dict[str, Any] = {}

    def code(self, code: str) -> Any:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = metrics.GRPC_REQUESTS.labels(*self._labels, code)
        return child


class RuntimeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps each method once (cached): safe decoding, caller checks, drain, request id, span,
    metrics, and the error tree mapped to its status. Health and reflection only get safe
    decoding: they are never refused, counted or traced (probes would drown the calls that matter)."""

    def __init__(
        self,
        drain: Drain,
        logger: logging.Logger,
        service: str = "",
        callers: Mapping[str, Collection[str]] | None = None,
        check_callers: bool = False,
        traced: bool = True,
    ) -> None:
        self.drain = drain
        self.log = logger
        self.service = service
        self.traced = traced
        self.callers = {m: frozenset(r) for m, r in (callers or {}).items()}
        self.check_callers = check_callers
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method
        try:
            return self._handlers[method]  # type: ignore[return-value]
        except KeyError:
            pass
        handler = await continuation(details)
        wrapped = None if handler is None else self._wrap(handler, method)
        if len(self._handlers) < 1000:  # methods are few; unknown names must not grow this
            self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        deserialize = safe_deserializer(handler.request_deserializer, _type_name(handler.request_deserializer))
        serialize = handler.response_serializer
        plain = method.startswith(_UNCOUNTED)
        if handler.unary_unary is not None:
            behavior = self._plain_unary if plain else self._unary
            return grpc.unary_unary_rpc_method_handler(
                behavior(handler.unary_unary, method), request_deserializer=deserialize, response_serializer=serialize
            )
        if handler.unary_stream is not None:
            behavior = self._plain_stream if plain else self._stream
            return grpc.unary_stream_rpc_method_handler(
                behavior(handler.unary_stream, method), request_deserializer=deserialize, response_serializer=serialize
            )
        if handler.stream_stream is not None:  # reflection: checked item by item
            return grpc.stream_stream_rpc_method_handler(
                self._plain_bidi(handler.stream_stream), request_deserializer=deserialize, response_serializer=serialize
            )
        return handler  # client-streaming RPCs are not part of any contract

    async def _refuse_bad_input(self, request: Any, context: Context, method: str) -> None:
        if isinstance(request, Undecodable):
            self.log.warning("undecodable request refused", extra={"method": method, "error": request.reason})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)

    async def _refuse_caller(self, context: Context, method: str) -> None:
        allowed = self.callers.get(method)
        if allowed is None or not self.check_callers:
            return
        from services.runtime.tls import peer_role

        role = peer_role(context)
        if role not in allowed:
            who = role or "a caller without a certificate"
            self.log.warning("caller refused", extra={"method": method, "caller": who})
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{method} may be called by {', '.join(sorted(allowed))}, not {who}"
            )

    async def _enter(self, request: Any, context: Context, method: str) -> None:
        await self._refuse_bad_input(request, context, method)
        await self._refuse_caller(context, method)
        if self.drain.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)

    def _deadline(self, context: Context, metadata: Sequence[tuple[str, Any]]) -> float | None:
        """The loop time by which this call must end, from gRPC's deadline (less a margin) or the
        deadline Envoy passed on for a client of the edge; None when there is neither."""
        candidates = []
        transport = context.time_remaining()
        if transport is not None:
            candidates.append(transport)
        for key, value in metadata:
            if key == identity.DEADLINE and isinstance(value, str):
                seconds = parse_grpc_timeout(value)
                if seconds is not None and self._from_edge(context):
                    candidates.append(seconds)
                break
        if not candidates:
            return None
        # End a little early, so the status reaches the client before its own timer gives up.
        remaining = min(candidates)
        return asyncio.get_running_loop().time() + max(0.0, remaining - min(DEADLINE_MARGIN_S, remaining * 0.1))

    def _from_edge(self, context: Context) -> bool:
        if not self.check_callers:
            return True  # no TLS: every caller is trusted
        from services.runtime.tls import EDGE, peer_role

        return peer_role(context) == EDGE

    async def _fail(self, context: Context, exc: BaseException, method: str) -> None:
        if isinstance(exc, TiermeshError):
            self.log.info("call failed", extra={"method": method, "code": exc.code.name, "error": str(exc)})
            await context.abort(exc.code, str(exc))
        self.log.exception("unexpected error", extra={"method": method})
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")

    def _ended(self, context: Context, exc: BaseException, code: str) -> str:
        """The status of a call that ended with `exc` escaping the handler."""
        if isinstance(exc, grpc.aio.AbortError):
            return _status_name(context, code)
        if isinstance(exc, asyncio.CancelledError | GeneratorExit) and _deadline_passed(context):
            return "DEADLINE_EXCEEDED"  # gRPC ended the call at its deadline
        return "CANCELLED"  # the client went away

    def _unary(self, behavior: Any, method: str) -> Any:
        return self._guarded(behavior, method, streaming=False)

    def _stream(self, behavior: Any, method: str) -> Any:
        return self._guarded(behavior, method, streaming=True)

    def _guarded(self, behavior: Any, method: str, streaming: bool) -> Any:
        """The handler gRPC calls for a counted method: input, caller and drain checks, the
        deadline, metrics, the server span and the status. `behavior` answers: a coroutine, or
        when `streaming` an async iterator of messages that the runtime writes."""
        method_metrics = _MethodMetrics(self.service, method)
        traced = self.traced
        late = "the deadline passed before the " + ("stream ended" if streaming else "answer was ready")

        async def wrapper(request: Any, context: Context) -> Any:
            metadata: Sequence[tuple[str, Any]] = tuple(context.invocation_metadata() or ())
            if traced:
                logs.request_id_var.set(request_id_from(metadata))
            call = _Call(method_metrics, method, metadata, traced)
            code, message = "UNKNOWN", ""
            result = None
            try:
                await self._enter(request, context, method)
                # gRPC ends a unary call at its own deadline cleanly; only a deadline the edge
                # passed on (which gRPC does not know) needs the runtime's timer. A stream always
                # runs under it, so its generator is closed, and what it holds released, in time.
                timed = streaming or _has_edge_deadline(metadata)
                deadline = self._deadline(context, metadata) if timed else None
                _deadline_var.set(deadline)
                self.drain.enter()
                try:
                    timer = asyncio.timeout_at(deadline)  # no deadline: no timer
                    try:
                        async with timer:
                            if streaming:
                                async with contextlib.aclosing(behavior(request, context)) as events:
                                    async for item in events:
                                        await context.write(item)
                            else:
                                result = await behavior(request, context)
                    except TimeoutError:
                        if not timer.expired():
                            raise
                        raise DeadlineExceeded(late) from None
                    code = _status_name(context, "OK")
                    return result
                except Exception as exc:
                    code, message = _failure_code(context, exc), str(exc)
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await self._fail(context, exc, method)
                finally:
                    self.drain.leave()
            except BaseException as exc:
                code = self._ended(context, exc, code)
                raise
            finally:
                call.finish(code, message)

        return wrapper

    def _plain_unary(self, behavior: Any, method: str) -> Any:
        async def wrapper(request: Any, context: Context) -> Any:
            await self._refuse_bad_input(request, context, method)
            return await behavior(request, context)

        return wrapper

    def _plain_stream(self, behavior: Any, method: str) -> Any:
        async def wrapper(request: Any, context: Context) -> None:
            await self._refuse_bad_input(request, context, method)
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async with contextlib.aclosing(result) as events:
                    async for item in events:
                        await context.write(item)
            else:  # a handler that writes with context.write itself (health's Watch)
                await result

        return wrapper

    def _plain_bidi(self, behavior: Any) -> Any:
        async def wrapper(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async def checked() -> AsyncIterator[Any]:
                async for item in requests:
                    if isinstance(item, Undecodable):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, item.reason)
                    yield item

            async with contextlib.aclosing(behavior(checked(), context)) as replies:
                async for reply in replies:
                    yield reply

        return wrapper


class HealthService(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """grpc.health.v1 with List (the package implements only Check and Watch)."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[str, int] = {}

    async def set(self, service: str, status: int) -> None:
        self.statuses[service] = status
        await super().set(service, status)

    async def List(self, request: health_pb2.HealthListRequest, context: Context) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in self.statuses.items()}
        )


Registrar = Callable[[grpc.aio.Server], None]


class Service:
    """A running service: the server, its health, and its drain state."""

    def __init__(
        self,
        name: str,
        *,
        service_names: Iterable[str],
        register: Registrar,
        host: str,
        port: int,
        grace_s: float,
        logger: logging.Logger,
        ready: Callable[[], Awaitable[bool]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        on_drain: Callable[[], Awaitable[None]] | None = None,
        max_message_bytes: int = 8 * 1024 * 1024,
        credentials: grpc.ServerCredentials | None = None,
        health_port: int | None = None,
        callers: Mapping[str, Collection[str]] | None = None,
        traced: bool = True,
    ) -> None:
        self.name = name
        self.service_names = list(service_names)
        self.host, self.port = host, port
        self.health_port = health_port
        self.credentials = credentials
        self.grace_s = grace_s
        self.log = logger
        self.ready = ready
        self.on_stop = on_stop
        self.on_drain = on_drain
        self.drain = Drain()
        self.drain.idle.set()
        self.health = HealthService()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
        self.server = grpc.aio.server(
            interceptors=[RuntimeInterceptor(self.drain, logger, name, callers, check_callers=credentials is not None)],
            options=options,
        )
        register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(self.server, [*self.service_names, HEALTH_SERVICE])
        # Health alone, without TLS, for probes that cannot present a certificate.
        self.health_server: grpc.aio.Server | None = None
        if health_port is not None:
            self.health_server = grpc.aio.server(
                interceptors=[RuntimeInterceptor(self.drain, logger, name)], options=options[:2]
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        self.stopped = asyncio.Event()
        self._shutdown_task: asyncio.Future[None] | None = None

    async def _set_all(self, status: int) -> None:
        for svc in ["", *self.service_names]:
            await self.health.set(svc, status)

    def _bind(self, server: grpc.aio.Server, port: int, credentials: grpc.ServerCredentials | None) -> int:
        address = f"{self.host}:{port}"
        try:
            bound = (
                server.add_secure_port(address, credentials)
                if credentials is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError:  # grpc raises when the address cannot be bound
            bound = 0
        if bound == 0:
            raise OSError(f"{self.name}: cannot listen on {address} (port in use?)")
        return bound

    async def start(self) -> None:
        self.port = self._bind(self.server, self.port, self.credentials)
        if self.health_server is not None and self.health_port is not None:
            self.health_port = self._bind(self.health_server, self.health_port, None)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Alive as long as the process runs, whatever its dependencies and while it drains: a
        # liveness probe asks this, so kubelet never restarts a service that waits for its database.
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        if self.ready is None or await self.ready():
            await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        self.log.info(
            "listening",
            extra={
                "address": f"{self.host}:{self.port}",
                "tls": self.credentials is not None,
                "health_port": self.health_port,
                "grace_s": self.grace_s,
            },
        )

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING (for a service whose dependency comes and goes); a
        draining server stays NOT_SERVING."""
        if not self.drain.draining:
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            await self._set_all(status)

    async def shutdown(self, reason: str) -> None:
        if self.drain.draining:
            return
        self.drain.draining = True
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.on_drain is not None:  # e.g. end endless streams, which would hold the drain
            await self.on_drain()
        self.log.info("draining", extra={"reason": reason, "in_flight": self.drain.in_flight})
        try:
            await asyncio.wait_for(self.drain.idle.wait(), timeout=self.grace_s)
            self.log.info("drained")
        except TimeoutError:
            self.log.warning("grace period over; cancelling calls", extra={"in_flight": self.drain.in_flight})
        await self.server.stop(0)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.on_stop is not None:
            await self.on_stop()
        self.stopped.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        self._shutdown_task = asyncio.ensure_future(self.shutdown(sig.name))

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        await self.start()
        await self.stopped.wait()
        self.log.info("stopped")


async def serve(
    name: str,
    tree: Mapping[str, Any],
    logger: logging.Logger,
    contract: Served,
    *,
    ready: Callable[[], Awaitable[bool]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_drain: Callable[[], Awaitable[None]] | None = None,
    on_start: Callable[[Service], Awaitable[None]] | None = None,
    max_message_bytes: int = 8 * 1024 * 1024,
    callers: Mapping[str, Collection[str]] | None = None,
    traced: bool = True,
    also: Sequence[Served] = (),
) -> None:
    """Run service `name`, serving `contract` (and the contracts in `also`), where the config says it listens (with its
    certificate when TLS is on), until SIGTERM/SIGINT and its drain. `callers` maps a full
    method name to the roles allowed to call it (checked only with TLS, where a role is proven).
    `traced=False` is for a service on every request's hot path that answers in microseconds
    (RateLimit): no span or request id per call, whose cost would be a large share of its own."""
    from services.runtime import config, tls

    host, port = config.endpoint(tree, name)
    contracts = [contract, *also]

    def register(server: grpc.aio.Server) -> None:
        for served in contracts:
            served.register(server)

    service = Service(
        name,
        service_names=[c.name for c in contracts],
        register=register,
        host=host,
        port=port,
        grace_s=config.get_float(tree, "shutdown_grace_s", 20.0, where="", hi=3600),
        logger=logger,
        ready=ready,
        on_stop=on_stop,
        on_drain=on_drain,
        max_message_bytes=max_message_bytes,
        credentials=tls.server_credentials(tree, name),
        health_port=config.health_endpoint(tree, name)[1],
        callers=callers,
        traced=traced,
    )
    if on_start is not None:
        await on_start(service)
    await service.run_until_signal()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a service's async main on uvloop; a configuration error ends it with a clear message
    and exit code 2 (no traceback: the message says which key is wrong and what to do)."""
    from services.runtime.config import ConfigError

    try:
        try:
            import uvloop

            uvloop.run(main())
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            asyncio.run(main())
    except ConfigError as exc:
        logging.getLogger("tiermesh").critical("configuration error: %s", exc)
        if not logging.getLogger().handlers:
            print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
