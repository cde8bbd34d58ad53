"""The dashboard, the autoscaling metric and the scrape settings name metrics the mesh exports."""

from __future__ import annotations

import json
import re

from tests.deploy.conftest import K8S, REPO, rendered

DASHBOARD = K8S / "components" / "grafana" / "tiermesh-overview.json"
ADAPTER_RULES = K8S / "components" / "hpa" / "prometheus-adapter-rules.yaml"
# `NAME = metrics.counter("tiermesh_...", ...)` at module level (services/runtime/metrics.py calls
# its own `counter(...)`); an indented example in a docstring does not count.
DEFINED = re.compile(r"^[A-Z_]+ = (?:metrics\.)?(counter|histogram|gauge)\(\s*\"(tiermesh_\w+)\"", re.MULTILINE)


def defined_metrics() -> dict[str, str]:
    """Every metric the services define (name -> kind), from their metrics.py files."""
    out: dict[str, str] = {}
    for path in [*REPO.glob("services/**/metrics.py"), *REPO.glob("gateway/**/metrics.py")]:
        for kind, name in DEFINED.findall(path.read_text(encoding="utf-8")):
            out[name] = kind
    return out


def queried(expr: str) -> set[str]:
    return set(re.findall(r"\btiermesh_\w+", expr))


def base_name(series: str, metrics: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and metrics.get(series.removesuffix(suffix)) == "histogram":
            return series.removesuffix(suffix)
    return series


def test_dashboard_queries_real_metrics() -> None:
    metrics = defined_metrics()
    assert "tiermesh_grpc_requests_total" in metrics  # the reader itself works
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        for series in queried(expr):
            name = base_name(series, metrics)
            assert name in metrics, f"the dashboard queries {series}, which no service defines"
            if series.endswith("_bucket"):
                assert metrics[name] == "histogram", series
        assert expr.count("(") == expr.count(")"), expr
    # what an operator looks at first is all there
    text = " ".join(exprs)
    for needed in (
        "tiermesh_grpc_requests_total",
        "tiermesh_grpc_request_duration_seconds_bucket",
        "tiermesh_time_to_first_token_seconds_bucket",
        "tiermesh_tokens_total",
        "tiermesh_cost_micro_usd_total",
        "tiermesh_route_decisions_total",
        "tiermesh_cache_requests_total",
        "tiermesh_breaker_state",
        "tiermesh_ratelimit_decisions_total",
        "envoy_cluster_upstream_rq",
        "envoy_http_local_rate_limit_rate_limited",
    ):
        assert needed in text, needed
    assert dashboard["uid"] and dashboard["title"]


def test_dashboard_configmap_is_labelled_for_the_sidecar() -> None:
    for name in ("dev", "prod"):
        cm = rendered(name).get("ConfigMap", "tiermesh-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"]["tiermesh-overview.json"])["uid"] == "tiermesh-overview"


def test_inflight_metric_comes_from_a_real_series() -> None:
    """The HPAs' Pods metric is served by the adapter rule from a gauge the services export."""
    rules = ADAPTER_RULES.read_text(encoding="utf-8")
    series = re.search(r"seriesQuery: '(\w+)\{", rules)
    alias = re.search(r'as: "(\w+)"', rules)
    assert series and alias
    assert defined_metrics().get(series.group(1)) == "gauge"
    prod = rendered("prod")
    names = {
        m["pods"]["metric"]["name"]
        for hpa in prod.of_kind("HorizontalPodAutoscaler")
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    assert names == {alias.group(1)}


def test_scrape_settings_match_the_ports() -> None:
    prod = rendered("prod")
    for sm in prod.of_kind("ServiceMonitor"):
        name = sm["metadata"]["name"]
        svc_ports = {p["name"] for p in prod.get("Service", name)["spec"]["ports"]}
        assert "metrics" in svc_ports, name
        template = prod.get("Deployment", name)["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]}
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == ports["metrics"], name
        assert annotations["prometheus.io/path"] == sm["spec"]["endpoints"][0]["path"], name
    assert {sm["metadata"]["name"] for sm in prod.of_kind("ServiceMonitor")} == {
        "envoy",
        "router",
        "inference",
        "knowledge",
        "analytics",
        "ratelimit",
    }


def test_tracing_goes_to_the_collector() -> None:
    for name in ("dev", "prod"):
        r = rendered(name)
        env = r.env()
        assert env["TIERMESH_OBSERVABILITY__TRACING__EXPORTER"] == "otlp"
        host_port = env["TIERMESH_OBSERVABILITY__TRACING__ENDPOINT"].removeprefix("http://")
        host, port = host_port.split(":")
        assert int(port) in {p["port"] for p in r.get("Service", host)["spec"]["ports"]}
        collector = r.generated("otel-collector-env")["data"]
        assert collector["OTEL_TRACES_EXPORTER"] == ("debug" if name == "dev" else "otlp_grpc/backend")
        config = r.generated("otel-collector-config")["data"]["config.yaml"]
        assert "otlp_grpc/backend:" in config and "debug:" in config
