"""JSON logs on stdout: one object per line with ts, level, service, request_id and trace_id.

`trace_id` is the current OpenTelemetry span's trace id (32 hex digits): inside an RPC it is the
caller's trace, so one request's lines can be found in every service and joined to its spans.
Outside any span it is empty.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

from services.runtime import apikeys

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def current_trace_id() -> str:
    """The trace id of the span current in this context, as 32 hex digits; empty when none."""
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; extra= fields are added as keys; API keys are redacted."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
            "trace_id": current_trace_id(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        # An API key in a message, a field or a traceback (a client's header echoed in an error)
        # never reaches a log: whoever reads logs must not be able to act as the key's user.
        return apikeys.redact(json.dumps(out, ensure_ascii=False, default=str))


def setup(service: str, level: str = "info") -> logging.Logger:
    """Route every logger to JSON on stdout for this process; returns the service's logger."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries are chatty at info level; their warnings still come through.
    for noisy in ("httpx", "httpcore", "LiteLLM", "litellm", "openai", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"tiermesh.{service}")
