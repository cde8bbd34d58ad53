"""RouterService RPCs: validate, decide, then relay Inference's stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence

import grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.router import policy
from services.runtime import logs
from services.runtime.errors import DeadlineExceeded, TiermeshError
from services.runtime.server import Context
from services.runtime.validation import validate

log = logging.getLogger("tiermesh.router")

SEGMENTS = {"standard": c.SEGMENT_STANDARD, "vip": c.SEGMENT_VIP, "enterprise": c.SEGMENT_ENTERPRISE}


class RelayedError(TiermeshError):
    """An error from Inference passed on to the client with its own status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def segment_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> int:
    """The caller's segment, from the identity header the gateway sets; standard when absent."""
    for key, value in metadata or ():
        if key == "x-tiermesh-segment":
            text = value.decode() if isinstance(value, bytes) else value
            return SEGMENTS.get(text.strip().lower(), c.SEGMENT_STANDARD)
    return c.SEGMENT_STANDARD


def _last_user_text(messages: Sequence[c.ChatMessage]) -> str:
    for m in reversed(messages):
        if m.role == c.CHAT_ROLE_USER:
            return m.content
    return messages[-1].content if messages else ""


def _decision_pb(d: policy.Decision, request_id: str) -> pb.RouteDecision:
    return pb.RouteDecision(
        tier=c.Tier.ValueType(d.tier),
        intent=c.Intent.ValueType(d.intent),
        intent_confidence=d.intent_confidence,
        complexity=c.Complexity.ValueType(d.complexity),
        complexity_score=d.complexity_score,
        segment=c.Segment.ValueType(d.segment),
        reasons=d.reasons,
        policy_version=d.policy_version,
        request_id=request_id,
    )


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, inference: ipb_grpc.InferenceServiceAsyncStub, default_deadline_s: float) -> None:
        self.inference = inference
        self.default_deadline_s = default_deadline_s

    def _decide(self, messages: Sequence[c.ChatMessage], tier: int, context: Context) -> policy.Decision:
        segment = segment_from(context.invocation_metadata())
        return policy.decide(_last_user_text(messages), segment, tier)

    async def Route(self, request: pb.RouteRequest, context: Context) -> pb.RouteResponse:
        validate(request)
        decision = self._decide(request.messages, request.tier, context)
        return pb.RouteResponse(decision=_decision_pb(decision, logs.request_id_var.get()))

    async def Chat(self, request: pb.ChatRequest, context: Context) -> AsyncIterator[pb.ChatResponse]:
        validate(request)
        request_id = logs.request_id_var.get()
        decision = self._decide(request.messages, request.tier, context)
        log.info(
            "routed", extra={"tier": decision.tier, "segment": decision.segment, "policy": decision.policy_version}
        )
        yield pb.ChatResponse(decision=_decision_pb(decision, request_id))

        remaining = context.time_remaining()
        timeout = self.default_deadline_s if remaining is None else remaining
        if timeout <= 0:
            raise DeadlineExceeded("the deadline passed before the answer started")
        generate = ipb.GenerateRequest(
            messages=request.messages,
            tier=c.Tier.ValueType(decision.tier),
            max_tokens=request.max_tokens,
            bypass_cache=request.bypass_cache,
        )
        if request.HasField("temperature"):
            generate.temperature = request.temperature
        call = self.inference.Generate(generate, timeout=timeout, metadata=(("x-request-id", request_id),))
        try:
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    yield pb.ChatResponse(delta=event.delta)
                elif kind == "done":
                    d = event.done
                    yield pb.ChatResponse(
                        done=pb.ChatDone(
                            usage=d.usage,
                            model=d.model,
                            deployment=d.deployment,
                            cached=d.cached,
                            finish_reason=d.finish_reason,
                            degraded=d.degraded,
                            fallback_path=d.fallback_path,
                        )
                    )
        except grpc.aio.AioRpcError as exc:
            raise RelayedError(exc.code(), exc.details() or "inference failed") from None
        finally:
            call.cancel()
