"""Runs a grpc.aio server the same way for every service.

What every service gets: grpc.health.v1 health (SERVING only once `ready()` says so), server
reflection, a request id per call (from `x-request-id` or new) in every log line, a span per call
that continues the caller's trace (`traceparent`), RPC metrics (`tiermesh_grpc_*`, see
services.runtime.metrics), the error tree mapped to gRPC statuses, and a graceful drain: on
SIGTERM or SIGINT the health turns NOT_SERVING at once, new calls are refused with UNAVAILABLE,
in-flight calls (streams included) run to their end within `shutdown_grace_s`, then the server
stops and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from services.runtime import logs, metrics
from services.runtime.errors import TiermeshError

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
_ALWAYS_ALLOWED = ("/grpc.health.v1.Health/", "/grpc.reflection.")

log = logging.getLogger("tiermesh.runtime")

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


class _Observed:
    """One RPC's metrics: in flight from creation until `finish(code)`."""

    __slots__ = ("_labels", "_started")

    def __init__(self, service: str, method: str) -> None:
        self._labels = (service, method)
        self._started = time.perf_counter()
        metrics.GRPC_IN_FLIGHT.labels(*self._labels).inc()

    def finish(self, code: str) -> None:
        metrics.GRPC_IN_FLIGHT.labels(*self._labels).dec()
        metrics.GRPC_DURATION.labels(*self._labels).observe(time.perf_counter() - self._started)
        metrics.GRPC_REQUESTS.labels(*self._labels, code).inc()


class RuntimeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts calls for the drain and the metrics, refuses new work while draining, sets the
    request id, and maps TiermeshError to its status. Health and reflection are never refused
    (nor counted: probes would drown the calls that matter)."""

    def __init__(self, drain: Drain, logger: logging.Logger, service: str = "") -> None:
        self.drain = drain
        self.log = logger
        self.service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_ALWAYS_ALLOWED):
            return handler
        rid = request_id_from(details.invocation_metadata)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, rid),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, rid),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming RPCs are not part of any contract yet

    async def _refuse_if_draining(self, context: Context) -> None:
        if self.drain.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another instance")

    async def _fail(self, context: Context, exc: BaseException, method: str) -> None:
        if isinstance(exc, TiermeshError):
            self.log.info("call failed", extra={"method": method, "code": exc.code.name, "error": str(exc)})
            await context.abort(exc.code, str(exc))
        self.log.exception("unexpected error", extra={"method": method})
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")

    def _unary(self, behavior: Any, method: str, rid: str) -> Any:
        async def wrapper(request: Any, context: Context) -> Any:
            logs.request_id_var.set(rid)
            observed = _Observed(self.service, method)
            code = "UNKNOWN"
            try:
                await self._refuse_if_draining(context)
                self.drain.enter()
                try:
                    result = await behavior(request, context)
                    code = _status_name(context, "OK")
                    return result
                except Exception as exc:
                    code = _failure_code(context, exc)
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await self._fail(context, exc, method)
                finally:
                    self.drain.leave()
            except grpc.aio.AbortError:
                code = _status_name(context, code)
                raise
            except BaseException:  # the client went away (CancelledError)
                code = "CANCELLED"
                raise
            finally:
                observed.finish(code)

        return wrapper

    def _stream(self, behavior: Any, method: str, rid: str) -> Any:
        async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            logs.request_id_var.set(rid)
            observed = _Observed(self.service, method)
            code = "UNKNOWN"
            try:
                await self._refuse_if_draining(context)
                self.drain.enter()
                started = time.monotonic()
                try:
                    async for item in behavior(request, context):
                        yield item
                    code = _status_name(context, "OK")
                except Exception as exc:
                    code = _failure_code(context, exc)
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await self._fail(context, exc, method)
                finally:
                    self.drain.leave()
                    self.log.debug("stream closed", extra={"method": method, "seconds": time.monotonic() - started})
            except grpc.aio.AbortError:
                code = _status_name(context, code)
                raise
            except BaseException:  # the client went away (CancelledError, GeneratorExit)
                code = "CANCELLED"
                raise
            finally:
                observed.finish(code)

        return wrapper


def _failure_code(context: Context, exc: Exception) -> str:
    if isinstance(exc, TiermeshError):
        return exc.code.name
    if isinstance(exc, grpc.aio.AbortError):
        return _status_name(context, "UNKNOWN")
    return grpc.StatusCode.INTERNAL.name


# Health probes (from Envoy and the orchestrator) and reflection are no part of any request's story.
_UNTRACED = filters.negate(
    filters.any_of(filters.service_prefix("grpc.health.v1.Health"), filters.service_prefix("grpc.reflection."))
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
    ) -> None:
        self.name = name
        self.service_names = list(service_names)
        self.host, self.port = host, port
        self.grace_s = grace_s
        self.log = logger
        self.ready = ready
        self.on_stop = on_stop
        self.on_drain = on_drain
        self.drain = Drain()
        self.drain.idle.set()
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.server = grpc.aio.server(
            # The span first, so the runtime's own log lines and error mapping happen inside it.
            interceptors=[
                aio_server_interceptor(filter_=_UNTRACED),  # type: ignore[no-untyped-call]
                RuntimeInterceptor(self.drain, logger, name),
            ],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ],
        )
        register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([*self.service_names, HEALTH_SERVICE, REFLECTION_SERVICE], self.server)
        self.stopped = asyncio.Event()
        self._shutdown_task: asyncio.Future[None] | None = None

    async def _set_all(self, status: int) -> None:
        for svc in ["", *self.service_names]:
            result = self.health.set(svc, status)
            if asyncio.iscoroutine(result):
                await result

    async def start(self) -> None:
        try:
            bound = self.server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError:  # grpc raises when the address cannot be bound
            bound = 0
        if bound == 0:
            raise OSError(f"{self.name}: cannot listen on {self.host}:{self.port} (port in use?)")
        self.port = bound
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.ready is None or await self.ready():
            await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        self.log.info("listening", extra={"address": f"{self.host}:{self.port}", "grace_s": self.grace_s})

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
    *,
    service_names: Iterable[str],
    register: Registrar,
    ready: Callable[[], Awaitable[bool]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_drain: Callable[[], Awaitable[None]] | None = None,
    on_start: Callable[[Service], Awaitable[None]] | None = None,
    max_message_bytes: int = 8 * 1024 * 1024,
) -> None:
    """Run service `name` where the config says it listens, until SIGTERM/SIGINT and its drain."""
    from services.runtime import config

    host, port = config.endpoint(tree, name)
    service = Service(
        name,
        service_names=service_names,
        register=register,
        host=host,
        port=port,
        grace_s=config.get_float(tree, "shutdown_grace_s", 20.0, where="", hi=3600),
        logger=logger,
        ready=ready,
        on_stop=on_stop,
        on_drain=on_drain,
        max_message_bytes=max_message_bytes,
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
