"""No secret value is committed: Secrets are referenced, never rendered with data, and no plain
env value or ConfigMap entry looks like a key, a token or a URL with a password."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from tests.deploy.conftest import K8S, Rendered, all_containers

# A URL whose authority carries a password: scheme://user:password@host
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.IGNORECASE)
KEY_SHAPES = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),  # OpenAI / Anthropic style API keys
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),  # Google API key
    re.compile(r"\bey[A-Za-z0-9_-]{10,}\.ey[A-Za-z0-9_-]{10,}\."),  # a JWT
)
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_secret(value: str) -> str | None:
    """Why `value` looks like a credential, or None."""
    if URL_WITH_PASSWORD.search(value):
        return "a URL with a password"
    for shape in KEY_SHAPES:
        if shape.search(value):
            return f"matches {shape.pattern}"
    # a long run of letters and digits that reads like noise, not words (a hex or base64 secret;
    # `/` splits paths, and words joined by `-` or `_` are names)
    for word in re.findall(r"[A-Za-z0-9+_=-]{24,}", value):
        digits, letters = sum(ch.isdigit() for ch in word), sum(ch.isalpha() for ch in word)
        separators = word.count("-") + word.count("_")
        if digits >= 3 and letters >= 3 and separators <= 2 and entropy(word) >= 3.5:
            return f"a long random-looking string ({word[:6]}...)"
    return None


def plain_values(r: Rendered) -> Iterator[tuple[str, str, str]]:
    """(where, name, value) of every literal env value and ConfigMap entry."""
    for w in r.workloads():
        for c in all_containers(w["spec"]["template"]["spec"]):
            for e in c.get("env", []):
                if "value" in e:
                    yield f"{w['metadata']['name']}/{c['name']}", e["name"], str(e["value"])
    for cm in r.of_kind("ConfigMap"):
        if cm["metadata"]["name"].startswith("tiermesh-grafana-dashboard"):
            continue  # a dashboard: PromQL, not settings
        for key, value in cm.get("data", {}).items():
            yield f"ConfigMap {cm['metadata']['name']}", key, str(value)


def test_no_secret_objects_with_values(overlay: Rendered) -> None:
    for o in overlay.objects:
        if o["kind"] == "Secret":
            assert not o.get("data") and not o.get("stringData"), f"Secret {o['metadata']['name']} holds values"
    # and no generator could make one
    for path in K8S.rglob("kustomization.yaml"):
        assert "secretGenerator" not in path.read_text(encoding="utf-8"), path


def test_no_plain_value_looks_like_a_secret(overlay: Rendered) -> None:
    for where, name, value in plain_values(overlay):
        why = looks_secret(value)
        assert why is None, f"{where}: {name} looks like a credential ({why})"


def test_secret_looking_variables_come_from_secrets(overlay: Rendered) -> None:
    """A variable named like a credential gets it from a Secret; a literal may only name a file."""
    for where, name, value in plain_values(overlay):
        if SECRET_NAME.search(name) and not name.startswith(("TIERMESH_TLS__", "QDRANT_INIT")):
            assert value.startswith("/"), f"{where}: {name} is a literal; take it from a Secret (secretKeyRef)"


def test_referenced_secrets_are_documented(overlay: Rendered) -> None:
    """Every Secret a pod needs is one deploy/k8s/README.md tells you how to create."""
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for name in referenced_secrets(overlay):
        assert name in readme, f"Secret {name} is referenced but deploy/k8s/README.md never mentions it"


def referenced_secrets(r: Rendered) -> set[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                names.add(node["secretKeyRef"]["name"])
            if "secretRef" in node:
                names.add(node["secretRef"]["name"])
            if "secret" in node and isinstance(node["secret"], dict) and "secretName" in node["secret"]:
                names.add(node["secret"]["secretName"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for w in r.workloads():
        walk(w["spec"]["template"]["spec"])
    return names


def test_the_checks_catch_what_they_should() -> None:
    assert looks_secret("postgresql://tiermesh:hunter2@db:5432/tiermesh")
    assert looks_secret("redis://:s3cret@redis:6379/0")
    assert looks_secret("sk-proj-abcdefghijklmnopqrstuvwx")
    assert looks_secret("Zx8Kq2Lm9Vb4Np7Rt1Yw6Hs3Jd5Fg0Ac+Ue/Io=")
    assert looks_secret("3f9a0c2e7b514d8e9a6c0f1b2d3e4f5a6b7c8d9e")
    assert looks_secret("/var/lib/tiermesh/jwt/dev-signing-key.pem") is None
    assert looks_secret("--max-old-space-size=160") is None
    assert looks_secret("redis://redis:6379/0") is None
    assert looks_secret("https://id.example.com/realms/tiermesh/protocol/openid-connect/certs") is None
    assert looks_secret("tiermesh.router.v1.RouterService") is None
