"""OpenAI's chat completions wire format, both ways, over RouterService.Chat.

- `parse_request`: a `/v1/chat/completions` body to a `CompletionRequest`, refusing what tiermesh
  cannot honour with OpenAI's error object and a message that says what to send instead (limits
  on the text itself are the contract's, enforced by the Router and mapped back by `from_grpc`).
- `Stream`: Chat's events to OpenAI's `chat.completion.chunk`s as server-sent events: the role
  first, then the text, then the finish, then (with `stream_options.include_usage`) the usage, then
  `data: [DONE]`. What OpenAI has no field for (the routing decision, citations, a restart, cost)
  travels in a `tiermesh` field of the chunk, which OpenAI clients ignore.
- `Stream.completion`: the same answer as one `chat.completion` object, for `stream: false`.
- `from_grpc`: a gRPC status to the HTTP status and error object OpenAI would send.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb

AUTO = "auto"
# `tier-1` .. `tier-4` pin a tier, as ChatRequest.tier does.
TIER_MODELS = {f"tier-{t.number}": t.number for t in c.Tier.DESCRIPTOR.values if t.number}
ROLES = {
    "system": c.CHAT_ROLE_SYSTEM,
    "developer": c.CHAT_ROLE_SYSTEM,
    "user": c.CHAT_ROLE_USER,
    "assistant": c.CHAT_ROLE_ASSISTANT,
}
# Accepted and without effect here: sampling knobs the tiers' own settings decide, and fields for
# the caller's own bookkeeping.
IGNORED = frozenset(
    {"user", "top_p", "seed", "presence_penalty", "frequency_penalty", "metadata", "store", "service_tier"}
)
UNSUPPORTED = {
    "tools": "tool calling is not supported: send the conversation as messages",
    "tool_choice": "tool calling is not supported: leave tool_choice out",
    "functions": "function calling is not supported: send the conversation as messages",
    "function_call": "function calling is not supported: leave function_call out",
    "logprobs": "log probabilities are not returned: leave logprobs out",
    "top_logprobs": "log probabilities are not returned: leave top_logprobs out",
    "response_format": "response formats are not supported: ask for the format in the messages",
    "stop": "stop sequences are not supported: leave stop out",
    "logit_bias": "logit_bias is not supported: leave it out",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported: leave modalities out",
    "prediction": "predicted outputs are not supported: leave prediction out",
}
KNOWN = frozenset(
    {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "n"}
)
FINISH = {
    c.FINISH_REASON_STOP: "stop",
    c.FINISH_REASON_LENGTH: "length",
    c.FINISH_REASON_CONTENT_FILTER: "content_filter",
}
MAX_TOKENS_LIMIT = 2**31 - 1  # ChatRequest.max_tokens is an int32


@dataclass
class ApiError(Exception):
    """An answer in OpenAI's error format: `{"error": {"message", "type", "param", "code"}}`."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    tier: int
    messages: tuple[tuple[int, str], ...]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int = 0
    temperature: float | None = None
    deployment: str = ""  # a deployment's name as the model pins it (the operator role only)

    def chat_request(self) -> pb.ChatRequest:
        request = pb.ChatRequest(
            messages=[c.ChatMessage(role=c.ChatRole.ValueType(role), content=text) for role, text in self.messages],
            tier=c.Tier.ValueType(self.tier),
            max_tokens=self.max_tokens,
            deployment=self.deployment,
        )
        if self.temperature is not None:
            request.temperature = self.temperature
        return request


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (OpenAI's content parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{where}[{i}]: only text parts are supported ({{'type': 'text', 'text': '...'}})", where)
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"{where}: must be a string or a list of text parts", where, "invalid_type")


def _int(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name}: must be an integer", name, "invalid_type")
    if not lo <= value <= hi:
        raise _bad(f"{name}: {value} is out of range; send {lo} to {hi}", name)
    return value


