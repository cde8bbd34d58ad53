"""The OpenAI-compatible HTTP API: `/v1/chat/completions` (streamed and not), `/v1/models` and
`/v1/embeddings`. Chat is translated to RouterService.Chat, so routing, grounding, the cache,
fallbacks, usage and budgets all apply as for any gRPC client; embeddings come from Knowledge's
model (KnowledgeService.Embed).

It sits behind the edge: Envoy verifies the caller's token or API key, applies the rate limits and
writes the identity headers (`x-tiermesh-user`, `-segment`, `-role`, and a key's budget and team), which
this service honours only from the edge's certificate and passes on to the Router with a
certificate of its own role (`openai`), the one besides the edge's whose identity headers the
Router honours. tiermesh's facts about an answer travel in response headers (`x-tiermesh-tier`,
`-intent`, `-request-id`, and, when not streamed, `-cost-usd` and `-model`) and in the `tiermesh`
field of the chunks (see services.openai.wire). `model` is `auto`, `tier-N`, or a deployment's
name (the Router lets only the operator role pin one).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from aiohttp import web
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.knowledge.v1 import knowledge_service_pb2 as kpb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as kpb_grpc
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.openai.wire import (
    AUTO,
    DONE,
    TIER_MODELS,
    ApiError,
    Stream,
    embeddings_response,
    from_grpc,
    parse_embeddings,
    parse_request,
)
from services.runtime import config, identity, tls

MAX_BODY_BYTES = 1 << 20  # the contract allows 64 messages of 32,000 characters; JSON adds little
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The edge's headers, besides who the caller is, handed on to the Router as they came.
PASSED_ON = (
    identity.REQUEST_ID,
    identity.CLIENT_REQUEST_ID,
    identity.DEADLINE,
    identity.BUDGET,
    identity.ROLE,
    identity.TEAM,
)


class EventStream(web.StreamResponse):
    """A streamed response whose status line and headers leave with its first bytes of body (one
    write, one TLS record, one segment for Envoy to read) instead of on their own before them, as
    aiohttp does for a `web.Response`."""

    _send_headers_immediately = False


def _error_response(err: ApiError) -> web.Response:
    return web.Response(status=err.status, body=err.body(), content_type="application/json", headers=err.headers)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in OpenAI's format, aiohttp's own (too large, not found, wrong method) included."""
    try:
        return await handler(request)
    except ApiError as err:
        return _error_response(err)
    except web.HTTPRequestEntityTooLarge:
        limit = f"{MAX_BODY_BYTES // 1024} KiB"
        return _error_response(ApiError(413, f"the request body is over {limit}: send less", code="too_large"))
    except web.HTTPException as exc:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return _error_response(ApiError(exc.status, f"{request.method} {request.path}: {exc.reason}", kind))


def _identity(headers: Mapping[str, str]) -> tuple[tuple[str, Any], ...]:
    """The identity the edge verified, as the Router reads it; the client's own request id too."""
    user, segment = identity.user_and_segment(
        {k: headers[k] for k in (identity.USER, identity.SEGMENT) if k in headers}
    )
    metadata: list[tuple[str, Any]] = [identity.user_metadata(user), (identity.SEGMENT, segment)]
    for key in PASSED_ON:
        value = headers.get(key)
        if value and value.isascii() and value.isprintable():
            metadata.append((key, value))
    return tuple(metadata)


def _from_edge(request: web.Request) -> bool:
    """Did the edge send this request? With TLS every caller has a certificate of the mesh CA
    (the port demands one); only the edge's role vouches for identity headers. Without TLS (one
    machine, loopback ports) every caller is trusted, as the gRPC services do."""
    transport = request.transport
    if transport is None or transport.get_extra_info("sslcontext") is None:
        return True
    return identity.trusted(tls.cert_role(transport.get_extra_info("peercert")), tls.EDGE)


