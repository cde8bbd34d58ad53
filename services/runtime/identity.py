"""Who is asking: the identity headers the edge writes from a verified token, and who may set them.

Envoy writes `x-tiermesh-user` (the token's `sub`) and `x-tiermesh-segment` after checking the
token, having removed any copy a client sent. A service honours such metadata only from the part
allowed to set it, proven by its certificate (services.runtime.tls): the Router from the edge and
from the OpenAI-compatible API behind it, Inference from the Router. Anyone else (an operator's
tool, a test) is anonymous and standard.

Between services the user travels as `x-tiermesh-user-bin` (UTF-8 bytes), since gRPC metadata
that is not binary must be ASCII and a `sub` may be any string (`josé`, `李`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tiermesh.common.v1 import common_pb2

USER = "x-tiermesh-user"
USER_BIN = "x-tiermesh-user-bin"
SEGMENT = "x-tiermesh-segment"
# The token's `role` claim, when it has one; `operator` is the only role: it may read every
# user's spend and the model catalog through the edge.
ROLE = "x-tiermesh-role"
OPERATOR = "operator"
# Set by the edge for a request that came with an API key: the key's id and its team, if any (a
# token's `team` claim sets the team too).
KEY = "x-tiermesh-key"
TEAM = "x-tiermesh-team"
# What a team's name may be (checked when a key is made, and by the edge in a token's `team`
# claim): up to 128 letters, digits, `.`, `_`, `-`.
TEAM_CHARS = r"[A-Za-z0-9._-]"
TEAM_NAME = re.compile(TEAM_CHARS + "{0,128}")
# An API key's own monthly budget for its user, in micro-dollars (the Router's budget check).
BUDGET = "x-tiermesh-budget-micro-usd"
MAX_BUDGET_MICRO_USD = 10**12
INTENT = "x-tiermesh-intent"
COMPLEXITY = "x-tiermesh-complexity"
REQUEST_ID = "x-request-id"
# The id a client gave its request: kept for correlation, never used as a key.
CLIENT_REQUEST_ID = "x-client-request-id"
# The client's deadline as the edge hands it on (gRPC's `grpc-timeout` format), for the Router to
# end the stream at; Envoy does not enforce it.
DEADLINE = "x-tiermesh-grpc-timeout"
# Every header an edge client could send to pose as someone; Envoy removes them on arrival.
EDGE_ONLY = (USER, USER_BIN, SEGMENT, ROLE, KEY, TEAM, BUDGET, INTENT, COMPLEXITY, CLIENT_REQUEST_ID)

# The segments, from the contract's enum: standard, vip, enterprise.
SEGMENTS = tuple(v.name.removeprefix("SEGMENT_").lower() for v in common_pb2.Segment.DESCRIPTOR.values if v.number != 0)
DEFAULT_SEGMENT = "standard"
MAX_USER_CHARS = 256
MAX_CLIENT_REQUEST_ID_CHARS = 128


def metadata_dict(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The metadata as text, binary values decoded as UTF-8 (a later duplicate key wins)."""
    out: dict[str, str] = {}
    for key, value in metadata or ():
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return out


def trusted(peer_role: str, *allowed: str) -> bool:
    """May a caller with this certificate role set identity metadata? Without TLS no caller has a
    role and every caller is trusted (a single machine with loopback-only ports)."""
    return peer_role == "" or peer_role in allowed


def user_and_segment(metadata: dict[str, str]) -> tuple[str, str]:
    """(user, segment) from identity metadata; no user means anonymous, no known segment standard."""
    user = (metadata.get(USER_BIN) or metadata.get(USER) or "").strip()[:MAX_USER_CHARS]
    segment = metadata.get(SEGMENT, "")
    return user, segment if segment in SEGMENTS else DEFAULT_SEGMENT


def own_budget(metadata: dict[str, str]) -> int | None:
    """The monthly budget (micro-dollars) the caller's API key sets for its user; None for none."""
    raw = metadata.get(BUDGET, "")
    if not raw.isdigit() or not 0 < int(raw) <= MAX_BUDGET_MICRO_USD:
        return None
    return int(raw)


def team(metadata: dict[str, str]) -> str:
    """The caller's team (its API key's, or its token's `team` claim); empty for none, or for a
    value no key could carry."""
    value = metadata.get(TEAM, "")
    return value if TEAM_NAME.fullmatch(value) else ""


def client_request_id(metadata: dict[str, str]) -> str:
    """The client's own request id when it is printable ASCII of reasonable length; else none."""
    value = metadata.get(CLIENT_REQUEST_ID, "")
    if len(value) > MAX_CLIENT_REQUEST_ID_CHARS or not value.isascii() or not value.isprintable():
        return ""
    return value


def user_metadata(user: str) -> tuple[str, bytes]:
    """The user as metadata for a call to another service (any Unicode survives)."""
    return (USER_BIN, user.encode("utf-8"))


def reader(peer_role: str, edge: str, metadata: dict[str, str]) -> tuple[str, bool] | None:
    """Who reads through the edge: (the verified user, whether the token has the operator role),
    or None when the caller is not the edge (a service or an operator's tool with a certificate
    of its own, which may read anything). Without TLS (`peer_role` empty) a call that carries
    the edge's identity headers is taken as the edge's."""
    if peer_role not in ("", edge) or (not peer_role and USER not in metadata and USER_BIN not in metadata):
        return None
    user, _ = user_and_segment(metadata)
    return user, metadata.get(ROLE, "") == OPERATOR
