"""The simulator's HTTP server: OpenAI's chat completions API, streamed and not, with faults.

Besides the OpenAI routes it records every request it served, so tests can see what a
provider saw: `GET /_sim/requests` (newest last), `DELETE /_sim/requests`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import math
import re
import struct
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from services.simulator.faults import BadBehaviour, Behaviour, behaviour_for

log = logging.getLogger("tiermesh.simulator")

_FILLER = (
    "Here is what I would tell you. A real provider would answer your question in full; this "
    "simulator stands in for it so the whole mesh can run offline, streaming one token at a "
    "time with a configurable delay, reporting usage like a real model, and failing on purpose "
    "when asked to. Tiers, fallbacks, caching and cost accounting all behave as they would "
    "with a paid model, which makes this answer useful for testing and nothing else."
).split()


def count_tokens(text: str) -> int:
    """A provider-side token estimate (about four characters per token, at least one a word)."""
    return max(len(text.split()), math.ceil(len(text) / 4)) if text else 0


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 3
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        total += 4 + count_tokens(str(content))
    return total


_DOCUMENT_INDEX = re.compile(r'<document-[0-9a-f]+ index="(\d+)"')


def answer_tokens(model: str, messages: list[dict[str, Any]], n: int) -> list[str]:
    """The answer: the question quoted, then filler. Like a grounded model, it cites the
    documents a system message gave it (`Sources: [1] [2].`)."""
    last = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
    quoted = " ".join(last.split()[:12])
    head = f"[simulated answer from {model.split(':')[0]}] You asked: \u201c{quoted}\u201d.".split()
    cited = [
        i for m in messages if m.get("role") == "system" for i in _DOCUMENT_INDEX.findall(str(m.get("content", "")))
    ]
    if cited:
        head += ["Sources:", *(f"[{i}]" for i in dict.fromkeys(cited))]
    words = list(itertools.islice(itertools.chain(head, itertools.cycle(_FILLER)), n))
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def hashed_vector(text: str, dims: int) -> list[float]:
    """Signed feature hashing of lower-cased words, unit length."""
    vector = [0.0] * dims
    for word in text.lower().split():
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "big") % dims
        vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@dataclass
class Record:
    id: str
    model: str
    stream: bool
    fault: str
    state: str = "started"  # started -> streaming -> done | cut | disconnected | failed
    tokens_sent: int = 0
    tokens_planned: int = 0
    started_at: float = field(default_factory=time.time)
    first_token_at: float | None = None
    finished_at: float | None = None
    request_id: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)


class Simulator:
    def __init__(self, default: Behaviour, keep: int = 500) -> None:
        self.default = default
        self.records: deque[Record] = deque(maxlen=keep)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/health", self.health)
        app.router.add_get("/_sim/requests", self.list_requests)
        app.router.add_delete("/_sim/requests", self.clear_requests)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim", "object": "model", "owned_by": "tiermesh"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        """OpenAI's embeddings API, for exercising a provider embedding path offline. The vectors
        are hashed bags of words: equal words give close vectors, meaning plays no part."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "request body is not valid JSON", "invalid_json")
        raw = body.get("input") if isinstance(body, dict) else None
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return self._error(400, "'input' must be a string or a non-empty list of strings", "invalid_input")
        dims = body.get("dimensions", 64)
        if not isinstance(dims, int) or not 1 <= dims <= 4096:
            return self._error(400, "'dimensions' must be 1 to 4096", "invalid_dimensions")
        data = []
        for i, text in enumerate(texts):
            vector = hashed_vector(text, dims)
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        used = sum(count_tokens(t) for t in texts)
        return web.json_response(
            {
                "object": "list",
                "model": str(body.get("model", "sim-embed")),
                "data": data,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
        )

    async def list_requests(self, _: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.records])

    async def clear_requests(self, _: web.Request) -> web.Response:
        self.records.clear()
        return web.json_response({"cleared": True})

    @staticmethod
    def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "code": code,
            }
        }
        return web.json_response(body, status=status, headers=headers)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "request body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return self._error(400, "request body must be a JSON object", "invalid_json")
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return self._error(400, "'model' is required", "missing_model")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return self._error(400, "'messages' must be a non-empty list of objects", "invalid_messages")
        try:
            b = behaviour_for(model, {k.lower(): v for k, v in request.headers.items()}, self.default)
        except BadBehaviour as exc:
            return self._error(400, str(exc), "invalid_simulator_setting")
        stream = bool(body.get("stream"))
        rec = Record(
            id="chatcmpl-" + uuid.uuid4().hex[:24],
            model=model,
            stream=stream,
            fault=b.fault,
            request_id=request.headers.get("x-request-id", ""),
            messages=messages,
        )
        self.records.append(rec)
        try:
            return await self._serve(request, body, b, rec)
        except asyncio.CancelledError:
            rec.state, rec.finished_at = "disconnected", time.time()
            raise
        except ConnectionError:
            # The client left mid-answer (a cancelled chat): nothing is wrong here, and there is
            # nobody left to answer.
            rec.state, rec.finished_at = "disconnected", time.time()
            log.debug("client left before the answer ended", extra={"id": rec.id})
            return web.Response(status=499)

    async def _serve(self, request: web.Request, body: dict[str, Any], b: Behaviour, rec: Record) -> web.StreamResponse:
        if b.fault == "500":
            rec.state = "failed"
            return self._error(500, "simulated provider failure", "server_error")
        if b.fault == "429":
            rec.state = "failed"
            return self._error(
                429, "simulated rate limit", "rate_limit_exceeded", {"Retry-After": str(b.retry_after_s)}
            )
        if b.fault == "hang":
            rec.state = "hanging"
            await asyncio.sleep(24 * 3600)
        p_tokens = prompt_tokens(rec.messages)
        if p_tokens > b.context_window:
            rec.state = "failed"
            return self._error(
                400,
                f"This model's maximum context length is {b.context_window} tokens. "
                f"However, your messages resulted in {p_tokens} tokens.",
                "context_length_exceeded",
            )
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        n = b.tokens if not limit else min(b.tokens, int(limit))
        finish = "length" if limit and int(limit) < b.tokens else "stop"
        tokens = answer_tokens(rec.model, rec.messages, n)
        rec.tokens_planned = len(tokens)
        usage = {"prompt_tokens": p_tokens, "completion_tokens": len(tokens), "total_tokens": p_tokens + len(tokens)}
        created = int(time.time())
        if not rec.stream:
            if b.token_delay_ms:
                await asyncio.sleep(b.token_delay_ms * len(tokens) / 1000)
            rec.tokens_sent, rec.state, rec.finished_at = len(tokens), "done", time.time()
            return web.json_response(
                {
                    "id": rec.id,
                    "object": "chat.completion",
                    "created": created,
                    "model": rec.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = b.usage and bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        rec.state = "streaming"

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            obj = {
                "id": rec.id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": rec.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            if include_usage:
                obj["usage"] = None
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        await resp.write(chunk({"role": "assistant", "content": ""}, None))
        for i, tok in enumerate(tokens):
            if b.fault == "cut" and i >= b.cut_after:
                rec.state, rec.finished_at = "cut", time.time()
                assert request.transport is not None
                request.transport.close()
                return resp
            if b.token_delay_ms:
                await asyncio.sleep(b.token_delay_ms / 1000)
            await resp.write(chunk({"content": tok}, None))
            rec.tokens_sent = i + 1
            if rec.first_token_at is None:
                rec.first_token_at = time.time()
        await resp.write(chunk({}, finish))
        if include_usage:
            final = {
                "id": rec.id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": rec.model,
                "choices": [],
                "usage": usage,
            }
            await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        rec.state, rec.finished_at = "done", time.time()
        return resp
