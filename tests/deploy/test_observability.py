"""The Grafana dashboard and Prometheus scrape configs against what the code exports.

Metric names and label names come from the services' own prometheus_client objects (the
metrics service's module-level metrics, the gateway's per-app registry, the client's
default process collectors), not from a list kept here. Every PromQL query of the
dashboard is parsed; every metric it selects must be exported, or be one of the few
external ones below, each with the place it comes from.
"""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from .helpers import (
    BY_NAME,
    COMPOSE_FILE,
    DEPLOY,
    PROCESSES,
    environment,
    load_process_settings,
    of_kind,
)

pytestmark = pytest.mark.timeout(900)

DASHBOARD = DEPLOY / "grafana" / "ai-spine.json"
#: Labels Prometheus adds to every series it scrapes (ours come from the scrape configs).
TARGET_LABELS = {"job", "instance", "service", "namespace", "pod"}
#: Metrics the dashboard may use that AI Spine's code does not export, and their source.
EXTERNAL = {
    "up": ({"job", "instance"}, "Prometheus, one series per scrape target"),
    "kafka_consumergroup_lag": (
        {"consumergroup", "topic", "partition"},
        "Strimzi's Kafka Exporter (Kafka.spec.kafkaExporter in deploy/k8s)",
    ),
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def _wrappers_of(obj: Any) -> list[MetricWrapperBase]:
    values = vars(obj).values()
    return [v for v in values if isinstance(v, MetricWrapperBase)]


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name AI Spine's processes can expose -> its label names."""
    import spine_metrics.app as metrics_app
    import spine_servicekit.ops as ops
    from spine_gateway.metrics import GatewayMetrics

    out: dict[str, set[str]] = {}
    wrappers = _wrappers_of(metrics_app) + _wrappers_of(GatewayMetrics()) + _wrappers_of(ops)
    assert len(wrappers) >= 8, "the services' metrics were not found"
    for wrapper in wrappers:
        labels = set(wrapper._labelnames)
        for family in wrapper.describe():
            for suffix in SUFFIXES[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                out[family.name + suffix] = labels | extra
    # the default registry's process and platform collectors (gateway and metrics use it)
    for family in REGISTRY.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    assert isinstance(GatewayMetrics().registry, CollectorRegistry)
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def _parse(expr: str) -> Any:
    for variable, value in GRAFANA_RANGES.items():
        expr = expr.replace(variable, value)
    return promql_parser.parse(expr)


def selected(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The metrics a query selects (with the labels it matches on) and its grouping labels."""
    selectors: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            name = node.name or next(m.value for m in matchers if m.name == "__name__")
            selectors.append((name, {m.name for m in matchers if m.name != "__name__"}))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)

    promql_parser.walk(_parse(expr), visit)
    return selectors, grouping


def test_every_dashboard_query_uses_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_metrics()
    queries = _queries(dashboard)
    assert queries
    for title, expr in queries:
        selectors, grouping = selected(expr)
        assert selectors, f"{title}: {expr} selects nothing"
        available: set[str] = set(TARGET_LABELS)
        for name, matched in selectors:
            labels = exported.get(name, EXTERNAL.get(name, (None,))[0])
            assert labels is not None, f"{title}: {name} is not exported by AI Spine"
            unknown = matched - labels - TARGET_LABELS
            assert not unknown, f"{title}: {name} has no label {sorted(unknown)}"
            available |= labels
        assert grouping <= available, f"{title}: groups by {sorted(grouping - available)}"


def test_template_variables_use_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_metrics()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match, f"${variable['name']}: {query}"
        metric, label = match.groups()
        assert label in exported[metric], f"${variable['name']}: {metric} has no {label}"


_DURATION = r"sum by \(le, flow_id\) \(rate\(spine_execution_duration_seconds_bucket"


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    text = "\n".join(expr for _, expr in _queries(dashboard))
    needs = {
        "executions per second": r"rate\(spine_executions_started_total",
        "success rate": r'spine_executions_finished_total\{status="completed"',
        "p50 duration per flow": rf"histogram_quantile\(0\.5, {_DURATION}",
        "p99 duration per flow": rf"histogram_quantile\(0\.99, {_DURATION}",
        "node latency per agent": r"by \(le, agent_id\) \(rate\(spine_node_latency_seconds_bucket",
        "consumer lag per group": r"by \(group\) \(spine_consumer_lag",
        "messages handled per consumer": r"by \(consumer\) \(rate\(spine_messages_handled_total",
        "credits spent": r"spine_credits_spent_total",
    }
    for what, pattern in needs.items():
        assert re.search(pattern, text), f"the dashboard lacks {what}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_external_metrics_have_their_source(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """kafka_consumergroup_lag exists only where Strimzi's Kafka Exporter runs."""
    for overlay in ("dev", "prod"):
        kafka = next(iter(of_kind(rendered[overlay], "Kafka").values()))
        exporter = kafka["spec"]["kafkaExporter"]
        assert exporter["groupRegex"] == ".*"
        annotations = exporter["template"]["pod"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"


def test_compose_scrape_config_reaches_every_metrics_endpoint(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    services = compose["services"]
    gateway = load_process_settings(BY_NAME["gateway"], environment(services["gateway"]))
    metrics = load_process_settings(BY_NAME["metrics"], environment(services["metrics"]))
    expected = {f"gateway:{gateway.port}", f"metrics:{metrics.metrics_port}"}  # type: ignore[attr-defined]
    for process in PROCESSES:
        if process.ops:
            env = environment(services[process.name])
            ops_port = load_process_settings(process, env).ops_port  # type: ignore[attr-defined]
            expected.add(f"{process.name}:{ops_port}")
    assert targets == expected
    for job in config["scrape_configs"]:
        assert job["job_name"].startswith("ai-spine"), "the dashboard's `up` panel filters on it"
        assert job.get("metrics_path", "/metrics") == "/metrics"
    mounted = services["prometheus"]["volumes"][0].split(":")
    assert mounted[0] == "./prometheus/prometheus.yml"


def test_compose_prometheus_sends_the_scrape_token_to_the_gateway_only(
    compose: dict[str, Any],
) -> None:
    """The gateway's /metrics needs a bearer token (docs/api.md, Operations): the gateway
    job reads the compose secret that holds the gateway's SPINE_METRICS_SCRAPE_TOKEN, and no
    other job sends a credential."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    auth = jobs["ai-spine-gateway"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and "credentials" not in auth
    services = compose["services"]
    (secret,) = services["prometheus"]["secrets"]
    assert auth["credentials_file"] == f"/run/secrets/{secret}"
    source = compose["secrets"][secret]["environment"]
    assert source == "SPINE_METRICS_SCRAPE_TOKEN"
    gateway = services["gateway"]["environment"]
    assert gateway[source] == "", "taken from the same variable, empty when unset"
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert raw["services"]["gateway"]["environment"][source] == "${SPINE_METRICS_SCRAPE_TOKEN:-}"
    settings = load_process_settings(BY_NAME["gateway"], {**environment(services["gateway"])})
    assert settings.metrics_scrape_token is None  # type: ignore[attr-defined]
    for name, job in jobs.items():
        if name != "ai-spine-gateway":
            assert not {"authorization", "basic_auth", "oauth2"} & set(job), name


def test_kubernetes_scrape_config_matches_the_pod_annotations(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ai-spine-pods", "ai-spine-gateway"}
    job = jobs["ai-spine-pods"]
    namespaces = set(job["kubernetes_sd_configs"][0]["namespaces"]["names"])
    for each in jobs.values():
        assert set(each["kubernetes_sd_configs"][0]["namespaces"]["names"]) == namespaces
    for overlay in ("dev", "prod"):
        docs = rendered[overlay]
        assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Deployment"} <= namespaces
        annotated = set()
        for name, deployment in of_kind(docs, "Deployment").items():
            template = deployment["spec"]["template"]
            annotations = template["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/scrape") != "true":
                continue
            annotated.add(name)
            ports = {
                p["containerPort"]
                for c in template["spec"]["containers"]
                for p in c.get("ports", [])
            }
            assert int(annotations["prometheus.io/port"]) in ports, name
        exporting = {"gateway", "metrics"} | {p.name for p in PROCESSES if p.ops}
        assert annotated == exporting, "the processes that export metrics"
        assert _token_scraped(docs) == {"gateway"}, "only the gateway's /metrics needs it"


#: the pod annotation that sends a pod to the job with the scrape token (kubernetes.yml)
METRICS_AUTH = "ai-spine.io/metrics-auth"
METRICS_AUTH_LABEL = "__meta_kubernetes_pod_annotation_ai_spine_io_metrics_auth"


def _token_scraped(docs: list[dict[str, Any]]) -> set[str]:
    return {
        name
        for name, d in of_kind(docs, "Deployment").items()
        if d["spec"]["template"]["metadata"].get("annotations", {}).get(METRICS_AUTH)
        == "scrape-token"
    }


def test_kubernetes_prometheus_sends_the_scrape_token_to_the_gateway_only() -> None:
    """Two jobs over the same pods: the first rule of one drops the pods annotated
    ``ai-spine.io/metrics-auth=scrape-token``, the other's keeps only them and it alone
    sends the token (a file Prometheus reads, from the Secret the gateway reads too)."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    pods, gateway = jobs["ai-spine-pods"], jobs["ai-spine-gateway"]
    first = {name: job["relabel_configs"][0] for name, job in jobs.items()}
    for rule in first.values():
        assert rule["source_labels"] == [METRICS_AUTH_LABEL] and rule["regex"] == "scrape-token"
    assert (first["ai-spine-pods"]["action"], first["ai-spine-gateway"]["action"]) == (
        "drop",
        "keep",
    )
    assert pods["relabel_configs"][1:] == gateway["relabel_configs"][1:]
    assert not {"authorization", "basic_auth", "oauth2"} & set(pods)
    auth = gateway["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and "credentials" not in auth
    assert auth["credentials_file"].endswith("/ai-spine-secrets/SPINE_METRICS_SCRAPE_TOKEN")


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"][0]
    assert source["type"] == "prometheus"
    port = compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{port}"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "ai-spine.yaml").read_text()
    )["providers"][0]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/ai-spine.json"].startswith(provider["options"]["path"] + "/")
