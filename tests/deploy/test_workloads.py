"""What every pod of the mesh must have: probes that ask the right question, resources, a hardened
security context, a graceful shutdown, no service account token; and, in prod, the replicas,
spread, HPAs and PDBs that keep it serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.runtime import config
from services.runtime.server import LIVENESS
from tests.deploy.conftest import (
    GRPC_SERVICES,
    HTTP_SERVICES,
    MESH_PARTS,
    NAME_LABEL,
    PYTHON_SERVICES,
    SCALABLE,
    Rendered,
    all_containers,
    config_tree,
    container,
    env_value,
    mounted_path,
    rendered,
)

# The user every container of tiermesh's own images (and Envoy's, the collector's) runs as.
MESH_UID = 10001


def pods(r: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [(w["metadata"]["name"], w["spec"]["template"]["spec"]) for w in r.workloads()]


def test_grpc_probes(overlay: Rendered, tmp_path: Path) -> None:
    """Readiness asks the service's own health (NOT_SERVING while it drains or cannot work),
    liveness whether the process is alive (SERVING from start to exit, even while its database
    is away: kubelet must not restart it for that), both on the plaintext health port."""
    tree = config_tree(overlay, tmp_path)
    for name, health_service in GRPC_SERVICES.items():
        c = container(overlay.pod_spec(name), name)
        _, health_port = config.health_endpoint(tree, name)
        assert c["readinessProbe"]["grpc"] == {"port": health_port, "service": health_service}, name
        assert c["livenessProbe"]["grpc"].get("service") == LIVENESS, name
        assert c["livenessProbe"]["grpc"]["port"] == health_port, name
    # Knowledge loads its embedding model before it listens: a startup probe holds liveness off
    startup = container(overlay.pod_spec("knowledge"), "knowledge")["startupProbe"]
    assert startup["grpc"]["port"] == config.health_endpoint(tree, "knowledge")[1]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 120


def test_http_probes(overlay: Rendered, tmp_path: Path) -> None:
    """The HTTP services are probed over plain HTTP on their health port (never the TLS port,
    which wants a client certificate kubelet does not have): 200 while serving, 503 once draining."""
    tree = config_tree(overlay, tmp_path)
    for name, path in HTTP_SERVICES.items():
        c = container(overlay.pod_spec(name), name)
        _, health_port = config.health_endpoint(tree, name)
        assert health_port != config.endpoint(tree, name)[1], name
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": path, "port": health_port}, (name, probe)
            assert "grpc" not in c[probe] and "tcpSocket" not in c[probe], (name, probe)


def test_edge_and_web_probes(overlay: Rendered) -> None:
    envoy = container(overlay.pod_spec("envoy"), "envoy")
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8081}
    assert envoy["livenessProbe"]["tcpSocket"] == {"port": 8080}
    web = container(overlay.pod_spec("web"), "web")
    assert web["readinessProbe"]["httpGet"]["path"] == "/api/health"
    assert web["livenessProbe"]["httpGet"]["path"] == "/api/health"


def test_every_container_has_requests_and_limits(overlay: Rendered) -> None:
    for name, spec in pods(overlay):
        for c in all_containers(spec):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{name}/{c['name']}: no {kind}"


def test_every_container_is_hardened(overlay: Rendered) -> None:
    for name, spec in pods(overlay):
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True, name
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert isinstance(pod_ctx["fsGroup"], int), name
        for c in all_containers(spec):
            ctx = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert ctx["runAsNonRoot"] is True, where
            assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] > 0, where
            assert isinstance(ctx["runAsGroup"], int) and ctx["runAsGroup"] > 0, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not ctx.get("privileged"), where
        if name in (*MESH_PARTS, "simulator", "otel-collector"):
            assert pod_ctx["fsGroup"] == MESH_UID, name
            assert {c["securityContext"]["runAsUser"] for c in all_containers(spec)} == {MESH_UID}, name
            assert {c["securityContext"]["runAsGroup"] for c in all_containers(spec)} == {MESH_UID}, name


def test_writable_places_are_volumes(overlay: Rendered) -> None:
    """The root filesystem is read-only: the data dir and /tmp of every Python pod are emptyDirs."""
    data_dir = overlay.env()["TIERMESH_DATA_DIR"]
    for name in (*PYTHON_SERVICES, "envoy"):
        spec = overlay.pod_spec(name)
        python = container(spec, "render-bootstrap", init=True) if name == "envoy" else container(spec, name)
        for path in (data_dir, "/tmp"):
            volume = mounted_path(spec, python, path)
            assert volume is not None and "emptyDir" in volume, f"{name}: {path} is not an emptyDir"


def test_graceful_shutdown(overlay: Rendered, tmp_path: Path) -> None:
    """Streams drain for shutdown_grace_s and Analytics flushes (up to 10 s) on SIGTERM, after a
    preStop pause that lets endpoints and Envoy's DNS drop the pod: the grace period covers it."""
    tree = config_tree(overlay, tmp_path)
    grace = config.get_float(tree, "shutdown_grace_s", 20.0, where="")
    parts = [*MESH_PARTS, *(["simulator"] if overlay.overlay == "dev" else [])]
    for name in parts:
        spec = overlay.pod_spec(name)
        pre_stop_s = 0
        for c in spec["containers"]:
            hook = c.get("lifecycle", {}).get("preStop", {})
            assert hook.get("exec", {}).get("command", [])[:1] == ["sleep"], f"{name}/{c['name']}: no preStop sleep"
            pre_stop_s = max(pre_stop_s, int(hook["exec"]["command"][1]))
        assert spec["terminationGracePeriodSeconds"] > grace + 10 + pre_stop_s, name


