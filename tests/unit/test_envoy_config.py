"""The generated Envoy bootstrap is accepted by the real Envoy binary and is streaming-safe."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import envoy
from services.runtime import config
from services.runtime.config import ConfigError


def test_generated_config_passes_envoy_validate(tmp_path: Path) -> None:
    tree = config.load(environ={"TIERMESH_DATA_DIR": str(tmp_path)})
    path = envoy.write(tree)
    assert path.parent == tmp_path
    envoy.validate(path)  # raises with Envoy's own message when refused


def test_routes_never_use_the_default_15s_timeout_and_strip_identity_headers(tmp_path: Path) -> None:
    boot = envoy.render(config.load(environ={"TIERMESH_DATA_DIR": str(tmp_path)}))
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    streaming = [r for r in routes if "prefix" in r["match"]]
    assert streaming and all(r["route"]["timeout"] == "0s" for r in streaming)
    assert all(r["route"]["max_stream_duration"]["max_stream_duration"] == "600s" for r in streaming)
    assert all("retry_policy" not in r["route"] for r in streaming)  # streams are never retried by Envoy
    unary = next(r for r in routes if r["match"].get("path") == "/tiermesh.router.v1.RouterService/Route")
    assert unary["route"]["retry_policy"]["num_retries"] == 2
    assert routes.index(unary) < routes.index(streaming[0])  # the exact path wins over the prefix
    names = [f["name"] for f in hcm["http_filters"]]
    assert names[-1] == "envoy.filters.http.router"
    # Client copies of the identity headers are removed before jwt_authn writes the verified ones.
    strip = hcm["http_filters"][names.index("envoy.filters.http.header_mutation")]["typed_config"]
    assert {m["remove"] for m in strip["mutations"]["request_mutations"]} == {"x-tiermesh-user", "x-tiermesh-segment"}
    assert names.index("envoy.filters.http.header_mutation") < names.index("envoy.filters.http.jwt_authn")
    jwt_cfg = hcm["http_filters"][names.index("envoy.filters.http.jwt_authn")]["typed_config"]
    assert jwt_cfg["rules"] == [{"match": {"prefix": "/"}, "requires": {"provider_name": "tiermesh"}}]
    provider = jwt_cfg["providers"]["tiermesh"]
    assert provider["from_headers"] == [{"name": "authorization", "value_prefix": "Bearer "}]
    assert "from_params" not in provider and provider["forward"] is False
    cluster = boot["static_resources"]["clusters"][0]
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == "tiermesh.router.v1.RouterService"
    assert cluster["outlier_detection"]["consecutive_5xx"] == 5
    assert cluster["circuit_breakers"]["thresholds"][0]["retry_budget"]["budget_percent"]["value"] == 20.0
    opts = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"]


def test_remote_jwks_config_passes_envoy_validate(tmp_path: Path) -> None:
    tree = config.load(
        environ={"TIERMESH_DATA_DIR": str(tmp_path), "TIERMESH_AUTH__JWKS_URI": "https://idp.example.com/jwks.json"}
    )
    envoy.validate(envoy.write(tree))
    with pytest.raises(ConfigError, match=r"auth\.jwks_uri: must be an http"):
        envoy.render(config.load(environ={"TIERMESH_AUTH__JWKS_URI": "ftp://x"}))


def test_admin_must_stay_on_loopback() -> None:
    tree = config.load(environ={"TIERMESH_SERVICES__ENVOY_ADMIN__HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match="loopback"):
        envoy.render(tree)


def test_envoy_refusal_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"static_resources": {"clusters": [{"name": "x", "type": "NOPE"}]}}', encoding="utf-8")
    with pytest.raises(ConfigError, match="Envoy refused"):
        envoy.validate(bad)
