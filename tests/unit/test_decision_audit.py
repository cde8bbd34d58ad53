"""The Router's decision sample: what is kept of the message, how often, and in what batches."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import grpc
import pytest
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.common.v1 import common_pb2 as c

from services.router.audit import DecisionAudit
from services.router.policy import Router
from services.runtime.config import ConfigError

MESSAGE = "Preciso cancelar o pedido 4411, o cartão final 1234 foi cobrado duas vezes"


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load()


def test_the_message_is_hashed_by_default_redacted_or_kept_only_when_asked(router: Router) -> None:
    decision = router.decide(MESSAGE, "vip")
    hashed = DecisionAudit(None).entry(decision, "req-1", MESSAGE)
    assert hashed.message_sha256 == hashlib.sha256(MESSAGE.encode()).hexdigest() and hashed.message == ""
    assert hashed.message_chars == len(MESSAGE) and hashed.rule == decision.rule
    assert hashed.tier == decision.tier and hashed.segment == c.SEGMENT_VIP and hashed.reasons == decision.reasons
    redacted = DecisionAudit(None, messages="redact").entry(decision, "req-1", MESSAGE)
    assert redacted.message_sha256 == "" and redacted.message == "" and redacted.message_chars == len(MESSAGE)
    kept = DecisionAudit(None, messages="keep").entry(decision, "req-1", MESSAGE)
    assert kept.message == MESSAGE
    with pytest.raises(ConfigError, match="hash, redact, keep"):
        DecisionAudit(None, messages="plain")


async def test_decisions_are_sampled_at_the_rate_and_sent_in_batches(router: Router) -> None:
    sent: list[apb.RecordDecisionsRequest] = []

    async def record(request: apb.RecordDecisionsRequest, timeout: float) -> apb.RecordDecisionsResponse:
        sent.append(request)
        return apb.RecordDecisionsResponse(stored=len(request.decisions))

    draws = iter([0.01, 0.5, 0.04, 0.9] * 300)
    audit = DecisionAudit(record, sample_rate=0.05, linger_s=0.01, rng=lambda: next(draws))
    decision = router.decide("hello")
    for i in range(1200):
        audit.observe(decision, f"req-{i}", "hello")
    await asyncio.sleep(0.1)
    assert sum(len(r.decisions) for r in sent) == 600  # the draws under 0.05: half of them
    assert all(len(r.decisions) <= 1000 for r in sent) and len(sent) == 1  # one batch for the burst
    assert [d.request_id for d in sent[0].decisions][:2] == ["req-0", "req-2"]


async def test_analytics_away_drops_the_sample_and_never_raises(router: Router) -> None:
    async def refuse(request: Any, timeout: float) -> apb.RecordDecisionsResponse:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")

    audit = DecisionAudit(refuse, sample_rate=1.0, linger_s=0)
    audit.observe(router.decide("hello"), "req-1", "hello")
    await audit.close()
    assert audit.dropped == 1 and audit.pending == []
