"""The OpenAI-compatible API (`python -m services.openai`) as deployed: an HTTP/1.1 server behind
Envoy, probed over plain HTTP on its health port, reachable by Envoy alone, calling only the
Router and Knowledge."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime import config
from tests.deploy.conftest import Rendered, config_tree, container, rendered
from tests.deploy.test_network_policies import allowed_paths

NAME = "openai"


def test_openai_runs_with_probes_on_its_health_port(overlay: Rendered, tmp_path: Path) -> None:
    tree = config_tree(overlay, tmp_path)
    _, api_port = config.endpoint(tree, NAME)
    _, health_port = config.health_endpoint(tree, NAME)
    assert (api_port, health_port) == (8090, 8091)

    deployment = overlay.get("Deployment", NAME)
    spec = deployment["spec"]["template"]["spec"]
    c = container(spec, NAME)
    assert c["command"] == ["python", "-m", "services.openai"]
    assert c["image"].startswith("ghcr.io/tiermesh/tiermesh:")
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": api_port, "health": health_port}

    # GET /health on the plaintext port: 200 `ok`, 503 `draining` once SIGTERM has arrived, so a
    # draining pod leaves the endpoints; never the TLS port, which demands a mesh certificate
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": health_port}, probe
    assert c["readinessProbe"]["periodSeconds"] <= c["livenessProbe"]["periodSeconds"]

    # the rest as for the router: listens on the pod, drains after a preStop pause, its own role
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TIERMESH_SERVICES__OPENAI__HOST"] == "0.0.0.0"
    assert overlay.env()["TIERMESH_SERVICES__OPENAI__HOST"] == NAME
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] == 45
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
    tls_volume = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == "tiermesh-tls-openai"


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_only_envoy_reaches_the_openai_api(name: str) -> None:
    paths = allowed_paths(rendered(name))
    into = {(src, port) for src, dst, port in paths if dst == NAME}
    assert into == {("envoy", "8090")}, f"{name}: {sorted(into)}"
    out = {(dst, port) for src, dst, port in paths if src == NAME and dst != "kube-dns"}
    assert out == {("router", "50051"), ("knowledge", "50053")}, f"{name}: {sorted(out)}"
    # Envoy checks API keys with Analytics (ext_authz) before a request reaches the API
    assert ("envoy", "analytics", "50054") in paths


def test_prod_issues_the_openai_certificate() -> None:
    cert = rendered("prod").get("Certificate", "tiermesh-tls-openai")["spec"]
    assert cert["commonName"] == NAME and cert["dnsNames"] == [NAME]
    assert {"server auth", "client auth"} <= set(cert["usages"])
