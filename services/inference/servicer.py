"""InferenceService RPCs: thin; the work is in the provider layer."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from tiermesh.common.v1 import common_pb2
from tiermesh.inference.v1 import inference_service_pb2 as pb
from tiermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from services.inference.config import Deployment, InferenceConfig
from services.inference.provider import Provider
from services.runtime import logs
from services.runtime.errors import DeadlineExceeded
from services.runtime.server import Context
from services.runtime.validation import validate

log = logging.getLogger("tiermesh.inference")

ROLE_NAMES = {
    common_pb2.CHAT_ROLE_SYSTEM: "system",
    common_pb2.CHAT_ROLE_USER: "user",
    common_pb2.CHAT_ROLE_ASSISTANT: "assistant",
}
FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
}


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, cfg: InferenceConfig, provider: Provider) -> None:
        self.cfg = cfg
        self.provider = provider

    async def Generate(self, request: pb.GenerateRequest, context: Context) -> AsyncIterator[pb.GenerateResponse]:
        validate(request)
        deployment = self.cfg.tiers[request.tier][0]
        messages = [{"role": ROLE_NAMES[m.role], "content": m.content} for m in request.messages]
        remaining = context.time_remaining()
        timeout_s = self.cfg.request_timeout_s if remaining is None else min(remaining, self.cfg.request_timeout_s)
        if timeout_s <= 0:
            raise DeadlineExceeded("the deadline passed before the model was called")
        yield pb.GenerateResponse(
            model_selected=pb.ModelSelected(deployment=deployment.name, model=deployment.model, tier=request.tier)
        )
        started = time.monotonic()
        text_parts: list[str] = []
        finish = ""
        prompt_tokens = completion_tokens = None
        async for piece in self.provider.stream(
            deployment,
            messages,
            max_tokens=request.max_tokens,
            temperature=request.temperature if request.HasField("temperature") else None,
            timeout_s=timeout_s,
            request_id=logs.request_id_var.get(),
        ):
            if piece.text:
                text_parts.append(piece.text)
                yield pb.GenerateResponse(delta=common_pb2.TextDelta(text=piece.text))
            if piece.finish_reason:
                finish = piece.finish_reason
            if piece.completion_tokens is not None:
                prompt_tokens, completion_tokens = piece.prompt_tokens, piece.completion_tokens
        if completion_tokens is None:
            # The provider sent no usage: count with the model's tokenizer.
            prompt_tokens = self.provider.count_tokens(deployment, messages, None)
            completion_tokens = self.provider.count_tokens(deployment, None, "".join(text_parts))
        usage = common_pb2.Usage(
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens,
            cost_micro_usd=deployment.cost_micro_usd(prompt_tokens or 0, completion_tokens),
        )
        log.info(
            "generated",
            extra={
                "deployment": deployment.name,
                "tier": request.tier,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "seconds": round(time.monotonic() - started, 4),
            },
        )
        yield pb.GenerateResponse(
            done=pb.GenerateDone(
                usage=usage,
                model=deployment.model,
                deployment=deployment.name,
                finish_reason=FINISH.get(finish, common_pb2.FINISH_REASON_UNSPECIFIED),
                fallback_path=[deployment.name],
            )
        )

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        validate(request)
        return pb.ListModelsResponse(
            models=[
                _info(d) for tier, deps in sorted(self.cfg.tiers.items()) if request.tier in (0, tier) for d in deps
            ]
        )


def _info(d: Deployment) -> pb.ModelInfo:
    return pb.ModelInfo(
        deployment=d.name,
        model=d.model,
        tier=common_pb2.Tier.ValueType(d.tier),
        provider=d.provider,
        input_micro_usd_per_mtok=d.input_micro_usd_per_mtok,
        output_micro_usd_per_mtok=d.output_micro_usd_per_mtok,
        context_window=d.context_window,
        healthy=True,
        breaker_state="closed",
    )
