"""`tiermesh models`: each tier's deployments, in the order they are tried, with price and health."""

from __future__ import annotations

import json

import grpc
from tiermesh.inference.v1 import inference_service_pb2 as pb
from tiermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from services.runtime import config, tls
from services.runtime.money import usd


async def models(as_json: bool) -> int:
    tree = config.load()
    target = config.target(tree, "inference")
    async with tls.channel(tree, "inference", tls.OPERATOR) as channel:
        try:
            reply = await pb_grpc.InferenceServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            print(f"tiermesh models: {exc.code().name}: {exc.details()} (is Inference running at {target}? `make run`)")
            return 1
    rows = [
        {
            "tier": m.tier,
            "deployment": m.deployment,
            "model": m.model,
            "provider": m.provider,
            "input_usd_per_mtok": m.input_micro_usd_per_mtok / 1_000_000,
            "output_usd_per_mtok": m.output_micro_usd_per_mtok / 1_000_000,
            "context_window": m.context_window,
            "healthy": m.healthy,
            "breaker": m.breaker_state,
        }
        for m in reply.models
    ]
    if as_json:
        print(json.dumps(rows))
        return 0
    print(
        f"{'tier':<5}{'deployment':<16}{'model':<30}{'provider':<11}{'$/Mtok in':>12}{'$/Mtok out':>13}"
        f"{'context':>10}  {'health':<8}breaker"
    )
    for m in reply.models:
        print(
            f"{m.tier:<5}{m.deployment:<16}{m.model:<30}{m.provider:<11}{usd(m.input_micro_usd_per_mtok):>12}"
            f"{usd(m.output_micro_usd_per_mtok):>13}{m.context_window:>10}  {'ok' if m.healthy else 'DOWN':<8}"
            f"{m.breaker_state}"
        )
    return 0
