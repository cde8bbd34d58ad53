"""A sample of route decisions, stored by Analytics with their outcome (`router.audit`).

Each Chat's decision is sampled with probability `sample_rate` (0 to 1; default 0.05). A sampled
decision goes to Analytics (RecordDecisions) with its rule, tier, intent and complexity with
their confidences, segment, policy version and reasons, and the message as `messages` says:

    hash     its SHA-256 and its length only (the default): the same message can be recognised,
             never read
    redact   its length only
    keep     the message itself (for a deployment whose data may be kept so)

Analytics joins each with the usage of the same request (cost, latency, fallbacks), so
`tiermesh route --stats` shows which rules fire and what each tier costs. Sampled decisions are
sent in batches, off the chat's path; when Analytics cannot take them they are dropped (and
counted in the log): an audit sample is never a reason to slow or fail a chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.common.v1 import common_pb2 as c

from services.router.policy import Decision
from services.runtime import config
from services.runtime.config import ConfigError
from services.runtime.enums import value_of

log = logging.getLogger("tiermesh.router")

MESSAGES = ("hash", "redact", "keep")
MAX_PENDING = 10_000
BATCH = 1_000
MAX_REASONS, MAX_REASON_CHARS = 16, 2048

Record = Callable[..., Awaitable[apb.RecordDecisionsResponse]]


class DecisionAudit:
    def __init__(
        self,
        record: Record | None,
        sample_rate: float = 0.05,
        messages: str = "hash",
        linger_s: float = 0.5,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if messages not in MESSAGES:
            raise ConfigError(f"router.audit.messages: must be one of {', '.join(MESSAGES)}, got {messages!r}")
        self.record = record
        self.sample_rate = sample_rate
        self.messages = messages
        self.linger_s = linger_s
        self.rng = rng
        self.pending: list[apb.RouteDecisionRecord] = []
        self.dropped = 0
        self._flush: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, tree: Mapping[str, Any], record: Record | None) -> DecisionAudit:
        node = config.section(tree, "router", "audit")
        where = "router.audit"
        return cls(
            record,
            sample_rate=config.get_float(node, "sample_rate", 0.05, where=where, lo=0, hi=1),
            messages=config.get_str(node, "messages", "hash", where=where),
            linger_s=config.get_float(node, "linger_ms", 500, where=where, lo=0, hi=60_000) / 1000,
        )

    def entry(self, decision: Decision, request_id: str, message: str) -> apb.RouteDecisionRecord:
        """The stored form of one decision, the message as `messages` says."""
        at = Timestamp()
        at.GetCurrentTime()
        out = apb.RouteDecisionRecord(
            request_id=request_id,
            occurred_at=at,
            rule=decision.rule,
            tier=c.Tier.ValueType(decision.tier),
            intent=c.Intent.ValueType(value_of(c.Intent, "INTENT_", decision.intent)),
            intent_confidence=min(1.0, max(0.0, decision.intent_confidence)),
            complexity=c.Complexity.ValueType(value_of(c.Complexity, "COMPLEXITY_", decision.complexity)),
            complexity_score=min(1.0, max(0.0, decision.complexity_score)),
            segment=c.Segment.ValueType(value_of(c.Segment, "SEGMENT_", decision.segment)),
            policy_version=decision.policy_version[:64],
            reasons=[r[:MAX_REASON_CHARS] for r in decision.reasons[:MAX_REASONS]],
            message_chars=len(message),
            second_opinion=decision.second_opinion,
        )
        if self.messages != "redact":
            out.message_sha256 = hashlib.sha256(message.encode("utf-8", "surrogatepass")).hexdigest()
        if self.messages == "keep":
            out.message = message[:32_000]
        return out

    def observe(self, decision: Decision, request_id: str, message: str) -> None:
        """Sample this decision; a sampled one is sent with the next batch."""
        if self.record is None or not request_id or self.rng() >= self.sample_rate:
            return
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append(self.entry(decision, request_id, message))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._send_later(), name="decision-audit")

    async def _send_later(self) -> None:
        await asyncio.sleep(self.linger_s)
        await self.send()

    async def send(self) -> None:
        """Send what is pending now; what Analytics cannot take is dropped and counted."""
        assert self.record is not None
        while self.pending:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            try:
                await self.record(apb.RecordDecisionsRequest(decisions=batch), timeout=5)
            except grpc.aio.AioRpcError as exc:
                self.dropped += len(batch)
                log.warning(
                    "sampled route decisions dropped: Analytics did not take them",
                    extra={"code": exc.code().name, "decisions": len(batch), "dropped_so_far": self.dropped},
                )

    async def close(self) -> None:
        if self._flush is not None and not self._flush.done():
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
        if self.record is not None and self.pending:
            await self.send()
