"""InferenceService RPCs: validate, run the engine, coalesce deltas, map events to the contract."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.common.v1 import common_pb2
from tiermesh.inference.v1 import inference_service_pb2 as pb
from tiermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from services.inference.config import Deployment, InferenceConfig
from services.inference.engine import Delta, Done, Engine, Event, GenerateInput, Restart, Selected
from services.inference.usage import UsageReporter
from services.runtime import identity, logs, tls
from services.runtime.enums import value_of
from services.runtime.errors import PermissionDenied
from services.runtime.server import Context, time_remaining
from services.runtime.validation import validate

log = logging.getLogger("tiermesh.inference")
MAX_RECORDED_US = 86_400 * 1_000_000  # UsageEvent's latency limit

ROLE_NAMES = {
    common_pb2.CHAT_ROLE_SYSTEM: "system",
    common_pb2.CHAT_ROLE_USER: "user",
    common_pb2.CHAT_ROLE_ASSISTANT: "assistant",
}
FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
}


def to_pb(event: Event) -> pb.GenerateResponse:
    if isinstance(event, Delta):
        return pb.GenerateResponse(delta=common_pb2.TextDelta(text=event.text))
    if isinstance(event, Selected):
        d = event.deployment
        return pb.GenerateResponse(
            model_selected=pb.ModelSelected(deployment=d.name, model=d.model, tier=common_pb2.Tier.ValueType(d.tier))
        )
    if isinstance(event, Restart):
        return pb.GenerateResponse(
            restart=common_pb2.StreamRestart(
                failed_deployment=event.failed_deployment, reason=event.reason, discarded_chars=event.discarded_chars
            )
        )
    return pb.GenerateResponse(
        done=pb.GenerateDone(
            usage=common_pb2.Usage(
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                cost_micro_usd=event.cost_micro_usd,
            ),
            model=event.model,
            deployment=event.deployment,
            cached=event.cached,
            finish_reason=FINISH.get(event.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED),
            degraded=event.degraded,
            fallback_path=event.fallback_path,
            attempts=[
                common_pb2.Attempt(
                    deployment=a.deployment, outcome=a.outcome, delay_ms=a.delay_ms, duration_ms=a.duration_ms
                )
                for a in event.attempts
            ],
        )
    )


async def coalesce(events: AsyncIterator[Event], interval_s: float = 0.0) -> AsyncIterator[Event]:
    """Deltas go out as few messages as a reader cannot tell apart from one per token.

    The first delta leaves at once. After it, deltas are merged: whatever piled up while the
    consumer was busy (sending the last message), and, with `interval_s`, whatever arrives within
    `interval_s` of the last delta sent (at 20 ms per token and 50 ms, 2.5 tokens a message at every
    hop). Anything else (a restart, the end) leaves at once, with the text before it.
    """
    pending: list[Event] = []
    wake = asyncio.Event()
    urgent = asyncio.Event()  # something other than text waits: no reason to hold the text back
    finished = False
    failure: BaseException | None = None
    loop = asyncio.get_running_loop()

    async def pump() -> None:
        nonlocal finished, failure
        try:
            async for event in events:
                if isinstance(event, Delta) and pending and isinstance(pending[-1], Delta):
                    pending[-1] = Delta(pending[-1].text + event.text)
                else:
                    pending.append(event)
                    if not isinstance(event, Delta):
                        urgent.set()
                wake.set()
        except BaseException as exc:  # handed to the consumer, raised there
            failure = exc
        finally:
            finished = True
            urgent.set()
            wake.set()

    task = asyncio.create_task(pump())
    last_text_at: float | None = None
    try:
        while True:
            await wake.wait()
            if interval_s and last_text_at is not None and not urgent.is_set():
                delay = last_text_at + interval_s - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(urgent.wait(), delay)
            wake.clear()
            urgent.clear()
            batch, pending[:] = list(pending), []
            for event in batch:
                if isinstance(event, Delta):
                    last_text_at = loop.time()
                yield event
            if finished and not pending:
                if failure is not None and not isinstance(failure, asyncio.CancelledError):
                    raise failure
                return
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def usage_event(
    request_id: str, tier: int, metadata: dict[str, str], done: Done, latency_s: float, ttft_s: float | None
) -> apb.UsageEvent:
    """What Analytics records for a finished request; who asked and why this tier come from the
    Router's metadata (`metadata` is empty for callers whose metadata is not trusted)."""
    user, segment = identity.user_and_segment(metadata)
    event = apb.UsageEvent(
        request_id=request_id,
        user=user,
        segment=common_pb2.Segment.ValueType(
            value_of(common_pb2.Segment, "SEGMENT_", segment if identity.SEGMENT in metadata else "")
        ),
        tier=common_pb2.Tier.ValueType(tier),
        model=done.model[:256],
        deployment=done.deployment[:256],
        usage=common_pb2.Usage(
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            cost_micro_usd=done.cost_micro_usd,
        ),
        cached=done.cached,
        degraded=done.degraded,
        fallback_path=[p[:256] for p in done.fallback_path[:16]],
        intent=common_pb2.Intent.ValueType(value_of(common_pb2.Intent, "INTENT_", metadata.get(identity.INTENT, ""))),
        complexity=common_pb2.Complexity.ValueType(
            value_of(common_pb2.Complexity, "COMPLEXITY_", metadata.get(identity.COMPLEXITY, ""))
        ),
        client_request_id=identity.client_request_id(metadata),
        team=identity.team(metadata),
    )
    # Within the contract's range (a day): a longer request is recorded at the limit, not refused.
    event.latency.FromMicroseconds(min(int(latency_s * 1_000_000), MAX_RECORDED_US))
    if ttft_s is not None:
        event.time_to_first_token.FromMicroseconds(min(int(ttft_s * 1_000_000), MAX_RECORDED_US))
    event.occurred_at.GetCurrentTime()
    return event


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, cfg: InferenceConfig, engine: Engine, usage: UsageReporter | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.usage = usage

    async def Generate(self, request: pb.GenerateRequest, context: Context) -> AsyncIterator[pb.GenerateResponse]:
        validate(request)
        remaining = time_remaining(context)
        req = GenerateInput(
            messages=[(ROLE_NAMES[m.role], m.content) for m in request.messages],
            tier=request.tier,
            max_tokens=request.max_tokens,
            temperature=request.temperature if request.HasField("temperature") else None,
            bypass_cache=request.bypass_cache,
            context_id=request.context_id,
            deployment=request.deployment,
            request_id=logs.request_id_var.get(),
            deadline=None if remaining is None else time.monotonic() + remaining,
        )
        started = time.monotonic()
        first_token: float | None = None
        async for event in coalesce(self.engine.generate(req), self.cfg.flush_interval_s):
            if first_token is None and isinstance(event, Delta):
                first_token = time.monotonic() - started
            if isinstance(event, Done):
                if self.usage is not None:
                    metadata = identity.metadata_dict(context.invocation_metadata())
                    if not identity.trusted(tls.peer_role(context), tls.ROUTER):
                        metadata = {}  # only the Router says who asked
                    latency = time.monotonic() - started
                    self.usage.report(usage_event(req.request_id, request.tier, metadata, event, latency, first_token))
                log.info(
                    "generated",
                    extra={
                        "deployment": event.deployment,
                        "tier": request.tier,
                        "prompt_tokens": event.prompt_tokens,
                        "completion_tokens": event.completion_tokens,
                        "cost_micro_usd": event.cost_micro_usd,
                        "cached": event.cached,
                        "degraded": event.degraded,
                        "attempts": len(event.attempts),
                        "seconds": round(time.monotonic() - started, 4),
                    },
                )
            yield to_pb(event)

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        validate(request)
        who = tls.edge_reader(context)
        if who is not None and not who[1]:
            raise PermissionDenied(
                "the model catalog is for operators: sign in with a token that has the operator role"
            )
        return pb.ListModelsResponse(
            models=[
                self._info(d)
                for tier, deps in sorted(self.cfg.tiers.items())
                if request.tier in (0, tier)
                for d in self.engine.candidates(tier)
            ]
        )

    def _info(self, d: Deployment) -> pb.ModelInfo:
        state = self.engine.breakers[d.name].observed_state()  # reading never moves a breaker
        return pb.ModelInfo(
            deployment=d.name,
            model=d.model,
            tier=common_pb2.Tier.ValueType(d.tier),
            provider=d.provider,
            input_micro_usd_per_mtok=d.input_micro_usd_per_mtok,
            output_micro_usd_per_mtok=d.output_micro_usd_per_mtok,
            context_window=d.context_window,
            healthy=self.engine.healthy[d.name] and state != "open",
            breaker_state=state,
        )
