"""Inference wiring: config, the shared provider pool, the gRPC server and its lifecycle."""

from __future__ import annotations

import asyncio

from tiermesh.inference.v1 import inference_service_pb2 as pb

from services.inference import config as inference_config
from services.inference.cache import AnswerCache
from services.inference.engine import Engine
from services.inference.provider import LEAN_PROVIDERS, Provider
from services.inference.servicer import InferenceServicer
from services.inference.usage import UsageReporter
from services.runtime import config, contract, logs, observability, tls
from services.runtime.server import serve


def build_provider(cfg: inference_config.InferenceConfig) -> Provider:
    """The provider pool, with LiteLLM loaded at start only if a deployment takes its path."""
    deployments = [d for deps in cfg.tiers.values() for d in deps]
    return Provider(
        cfg.max_connections,
        litellm=any(d.provider not in LEAN_PROVIDERS for d in deployments),
        flush_interval_s=cfg.flush_interval_s,
    )


async def main() -> None:
    tree = config.load()
    log = logs.setup("inference", config.get_str(tree, "log_level", "info", where=""))
    observability.setup("inference", tree)
    cfg = inference_config.load(tree)
    provider = build_provider(cfg)
    cache = AnswerCache(cfg.cache_url, cfg.cache_ttl_s, cfg.cache_namespace) if cfg.cache_url else None
    engine = Engine(cfg, provider, cache)
    analytics = config.section(tree, "inference", "analytics")
    usage: UsageReporter | None = None
    if config.get_bool(analytics, "enabled", True, where="inference.analytics"):
        usage = UsageReporter(
            tls.channel(tree, "analytics", "inference", options=config.QUICK_RECONNECT),
            capacity=config.get_int(analytics, "queue_size", 50_000, where="inference.analytics", lo=1),
            spill_path=str(config.data_dir(tree) / "usage-spill.b64"),
            linger_s=config.get_int(analytics, "linger_ms", 50, where="inference.analytics", lo=0, hi=5000) / 1000,
        )
        usage.start()
    servicer = InferenceServicer(cfg, engine, usage)
    health_task = asyncio.create_task(engine.health_loop())

    async def stop() -> None:
        health_task.cancel()
        await provider.aclose()
        if cache is not None:
            await cache.aclose()
        if usage is not None:
            await usage.stop()

    served = contract.served(pb.DESCRIPTOR.services_by_name["InferenceService"], servicer)
    await serve(
        "inference",
        tree,
        log,
        served,
        ready=provider.warm_up,
        on_stop=stop,
        # Only the Router asks for answers (an operator may, as an anonymous caller); anyone
        # with a mesh certificate may read the catalog (through the edge, only an operator
        # token: see servicer.ListModels).
        callers={served.path("Generate"): (tls.ROUTER, tls.OPERATOR)},
    )
