"""The NetworkPolicies allow exactly the documented paths, and nothing else.

The allowed (source, destination, port) triples are computed from the rendered policies with
Kubernetes' semantics: a pod selected by a policy of a direction is isolated in that direction
and admits only what some rule of those policies matches (peers by pod selector, namespace
selector, both, or IP block; ports by number, name or range); a connection needs the source's
egress and the destination's ingress. The result is compared with the table below, which is the
one in deploy/k8s/README.md.

Peers outside the namespace stand for what the policies name: `internet` (a public address),
`vpc` (a private address outside the cluster, where managed databases live), `prometheus` (its
pod in namespace `monitoring`), `kube-dns`, and `stranger` (a pod in another namespace).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.deploy.conftest import K8S, NAME_LABEL, NAMESPACE, Rendered, rendered


@dataclass(frozen=True)
class Peer:
    name: str
    namespace: str | None  # None: outside the cluster
    labels: Mapping[str, str]
    ip: str
    ports: tuple[tuple[int, str, str], ...]  # (number, protocol, name)


OUTSIDE_PORTS = tuple((p, "TCP", "") for p in (80, 443, 4317, 5432, 6333, 6379))
VIRTUAL = (
    Peer("internet", None, {}, "203.0.113.10", OUTSIDE_PORTS),
    Peer("vpc", None, {}, "10.20.0.10", OUTSIDE_PORTS),
    Peer("prometheus", "monitoring", {NAME_LABEL: "prometheus"}, "10.244.200.1", ((9090, "TCP", "web"),)),
    Peer(
        "kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.244.200.2", ((53, "UDP", "dns"), (53, "TCP", "dns-tcp"))
    ),
    Peer("stranger", "default", {"app": "stranger"}, "10.244.200.3", ((8080, "TCP", "http"),)),
)
FROM_ANYWHERE = ("internet", "vpc", "prometheus", "kube-dns", "stranger")

# --- the documented paths (deploy/k8s/README.md, "Network paths") ---------------------------------
# The services that export traces and metrics (the OpenAI-compatible API does neither).
PYTHON = ("router", "inference", "knowledge", "analytics", "ratelimit")
METRICS = {"router": 9101, "inference": 9102, "knowledge": 9103, "analytics": 9104, "ratelimit": 9105, "envoy": 8081}
MESH = {
    # clients, from anywhere
    *{(src, "envoy", "8080") for src in FROM_ANYWHERE},
    *{(src, "web", "3000") for src in FROM_ANYWHERE},
    # the edge
    ("envoy", "router", "50051"),
    ("envoy", "analytics", "50054"),  # GetSpend, WatchSpend, API-key checks (ext_authz)
    ("envoy", "inference", "50052"),  # ListModels
    ("envoy", "ratelimit", "50055"),
    ("envoy", "openai", "8090"),  # the OpenAI-compatible API (/v1/)
    # the OpenAI-compatible API
    ("openai", "router", "50051"),  # Chat
    ("openai", "knowledge", "50053"),  # Embed
    # the Router
    ("router", "inference", "50052"),
    ("router", "knowledge", "50053"),
    ("router", "analytics", "50054"),  # budgets' spend
    # Inference
    ("inference", "analytics", "50054"),  # RecordUsage
    ("inference", "internet", "443"),  # model providers (not private ranges)
    # Prometheus scrapes every metrics port
    *{("prometheus", name, str(port)) for name, port in METRICS.items()},
    # traces, to the collector and on to the backend
    *{(name, "otel-collector", "4317") for name in PYTHON},
    *{("otel-collector", dst, port) for dst in ("internet", "vpc") for port in ("4317", "443")},
}
DEV = MESH | {
    ("inference", "simulator", "4010"),
    ("inference", "redis", "6379"),
    ("ratelimit", "redis", "6379"),
    ("analytics", "postgres", "5432"),
    ("knowledge", "qdrant", "6333"),
}
PROD = MESH | {
    *{("analytics", dst, "5432") for dst in ("internet", "vpc")},
    *{("inference", dst, "6379") for dst in ("internet", "vpc")},
    *{("ratelimit", dst, "6379") for dst in ("internet", "vpc")},
    *{("knowledge", dst, "6333") for dst in ("internet", "vpc")},
    ("envoy", "internet", "443"),  # the identity provider's JWKS
    ("web", "internet", "443"),  # OpenID Connect
}
EXPECTED = {"dev": DEV, "prod": PROD}


# --- Kubernetes NetworkPolicy semantics -------------------------------------------------------------
def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def peer_matches(rule_peer: Mapping[str, Any], policy_ns: str, other: Peer, ns_labels: Mapping[str, Any]) -> bool:
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        if ip not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(ip in ipaddress.ip_network(ex) for ex in block.get("except", []))
    if other.namespace is None:
        return False
    ns_sel = rule_peer.get("namespaceSelector")
    if ns_sel is None:
        if other.namespace != policy_ns:
            return False
    elif not selector_matches(ns_sel, ns_labels.get(other.namespace, {})):
        return False
    return selector_matches(rule_peer.get("podSelector"), other.labels)


def port_matches(rule_ports: Sequence[Mapping[str, Any]] | None, port: tuple[int, str, str]) -> bool:
    if not rule_ports:
        return True
    number, protocol, name = port
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            if want == name:
                return True
        elif want == number or (p.get("endPort") and want <= number <= p["endPort"]):
            return True
    return False


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def allowed(
    policies: Sequence[Mapping[str, Any]],
    direction: str,
    subject: Peer,
    other: Peer,
    port: tuple[int, str, str],
    ns_labels: Mapping[str, Any],
) -> bool:
    """Whether `subject` (a pod of ours) admits `other` in `direction` (Ingress: other -> subject;
    Egress: subject -> other) on `port` of the destination."""
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and selector_matches(p["spec"]["podSelector"], subject.labels)
        and direction in policy_types(p)
    ]
    if not selecting:
        return True  # not isolated in this direction
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for p in selecting:
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                peer_matches(peer, p["metadata"]["namespace"], other, ns_labels) for peer in peers
            )
            if peer_ok and port_matches(rule.get("ports"), port):
                return True
    return False


def pods_of(r: Rendered) -> list[Peer]:
    out = []
    for i, w in enumerate(r.workloads()):
        template = w["spec"]["template"]
        ports = tuple(
            (p["containerPort"], p.get("protocol", "TCP"), p.get("name", ""))
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        )
        out.append(
            Peer(
                template["metadata"]["labels"][NAME_LABEL],
                NAMESPACE,
                template["metadata"]["labels"],
                f"10.244.0.{i + 10}",
                ports,
            )
        )
    return out


def allowed_paths(r: Rendered) -> set[tuple[str, str, str]]:
    policies = r.of_kind("NetworkPolicy")
    ns_labels = {
        "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
        "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
        "default": {"kubernetes.io/metadata.name": "default"},
        NAMESPACE: {
            **r.get("Namespace", NAMESPACE)["metadata"].get("labels", {}),
            "kubernetes.io/metadata.name": NAMESPACE,
        },
    }
    pods = pods_of(r)
    peers = [*pods, *VIRTUAL]
    paths = set()
    for src in peers:
        for dst in peers:
            if src is dst or (src.namespace != NAMESPACE and dst.namespace != NAMESPACE):
                continue
            for port in dst.ports:
                out_ok = src.namespace != NAMESPACE or allowed(policies, "Egress", src, dst, port, ns_labels)
                in_ok = dst.namespace != NAMESPACE or allowed(policies, "Ingress", dst, src, port, ns_labels)
                if out_ok and in_ok:
                    paths.add((src.name, dst.name, str(port[0]) if port[1] == "TCP" else f"{port[0]}/{port[1]}"))
    return paths


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_policies_allow_exactly_the_documented_paths(name: str) -> None:
    r = rendered(name)
    pods = {p.name for p in pods_of(r)}
    dns = {(p, "kube-dns", port) for p in pods for port in ("53", "53/UDP")}
    expected = EXPECTED[name] | dns
    actual = allowed_paths(r)
    missing = sorted(expected - actual)
    extra = sorted(actual - expected)
    assert not missing and not extra, f"{name}: paths missing {missing}; paths not documented {extra}"


def test_every_pod_is_isolated_both_ways() -> None:
    for name in ("dev", "prod"):
        deny = rendered(name).get("NetworkPolicy", "default-deny")
        assert deny["spec"]["podSelector"] == {}
        assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def readme_table() -> dict[str, set[tuple[str, str, str]]]:
    """The README's table (between <!-- network-paths --> markers), expanded: `anywhere` is every
    peer outside the namespace, `any address` both the internet and private addresses."""
    text = (K8S / "README.md").read_text(encoding="utf-8")
    table = text.split("<!-- network-paths -->", 1)[1].split("<!-- /network-paths -->", 1)[0]
    paths: dict[str, set[tuple[str, str, str]]] = {"dev": set(), "prod": set()}
    names = {"anywhere": FROM_ANYWHERE, "any address": ("internet", "vpc")}
    for line in table.strip().splitlines()[2:]:
        src, dst, port, _why, where = (cell.strip() for cell in line.strip().strip("|").split("|"))
        for overlay in ("dev", "prod") if where == "both" else (where,):
            for s_ in names.get(src, (src,)):
                for d in names.get(dst, (dst,)):
                    paths[overlay].add((s_, d, port))
    return paths


def test_the_readme_documents_the_same_paths() -> None:
    documented = readme_table()
    for name in ("dev", "prod"):
        assert documented[name] == EXPECTED[name], (
            f"{name}: README only {sorted(documented[name] - EXPECTED[name])}; "
            f"test only {sorted(EXPECTED[name] - documented[name])}"
        )


def test_semantics_of_the_evaluator() -> None:
    """The evaluator itself, on small cases: isolation, namespace selectors, IP blocks, ports."""
    ns_labels = {"a": {"kubernetes.io/metadata.name": "a"}, "b": {"kubernetes.io/metadata.name": "b"}}
    x = Peer("x", "a", {"app": "x"}, "10.0.0.1", ((80, "TCP", "http"),))
    y = Peer("y", "a", {"app": "y"}, "10.0.0.2", ((80, "TCP", "http"),))
    z = Peer("z", "b", {"app": "y"}, "10.0.0.3", ((80, "TCP", "http"),))
    ext = Peer("ext", None, {}, "8.8.8.8", ((443, "TCP", ""),))

    def pol(spec: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"namespace": "a"}, "spec": spec}

    deny = pol({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    assert allowed([], "Ingress", x, y, (80, "TCP", "http"), ns_labels)
    assert not allowed([deny], "Ingress", x, y, (80, "TCP", "http"), ns_labels)
    same_ns = pol(
        {
            "podSelector": {"matchLabels": {"app": "x"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "y"}}}], "ports": [{"port": "http"}]}],
        }
    )
    assert allowed([deny, same_ns], "Ingress", x, y, (80, "TCP", "http"), ns_labels)
    assert not allowed([deny, same_ns], "Ingress", x, z, (80, "TCP", "http"), ns_labels)  # other namespace
    assert not allowed([deny, same_ns], "Ingress", x, y, (81, "TCP", "other"), ns_labels)
    other_ns = pol(
        {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}}]}],
        }
    )
    assert allowed([deny, other_ns], "Ingress", x, z, (80, "TCP", "http"), ns_labels)
    web = pol(
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]}
            ],
        }
    )
    assert allowed([deny, web], "Egress", x, ext, (443, "TCP", ""), ns_labels)
    assert not allowed([deny, web], "Egress", x, y, (443, "TCP", ""), ns_labels)
    assert not allowed([deny, web], "Egress", x, ext, (80, "TCP", ""), ns_labels)
