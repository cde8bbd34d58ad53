"""`tiermesh models`: each tier's deployments, in the order they are tried, with price and health."""

from __future__ import annotations

import json

import grpc
from tiermesh.inference.v1 import inference_service_pb2 as pb
from tiermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from services.runtime import config, tls


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
        f"{'tier':<5}{'deployment':<16}{'model':<30}{'provider':<11}{'$/Mtok in':>10}{'$/Mtok out':>11}"
        f"{'context':>10}  {'health':<8}breaker"
    )
    for r in rows:
        print(
            f"{r['tier']:<5}{r['deployment']:<16}{r['model']:<30}{r['provider']:<11}{r['input_usd_per_mtok']:>10.2f}"
            f"{r['output_usd_per_mtok']:>11.2f}{r['context_window']:>10}  {'ok' if r['healthy'] else 'DOWN':<8}"
            f"{r['breaker']}"
        )
    return 0
