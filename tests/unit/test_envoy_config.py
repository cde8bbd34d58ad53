"""The Envoy bootstrap, built from typed Envoy API classes, is accepted by the real Envoy binary
and is streaming-safe, authenticated and rate-limited as designed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn import v3 as jwt_authn
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager import v3 as hcm_v3

from gateway import envoy
from services.runtime import config
from services.runtime.config import ConfigError


def hcm_of(tmp_path: Path, **env: str) -> hcm_v3.HttpConnectionManager:
    boot = envoy.build(config.load(environ={"TIERMESH_DATA_DIR": str(tmp_path), **env}))
    any_hcm = boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    unpacked = any_hcm.unpack()
    assert isinstance(unpacked, hcm_v3.HttpConnectionManager)
    return unpacked


def test_generated_config_passes_envoy_validate(tmp_path: Path) -> None:
    tree = config.load(environ={"TIERMESH_DATA_DIR": str(tmp_path)})
    path = envoy.write(tree)
    assert path.parent == tmp_path and path.suffix == ".pb"
    envoy.validate(path)  # raises with Envoy's own message when refused


def test_streams_are_never_cut_and_retried_only_when_they_never_started(tmp_path: Path) -> None:
    routes = hcm_of(tmp_path).route_config.virtual_hosts[0].routes
    streaming = [r for r in routes if r.name == "stream"]
    assert streaming and all(r.route.timeout == timedelta(0) for r in streaming)
    assert all(r.route.max_stream_duration.max_stream_duration == timedelta(seconds=600) for r in streaming)
    # Envoy does not enforce the client's grpc-timeout (that would reset the stream): the Router does.
    assert all(r.route.max_stream_duration.grpc_timeout_header_max is None for r in streaming)
    # Retried only when refused before starting (a draining replica says UNAVAILABLE before any
    # answer; a connection never made), and then on another replica; a stream that answered
    # anything is never retried (Envoy cannot, once the response began). Only an answer that
    # has not even started is given up on.
    for r in streaming:
        assert set(r.route.retry_policy.retry_on.split(",")) == {
            "unavailable",
            "refused-stream",
            "connect-failure",
            "reset-before-request",
        }
        assert [p.name for p in r.route.retry_policy.retry_host_predicate] == [
            "envoy.retry_host_predicates.previous_hosts"
        ]
    assert all(r.route.retry_policy.per_try_timeout == timedelta(seconds=10) for r in streaming)
    unary = next(r for r in routes if r.match.path == "/tiermesh.router.v1.RouterService/Route")
    assert unary.route.retry_policy is not None and unary.route.retry_policy.num_retries == 2
    assert routes.index(unary) < routes.index(streaming[0])  # the exact path wins over the prefix
    guards = [r.name for r in routes if r.direct_response is not None]
    assert guards == [
        "no-exp-claim",
        "bad-sub-claim",
        "bad-segment-claim",
        "bad-role-claim",
        "bad-team-claim",
        "unserved-protocol",
    ]
    # The OpenAI-compatible API's JSON is served under /v1/ only: its route comes after the token
    # checks and before the refusal of every other non-gRPC request.
    api = next(r for r in routes if r.name == "openai")
    assert api.match.prefix == "/v1/" and api.route.cluster == "openai" and api.route.rate_limits
    assert routes.index(api) == guards.index("unserved-protocol")
    assert max(routes.index(r) for r in routes if r.direct_response is not None) < routes.index(unary)


def test_only_the_reads_the_web_app_needs_reach_other_services_each_behind_its_guard(tmp_path: Path) -> None:
    hcm = hcm_of(tmp_path)
    routes = hcm.route_config.virtual_hosts[0].routes
    elsewhere = {
        r.match.path or r.match.prefix: r for r in routes if r.route and r.route.cluster not in ("router", "openai")
    }
    assert set(elsewhere) == set(envoy.READS)
    for path, (cluster, streams, guard) in envoy.READS.items():
        read = elsewhere[path]
        assert read.match.path == path  # the exact method, never a service's prefix
        assert read.route.cluster == cluster and bool(read.route.timeout == timedelta(0)) == streams
        assert read.typed_per_filter_config[envoy.READER].unpack().name == guard
        assert read.route.rate_limits  # reads count against the caller's limits like chats
    reader = next(f for f in hcm.http_filters if f.name == envoy.READER).typed_config.unpack()
    assert reader.default_source_code is None  # nothing runs on the chat routes
    assert set(reader.source_codes) == {guard for _, _, guard in envoy.READS.values()}


def test_identity_headers_are_stripped_before_the_token_is_checked(tmp_path: Path) -> None:
    hcm = hcm_of(tmp_path)
    filters = hcm.http_filters
    names = [f.name for f in filters]
    assert names[-1] == "envoy.filters.http.router"
    # As soon as headers arrive (before any filter, the route or Envoy's request id): the client's
    # request id is kept aside, its identity and Envoy headers go, its deadline is handed on.
    (early,) = hcm.early_header_mutation_extensions
    mutations = early.typed_config.unpack().mutations
    assert mutations[0].append.header.key == "x-client-request-id"
    stripped = [m.remove_on_match.key_matcher.prefix for m in mutations if m.remove_on_match]
    assert stripped == ["x-tiermesh-", "x-envoy-"]
    assert [m.remove for m in mutations if m.remove] == ["grpc-timeout"]
    jwt_cfg = filters[names.index("envoy.filters.http.jwt_authn")].typed_config.unpack()
    assert isinstance(jwt_cfg, jwt_authn.JwtAuthentication)
    # A request with an API key skips the token check only to meet the key check, which runs
    # for exactly those requests (the same two headers), after it and before the rate limits.
    *key_rules, catch_all = jwt_cfg.rules
    assert (catch_all.match.prefix, catch_all.requires.provider_name) == ("/", "tiermesh")
    assert [r.requires for r in key_rules] == [None, None]
    assert [h.name for r in key_rules for h in r.match.headers] == ["x-api-key", "authorization"]
    keyed = filters[names.index(envoy.API_KEYS)].typed_config.unpack()
    predicates = keyed.xds_matcher.matcher_list.matchers[0].predicate.not_matcher.or_matcher.predicate
    assert [p.single_predicate.input.name for p in predicates] == ["x-api-key", "authorization"]
    check = keyed.extension_config.typed_config.unpack()
    assert check.failure_mode_allow is False and check.grpc_service.envoy_grpc.cluster_name == "analytics"
    assert [m.exact for m in check.allowed_headers.patterns] == ["authorization", "x-api-key"]
    jwt_at, keys_at = names.index("envoy.filters.http.jwt_authn"), names.index(envoy.API_KEYS)
    assert jwt_at < keys_at < names.index("envoy.filters.http.ratelimit")
    provider = jwt_cfg.providers["tiermesh"]
    assert [(h.name, h.value_prefix) for h in provider.from_headers] == [("authorization", "Bearer ")]
    assert not provider.from_params and provider.forward is False
    assert provider.payload_in_metadata and provider.clear_route_cache  # the claims are checked by route
    # One call to the RateLimit service per request, after the token is checked.
    stages = [f.typed_config.unpack().stage for f in filters if f.name == "envoy.filters.http.ratelimit"]
    assert stages == [0]
    assert names.index("envoy.filters.http.ratelimit") > names.index("envoy.filters.http.jwt_authn")
    # The client is the address connected to the edge; no client-chosen request id is kept.
    assert hcm.use_remote_address and hcm.xff_num_trusted_hops == 0 and not hcm.preserve_external_request_id


def test_router_cluster_is_health_checked_and_protected(tmp_path: Path) -> None:
    boot = envoy.build(config.load(environ={"TIERMESH_DATA_DIR": str(tmp_path)}))
    router = next(c for c in boot.static_resources.clusters if c.name == "router")
    assert router.health_checks[0].grpc_health_check.service_name == "tiermesh.router.v1.RouterService"
    assert router.outlier_detection.consecutive_5xx == 5
    assert router.transport_socket.name == "envoy.transport_sockets.tls"  # mutual TLS, as the edge
    assert router.circuit_breakers.thresholds[0].retry_budget.budget_percent.value == 20.0
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in router.typed_extension_protocol_options


def test_remote_jwks_config_passes_envoy_validate(tmp_path: Path) -> None:
    tree = config.load(
        environ={"TIERMESH_DATA_DIR": str(tmp_path), "TIERMESH_AUTH__JWKS_URI": "https://idp.example.com/jwks.json"}
    )
    envoy.validate(envoy.write(tree))
    with pytest.raises(ConfigError, match=r"auth\.jwks_uri: must be an http"):
        envoy.build(config.load(environ={"TIERMESH_DATA_DIR": str(tmp_path), "TIERMESH_AUTH__JWKS_URI": "ftp://x"}))


def test_admin_must_stay_on_loopback(tmp_path: Path) -> None:
    tree = config.load(environ={"TIERMESH_DATA_DIR": str(tmp_path), "TIERMESH_SERVICES__ENVOY_ADMIN__HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match="loopback"):
        envoy.build(tree)


def test_envoy_refusal_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"static_resources": {"clusters": [{"name": "x", "type": "NOPE"}]}}', encoding="utf-8")
    with pytest.raises(ConfigError, match="Envoy refused"):
        envoy.validate(bad)


K8S_ENV = {
    "TIERMESH_SERVICES__ENVOY__HOST": "0.0.0.0",
    **{f"TIERMESH_SERVICES__{name.upper()}__HOST": name for name in ("router", "inference", "analytics", "ratelimit")},
}


def test_the_kubernetes_bootstrap_passes_envoy_validate_and_finds_services_by_dns(tmp_path: Path) -> None:
    """`tiermesh render-envoy --target k8s`, as the pod's init container runs it."""
    import os
    import subprocess
    import sys

    out = tmp_path / "k8s" / "envoy.pb"
    env = {**os.environ, "TIERMESH_DATA_DIR": str(tmp_path), **K8S_ENV}
    cli = [sys.executable, "-m", "services.cli.main", "render-envoy", "--target", "k8s", "--out", str(out)]
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr  # rendered, then `envoy --mode validate`
    boot = envoy.build(config.load(environ={"TIERMESH_DATA_DIR": str(tmp_path), **K8S_ENV}), probe_port=8081)
    assert bytes(boot) == out.read_bytes()
    clusters = {c.name: c for c in boot.static_resources.clusters}
    for name, port in (("router", 50051), ("inference", 50052), ("analytics", 50054), ("ratelimit", 50055)):
        cluster = clusters[name]
        assert cluster.type.name == "STRICT_DNS"  # every pod behind a headless Service
        (address,) = [e.endpoint.address.socket_address for e in cluster.load_assignment.endpoints[0].lb_endpoints]
        assert (address.address, address.port_value) == (name, port)
    edge, probe = boot.static_resources.listeners
    assert edge.address.socket_address.address == "0.0.0.0" and edge.address.socket_address.port_value == 8080
    assert probe.address.socket_address.port_value == envoy.K8S_PROBE_PORT
    hcm = probe.filter_chains[0].filters[0].typed_config.unpack()
    routes = hcm.route_config.virtual_hosts[0].routes
    assert [(r.match.path, r.route.cluster) for r in routes if r.route] == [
        ("/ready", envoy.ADMIN_CLUSTER),
        ("/stats/prometheus", envoy.ADMIN_CLUSTER),
    ]
    assert routes[-1].direct_response.status == 404  # nothing else of the admin interface
    admin = clusters[envoy.ADMIN_CLUSTER].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert admin.socket_address.address == "127.0.0.1"  # the admin interface itself stays on loopback
