"""`tiermesh keys create | list | revoke`: API keys, through Analytics' AdminService (operator
certificate). A key's secret is printed once, at creation; nothing can show it again."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC
from typing import Literal

import grpc
from google.protobuf.json_format import MessageToDict
from tiermesh.analytics.v1 import admin_service_pb2 as pb
from tiermesh.analytics.v1 import admin_service_pb2_grpc as pb_grpc
from tiermesh.common.v1 import common_pb2 as c

from services.cli.spend import parse_since
from services.runtime import config, tls
from services.runtime.enums import name_of, value_of


def _when(key: pb.ApiKey, field: Literal["created_at", "expires_at"]) -> str:
    if not key.HasField(field):
        return "-"
    return f"{getattr(key, field).ToDatetime(tzinfo=UTC):%Y-%m-%d %H:%M}"


def _line(key: pb.ApiKey) -> str:
    budget = f"${key.budget_usd:,.2f}" if key.budget_usd else "-"
    state = "revoked" if key.HasField("revoked_at") else "live"
    segment = name_of(c.Segment, "SEGMENT_", key.segment)
    return (
        f"{key.id:<21} {key.user[:24]:<24} {segment:<10} {key.team[:16] or '-':<16} {key.role or '-':<8} "
        f"{budget:>12} {_when(key, 'created_at'):<16} {_when(key, 'expires_at'):<16} {state}"
    )


HEADER = (
    f"{'id':<21} {'user':<24} {'segment':<10} {'team':<16} {'role':<8} {'budget/month':>12} "
    f"{'created (UTC)':<16} {'expires (UTC)':<16} state"
)


async def keys(args: argparse.Namespace) -> int:
    action, as_json, target = args.action, args.json, args.target
    tree = config.load()
    addr = target or config.target(tree, "analytics")
    async with tls.channel(tree, "analytics", tls.OPERATOR, target=addr) as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        try:
            if action == "create":
                expires = args.expires
                try:
                    lifetime = int(parse_since(expires).total_seconds()) if expires else 0
                except ValueError as exc:
                    print(f"tiermesh keys create: {str(exc).replace('--since', '--expires')}", file=sys.stderr)
                    return 2
                request = pb.CreateKeyRequest(
                    user=args.user,
                    segment=c.Segment.ValueType(value_of(c.Segment, "SEGMENT_", args.segment)),
                    team=args.team or "",
                    budget_usd=args.budget_usd or 0.0,
                    expires_in_s=lifetime,
                    role=args.role or "",
                )
                made = await stub.CreateKey(request, timeout=10)
                if as_json:
                    print(json.dumps({"key": MessageToDict(made.key), "secret": made.secret}))
                else:
                    print(f"created {made.key.id} for user {made.key.user}; the key (shown only now, keep it secret):")
                    print(made.secret)
            elif action == "list":
                listed = await stub.ListKeys(
                    pb.ListKeysRequest(user=args.user or "", include_revoked=args.all),
                    timeout=10,
                )
                if as_json:
                    print(json.dumps([MessageToDict(k) for k in listed.keys]))
                else:
                    print(HEADER)
                    for key in listed.keys:
                        print(_line(key))
            else:
                revoked = await stub.RevokeKey(pb.RevokeKeyRequest(id=args.id), timeout=10)
                if as_json:
                    print(json.dumps(MessageToDict(revoked.key)))
                else:
                    print(f"revoked {revoked.key.id} (user {revoked.key.user}); the edge refuses it from now on")
        except grpc.aio.AioRpcError as exc:
            hint = f" (is Analytics running at {addr}?)" if exc.code() == grpc.StatusCode.UNAVAILABLE else ""
            print(f"tiermesh keys {action}: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
            return 1
    return 0
