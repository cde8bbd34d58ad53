"""Every RPC of every service is served, and every service describes itself: server reflection
v1 and v1alpha on each part, and through the edge for a caller with a token, so `buf curl`
(and grpcurl, Postman) work with no proto files."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from tests.security.catalogue import PART_OF, RPCS, SERVICES, Rpc
from tests.security.conftest import Attack

pytestmark = pytest.mark.integration

BUF = Path(sys.executable).with_name("buf")
REFLECTION = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
CONTRACTS_OF = {part: [service for service, p in PART_OF.items() if p == part] for part in SERVICES}


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: f"{r.part}{r.path}")
async def test_every_rpc_of_every_service_is_served(attack: Attack, rpc: Rpc) -> None:
    async with attack.mesh.channel(rpc.part) as channel:
        error = await rpc.send(channel, rpc.example().SerializeToString(), first_only=True)
    assert error is None or error.code() != grpc.StatusCode.UNIMPLEMENTED, error.details()


async def reflect(
    channel: grpc.aio.Channel, version: str, *requests: rpb.ServerReflectionRequest
) -> list[rpb.ServerReflectionResponse]:
    # v1 and v1alpha are the same messages under two package names: one client speaks both.
    info = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    return [reply async for reply in info(iter(requests), timeout=10)]


def files(reply: rpb.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = {}
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
        out[fdp.name] = fdp
    return out


@pytest.mark.parametrize("part", SERVICES)
@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_each_service_describes_its_contract_by_reflection(attack: Attack, part: str, version: str) -> None:
    contracts = CONTRACTS_OF[part]
    async with attack.mesh.channel(part) as channel:
        listed, itself, *described = await reflect(
            channel,
            version,
            rpb.ServerReflectionRequest(list_services=""),
            rpb.ServerReflectionRequest(file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"),
            *(rpb.ServerReflectionRequest(file_containing_symbol=contract) for contract in contracts),
        )
    names = {s.name for s in listed.list_services_response.service}
    assert names == {*contracts, "grpc.health.v1.Health", *REFLECTION}
    for contract, reply in zip(contracts, described, strict=True):
        expected = {r.path.rsplit("/", 1)[1] for r in RPCS if r.path.startswith(f"/{contract}/")}
        package, service = contract.rsplit(".", 1)
        found = [
            {m.name for m in s.method}
            for f in files(reply).values()
            if f.package == package
            for s in f.service
            if s.name == service
        ]
        assert found == [expected], contract
        # The answer carries every file it imports: a client can build every message from it.
        fdps = files(reply)
        assert all(dep in fdps for f in fdps.values() for dep in f.dependency)
    assert any(f.package == f"grpc.reflection.{version}" for f in files(itself).values())


def buf_curl(attack: Attack, *args: str, token: str | None, protocol: str, path: str = "") -> list[str]:
    """`buf curl` against the edge: reflection with the token, and the call with it."""
    argv = [str(BUF), "curl", "--protocol", protocol, "--timeout", "20s", *args]
    if protocol == "grpc":
        argv.append("--http2-prior-knowledge")
    if token:
        argv += ["--reflect-header", f"authorization: Bearer {token}", "-H", f"authorization: Bearer {token}"]
    return [*argv, f"http://{attack.mesh.target('envoy')}{path}"]


async def run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize("protocol", ["grpc", "grpcweb"])
async def test_buf_curl_lists_and_calls_the_edge_with_a_token_and_no_proto_files(
    attack: Attack, protocol: str, tmp_path: Path
) -> None:
    token = attack.mesh.token()
    code, out, err = await run(buf_curl(attack, "--list-methods", token=token, protocol=protocol), tmp_path)
    assert code == 0, err
    assert {"tiermesh.router.v1.RouterService/Chat", "tiermesh.router.v1.RouterService/Route"} <= set(out.split())
    body = json.dumps({"messages": [{"role": "CHAT_ROLE_USER", "content": "Como pago com Pix?"}]})
    route = "/tiermesh.router.v1.RouterService/Route"
    code, out, err = await run(buf_curl(attack, "-d", body, token=token, protocol=protocol, path=route), tmp_path)
    assert code == 0, err
    decision = json.loads(out)["decision"]
    assert decision["tier"].startswith("TIER_") and decision["reasons"]


async def test_reflection_through_the_edge_needs_a_token(attack: Attack, tmp_path: Path) -> None:
    forged = attack.mesh.token()[:-4] + "AAAA"
    for token in (None, forged):
        code, out, err = await run(buf_curl(attack, "--list-services", token=token, protocol="grpc"), tmp_path)
        assert code != 0
        assert "tiermesh.router.v1.RouterService" not in out
        assert "not authenticated" in err  # buf's words for UNAUTHENTICATED
