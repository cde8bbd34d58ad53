"""What the browser app reads through the edge: a token reads only its own user's spend (the
verified `sub`), and only a token with the operator role reads everyone's spend and the model
catalog. Enforced twice, at the edge on the message and again by the service, over every
transport; a forged role header, an odd `role` claim or a message that names the user twice
changes nothing."""

from __future__ import annotations

import uuid

import grpc
import pytest
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc

from services.runtime import identity, tls
from tests.security import wire
from tests.security.conftest import Attack, eventually
from tests.security.tokens import bearer, claims, signed

pytestmark = pytest.mark.integration

GET_SPEND = "/tiermesh.analytics.v1.AnalyticsService/GetSpend"
WATCH_SPEND = "/tiermesh.analytics.v1.AnalyticsService/WatchSpend"
LIST_MODELS = "/tiermesh.inference.v1.InferenceService/ListModels"
OWN_ONLY = "a token may read only its own user's spend"
# Somebody else: whose spend the attacks below try to read.
VICTIM = "another-customer"


async def _spent(attack: Attack, user: str, chats: int) -> None:
    """`chats` answered chats for `user`, recorded by Analytics."""
    token = attack.mesh.token(user, "standard")
    for i in range(chats):
        _, error = await attack.chat(f"hello number {i}", bearer(token))
        assert error is None, error

    async def recorded() -> bool:
        rows = await attack.rows("SELECT count(*) AS n FROM usage_events WHERE user_id = $1", user)
        return rows[0]["n"] == chats

    await eventually(recorded)


async def _get_spend(attack: Attack, token: str, request: apb.GetSpendRequest) -> apb.GetSpendResponse:
    async with attack.mesh.edge() as channel:
        return await apb_grpc.AnalyticsServiceStub(channel).GetSpend(request, metadata=bearer(token), timeout=10)


async def test_own_spend_is_readable_and_an_empty_user_means_ones_own(attack: Attack) -> None:
    me, other = f"reader-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    await _spent(attack, me, 2)
    await _spent(attack, other, 1)
    token = attack.mesh.token(me, "standard")
    named = await _get_spend(attack, token, apb.GetSpendRequest(user=me))
    empty = await _get_spend(attack, token, apb.GetSpendRequest(group_by=[apb.SPEND_DIMENSION_USER]))
    assert named.totals.requests == 2 and empty.totals == named.totals
    assert [g.key for g in empty.groups] == [me]  # nobody else's spend, even grouped by user
    async with attack.mesh.edge() as channel:
        watch = apb_grpc.AnalyticsServiceStub(channel).WatchSpend(apb.WatchSpendRequest(), metadata=bearer(token))
        first = await watch.read()
        watch.cancel()
    assert first.totals.requests == 2


@pytest.mark.parametrize("method", ["GetSpend", "WatchSpend"])
async def test_another_users_spend_is_refused_over_grpc(attack: Attack, method: str) -> None:
    token = attack.mesh.token(f"nosy-{uuid.uuid4().hex[:8]}", "standard")
    async with attack.mesh.edge() as channel:
        stub = apb_grpc.AnalyticsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if method == "GetSpend":
                await stub.GetSpend(apb.GetSpendRequest(user=VICTIM), metadata=bearer(token), timeout=10)
            else:
                await stub.WatchSpend(apb.WatchSpendRequest(user=VICTIM), metadata=bearer(token), timeout=10).read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert OWN_ONLY in (caught.value.details() or "")
    assert "leave user empty" in (caught.value.details() or "")


@pytest.mark.parametrize(("http2", "text"), [(False, False), (False, True), (True, False), (True, True)])
async def test_another_users_spend_is_refused_over_grpc_web(attack: Attack, http2: bool, text: bool) -> None:
    token = attack.mesh.token(f"nosy-{uuid.uuid4().hex[:8]}", "standard")
    url = f"http://{attack.mesh.target('envoy')}"
    headers = {"authorization": f"Bearer {token}"}
    for path, message in (
        (GET_SPEND, apb.GetSpendRequest(user=VICTIM)),
        (WATCH_SPEND, apb.WatchSpendRequest(user=VICTIM)),
    ):
        body = wire.frame(message.SerializeToString())
        reply = await wire.grpc_web(url + path, body, headers, http2=http2, text=text, timeout=10)
        assert reply.grpc_status == "7", (path, reply)
        assert OWN_ONLY in reply.grpc_message
        assert not reply.messages


async def test_a_message_naming_the_user_twice_is_read_as_protobuf_reads_it(attack: Attack) -> None:
    """Protobuf keeps the last value of a repeated scalar field: own first, another last is a
    request for the other's spend, and refused."""
    me = f"twice-{uuid.uuid4().hex[:8]}"
    token = attack.mesh.token(me, "standard")
    payload = apb.GetSpendRequest(user=me).SerializeToString() + apb.GetSpendRequest(user=VICTIM).SerializeToString()
    assert apb.GetSpendRequest.FromString(payload).user == VICTIM
    host, port = attack.mesh.target("envoy").rsplit(":", 1)
    reply = await wire.grpc_h2(host, int(port), GET_SPEND, wire.frame(payload), list(bearer(token)), timeout=10)
    assert reply.grpc_status == "7", reply
    # and the other way round is one's own
    payload = apb.GetSpendRequest(user=VICTIM).SerializeToString() + apb.GetSpendRequest(user=me).SerializeToString()
    reply = await wire.grpc_h2(host, int(port), GET_SPEND, wire.frame(payload), list(bearer(token)), timeout=10)
    assert reply.grpc_status == "0", reply


