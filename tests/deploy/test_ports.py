"""Services, container ports and Envoy's bootstrap agree with the config on where each part listens.

The bootstrap is built in-process (`gateway.envoy.build`) from the config a pod loads (the
rendered config file and tiermesh-env), exactly what the envoy pod's initContainer renders.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from gateway import envoy, keys
from services.runtime import config, tls
from tests.deploy.conftest import GRPC_SERVICES, HTTP_SERVICES, Rendered, config_tree, container, mounted_path

PROBE_PORT = 8081  # the Envoy probe listener (/ready, /stats/prometheus) `--target k8s` adds


def service_ports(r: Rendered, name: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in r.get("Service", name)["spec"]["ports"]}


def container_ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def test_grpc_services_ports_match_the_config(overlay: Rendered, tmp_path: Path) -> None:
    tree = config_tree(overlay, tmp_path)
    for name in GRPC_SERVICES:
        svc = overlay.get("Service", name)
        # headless: Envoy's STRICT_DNS cluster and the clients' round_robin see every pod
        assert svc["spec"]["clusterIP"] == "None", name
        assert svc["spec"]["selector"] == {"app.kubernetes.io/name": name}
        wanted = {
            "grpc": config.endpoint(tree, name)[1],
            "metrics": config.metrics_endpoint(tree, name)[1],
            "health": config.health_endpoint(tree, name)[1],
        }
        ports = service_ports(overlay, name)
        assert {n: p["port"] for n, p in ports.items()} == wanted, name
        assert all(p["targetPort"] == n for n, p in ports.items()), name
        assert container_ports(container(overlay.pod_spec(name), name)) == wanted, name


def test_http_services_ports_match_the_config(overlay: Rendered, tmp_path: Path) -> None:
    """The HTTP services: the TLS port Envoy calls and the plaintext health port, no metrics."""
    tree = config_tree(overlay, tmp_path)
    for name in HTTP_SERVICES:
        svc = overlay.get("Service", name)
        assert svc["spec"]["clusterIP"] == "None", name
        assert svc["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert config.metrics_endpoint(tree, name)[1] == 0, f"{name} now serves metrics: give it a metrics port"
        wanted = {"http": config.endpoint(tree, name)[1], "health": config.health_endpoint(tree, name)[1]}
        ports = service_ports(overlay, name)
        assert {n: p["port"] for n, p in ports.items()} == wanted, name
        assert all(p["targetPort"] == n for n, p in ports.items()), name
        assert container_ports(container(overlay.pod_spec(name), name)) == wanted, name


def test_edge_web_and_simulator_ports_match_the_config(overlay: Rendered, tmp_path: Path) -> None:
    tree = config_tree(overlay, tmp_path)
    edge_port = config.endpoint(tree, "envoy")[1]
    assert {n: p["port"] for n, p in service_ports(overlay, "envoy").items()} == {
        "http": edge_port,
        "metrics": PROBE_PORT,
    }
    assert container_ports(container(overlay.pod_spec("envoy"), "envoy")) == {"http": edge_port, "metrics": PROBE_PORT}
    web_port = config.endpoint(tree, "web")[1]
    assert {n: p["port"] for n, p in service_ports(overlay, "web").items()} == {"http": web_port}
    web = container(overlay.pod_spec("web"), "web")
    assert container_ports(web) == {"http": web_port}
    assert {e["name"]: e.get("value") for e in web["env"]}["PORT"] == str(web_port)
    if overlay.overlay == "dev":
        sim_port = config.endpoint(tree, "simulator")[1]
        assert {n: p["port"] for n, p in service_ports(overlay, "simulator").items()} == {"http": sim_port}
        assert container_ports(container(overlay.pod_spec("simulator"), "simulator")) == {"http": sim_port}
    else:
        assert overlay.find("Deployment", "simulator") is None


def bootstrap(r: Rendered, tmp: Path) -> tuple[Any, dict[str, Any]]:
    """The bootstrap the envoy pod renders, and the config it was rendered from."""
    init = container(r.pod_spec("envoy"), "render-bootstrap", init=True)
    extra = {e["name"]: e["value"] for e in init.get("env", []) if "value" in e}
    tree = config_tree(r, tmp, extra)
    jwks = None if keys.settings(tree).jwks_uri else Path(r.env()["TIERMESH_DATA_DIR"]) / "jwt" / "jwks.json"
    kwargs = {"probe_port": PROBE_PORT} if "probe_port" in inspect.signature(envoy.build).parameters else {}
    return envoy.build(tree, jwks, **kwargs), tree


def test_render_command_targets_kubernetes(overlay: Rendered) -> None:
    init = container(overlay.pod_spec("envoy"), "render-bootstrap", init=True)
    assert init["command"][:2] == ["tiermesh", "render-envoy"]
    assert init["command"][init["command"].index("--target") + 1] == "k8s"
    out = init["command"][init["command"].index("--out") + 1]
    main = container(overlay.pod_spec("envoy"), "envoy")
    assert main["args"][main["args"].index("-c") + 1] == out
    # one emptyDir, written by the initContainer, read by Envoy
    spec = overlay.pod_spec("envoy")
    assert mounted_path(spec, init, out)["name"] == mounted_path(spec, main, out)["name"]
    assert "emptyDir" in mounted_path(spec, main, out)


def test_envoy_clusters_point_at_the_services(overlay: Rendered, tmp_path: Path) -> None:
    bs, _ = bootstrap(overlay, tmp_path)
    clusters = {c.name: c for c in bs.static_resources.clusters}
    for name in ("router", "analytics", "inference", "ratelimit", "openai"):
        cluster = clusters[name]
        endpoints = [
            (lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value)
            for locality in cluster.load_assignment.endpoints
            for lb in locality.lb_endpoints
        ]
        assert endpoints, name
        for host, port in endpoints:
            svc = overlay.find("Service", host)
            assert svc is not None, f"cluster {name} points at {host}:{port}, but no Service {host} is rendered"
            assert svc["spec"]["clusterIP"] == "None", f"{host}: Envoy resolves every pod of a headless Service"
            assert port in {p["port"] for p in svc["spec"]["ports"]}, f"cluster {name}: {host}:{port}"
            serving = "http" if host in HTTP_SERVICES else "grpc"
            assert service_ports(overlay, host)[serving]["port"] == port, f"cluster {name}: {host}:{port}"
        # a host name is resolved (and re-resolved) to every pod behind it
        assert str(cluster.type).rsplit(".", 1)[-1].endswith("STRICT_DNS"), (name, cluster.type)
    listeners = {
        lst.name: (lst.address.socket_address.address, lst.address.socket_address.port_value)
        for lst in bs.static_resources.listeners
    }
    assert listeners["edge"] == ("0.0.0.0", service_ports(overlay, "envoy")["http"]["port"])
    if "probe_port" in inspect.signature(envoy.build).parameters:
        assert (PROBE_PORT) in {port for _, port in listeners.values()}
    # the admin interface itself stays on loopback
    assert bs.admin.address.socket_address.address == "127.0.0.1"


def test_files_the_bootstrap_names_are_mounted(overlay: Rendered, tmp_path: Path) -> None:
    """Envoy opens the edge certificate and (in dev) the JWKS by path: each must be mounted."""
    bs, tree = bootstrap(overlay, tmp_path)
    raw = bytes(bs)
    s = tls.settings(tree, tls.EDGE)
    files = [str(s.ca_file), str(s.cert_file), str(s.key_file)]
    if not keys.settings(tree).jwks_uri:
        files.append(str(Path(overlay.env()["TIERMESH_DATA_DIR"]) / "jwt" / "jwks.json"))
    spec = overlay.pod_spec("envoy")
    main = container(spec, "envoy")
    for path in files:
        assert path.encode() in raw, f"the bootstrap does not name {path}"
        volume = mounted_path(spec, main, path)
        assert volume is not None and "secret" in volume, f"{path} is not mounted in the envoy container"
        items = volume["secret"].get("items")
        if items:
            mount = next(m["mountPath"] for m in main["volumeMounts"] if m["name"] == volume["name"])
            assert path[len(mount) + 1 :] in {i["path"] for i in items}, path
