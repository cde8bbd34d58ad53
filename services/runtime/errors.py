"""The error tree of tiermesh. Each class maps to exactly one canonical gRPC status.

    TiermeshError
    ├── InvalidArgument      INVALID_ARGUMENT   bad input; the message names the field and the limit
    ├── ResourceExhausted    RESOURCE_EXHAUSTED a limit, quota or budget was reached
    ├── Unavailable          UNAVAILABLE        no model or dependency could serve the request
    ├── DeadlineExceeded     DEADLINE_EXCEEDED  the caller's deadline passed
    ├── Unauthenticated      UNAUTHENTICATED    no valid identity
    ├── PermissionDenied     PERMISSION_DENIED  the identity may not do this
    ├── NotFound             NOT_FOUND          what the request names does not exist
    └── Internal             INTERNAL           a bug: logged with its traceback

Services raise these; the runtime's interceptor turns them into the status and message the
client sees. Anything else escaping a handler is logged and returned as INTERNAL.
"""

from __future__ import annotations

import grpc


class TiermeshError(Exception):
    """Base class: `code` is the gRPC status the client receives, str(self) the message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(TiermeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(TiermeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(TiermeshError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TiermeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(TiermeshError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TiermeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(TiermeshError):
    code = grpc.StatusCode.NOT_FOUND


class Internal(TiermeshError):
    code = grpc.StatusCode.INTERNAL
