"""Prometheus metrics, defined and served the same way by every service.

A service defines its metrics once, at module level in its own `metrics.py`, with `counter`,
`histogram` and `gauge`:

    REQUESTS = metrics.counter("tiermesh_widget_requests_total", "Widget requests by outcome.", ["outcome"])

The rules they enforce are Prometheus's naming conventions plus ours:

- names start with `tiermesh_`; counters end in `_total`; durations are in seconds and end in
  `_seconds`; money is counted in integer micro-dollars (`_micro_usd_total`);
- label names that grow with traffic (users, request, trace or session ids, addresses) are
  refused when the metric is defined, so an unbounded label can never reach a scrape;
- defining a name again returns the metric already registered (a module imported under two
  names, a test that reloads it) when kind and labels match, and fails loudly when they do not.

`serve(host, port)` exposes everything registered at `/metrics` on a daemon thread, so a scrape
never waits for the event loop (and still answers when the loop is stuck). Callbacks given to
`Gauge.set_function` run on that thread: they must only read.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TypeVar

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

PREFIX = "tiermesh_"

# Labels whose values are per caller or per request: one series each would grow without bound.
FORBIDDEN_LABELS = frozenset(
    {
        "user",
        "user_id",
        "sub",
        "request_id",
        "trace_id",
        "span_id",
        "session_id",
        "email",
        "ip",
        "peer",
        "remote_address",
        "prompt",
        "message",
    }
)

# Unary RPCs and in-process work: milliseconds to a few seconds.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Whole answers and streams: a model may take minutes.
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

# The `_created` series double every counter and histogram for a value Prometheus does not use.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

M = TypeVar("M", bound=MetricWrapperBase)

_lock = threading.Lock()
_defined: dict[str, tuple[MetricWrapperBase, tuple[str, ...]]] = {}


def _check_name(name: str, kind: type[MetricWrapperBase]) -> None:
    if not name.startswith(PREFIX):
        raise ValueError(f"metric {name!r}: names start with {PREFIX!r}")
    if kind is Counter and not name.endswith("_total"):
        raise ValueError(f"metric {name!r}: counter names end in '_total'")
    if kind is not Counter and name.endswith("_total"):
        raise ValueError(f"metric {name!r}: only counters end in '_total'")
    if name.removesuffix("_total").endswith(("_ms", "_milliseconds", "_minutes")):
        raise ValueError(f"metric {name!r}: durations are in seconds")


def _check_labels(name: str, labels: tuple[str, ...]) -> None:
    bad = sorted(set(labels) & FORBIDDEN_LABELS)
    if bad:
        raise ValueError(f"metric {name!r}: label(s) {bad} would make one series per caller or request")


def _define(kind: type[M], name: str, doc: str, labels: Sequence[str], **kwargs: object) -> M:
    labelnames = tuple(labels)
    with _lock:
        known = _defined.get(name)
        if known is not None:
            metric, known_labels = known
            if not isinstance(metric, kind) or known_labels != labelnames:
                raise ValueError(
                    f"metric {name!r} is already defined as {type(metric).__name__}{list(known_labels)}, "
                    f"not {kind.__name__}{list(labelnames)}"
                )
            return metric
        _check_name(name, kind)
        _check_labels(name, labelnames)
        created = kind(name, doc, labelnames, **kwargs)  # type: ignore[arg-type]
        _defined[name] = (created, labelnames)
        return created


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    """A counter (`name` ends in `_total`) with the given label names."""
    return _define(Counter, name, doc, labels)


def histogram(name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = FAST_BUCKETS) -> Histogram:
    """A histogram of a quantity in base units (seconds for durations)."""
    return _define(Histogram, name, doc, labels, buckets=tuple(buckets))


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    """A gauge: a value that goes up and down (queue depth, in-flight calls, a state)."""
    return _define(Gauge, name, doc, labels)


_served: dict[tuple[str, int], object] = {}


def serve(host: str, port: int) -> None:
    """Serve `/metrics` (the Prometheus text format) on host:port from a daemon thread.

    Port 0 serves nothing: in-process tests and tools read the registry directly. Serving the
    same address twice in one process is a no-op."""
    if port == 0 or (host, port) in _served:
        return
    try:
        server, _ = prometheus_client.start_http_server(port, addr=host)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port} (port in use?): {exc}") from None
    _served[(host, port)] = server


# The RPC metrics every service's gRPC server records (see services.runtime.server).
GRPC_REQUESTS = counter(
    "tiermesh_grpc_requests_total",
    "RPCs handled, by service, full method and final gRPC status code (health and reflection excluded).",
    ["service", "method", "code"],
)
GRPC_DURATION = histogram(
    "tiermesh_grpc_request_duration_seconds",
    "Time from the start of an RPC to its status; for streams, until the last message.",
    ["service", "method"],
    buckets=SLOW_BUCKETS,
)
GRPC_IN_FLIGHT = gauge(
    "tiermesh_grpc_requests_in_flight",
    "RPCs being handled now (streams count until they end).",
    ["service", "method"],
)