async def test_an_undecodable_read_is_invalid_argument(attack: Attack) -> None:
    token = attack.mesh.token(f"garbled-{uuid.uuid4().hex[:8]}", "standard")
    host, port = attack.mesh.target("envoy").rsplit(":", 1)
    for payload in (b"\x1a\xff\xff\xff\xff\x0f", b"\x1a\x05ab", b"\x1f"):  # huge length, short string, bad wire type
        reply = await wire.grpc_h2(host, int(port), GET_SPEND, wire.frame(payload), list(bearer(token)), timeout=10)
        assert reply.grpc_status == "3", (payload, reply)


async def test_a_forged_role_header_makes_nobody_an_operator(attack: Attack) -> None:
    token = attack.mesh.token(f"forger-{uuid.uuid4().hex[:8]}", "standard")
    forged = (*bearer(token), (identity.ROLE, "operator"), ("x-tiermesh-role", "operator"))
    async with attack.mesh.edge() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as spend:
            await apb_grpc.AnalyticsServiceStub(channel).GetSpend(
                apb.GetSpendRequest(user=VICTIM), metadata=forged, timeout=10
            )
        with pytest.raises(grpc.aio.AioRpcError) as models:
            await ipb_grpc.InferenceServiceStub(channel).ListModels(
                ipb.ListModelsRequest(), metadata=forged, timeout=10
            )
    assert spend.value.code() == models.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator role" in (models.value.details() or "")


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        *(("role", v) for v in ("admin", "Operator", ["operator"], 1, True, "")),
        # A team becomes the header rate limits and budgets read: only a name an API key could carry.
        *(("team", v) for v in ("a team", "", "x" * 129, "équipe", "ops\n", 7, ["ops"], None)),
    ],
)
async def test_a_role_or_team_claim_out_of_shape_is_refused(attack: Attack, claim: str, value: object) -> None:
    token = signed(attack.mesh, claims(attack.mesh, sub=f"odd-{uuid.uuid4().hex[:8]}", **{claim: value}))
    async with attack.mesh.edge() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ipb_grpc.InferenceServiceStub(channel).ListModels(
                ipb.ListModelsRequest(), metadata=bearer(token), timeout=10
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"'{claim}' claim" in (caught.value.details() or "")


async def test_an_operator_reads_everyones_spend_and_the_catalog(attack: Attack) -> None:
    somebody = f"customer-{uuid.uuid4().hex[:8]}"
    await _spent(attack, somebody, 1)
    operator = attack.mesh.token(f"ops-{uuid.uuid4().hex[:8]}", "enterprise", role="operator")
    theirs = await _get_spend(attack, operator, apb.GetSpendRequest(user=somebody))
    everyone = await _get_spend(attack, operator, apb.GetSpendRequest(group_by=[apb.SPEND_DIMENSION_USER]))
    assert theirs.totals.requests == 1
    assert somebody in {g.key for g in everyone.groups} and everyone.totals.requests >= 1
    async with attack.mesh.edge() as channel:
        listing = await ipb_grpc.InferenceServiceStub(channel).ListModels(
            ipb.ListModelsRequest(), metadata=bearer(operator), timeout=10
        )
    assert {m.tier for m in listing.models} == {1, 2, 3, 4}
    assert all(m.breaker_state in ("closed", "open", "half_open") for m in listing.models)


async def test_a_standard_token_cannot_read_the_catalog(attack: Attack) -> None:
    token = attack.mesh.token(f"curious-{uuid.uuid4().hex[:8]}", "vip")
    url = f"http://{attack.mesh.target('envoy')}"
    reply = await wire.grpc_web(
        url + LIST_MODELS, wire.frame(ipb.ListModelsRequest().SerializeToString()), {"authorization": f"Bearer {token}"}
    )
    assert reply.grpc_status == "7" and "operator role" in reply.grpc_message and not reply.messages


async def test_analytics_enforces_it_too_behind_the_edge(attack: Attack) -> None:
    """A call with the edge's own certificate (as if the edge's check were gone): Analytics reads
    the identity headers and refuses another user's spend all the same; Inference the catalog."""
    forged_user = ((identity.USER, "mallory"), (identity.SEGMENT, "standard"))
    async with attack.mesh.channel("analytics", role=tls.EDGE) as channel:
        stub = apb_grpc.AnalyticsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetSpend(apb.GetSpendRequest(user=VICTIM), metadata=forged_user, timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        own = await stub.GetSpend(apb.GetSpendRequest(), metadata=forged_user, timeout=10)
        assert own.totals.requests == 0  # mallory never chatted
        with pytest.raises(grpc.aio.AioRpcError) as nobody:
            await stub.GetSpend(apb.GetSpendRequest(), timeout=10)
        assert nobody.value.code() == grpc.StatusCode.PERMISSION_DENIED
        as_operator = (*forged_user, (identity.ROLE, identity.OPERATOR))
        assert (await stub.GetSpend(apb.GetSpendRequest(user=VICTIM), metadata=as_operator, timeout=10)) is not None
    async with attack.mesh.channel("inference", role=tls.EDGE) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as models:
            await ipb_grpc.InferenceServiceStub(channel).ListModels(
                ipb.ListModelsRequest(), metadata=forged_user, timeout=10
            )
        assert models.value.code() == grpc.StatusCode.PERMISSION_DENIED
