"""`tiermesh chat`: stream one answer through the edge and show the decision and the usage."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import grpc
from google.protobuf.json_format import MessageToDict
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.runtime import config
from services.runtime.money import usd

TIER_NAMES = {1: "fast", 2: "balanced", 3: "advanced", 4: "premium"}


def _label(enum: object, value: int, prefix: str) -> str:
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower()


def describe_decision(d: pb.RouteDecision) -> str:
    lines = [
        f"\u2192 tier {d.tier} \u00b7 {TIER_NAMES.get(d.tier, '?')}   (policy {d.policy_version})",
        f"  intent {_label(c.Intent, d.intent, 'INTENT_')} ({d.intent_confidence:.2f})"
        f" \u00b7 complexity {_label(c.Complexity, d.complexity, 'COMPLEXITY_')} ({d.complexity_score:.2f})"
        f" \u00b7 segment {_label(c.Segment, d.segment, 'SEGMENT_')}",
    ]
    lines += [f"  why: {r}" for r in d.reasons]
    return "\n".join(lines)


def describe_done(d: pb.ChatDone, first_token_s: float | None, total_s: float) -> str:
    parts = [
        f"{d.deployment} ({d.model})",
        f"{d.usage.prompt_tokens} in / {d.usage.completion_tokens} out tokens",
        usd(d.usage.cost_micro_usd),
    ]
    if d.cached:
        parts.append("cached")
    if d.degraded:
        parts.append("DEGRADED (default response)")
    if d.knowledge_unavailable:
        parts.append("knowledge base unavailable: answered without it")
    if len(d.fallback_path) > 1:
        parts.append("path " + " \u2192 ".join(d.fallback_path))
    if first_token_s is not None:
        parts.append(f"first token {first_token_s:.2f} s")
    parts.append(f"total {total_s:.2f} s")
    return "\u2014 " + " \u00b7 ".join(parts)


async def chat(args: argparse.Namespace, message: str) -> int:
    tree = config.load()
    target = args.target or config.target(tree, "envoy")
    request = pb.ChatRequest(
        messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=message)],
        tier=args.tier,
        max_tokens=args.max_tokens,
        bypass_cache=args.no_cache,
    )
    token = args.token or os.environ.get("TIERMESH_TOKEN")
    if not token:
        from gateway import keys

        if keys.settings(tree).jwks_uri:
            print("tiermesh chat: this mesh verifies tokens from an identity provider: pass --token", file=sys.stderr)
            return 2
        token = keys.mint(tree, args.user, args.segment, 3600)
    metadata = (("authorization", f"Bearer {token}"),)
    out = sys.stdout
    started = time.monotonic()
    first_token: float | None = None
    cited = False
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        try:
            async for event in stub.Chat(request, timeout=args.timeout, metadata=metadata):
                kind = event.WhichOneof("event")
                if args.json:
                    out.write(json.dumps(MessageToDict(event), ensure_ascii=False) + "\n")
                    out.flush()
                    continue
                cited = cited or kind == "citation"
                if kind == "decision":
                    out.write(describe_decision(event.decision) + "\n\n")
                elif kind == "citation":
                    ct = event.citation
                    out.write(f"[{ct.index}] {ct.title} ({ct.document_id}, relevance {ct.score:.2f})\n")
                elif kind == "delta":
                    if first_token is None and cited:
                        out.write("\n")
                    if first_token is None:
                        first_token = time.monotonic() - started
                    out.write(event.delta.text)
                elif kind == "restart":
                    r = event.restart
                    out.write(
                        f"\n\n[{r.failed_deployment} failed mid-answer ({r.reason}); the answer starts again]\n\n"
                    )
                elif kind == "done":
                    out.write("\n\n" + describe_done(event.done, first_token, time.monotonic() - started) + "\n")
                out.flush()
        except grpc.aio.AioRpcError as exc:
            hint = ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
                hint = f"\n(is the mesh running? start it with `make run`; edge expected at {target})"
            print(f"\ntiermesh chat: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
            return 1
    return 0
