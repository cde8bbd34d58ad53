"""Router wiring: config, the channel to Inference, the gRPC server and its lifecycle."""

from __future__ import annotations

import asyncio

from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from tiermesh.inference.v1 import inference_service_pb2 as ipb
from tiermesh.knowledge.v1 import knowledge_service_pb2_grpc as kpb_grpc
from tiermesh.router.v1 import router_service_pb2 as pb

from services.router.audit import DecisionAudit
from services.router.budget import SpendBudgets, load_budgets
from services.router.grounding import Grounding, GroundingSettings
from services.router.policy import Router
from services.router.servicer import RouterServicer, serialize_chat
from services.runtime import config, contract, logs, observability, tls
from services.runtime.config import ConfigError
from services.runtime.server import serve

# Chats come from the edge; an operator may call the Router directly (as an anonymous caller).
CALLERS = (tls.EDGE, tls.OPENAI, tls.OPERATOR)


def max_deadline_s(tree: dict[str, object]) -> float:
    """The longest a chat may run (`router.max_deadline_s`), kept under the edge's
    `envoy.max_stream_duration_s` so the Router always ends a stream itself, with a status."""
    limit = config.get_float(config.section(tree, "router"), "max_deadline_s", 590.0, where="router", lo=1, hi=86_400)
    edge = config.get_int(config.section(tree, "envoy"), "max_stream_duration_s", 600, where="envoy", lo=1, hi=86_400)
    if limit >= edge:
        raise ConfigError(
            f"router.max_deadline_s: {limit:g} must be shorter than envoy.max_stream_duration_s ({edge}), "
            "or the edge would cut streams before the Router ends them with a status"
        )
    return limit


async def main() -> None:
    tree = config.load()
    log = logs.setup("router", config.get_str(tree, "log_level", "info", where=""))
    observability.setup("router", tree)
    router_cfg = config.section(tree, "router")
    router = Router.from_config(tree)
    log.info(
        "routing policy loaded",
        extra={
            "policy": router.policy.version,
            "rules": len(router.policy.rules),
            "models": config.get_str(router_cfg, "models_path", "", where="router") or "shipped",
        },
    )
    # A replica back from a restart rejoins the rotation within the short backoff, not the
    # default's (which grows to two minutes while it was away).
    channel = tls.channel(tree, "inference", "router", options=config.QUICK_RECONNECT)
    generate_raw = channel.unary_stream(
        "/tiermesh.inference.v1.InferenceService/Generate",
        request_serializer=ipb.GenerateRequest.SerializeToString,
        response_deserializer=None,  # raw bytes: relayed without decoding
    )
    grounding_settings = GroundingSettings.load(tree)
    knowledge_channel = tls.channel(tree, "knowledge", "router", options=config.QUICK_RECONNECT)
    grounding = Grounding(grounding_settings, kpb_grpc.KnowledgeServiceStub(knowledge_channel).Search)
    budgets = load_budgets(tree)
    analytics_channel = tls.channel(tree, "analytics", "router", options=config.QUICK_RECONNECT)
    # Always the spend-checking budgets: an API key may bring a budget of its own even when the
    # config has none (without any that applies, no spend is looked up).
    budget_check = SpendBudgets(budgets, apb_grpc.AnalyticsServiceStub(analytics_channel).GetSpend)
    audit = DecisionAudit.from_config(tree, apb_grpc.AnalyticsServiceStub(analytics_channel).RecordDecisions)
    servicer = RouterServicer(
        router,
        generate_raw,
        default_deadline_s=config.get_float(router_cfg, "deadline_s", 120.0, where="router", lo=1, hi=3600),
        max_deadline_s=max_deadline_s(tree),
        budget=budget_check,
        grounding=grounding,
        deployments=config.deployment_tiers(tree),
        audit=audit,
    )

    async def stop() -> None:
        await audit.close()
        await channel.close(None)
        await knowledge_channel.close(None)
        await analytics_channel.close(None)

    async def ready() -> bool:
        # The second opinion's model loads before the Router reports SERVING (it listens, and is
        # alive, meanwhile): no unsure message waits for it, the memory the process holds is what
        # it will keep, and the seconds of CPU the load takes are not spent beside live traffic.
        if router.second is not None:
            await asyncio.to_thread(router.second.engine.model)
            log.info("second opinion's model loaded", extra={"model": router.second.engine.name})
        return True

    # Chat's encoder lets the events relayed from Inference through as they came, pre-encoded.
    served = contract.served(pb.DESCRIPTOR.services_by_name["RouterService"], servicer, {"Chat": serialize_chat})
    await serve(
        "router",
        tree,
        log,
        served,
        ready=ready,
        on_stop=stop,
        callers={served.path("Chat"): CALLERS, served.path("Route"): CALLERS},
    )