class OpenAIApi:
    def __init__(
        self,
        chat: Callable[..., Any],
        timeout_s: float = 600.0,
        deployments: Mapping[str, int] | None = None,
        embed: Callable[..., Any] | None = None,
    ) -> None:
        self.chat = chat
        self.embed = embed
        self.timeout_s = timeout_s
        self.deployments = dict(deployments or {})  # name -> tier: models a caller may pin
        self.draining = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[openai_errors])
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    def health_app(self) -> web.Application:
        """`GET /health` alone, for the supervisor and kubelet (no certificate needed): 200 `ok`,
        or 503 `draining` once SIGTERM has arrived."""
        app = web.Application()
        app.router.add_get("/health", self.health)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(status=503 if self.draining else 200, text="draining" if self.draining else "ok")

    async def models(self, _: web.Request) -> web.Response:
        ids = [AUTO, *TIER_MODELS, *self.deployments]
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "tiermesh"} for m in ids]
        return web.json_response({"object": "list", "data": data})

    async def embeddings(self, request: web.Request) -> web.Response:
        """Embeddings from the knowledge base's model (Knowledge's Embed), in OpenAI's format."""
        req = parse_embeddings(await request.read())
        if self.embed is None:
            raise ApiError(503, "embeddings are not served here: Knowledge is not configured", "service_unavailable")
        try:
            reply = await self.embed(kpb.EmbedRequest(texts=req.texts, model=req.model), timeout=60)
        except grpc.aio.AioRpcError as exc:
            err = from_grpc(exc.code(), exc.details() or "")
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                err.param, err.code = "model", "model_not_found"
            raise err from None
        return web.json_response(embeddings_response(reply, req.base64))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_request(await request.read(), self.deployments)
        metadata = _identity(request.headers if _from_edge(request) else {})
        call = self.chat(req.chat_request(), metadata=metadata, timeout=self.timeout_s)
        events = call.__aiter__()
        try:
            first = await anext(events)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc.code(), exc.details() or "") from None
        except StopAsyncIteration:
            first = None
        if first is None or not first.HasField("decision"):
            raise ApiError(502, "the Router's answer did not start with its decision", "server_error")
        decision = first.decision
        headers = {
            "x-tiermesh-tier": str(int(decision.tier)),
            "x-tiermesh-intent": c.Intent.Name(decision.intent).removeprefix("INTENT_").lower(),
            "x-tiermesh-request-id": decision.request_id,
        }
        stream = Stream(f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), req.model, req.include_usage)
        if not req.stream:
            stream.events(first)
            try:
                async for event in events:
                    stream.events(event)
            except grpc.aio.AioRpcError as exc:
                err = from_grpc(exc.code(), exc.details() or "")
                err.headers.update(headers)
                raise err from None
            done = stream.extension.get("done", {})
            headers["x-tiermesh-cost-usd"] = f"{done.get('cost_usd', 0.0):.6f}"
            headers["x-tiermesh-model"] = str(done.get("model", ""))
            return web.json_response(stream.completion(), headers=headers, dumps=_dumps)
        response = EventStream(headers={**SSE_HEADERS, **headers})
        await response.prepare(request)
        # Each write is a TLS record and a system call: the role chunk (no text) goes out with
        # whatever comes next, and the last chunks with the end of the response.
        pending = stream.events(first)
        try:
            async for event in events:
                lines = stream.events(event)
                if not lines:
                    continue
                if pending:
                    lines, pending = [*pending, *lines], []
                if lines[-1] is DONE:
                    pending = lines
                    break
                await response.write(lines[0] if len(lines) == 1 else b"".join(lines))
        except grpc.aio.AioRpcError as exc:
            # The status is sent; OpenAI streams report a late error as one more event.
            pending.append(b"data: " + from_grpc(exc.code(), exc.details() or "").body() + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            call.cancel()  # the client left: so does the answer (and the provider call behind it)
            raise
        await response.write_eof(b"".join(pending))
        return response


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def build(tree: Mapping[str, Any]) -> OpenAIApi:
    """The API over a channel to the Router, calling as the `openai` role."""
    channel = tls.channel(dict(tree), "router", tls.OPENAI, options=config.QUICK_RECONNECT)
    timeout_s = config.get_float(config.section(tree, "openai"), "timeout_s", 600.0, where="openai", lo=1, hi=86_400)
    knowledge = tls.channel(dict(tree), "knowledge", tls.OPENAI, options=config.QUICK_RECONNECT)
    embed = kpb_grpc.KnowledgeServiceStub(knowledge).Embed
    return OpenAIApi(pb_grpc.RouterServiceStub(channel).Chat, timeout_s, config.deployment_tiers(tree), embed)
