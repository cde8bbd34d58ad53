"""Every RPC every service serves, with a valid example request: what the error and fuzz attacks
go through one by one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from tiermesh.analytics.v1 import admin_service_pb2 as admin_pb
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.knowledge.v1 import knowledge_service_pb2 as kpb
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh_authz.v3 import external_auth_pb2 as authz
from tiermesh_rls.v3 import rls_pb2 as rls


def _messages() -> list[c.ChatMessage]:
    return [c.ChatMessage(role=c.CHAT_ROLE_USER, content="hello")]


def _usage() -> apb.RecordUsageRequest:
    event = apb.UsageEvent(request_id="fuzz-example", user="fuzz", tier=c.TIER_FAST, model="m", deployment="d")
    event.latency.FromMilliseconds(100)
    return apb.RecordUsageRequest(events=[event])


# Knowledge changes go to a collection of their own: the attacks never touch what chats search.
FUZZ_COLLECTION = "fuzz"

EXAMPLES: dict[str, Callable[[], Message]] = {
    "tiermesh.router.v1.RouterService/Chat": lambda: pb.ChatRequest(messages=_messages(), bypass_cache=True),
    "tiermesh.router.v1.RouterService/Route": lambda: pb.RouteRequest(messages=_messages()),
    "tiermesh.inference.v1.InferenceService/Generate": lambda: ipb.GenerateRequest(messages=_messages(), tier=1),
    "tiermesh.inference.v1.InferenceService/ListModels": lambda: ipb.ListModelsRequest(),
    "tiermesh.knowledge.v1.KnowledgeService/UpsertDocuments": lambda: kpb.UpsertDocumentsRequest(
        collection=FUZZ_COLLECTION, documents=[kpb.Document(id="a", title="A", text="Some text.")]
    ),
    "tiermesh.knowledge.v1.KnowledgeService/DeleteDocuments": lambda: kpb.DeleteDocumentsRequest(
        collection=FUZZ_COLLECTION, document_ids=["a"]
    ),
    "tiermesh.knowledge.v1.KnowledgeService/Search": lambda: kpb.SearchRequest(collection=FUZZ_COLLECTION, query="x"),
    "tiermesh.knowledge.v1.KnowledgeService/Embed": lambda: kpb.EmbedRequest(texts=["x"]),
    "tiermesh.analytics.v1.AnalyticsService/RecordUsage": _usage,
    "tiermesh.analytics.v1.AnalyticsService/GetSpend": lambda: apb.GetSpendRequest(user="fuzz"),
    "tiermesh.analytics.v1.AnalyticsService/WatchSpend": lambda: apb.WatchSpendRequest(user="fuzz"),
    "tiermesh.analytics.v1.AnalyticsService/RecordDecisions": lambda: apb.RecordDecisionsRequest(
        decisions=[apb.RouteDecisionRecord(request_id="fuzz-decision", rule="fuzz", tier=c.TIER_FAST)]
    ),
    "tiermesh.analytics.v1.AnalyticsService/GetRouteStats": lambda: apb.GetRouteStatsRequest(),
    "tiermesh.analytics.v1.AdminService/CreateKey": lambda: admin_pb.CreateKeyRequest(
        user="fuzz", segment=c.SEGMENT_STANDARD, expires_in_s=60
    ),
    "tiermesh.analytics.v1.AdminService/ListKeys": lambda: admin_pb.ListKeysRequest(user="fuzz"),
    "tiermesh.analytics.v1.AdminService/RevokeKey": lambda: admin_pb.RevokeKeyRequest(id="key_0000000000000000"),
    "envoy.service.auth.v3.Authorization/Check": lambda: authz.CheckRequest(
        attributes=authz.AttributeContext(
            request=authz.Request(http=authz.HttpRequest(headers={"x-api-key": "tm-" + "x" * 43}))
        )
    ),
    "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit": lambda: rls.RateLimitRequest(
        domain="fuzz",
        descriptors=[rls.RateLimitDescriptor(entries=[rls.RateLimitDescriptor.Entry(key="k", value="v")])],
    ),
}
PART_OF = {
    "tiermesh.router.v1.RouterService": "router",
    "tiermesh.inference.v1.InferenceService": "inference",
    "tiermesh.knowledge.v1.KnowledgeService": "knowledge",
    "tiermesh.analytics.v1.AnalyticsService": "analytics",
    "tiermesh.analytics.v1.AdminService": "analytics",
    "envoy.service.auth.v3.Authorization": "analytics",
    "envoy.service.ratelimit.v3.RateLimitService": "ratelimit",
}
SERVICES = tuple(dict.fromkeys(PART_OF.values()))  # the parts, each once
_DESCRIPTORS = {
    "tiermesh.router.v1.RouterService": pb.DESCRIPTOR,
    "tiermesh.inference.v1.InferenceService": ipb.DESCRIPTOR,
    "tiermesh.knowledge.v1.KnowledgeService": kpb.DESCRIPTOR,
    "tiermesh.analytics.v1.AnalyticsService": apb.DESCRIPTOR,
    "tiermesh.analytics.v1.AdminService": admin_pb.DESCRIPTOR,
    "envoy.service.auth.v3.Authorization": authz.DESCRIPTOR,
    "envoy.service.ratelimit.v3.RateLimitService": rls.DESCRIPTOR,
}


@dataclass(frozen=True)
class Rpc:
    part: str  # the service (mesh part) that serves it
    path: str  # /package.Service/Method
    streaming: bool  # server streaming
    request: type[Message]
    example: Callable[[], Message]

    def call(self, channel: grpc.aio.Channel) -> Any:
        """A raw callable: bytes in, bytes out (no (de)serialisation on the client side)."""
        make = channel.unary_stream if self.streaming else channel.unary_unary
        return make(self.path, request_serializer=None, response_deserializer=None)

    async def send(
        self, channel: grpc.aio.Channel, payload: bytes, first_only: bool = False
    ) -> grpc.aio.AioRpcError | None:
        """Call with raw bytes; the error the call ended with, if any. A stream is read to the
        end, or to its first message with `first_only` (a live one never ends)."""
        try:
            if self.streaming:
                async for _ in self.call(channel)(payload, timeout=10):
                    if first_only:
                        break
            else:
                await self.call(channel)(payload, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc
        return None


def _all() -> list[Rpc]:
    out = []
    for service, part in PART_OF.items():
        descriptor = _DESCRIPTORS[service].services_by_name[service.rsplit(".", 1)[1]]
        assert descriptor.full_name == service
        for method in descriptor.methods:
            key = f"{service}/{method.name}"
            request = _DESCRIPTORS[service].message_types_by_name.get(method.input_type.name)
            assert request is not None and key in EXAMPLES, f"no example for {key}: add one"
            cls = type(EXAMPLES[key]())
            out.append(Rpc(part, f"/{key}", method.server_streaming, cls, EXAMPLES[key]))
        for name, streaming, cls, example in (
            ("Check", False, health_pb2.HealthCheckRequest, lambda: health_pb2.HealthCheckRequest()),
            ("List", False, health_pb2.HealthListRequest, lambda: health_pb2.HealthListRequest()),
        ):
            rpc = Rpc(part, f"/grpc.health.v1.Health/{name}", streaming, cls, example)
            if rpc not in out:  # health once per part
                out.append(rpc)
    return out


RPCS = _all()
ROUTER_RPCS = [r for r in RPCS if r.part == "router" and not r.path.startswith("/grpc.health")]