def _json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or the 400 OpenAI would answer."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON: send a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def parse_request(raw: bytes, deployments: Collection[str] = ()) -> CompletionRequest:
    body = _json_object(raw)
    for name, why in UNSUPPORTED.items():
        if body.get(name) not in (None, False, [], {}):
            raise _bad(why, name, "unsupported_parameter")
    unknown = sorted(k for k in body if k not in KNOWN and k not in IGNORED and k not in UNSUPPORTED)
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")

    model = body.get("model", AUTO)
    if model is None:
        model = AUTO
    if not isinstance(model, str):
        raise _bad("model: must be a string such as 'auto' or 'tier-2'", "model", "invalid_type")
    if model != AUTO and model not in TIER_MODELS and model not in deployments:
        raise ApiError(
            404,
            f"The model `{model[:200]}` does not exist: use 'auto' (routed), one of {', '.join(TIER_MODELS)}, "
            "or a deployment's name (GET /v1/models lists them)",
            param="model",
            code="model_not_found",
        )

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: send a non-empty list of {role, content} objects", "messages", "invalid_type")
    parsed = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where}: must be an object with role and content", where, "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role: must be one of {', '.join(ROLES)}, got {str(role)[:40]!r}", f"{where}.role")
        parsed.append((ROLES[role], _content(m.get("content"), f"{where}.content")))

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream: must be true or false", "stream", "invalid_type")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _bad("stream_options: only allowed when stream is true", "stream_options")
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise _bad("stream_options: send {'include_usage': true|false}", "stream_options", "invalid_type")
        include_usage = bool(options.get("include_usage", False))

    n = _int(body, "n", 1, 1)
    del n  # one choice only: anything else was refused above
    max_tokens = _int(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT) or _int(
        body, "max_tokens", 1, MAX_TOKENS_LIMIT
    )
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature):
            raise _bad("temperature: must be a number from 0 to 2", "temperature", "invalid_type")
        if not 0 <= temperature <= 2:
            raise _bad(f"temperature: {temperature} is out of range; send 0 to 2", "temperature")
        temperature = float(temperature)
    return CompletionRequest(
        model=model,
        tier=TIER_MODELS.get(model, 0),
        deployment=model if model in deployments and model not in TIER_MODELS and model != AUTO else "",
        messages=tuple(parsed),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens or 0,
        temperature=temperature,
    )


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class Stream:
    """Chat's events for one answer, as OpenAI chunks (`events`) or one completion (`completion`)."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool = False) -> None:
        self.id = completion_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self.text: list[str] = []
        self.extension: dict[str, Any] = {}
        self.finish: str | None = None
        self.usage: dict[str, int] | None = None
        # A text chunk is most of a stream: its bytes around the text are made once, and only
        # the text is encoded per chunk (the same JSON `_chunk` would make, key for key).
        head, _, tail = self._chunk({"content": ""}, None).partition(b'"content":""')
        self._delta_head, self._delta_tail = head + b'"content":', tail

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None, extra: dict[str, Any] | None = None) -> bytes:
        obj = self._envelope([{"index": 0, "delta": delta, "finish_reason": finish}])
        if self.include_usage:
            obj["usage"] = None
        if extra:
            obj["tiermesh"] = extra
        return _sse(obj)

    def events(self, event: pb.ChatResponse) -> list[bytes]:
        """The server-sent events one Chat event becomes (none for some)."""
        kind = event.WhichOneof("event")
        if kind == "decision":
            d = event.decision
            self.extension["decision"] = {
                "tier": int(d.tier),
                "intent": c.Intent.Name(d.intent).removeprefix("INTENT_").lower(),
                "complexity": c.Complexity.Name(d.complexity).removeprefix("COMPLEXITY_").lower(),
                "segment": c.Segment.Name(d.segment).removeprefix("SEGMENT_").lower(),
                "reasons": list(d.reasons),
                "second_opinion": d.second_opinion,
                "request_id": d.request_id,
            }
            return [self._chunk({"role": "assistant", "content": ""}, None, {"decision": self.extension["decision"]})]
        if kind == "citation":
            cite = {
                "index": event.citation.index,
                "title": event.citation.title,
                "document_id": event.citation.document_id,
            }
            self.extension.setdefault("citations", []).append(cite)
            return [self._chunk({}, None, {"citation": cite})]
        if kind == "delta":
            text = event.delta.text
            self.text.append(text)
            return [self._delta_head + json.dumps(text, ensure_ascii=False).encode() + self._delta_tail]
        if kind == "restart":
            r = event.restart
            self.text.clear()
            restart = {
                "failed_deployment": r.failed_deployment,
                "reason": r.reason,
                "discarded_chars": r.discarded_chars,
            }
            return [self._chunk({}, None, {"restart": restart})]
        if kind == "done":
            done = event.done
            self.finish = FINISH.get(done.finish_reason, "stop")
            u = done.usage
            self.usage = {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            }
            self.extension["done"] = {
                "model": done.model,
                "deployment": done.deployment,
                "cached": done.cached,
                "degraded": done.degraded,
                "cost_usd": u.cost_micro_usd / 1_000_000,
                "fallback_path": list(done.fallback_path),
            }
            out = [self._chunk({}, self.finish, {"done": self.extension["done"]})]
            if self.include_usage:
                out.append(_sse(self._envelope([]) | {"usage": self.usage}))
            return [*out, DONE]
        return []

    def completion(self) -> dict[str, Any]:
        """The whole answer as OpenAI's `chat.completion` (after every event went through `events`)."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.text), "refusal": None},
                    "logprobs": None,
                    "finish_reason": self.finish or "stop",
                }
            ],
            "usage": self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "tiermesh": self.extension,
        }


_GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", None),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (408, "timeout", "timeout"),
    grpc.StatusCode.CANCELLED: (408, "timeout", "cancelled"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_exceeded", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "service_unavailable"),
}


def from_grpc(code: grpc.StatusCode, message: str, retry_after_s: int | None = None) -> ApiError:
    """The error OpenAI would answer for what tiermesh's gRPC status says (500 for the rest)."""
    status, kind, error_code = _GRPC_TO_HTTP.get(code, (500, "server_error", None))
    headers = {"retry-after": str(max(1, retry_after_s))} if status == 429 and retry_after_s is not None else {}
    return ApiError(status, message or code.name.lower().replace("_", " "), kind, None, error_code, headers)


# --- /v1/embeddings --------------------------------------------------------------------------

EMBEDDING_FIELDS = frozenset({"input", "model", "encoding_format", "user", "dimensions"})
ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: tuple[str, ...]
    model: str  # as the caller named it; "" for the knowledge base's own
    base64: bool


def parse_embeddings(raw: bytes) -> EmbeddingRequest:
    """A `/v1/embeddings` body; text inputs only (a string or a list of strings). The model is
    `auto` or the knowledge base's embedding model (NOT_FOUND from Knowledge otherwise)."""
    body = _json_object(raw)
    unknown = sorted(k for k in body if k not in EMBEDDING_FIELDS)
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
    if body.get("dimensions") is not None:
        raise _bad("dimensions is not supported: the embedding model's size is fixed; leave it out", "dimensions")
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _bad("input: send a string or a non-empty list of strings (token arrays are not supported)", "input")
    model = body.get("model", AUTO)
    if not isinstance(model, str) or not model:
        raise _bad("model: must be a string such as 'auto'", "model", "invalid_type")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise _bad(f"encoding_format: must be one of {', '.join(ENCODINGS)}", "encoding_format")
    return EmbeddingRequest(tuple(texts), "" if model == AUTO else model, encoding == "base64")


def embeddings_response(reply: Any, base64_encoded: bool) -> dict[str, Any]:
    """Knowledge's EmbedResponse as OpenAI's embedding list (float lists, or little-endian
    float32 bytes in base64 as the official SDKs ask for by default)."""
    data = []
    for i, e in enumerate(reply.embeddings):
        vector: Any = list(e.values)
        if base64_encoded:
            vector = base64.b64encode(struct.pack(f"<{len(e.values)}f", *e.values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    return {"object": "list", "data": data, "model": reply.model, "usage": usage}
