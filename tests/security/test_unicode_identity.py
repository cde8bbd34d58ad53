"""Any valid `sub` works end to end: the chat, the usage row, spend, and the logs."""

from __future__ import annotations

import json
import uuid

import pytest
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc

from tests.security.conftest import Attack, eventually
from tests.security.wire import frame, grpc_web

pytestmark = pytest.mark.integration

SUBS = ["josé", "李雷", "Zoë 👩🏽‍💻", 'o\'neil "quoted" \\ back', "ação-çãõ", "x" * 256]


@pytest.mark.parametrize("sub", SUBS, ids=["accent", "cjk", "emoji", "quotes", "pt-br", "longest"])
async def test_a_non_ascii_user_chats_is_billed_and_logged_as_itself(attack: Attack, sub: str) -> None:
    user = sub if len(sub) == 256 else f"{sub} {uuid.uuid4().hex[:6]}"
    token = attack.mesh.token(user, "vip")
    events, error = await attack.chat("olá, tudo bem?", (("authorization", f"Bearer {token}"),))
    assert error is None and events[-1].HasField("done"), error
    request_id = events[0].decision.request_id
    web = await grpc_web(
        f"http://{attack.mesh.target('envoy')}/tiermesh.router.v1.RouterService/Chat",
        frame(attack.chat_request("e pelo navegador?").SerializeToString()),
        {"authorization": f"Bearer {token}"},
        http2=True,
    )
    assert web.grpc_status == "0" and len(web.messages) > 2, web

    async def stored() -> list[str]:
        rows = await attack.rows("SELECT user_id, segment FROM usage_events WHERE request_id = $1", request_id)
        return [(r["user_id"], r["segment"]) for r in rows]

    assert await eventually(stored) == [(user, "vip")]
    async with attack.mesh.channel("analytics") as channel:
        spend = await apb_grpc.AnalyticsServiceStub(channel).GetSpend(apb.GetSpendRequest(user=user), timeout=10)
    assert spend.totals.requests >= 1
    routed = [json.loads(line) for line in attack.mesh.logs("router") if '"routed"' in line]
    assert any(r.get("request_id") == request_id and r.get("user") == user for r in routed)
