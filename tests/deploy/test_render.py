"""Every overlay renders, and every object it renders is valid Kubernetes (strict schemas)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.conftest import CUSTOM_KINDS, K8S, NAMESPACE, REPO, Rendered, all_containers

# The Kubernetes version the manifests are validated against: the oldest we support, since
# kubectl 1.32 / kustomize 5.5 render them (newer API servers accept everything 1.32 does here).
KUBERNETES_VERSION = "1.32.0"
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def test_config_copy_is_identical() -> None:
    """Kustomize reads nothing outside its root, so the base carries a copy of the config."""
    original = (REPO / "config" / "tiermesh.yaml").read_bytes()
    copy = (K8S / "base" / "config" / "tiermesh.yaml").read_bytes()
    assert copy == original, (
        "deploy/k8s/base/config/tiermesh.yaml differs from config/tiermesh.yaml: "
        "copy it (cp config/tiermesh.yaml deploy/k8s/base/config/tiermesh.yaml)"
    )


def test_rendered_config_is_the_repo_config(overlay: Rendered) -> None:
    assert overlay.config_file() == (REPO / "config" / "tiermesh.yaml").read_text(encoding="utf-8")


def test_every_object_validates_strictly(overlay: Rendered, tmp_path: Path) -> None:
    """kubernetes-validate --strict on everything but custom resources, whose CRDs it does not
    know (ServiceMonitor, cert-manager's Certificate and Issuer): those are checked by the
    assertions of the other tests instead."""
    core = [o for o in overlay.objects if o["kind"] not in CUSTOM_KINDS]
    skipped = {o["kind"] for o in overlay.objects} & CUSTOM_KINDS
    assert skipped <= CUSTOM_KINDS
    path = tmp_path / f"{overlay.overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core), encoding="utf-8")
    proc = subprocess.run(
        [str(VALIDATE), "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"kubernetes-validate refused overlays/{overlay.overlay}:\n{proc.stdout}{proc.stderr}"


def test_custom_resources_have_the_fields_their_operators_need(overlay: Rendered) -> None:
    for sm in overlay.of_kind("ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["spec"]["selector"]["matchLabels"]
        assert all(e["port"] == "metrics" and e["path"].startswith("/") for e in sm["spec"]["endpoints"])
    for cert in overlay.of_kind("Certificate"):
        assert cert["apiVersion"] == "cert-manager.io/v1"
        role = cert["spec"]["commonName"]
        assert cert["spec"]["secretName"] == f"tiermesh-tls-{role}"
        assert role in cert["spec"]["dnsNames"]
        assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])
        assert overlay.find("Issuer", cert["spec"]["issuerRef"]["name"]) is not None


def test_everything_is_in_the_namespace_and_labelled(overlay: Rendered) -> None:
    ns = overlay.get("Namespace", NAMESPACE)
    # the restricted Pod Security profile is enforced: every pod must meet it
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in overlay.objects:
        meta = o["metadata"]
        if o["kind"] != "Namespace":
            assert meta.get("namespace") == NAMESPACE, f"{o['kind']}/{meta['name']} is not in {NAMESPACE}"
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "tiermesh", f"{o['kind']}/{meta['name']}"
    for w in overlay.workloads():
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "tiermesh"
        assert labels["app.kubernetes.io/name"] == w["metadata"]["name"]
        assert labels.get("app.kubernetes.io/component")
        # selectors are immutable: only the name, never a label that may change
        assert w["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": w["metadata"]["name"]}


# An exact release: a tag with major.minor.patch (PostgreSQL numbers its releases major.minor
# since 10), or a digest; never `latest` or a floating `7` / `7.4`.
EXACT_TAG = re.compile(r"^[a-z0-9][\w./-]*:(v?\d+\.\d+\.\d+([.-][\w.-]+)?)(@sha256:[0-9a-f]{64})?$")
TWO_PART_RELEASES = re.compile(r"^postgres:\d+\.\d+(-[\w.-]+)?$")


def test_images_are_pinned(overlay: Rendered) -> None:
    for w in overlay.workloads():
        for c in all_containers(w["spec"]["template"]["spec"]):
            image = c["image"]
            assert "latest" not in image, image
            assert EXACT_TAG.match(image) or TWO_PART_RELEASES.match(image) or "@sha256:" in image, (
                f"{image}: pin an exact release"
            )
            # the kustomize `images` entries replaced the short names
            assert image.split(":")[0] not in SHORT_NAMES, f"{image}: not rewritten by an `images` entry"


SHORT_NAMES = {"tiermesh", "tiermesh-knowledge", "tiermesh-web"}


def test_tiermesh_images_share_one_release(overlay: Rendered) -> None:
    """The three images of one release have one tag, wherever an overlay uses them."""
    tags = set()
    for w in overlay.workloads():
        for c in all_containers(w["spec"]["template"]["spec"]):
            if c["image"].startswith("ghcr.io/tiermesh/"):
                tags.add(c["image"].rsplit(":", 1)[1])
    assert len(tags) == 1, f"{overlay.overlay}: tiermesh images with different tags: {sorted(tags)}"
