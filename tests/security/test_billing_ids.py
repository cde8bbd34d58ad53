"""The id billing is keyed by is made inside the mesh. Three chats sent with the same client
request id are three requests, billed three times; the client's id is kept, for correlation only."""

from __future__ import annotations

import uuid

import pytest
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc

from tests.security.conftest import Attack, eventually
from tests.security.tokens import bearer

pytestmark = pytest.mark.integration


async def test_a_client_chosen_request_id_cannot_merge_requests_for_billing(attack: Attack) -> None:
    user = f"dodger-{uuid.uuid4().hex[:8]}"
    token = attack.mesh.token(user, "standard")
    chosen = f"same-id-{uuid.uuid4().hex[:8]}"
    ids = []
    for i in range(3):
        metadata = (*bearer(token), ("x-request-id", chosen), ("x-client-request-id", "ignored-if-both"))
        events, error = await attack.chat(f"bill me {i} {chosen}", metadata)
        assert error is None and events[-1].HasField("done"), error
        ids.append(events[0].decision.request_id)
    assert chosen not in ids and len(set(ids)) == 3  # the mesh's own ids

    async def billed() -> list[tuple[str, str, int]]:
        rows = await attack.rows(
            "SELECT request_id, client_request_id, cost_micro_usd FROM usage_events WHERE user_id = $1", user
        )
        return [(r["request_id"], r["client_request_id"], r["cost_micro_usd"]) for r in rows] if len(rows) == 3 else []

    rows = await eventually(billed)
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {chosen}  # the client's id, kept for correlation
    assert all(r[2] > 0 for r in rows)
    async with attack.mesh.channel("analytics") as channel:
        request = apb.GetSpendRequest(user=user)
        spend = await apb_grpc.AnalyticsServiceStub(channel).GetSpend(request, timeout=10)
    assert spend.totals.requests == 3 and spend.totals.cost_micro_usd == sum(r[2] for r in rows)