def test_no_service_account_token(overlay: Rendered) -> None:
    for name, spec in pods(overlay):
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"] == name, name
        assert overlay.get("ServiceAccount", name)["automountServiceAccountToken"] is False, name
    for sa in overlay.of_kind("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]


def test_python_pods_share_the_config_and_listen_on_the_pod(overlay: Rendered) -> None:
    env = overlay.env()
    cm_env = overlay.generated("tiermesh-env")["metadata"]["name"]
    cm_config = overlay.generated("tiermesh-config")["metadata"]["name"]
    for name in PYTHON_SERVICES:
        assert env[f"TIERMESH_SERVICES__{name.upper()}__HOST"] == name  # callers: the Service's name
    python = [(n, container(overlay.pod_spec(n), n)) for n in PYTHON_SERVICES]
    python.append(("envoy", container(overlay.pod_spec("envoy"), "render-bootstrap", init=True)))
    for name, c in python:
        spec = overlay.pod_spec(name)
        assert c["envFrom"] == [{"configMapRef": {"name": cm_env}}], name
        # an `env` entry wins over envFrom: the pod listens on its own interfaces
        assert env_value(c, f"TIERMESH_SERVICES__{name.upper()}__HOST") == "0.0.0.0", name
        volume = mounted_path(spec, c, env["TIERMESH_CONFIG"])
        assert volume is not None and volume["configMap"]["name"] == cm_config, name


def test_each_part_mounts_its_own_certificate(overlay: Rendered) -> None:
    env = overlay.env()
    files = [env["TIERMESH_TLS__CA_FILE"], env["TIERMESH_TLS__CERT_FILE"], env["TIERMESH_TLS__KEY_FILE"]]
    roles = {n: n for n in PYTHON_SERVICES}
    for name, role in roles.items():
        spec = overlay.pod_spec(name)
        for path in files:
            volume = mounted_path(spec, container(spec, name), path)
            assert volume is not None and volume["secret"]["secretName"] == f"tiermesh-tls-{role}", (name, path)
    envoy = overlay.pod_spec("envoy")
    for c in all_containers(envoy):
        for path in files:
            volume = mounted_path(envoy, c, path)
            assert volume is not None and volume["secret"]["secretName"] == "tiermesh-tls-edge", (c["name"], path)


def test_dev_sign_in_only_in_dev() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    web = container(dev.pod_spec("web"), "web")
    key = env_value(web, "TIERMESH_DEV_KEY_FILE")
    assert key is not None and mounted_path(dev.pod_spec("web"), web, key)["secret"]["secretName"] == "tiermesh-dev-jwt"
    assert "TIERMESH_AUTH__JWKS_URI" not in dev.env()
    # Envoy's renderer finds the dev key pair (creates nothing); Envoy itself gets the JWKS only
    envoy = dev.pod_spec("envoy")
    init = mounted_path(envoy, container(envoy, "render-bootstrap", init=True), "/var/lib/tiermesh/jwt/jwks.json")
    assert {i["key"] for i in init["secret"]["items"]} == {"dev-signing-key.pem", "jwks.json"}
    edge = mounted_path(envoy, container(envoy, "envoy"), "/var/lib/tiermesh/jwt/jwks.json")
    assert [i["key"] for i in edge["secret"]["items"]] == ["jwks.json"]

    web = container(prod.pod_spec("web"), "web")
    assert env_value(web, "TIERMESH_DEV_KEY_FILE") is None and env_value(web, "TIERMESH_DEV_JWKS_FILE") is None
    assert env_value(web, "TIERMESH_OIDC_ISSUER") and env_value(web, "TIERMESH_OIDC_CLIENT_ID")
    assert prod.env()["TIERMESH_AUTH__JWKS_URI"].startswith("https://")
    assert "tiermesh-dev-jwt" not in prod.text


def test_storage_urls_come_from_secrets(overlay: Rendered) -> None:
    wanted = {
        "analytics": {"TIERMESH_DATABASE_URL": ("tiermesh-postgres", False)},
        "inference": {
            "TIERMESH_INFERENCE__CACHE__URL": ("tiermesh-redis", False),
            "OPENAI_API_KEY": ("tiermesh-provider-keys", True),
            "ANTHROPIC_API_KEY": ("tiermesh-provider-keys", True),
            "GEMINI_API_KEY": ("tiermesh-provider-keys", True),
        },
        "ratelimit": {"TIERMESH_RATELIMIT__REDIS_URL": ("tiermesh-redis", False)},
        "knowledge": {"QDRANT_URL": ("tiermesh-qdrant", False), "QDRANT_API_KEY": ("tiermesh-qdrant", True)},
    }
    for name, variables in wanted.items():
        env = {e["name"]: e for e in container(overlay.pod_spec(name), name).get("env", [])}
        for var, (secret, optional) in variables.items():
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret, (name, var)
            assert bool(ref.get("optional", False)) is optional, (name, var)


def test_prod_scales_and_spreads() -> None:
    prod = rendered("prod")
    for name in SCALABLE:
        deployment = prod.get("Deployment", name)
        assert deployment["spec"]["replicas"] >= 2, name
        hpa = prod.get("HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]), name
        pdb = prod.get("PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == {NAME_LABEL: name}
        assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1, name
        spec = deployment["spec"]["template"]["spec"]
        keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
        for c in spec["topologySpreadConstraints"]:
            assert c["labelSelector"]["matchLabels"] == {NAME_LABEL: name}
        preferred = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == {NAME_LABEL: name}
    # Router and Inference also scale on streams in flight (a Prometheus Adapter metric)
    for name in ("router", "inference"):
        metrics = prod.get("HorizontalPodAutoscaler", name)["spec"]["metrics"]
        assert any(m["type"] == "Pods" and m["pods"]["metric"]["name"] == "tiermesh_inflight_streams" for m in metrics)


def test_dev_is_small() -> None:
    dev = rendered("dev")
    assert not dev.of_kind("HorizontalPodAutoscaler")
    for w in dev.workloads():
        assert w["spec"]["replicas"] == 1, w["metadata"]["name"]
    # the stateful backends keep their data on a PersistentVolumeClaim each
    for name in ("postgres", "redis", "qdrant"):
        sts = dev.get("StatefulSet", name)
        assert sts["spec"]["serviceName"] == name
        assert sts["spec"]["volumeClaimTemplates"], name
        assert dev.get("Service", name)["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("name", PYTHON_SERVICES)
def test_rollouts_never_dip_capacity(name: str) -> None:
    for r in (rendered("dev"), rendered("prod")):
        strategy = r.get("Deployment", name)["spec"]["strategy"]
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0
