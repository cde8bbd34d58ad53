"""Identity headers are honoured only from the edge. A caller that reaches a service's port
directly needs a certificate of the mesh's CA; with one that is not the edge's it is anonymous and
standard to the Router, cannot say who asked to Inference, and may call only what its role may."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from tiermesh.knowledge.v1 import knowledge_service_pb2 as kpb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as kpb_grpc
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc
from tiermesh_rls.v3 import rls_pb2 as rls
from tiermesh_rls.v3 import rls_pb2_grpc as rls_grpc

from services.runtime import config, tls
from tests.security.conftest import Attack, eventually
from tests.security.tokens import bearer

pytestmark = pytest.mark.integration

HARD = (
    "Please review this design: we run 30 microservices on Kubernetes and want to move our order "
    "pipeline to event sourcing. Compare Kafka and RabbitMQ, list the risks, and give a step by step "
    "migration plan with a rollback strategy and how to test each stage."
)
POSING = (
    ("x-tiermesh-segment", "enterprise"),
    ("x-tiermesh-user", "posing-admin"),
    ("x-tiermesh-user-bin", b"posing-admin"),
)


def route_request() -> pb.RouteRequest:
    return pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=HARD)])


async def test_a_service_port_refuses_callers_without_a_mesh_certificate(attack: Attack, tmp_path: Path) -> None:
    target = attack.mesh.target("router")
    before = sum('"routed"' in line for line in attack.mesh.logs("router"))
    ca = tls.settings(attack.mesh.tree, "operator").ca_file.read_bytes()
    # A certificate that says "edge", from a CA of the attacker's own.
    tls._make_all(tmp_path, 30)
    forged = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=(tmp_path / "edge-key.pem").read_bytes(),
        certificate_chain=(tmp_path / "edge.pem").read_bytes(),
    )
    name = [("grpc.ssl_target_name_override", "router")]
    channels = {
        "plaintext": grpc.aio.insecure_channel(target),
        "no certificate": grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca), name),
        "another CA": grpc.aio.secure_channel(target, forged, name),
    }
    for how, channel in channels.items():
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.RouterServiceStub(channel).Route(route_request(), timeout=5, metadata=POSING)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, how  # no connection at all
    assert sum('"routed"' in line for line in attack.mesh.logs("router")) == before


async def test_identity_headers_count_only_from_the_edge(attack: Attack) -> None:
    async with attack.mesh.channel("router", "operator") as channel:
        posed = await pb_grpc.RouterServiceStub(channel).Route(route_request(), timeout=10, metadata=POSING)
    assert posed.decision.segment == c.SEGMENT_STANDARD and posed.decision.tier == 3  # anonymous, standard
    async with attack.mesh.channel("router", "inference") as channel:  # another service of the mesh
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.RouterServiceStub(channel).Route(route_request(), timeout=10, metadata=POSING)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with attack.mesh.channel("router", "edge") as channel:  # the edge's word is taken
        edge = await pb_grpc.RouterServiceStub(channel).Route(route_request(), timeout=10, metadata=POSING)
    assert edge.decision.segment == c.SEGMENT_ENTERPRISE and edge.decision.tier == 4


async def test_inference_takes_who_asked_only_from_the_router(attack: Attack) -> None:
    ids = {}
    for role in ("operator", "router"):
        rid = f"posed-{role}-{uuid.uuid4().hex[:8]}"
        async with attack.mesh.channel("inference", role) as channel:
            request = ipb.GenerateRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hi")], tier=1)
            events = [
                e
                async for e in ipb_grpc.InferenceServiceStub(channel).Generate(
                    request, timeout=30, metadata=(("x-request-id", rid), *POSING)
                )
            ]
        assert events[-1].HasField("done")
        ids[role] = rid

    async def stored() -> dict[str, tuple[str, str]]:
        rows = await attack.rows(
            "SELECT request_id, user_id, segment FROM usage_events WHERE request_id = ANY($1)", list(ids.values())
        )
        return {r["request_id"]: (r["user_id"], r["segment"]) for r in rows} if len(rows) == 2 else {}

    rows = await eventually(stored)
    assert rows[ids["operator"]] == ("", "")  # nobody said who asked
    assert rows[ids["router"]] == ("posing-admin", "enterprise")


async def test_each_role_may_call_only_what_it_needs(attack: Attack) -> None:
    user = f"lockout-{uuid.uuid4().hex[:8]}"
    domain = attack.mesh.env["TIERMESH_RATELIMIT__CONFIG__DOMAIN"]
    entries = [
        rls.RateLimitDescriptor.Entry(key="segment", value="standard"),
        rls.RateLimitDescriptor.Entry(key="user", value=user),
    ]
    lockout = rls.RateLimitRequest(
        domain=domain, descriptors=[rls.RateLimitDescriptor(entries=entries)], hits_addend=10**6
    )
    async with attack.mesh.channel("ratelimit", "inference") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rls_grpc.RateLimitServiceStub(channel).ShouldRateLimit(lockout, timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with attack.mesh.channel("ratelimit", "edge") as channel:  # even the edge may not count a million
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rls_grpc.RateLimitServiceStub(channel).ShouldRateLimit(lockout, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hits_addend" in (info.value.details() or "")
    events, error = await attack.chat("hello", bearer(attack.mesh.token(user, "standard")))
    assert error is None and events[-1].HasField("done")  # the user was not locked out
    async with attack.mesh.channel("analytics", "router") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await apb_grpc.AnalyticsServiceStub(channel).RecordUsage(
                apb.RecordUsageRequest(events=[apb.UsageEvent(request_id="forged")]), timeout=5
            )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with attack.mesh.channel("knowledge", "router") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kpb_grpc.KnowledgeServiceStub(channel).DeleteDocuments(
                kpb.DeleteDocumentsRequest(collection="default", document_ids=["pix"]), timeout=5
            )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_plaintext_health_port_serves_health_and_nothing_else(attack: Attack) -> None:
    host, port = config.health_endpoint(attack.mesh.tree, "router")
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.RouterServiceStub(channel).Route(route_request(), timeout=5, metadata=POSING)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
