"""RouterService RPCs: validate, decide, then relay Inference's stream."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.router.v1 import router_service_pb2 as pb

from services.router import budget, metrics
from services.router.audit import DecisionAudit
from services.router.budget import BudgetCheck, NoBudgets
from services.router.complexity import LEVELS
from services.router.grounding import Grounded, Grounding, GroundingSettings, with_context
from services.router.intent import INTENTS
from services.router.policy import Decision, Router
from services.runtime import identity, logs, tls
from services.runtime.errors import DeadlineExceeded, NotFound, PermissionDenied, TiermeshError
from services.runtime.identity import SEGMENTS
from services.runtime.server import DRAINING, Context, time_remaining
from services.runtime.validation import validate

log = logging.getLogger("tiermesh.router")

INTENT_ENUM = {name: getattr(c, "INTENT_" + name.upper()) for name in INTENTS}
COMPLEXITY_ENUM = {name: getattr(c, "COMPLEXITY_" + name.upper()) for name in LEVELS}
SEGMENT_ENUM = {name: getattr(c, "SEGMENT_" + name.upper()) for name in SEGMENTS}


class RelayedError(TiermeshError):
    """An error from Inference passed on to the client with its own status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who asks, from the identity headers the edge sets after verifying the caller's token or
    API key, honoured only when the caller is the edge (or the OpenAI-compatible API, which
    passes on what the edge verified); never from the message or a request field. Anyone else
    is anonymous and standard. Read once per call."""

    user: str = ""
    segment: str = identity.DEFAULT_SEGMENT
    own_budget: int | None = None  # the monthly budget an API key sets for its user
    operator: bool = False  # a token's `role` claim or an API key's
    client_request_id: str = ""
    team: str = ""  # its API key's team, or its token's `team` claim: that budget applies, its spend counts


def caller_from(context: Context) -> Caller:
    metadata = identity.metadata_dict(context.invocation_metadata())
    client_request_id = identity.client_request_id(metadata)
    if not identity.trusted(tls.peer_role(context), tls.EDGE, tls.OPENAI):
        return Caller(client_request_id=client_request_id)
    user, segment = identity.user_and_segment(metadata)
    return Caller(
        user,
        segment,
        identity.own_budget(metadata),
        metadata.get(identity.ROLE) == identity.OPERATOR,
        client_request_id,
        identity.team(metadata),
    )


def last_user_text(messages: Sequence[c.ChatMessage]) -> str:
    """The message being answered: the last one the user wrote."""
    for m in reversed(messages):
        if m.role == c.CHAT_ROLE_USER:
            return m.content
    return messages[-1].content if messages else ""


def decision_pb(d: Decision, request_id: str) -> pb.RouteDecision:
    return pb.RouteDecision(
        tier=c.Tier.ValueType(d.tier),
        intent=INTENT_ENUM[d.intent],
        intent_confidence=d.intent_confidence,
        complexity=COMPLEXITY_ENUM[d.complexity],
        complexity_score=d.complexity_score,
        segment=SEGMENT_ENUM[d.segment],
        reasons=d.reasons,
        policy_version=d.policy_version,
        request_id=request_id,
        second_opinion=d.second_opinion,
    )


def relay_tag(field: str) -> int:
    """The first byte of a GenerateResponse whose event is `field`: its key, (number << 3) | 2.

    Text and restart events are relayed to the client as they came from Inference, undecoded:
    that is only right while ChatResponse holds the same message under the same field number,
    and the number fits the one-byte key read here. Checked at import, so a contract change that
    breaks it stops the Router at start instead of garbling answers."""
    ours = ipb.GenerateResponse.DESCRIPTOR.fields_by_name[field]
    theirs = pb.ChatResponse.DESCRIPTOR.fields_by_name.get(field)
    if ours.message_type is None or not 0 < ours.number < 16:
        raise TypeError(f"GenerateResponse.{field} must be a message field numbered 1 to 15 to be relayed raw")
    if field != "done" and (
        theirs is None
        or theirs.number != ours.number
        or theirs.message_type is None
        or theirs.message_type.full_name != ours.message_type.full_name
    ):
        raise TypeError(f"ChatResponse.{field} must match GenerateResponse.{field} (number and type) to be relayed raw")
    return ours.number << 3 | 2


_DELTA_TAG, _DONE_TAG, _RESTART_TAG = relay_tag("delta"), relay_tag("done"), relay_tag("restart")

RawGenerate = Callable[..., Any]
# Calls to Inference that it refused before answering are made again, this many times in all.
GENERATE_TRIES = 3
NOT_CONNECTED = "failed to connect to all addresses"


def serialize_chat(message: pb.ChatResponse | bytes) -> bytes:
    """ChatResponse encoder that lets pre-encoded events through unchanged."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class RouterServicer:
    """Chat relays Inference's delta and restart events as the bytes Inference encoded: both
    streams give them the same field numbers and types, so decoding and re-encoding each one
    would only burn CPU. Only the done event is translated."""

    def __init__(
        self,
        router: Router,
        generate_raw: RawGenerate,
        default_deadline_s: float,
        budget: BudgetCheck | None = None,
        grounding: Grounding | None = None,
        max_deadline_s: float = 590.0,
        deployments: Mapping[str, int] | None = None,
        audit: DecisionAudit | None = None,
    ) -> None:
        self.router = router
        self.generate_raw = generate_raw
        self.default_deadline_s = default_deadline_s
        self.max_deadline_s = max_deadline_s
        self.budget = budget or NoBudgets()
        self.grounding = grounding or Grounding(GroundingSettings(enabled=False), None)
        self.deployments = dict(deployments or {})  # name -> tier, for callers that pin one
        # The second opinion's embedding takes milliseconds of CPU: off the event loop, one at a time.
        self._slow_path = ThreadPoolExecutor(max_workers=1, thread_name_prefix="second-opinion")
        self._waiting = 0  # second opinions asked and not yet answered
        self.audit = audit or DecisionAudit(None)

    def _pinned_tier(self, request: pb.ChatRequest, caller: Caller) -> int:
        """The tier the request pins: its deployment's (operators only), else its `tier`."""
        if not request.deployment:
            return request.tier
        if not caller.operator:
            raise PermissionDenied("deployment: pinning a deployment needs the operator role; leave it empty")
        tier = self.deployments.get(request.deployment)
        if tier is None:
            known = ", ".join(sorted(self.deployments)) or "none"
            raise NotFound(f"deployment: no deployment {request.deployment!r}; deployments are {known}")
        return tier

    async def _decide(self, text: str, tier: int, caller: Caller) -> Decision:
        look = self.router.look(text)
        vector, busy = None, 0
        second = self.router.second
        if second is not None and self.router.wants_second_opinion(look):
            if self._waiting >= second.max_waiting:
                busy = self._waiting
            else:
                self._waiting += 1
                try:
                    vector = await asyncio.get_running_loop().run_in_executor(self._slow_path, second.embed, text)
                finally:
                    self._waiting -= 1
        decision = self.router.conclude(look, caller.segment, tier, vector, busy)
        if busy:
            metrics.second_opinion_skipped()
        status = await self.budget.status(caller.user, caller.segment, caller.own_budget, caller.team)
        metrics.budget_verdict(status.action)
        if status.action != "allow":
            reasons = list(decision.reasons)
            new_tier = budget.apply(decision.tier, status, reasons)
            decision = dataclasses.replace(decision, tier=new_tier, reasons=reasons)
        metrics.decided(decision)
        return decision

    async def Route(self, request: pb.RouteRequest, context: Context) -> pb.RouteResponse:
        validate(request)
        decision = await self._decide(last_user_text(request.messages), request.tier, caller_from(context))
        return pb.RouteResponse(decision=decision_pb(decision, logs.request_id_var.get()))

    async def Chat(self, request: pb.ChatRequest, context: Context) -> AsyncIterator[pb.ChatResponse | bytes]:
        validate(request)
        request_id = logs.request_id_var.get()
        caller = caller_from(context)
        user, client_request_id = caller.user, caller.client_request_id
        question = last_user_text(request.messages)
        decision = await self._decide(question, self._pinned_tier(request, caller), caller)
        if request.deployment:
            reasons = [f"deployment {request.deployment} pinned by the caller (operator role)", *decision.reasons]
            decision = dataclasses.replace(decision, reasons=reasons)
        log.info(
            "routed",
            extra={
                "user": user,
                "team": caller.team,
                "client_request_id": client_request_id,
                "tier": decision.tier,
                "intent": decision.intent,
                "complexity": decision.complexity,
                "segment": decision.segment,
                "rule": decision.rule,
                "policy": decision.policy_version,
            },
        )
        self.audit.observe(decision, request_id, question)
        metadata = (  # who asked and why this tier, for Inference (which bills it)
            (identity.REQUEST_ID, request_id),
            identity.user_metadata(user),
            (identity.SEGMENT, decision.segment),
            (identity.INTENT, decision.intent),
            (identity.COMPLEXITY, decision.complexity),
            (identity.CLIENT_REQUEST_ID, client_request_id),
        ) + (((identity.TEAM, caller.team),) if caller.team else ())
        grounded = Grounded()
        if not self.grounding.wanted(decision.intent):
            # Nothing to look up first: Inference starts while the decision is being written.
            generate, timeout = self._generate_request(request, decision, grounded, context)
            call = self.generate_raw(generate, timeout=timeout, metadata=metadata)
            try:
                yield pb.ChatResponse(decision=decision_pb(decision, request_id))
            except BaseException:
                call.cancel()
                raise
            async for message in self._relay(generate, timeout, metadata, grounded, call):
                yield message
            return
        yield pb.ChatResponse(decision=decision_pb(decision, request_id))
        grounded = await self.grounding.retrieve(question, request_id, time_remaining(context))
        for citation in grounded.citations:
            yield pb.ChatResponse(citation=citation)
        generate, timeout = self._generate_request(request, decision, grounded, context)
        async for message in self._relay(generate, timeout, metadata, grounded, None):
            yield message

    def _generate_request(
        self, request: pb.ChatRequest, decision: Decision, grounded: Grounded, context: Context
    ) -> tuple[ipb.GenerateRequest, float]:
        """The call to Inference for this chat, and how long it may take."""
        messages = with_context(request.messages, grounded.message) if grounded.message else request.messages
        remaining = time_remaining(context)
        timeout = min(self.default_deadline_s if remaining is None else remaining, self.max_deadline_s)
        if timeout <= 0:
            raise DeadlineExceeded("the deadline passed before the answer started")
        generate = ipb.GenerateRequest(
            messages=messages,
            tier=c.Tier.ValueType(decision.tier),
            max_tokens=request.max_tokens,
            bypass_cache=request.bypass_cache,
            context_id=grounded.context_id,
            deployment=request.deployment,
        )
        if request.HasField("temperature"):
            generate.temperature = request.temperature
        return generate, timeout

    async def _relay(
        self,
        generate: ipb.GenerateRequest,
        deadline_s: float,
        metadata: tuple[tuple[str, Any], ...],
        grounded: Grounded,
        started: Any,
    ) -> AsyncIterator[pb.ChatResponse | bytes]:
        """Inference's answer to the client: text and restarts as Inference encoded them, the end
        translated. `started`: the call, when it was already made."""
        async for raw in self._generate(generate, deadline_s, metadata, started):
            tag = raw[0] if raw else 0
            if tag in (_DELTA_TAG, _RESTART_TAG):
                yield raw
            elif tag == _DONE_TAG:
                d = ipb.GenerateResponse.FromString(raw).done
                yield pb.ChatResponse(
                    done=pb.ChatDone(
                        usage=d.usage,
                        model=d.model,
                        deployment=d.deployment,
                        cached=d.cached,
                        finish_reason=d.finish_reason,
                        degraded=d.degraded,
                        fallback_path=d.fallback_path,
                        attempts=d.attempts,
                        knowledge_unavailable=grounded.unavailable,
                    )
                )

    async def _generate(
        self,
        generate: ipb.GenerateRequest,
        deadline_s: float,
        metadata: tuple[tuple[str, Any], ...],
        started: Any = None,
    ) -> AsyncIterator[bytes]:
        """Inference's answer, raw. A call that Inference refused before doing anything (a replica
        draining, or none reachable) is made again, up to GENERATE_TRIES times, and goes to
        another replica: nothing was generated or billed. Any other failure is passed on."""
        for attempt in range(1, GENERATE_TRIES + 1):
            call = started if started is not None and attempt == 1 else None
            if call is None:
                call = self.generate_raw(generate, timeout=deadline_s, metadata=metadata)
            answered = False
            try:
                async for raw in call:
                    answered = True
                    yield raw
                return
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                refused = details == DRAINING or details.startswith(NOT_CONNECTED)
                if answered or exc.code() != grpc.StatusCode.UNAVAILABLE or not refused or attempt == GENERATE_TRIES:
                    raise RelayedError(exc.code(), details or "inference failed") from None
                log.info("inference refused the call before answering; trying again", extra={"error": exc.details()})
            finally:
                call.cancel()
