"""A service as its contract says: one handler for every RPC the service's descriptor names.

The generated `add_XServicer_to_server` registers the generated base class's methods too, which
answer UNIMPLEMENTED: an RPC added to a proto and forgotten in the servicer would go out
unserved and unnoticed. `served` reads the RPCs from the descriptor instead and refuses to start
a servicer that lacks one, naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

Serializer = Callable[[Any], bytes]


@dataclass(frozen=True)
class Served:
    descriptor: ServiceDescriptor
    handler: grpc.GenericRpcHandler[Any, Any]

    @property
    def name(self) -> str:
        return self.descriptor.full_name

    def path(self, method: str) -> str:
        """`/package.Service/Method`, for a method the contract has."""
        if method not in self.descriptor.methods_by_name:
            raise KeyError(f"{self.name} has no method {method!r}")
        return f"/{self.name}/{method}"

    def register(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((self.handler,))


def _implemented(servicer: object, method: str) -> bool:
    """Whether the servicer defines `method` itself (not only a generated base class's stub)."""
    for cls in type(servicer).__mro__:
        if method in vars(cls):
            return not cls.__module__.endswith("_pb2_grpc")
    return False


def served(
    descriptor: ServiceDescriptor, servicer: object, serializers: Mapping[str, Serializer] | None = None
) -> Served:
    """Handlers for every RPC of `descriptor`, each bound to the servicer's method of the same
    name. `serializers` replaces a method's response encoder (the Router relays pre-encoded
    events). Raises TypeError naming every RPC the servicer does not define."""
    missing = [m.name for m in descriptor.methods if not _implemented(servicer, m.name)]
    if missing:
        raise TypeError(
            f"{type(servicer).__name__} does not serve {', '.join(missing)} of {descriptor.full_name}: "
            "define a method of that name"
        )
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for m in descriptor.methods:
        behaviour = getattr(servicer, m.name)
        decode = GetMessageClass(m.input_type).FromString
        encode = (serializers or {}).get(m.name) or GetMessageClass(m.output_type).SerializeToString
        if m.client_streaming:
            raise TypeError(f"{descriptor.full_name}/{m.name}: client-streaming RPCs are not part of any contract")
        make = grpc.unary_stream_rpc_method_handler if m.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[m.name] = make(behaviour, request_deserializer=decode, response_serializer=encode)
    return Served(descriptor, grpc.method_handlers_generic_handler(descriptor.full_name, handlers))
