"""Logs keep secrets out, and an ERROR line means something is wrong: a token in the query string
never reaches the access log; cancelling chats, listing health, and a client leaving the provider
early log no errors anywhere."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.runtime import config
from tests.security.catalogue import SERVICES
from tests.security.conftest import Attack, eventually
from tests.security.tokens import bearer
from tests.security.wire import frame, grpc_web

pytestmark = pytest.mark.integration

CHAT = "/tiermesh.router.v1.RouterService/Chat"


async def test_a_token_in_the_query_string_never_reaches_the_access_log(attack: Attack) -> None:
    token = attack.mesh.token(f"query-{uuid.uuid4().hex[:8]}", "vip")
    url = f"http://{attack.mesh.target('envoy')}{CHAT}?access_token={token}&x=1"
    reply = await grpc_web(url, frame(attack.chat_request("hi").SerializeToString()), {})
    assert reply.grpc_status == "16"  # a token is read from the Authorization header only
    await eventually(lambda: any(CHAT in line and '"status":200' in line for line in attack.mesh.logs("envoy")))
    await asyncio.sleep(0.5)  # Envoy writes access logs on its own schedule
    joined = "\n".join(attack.mesh.logs("envoy"))
    assert token not in joined and token.split(".")[1] not in joined and "access_token" not in joined


async def test_cancelling_chats_right_after_their_first_token_logs_no_error(attack: Attack) -> None:
    attack.mark()
    token = attack.mesh.token(f"cancel-{uuid.uuid4().hex[:8]}", "enterprise")
    async with attack.mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)

        async def one(i: int, after: int) -> None:
            call = stub.Chat(attack.chat_request(f"cancel me {i}", bypass_cache=True), metadata=bearer(token))
            seen = 0
            async for event in call:
                seen += event.HasField("delta")
                if seen >= after:
                    call.cancel()
                    break

        await asyncio.gather(*(one(i, 1 + i % 2) for i in range(12)))
    # And a gRPC-Web client that hangs up mid-stream.
    for i in range(4):
        web = await grpc_web(
            f"http://{attack.mesh.target('envoy')}{CHAT}",
            frame(attack.chat_request(f"web cancel {i}").SerializeToString()),
            dict(bearer(token)),
            timeout=0.15,
        )
        assert web is not None
    await asyncio.sleep(1.5)  # every part has finished the cancelled calls (and the provider its streams)
    assert not attack.errors_since_mark()


async def test_health_list_answers_on_every_service_without_an_error(attack: Attack) -> None:
    attack.mark()
    for part in SERVICES:
        async with attack.mesh.channel(part) as channel:  # over mutual TLS, as the mesh's parts ask
            listed = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
        assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING, part
        assert any(name.startswith(("tiermesh.", "envoy.")) for name in listed.statuses), part
        host, port = config.health_endpoint(attack.mesh.tree, part)
        async with grpc.aio.insecure_channel(f"{host}:{port}") as plain:  # and on the probes' port
            probed = await health_pb2_grpc.HealthStub(plain).List(health_pb2.HealthListRequest(), timeout=5)
        assert dict(probed.statuses) == dict(listed.statuses)
    assert not attack.errors_since_mark()
