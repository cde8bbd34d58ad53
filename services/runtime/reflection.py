"""gRPC server reflection, both versions clients ask for: `grpc.reflection.v1` (buf curl, grpcurl
and Postman try it first) and the older `grpc.reflection.v1alpha`.

grpcio-reflection implements only v1alpha. v1 is the same protocol under a new package name: the
same messages with the same field numbers, so the same bytes on the wire. Here the v1 file is
derived from the v1alpha one (package renamed, nothing else) and added to the descriptor pool, so
v1 can be described like any other service, and one servicer answers both names.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as alpha
from grpc_reflection.v1alpha._async import ReflectionServicer

ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
SERVICE_V1 = f"{V1}.ServerReflection"
SERVICE_V1ALPHA = f"{ALPHA}.ServerReflection"
SERVICES = (SERVICE_V1, SERVICE_V1ALPHA)
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto.FromString(alpha.DESCRIPTOR.serialized_pb)
    fdp.name = _V1_FILE
    fdp.package = V1
    fdp.ClearField("options")  # language package names of the v1alpha file
    old, new = f".{ALPHA}.", f".{V1}."
    for message in fdp.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in fdp.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.Add(fdp)


def enable(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection (v1 and v1alpha) for `service_names`, health and reflection itself."""
    pool = descriptor_pool.Default()
    _add_v1_file(pool)
    servicer = ReflectionServicer([*service_names, *SERVICES], pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha.ServerReflectionRequest.FromString,
        response_serializer=alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}) for name in SERVICES)
    )
