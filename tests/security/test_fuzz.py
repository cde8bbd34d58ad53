"""Fuzzing: random, mutated and hostile-but-valid protobuf messages to every RPC of every service,
directly (with a mesh certificate) and through the edge (gRPC and gRPC-Web, with mutated frames).
No answer is ever UNKNOWN or INTERNAL, no service logs a traceback or an error, and every service
is SERVING afterwards. Bounded: a fixed number of examples, each call a few seconds at most."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime import config, tls
from tests.security.catalogue import FUZZ_COLLECTION, ROUTER_RPCS, RPCS, SERVICES, Rpc
from tests.security.conftest import Attack

pytestmark = pytest.mark.integration

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
EXAMPLES = 600
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\u202e", "𝔘𝔫𝔦", "'; DROP TABLE usage_events; --", "%s%n", "../../etc/passwd"]),
    st.builds(lambda n, ch: ch * n, st.integers(0, 40_000), st.sampled_from(["a", "é", "😀"])),
)
INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
}


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return HOSTILE_TEXT
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(
            allow_nan=True, allow_infinity=True, width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64
        )
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    lo, hi = INT_BOUNDS.get(field.type, (-(2**31), 2**31 - 1))
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, 1, -1 if lo < 0 else 0]))


@st.composite
def message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
    """Field values for `descriptor`: valid protobuf, hostile values."""
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            mt = field.message_type
            if mt.GetOptions().map_entry:
                out[field.name] = draw(st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=3))
            elif depth < 3:
                sub = message(mt, depth + 1)
                out[field.name] = draw(st.lists(sub, max_size=3)) if field.is_repeated else draw(sub)
        elif field.is_repeated:
            out[field.name] = draw(st.lists(scalar(field), max_size=4))
        else:
            out[field.name] = draw(scalar(field))
    return out


def fill(msg: Message, values: dict[str, Any]) -> None:
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        try:
            if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
                getattr(msg, name).update(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                if field.is_repeated:
                    for item in value:
                        fill(getattr(msg, name).add(), item)
                else:
                    fill(getattr(msg, name), value)
            elif field.is_repeated:
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        except (ValueError, TypeError):  # a value protobuf itself refuses to hold (lone surrogates ...)
            continue


@st.composite
def payload(draw: st.DrawFn, rpc: Rpc) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "hostile"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "hostile":
        msg = rpc.request()
        fill(msg, draw(message(rpc.request.DESCRIPTOR)))
        if "collection" in msg.DESCRIPTOR.fields_by_name and getattr(msg, "collection"):  # noqa: B009
            msg.collection = FUZZ_COLLECTION  # never the knowledge chats search
        return msg.SerializeToString()
    data = bytearray(rpc.example().SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def status_of(call: Any) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def timeout_for(rpc: Rpc) -> float:
    return 0.5 if rpc.path.endswith("/WatchSpend") else 3.0


class Clients:
    """Blocking clients, one set for the whole fuzzing run: each service directly (an operator's
    certificate), and the edge over gRPC and over gRPC-Web (HTTP/1.1)."""

    def __init__(self, attack: Attack) -> None:
        tree = attack.mesh.tree
        self.direct = {
            part: grpc.secure_channel(
                config.target(tree, part),
                tls.channel_credentials(tree, "operator"),
                [("grpc.ssl_target_name_override", part)],
            )
            for part in SERVICES
        }
        self.edge = grpc.insecure_channel(attack.mesh.target("envoy"))
        self.http = httpx.Client(timeout=10)
        self.envoy = attack.mesh.target("envoy")
        self.token = attack.mesh.token("fuzzer", "enterprise", ttl_s=3600)  # 1,000 requests a minute

    def close(self) -> None:
        for ch in self.direct.values():
            ch.close()
        self.edge.close()
        self.http.close()

    def send(self, where: str, rpc: Rpc, body: bytes, flag: int, extra: int) -> grpc.StatusCode:
        if where == "direct":
            channel = self.direct[rpc.part]
            make = channel.unary_stream if rpc.streaming else channel.unary_unary
            return status_of(lambda: make(rpc.path)(body, timeout=timeout_for(rpc)))
        if where == "edge grpc":
            metadata = (("authorization", f"Bearer {self.token}"),)
            make = self.edge.unary_stream if rpc.streaming else self.edge.unary_unary
            return status_of(lambda: make(rpc.path)(body, timeout=timeout_for(rpc), metadata=metadata))
        raw = bytes([flag]) + struct.pack(">I", max(0, len(body) + extra)) + body
        try:
            resp = self.http.post(
                f"http://{self.envoy}{rpc.path}",
                content=raw,
                headers={
                    "content-type": "application/grpc-web+proto",
                    "authorization": f"Bearer {self.token}",
                    "grpc-timeout": f"{int(timeout_for(rpc) * 1000)}m",
                },
            )
        except httpx.TimeoutException:
            raise AssertionError(
                f"no answer in time: {rpc.path} flag={flag} extra={extra} body={body[:200]!r}"
            ) from None
        assert resp.status_code == 200, resp.status_code
        status = resp.headers.get("grpc-status") or trailer_status(resp.content)
        return next(c for c in grpc.StatusCode if str(c.value[0]) == status)


def fuzz(clients: Clients) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one_input(data: Any) -> None:
        where = data.draw(st.sampled_from(["direct", "edge grpc", "edge grpc-web"]))
        rpc = data.draw(st.sampled_from(RPCS if where == "direct" else ROUTER_RPCS))
        body = data.draw(payload(rpc))
        flag = data.draw(st.sampled_from([0, 0, 0, 1, 0x80, 0xFF]))
        extra = data.draw(st.sampled_from([0, 0, 0, -1, 1, 1000]))
        code = clients.send(where, rpc, body, flag, extra)
        assert code not in NEVER, (where, rpc.path, body[:80])

    one_input()


async def test_no_input_gets_unknown_or_internal_and_every_service_keeps_serving(attack: Attack) -> None:
    attack.mark()
    clients = Clients(attack)
    try:
        # Blocking clients in a thread: the mesh's logs keep being read meanwhile.
        await asyncio.to_thread(fuzz, clients)
    finally:
        clients.close()
    for part in SERVICES:
        host, port = config.health_endpoint(attack.mesh.tree, part)
        async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, part
    await asyncio.sleep(1)  # what the last calls logged is in
    errors = attack.errors_since_mark()
    assert not errors, errors[:5]


def trailer_status(body: bytes) -> str:
    while len(body) >= 5:
        flag, size = body[0], struct.unpack(">I", body[1:5])[0]
        if flag & 0x80:
            for line in body[5 : 5 + size].decode().split("\r\n"):
                if line.lower().startswith("grpc-status:"):
                    return line.split(":", 1)[1].strip()
        body = body[5 + size :]
    return ""
