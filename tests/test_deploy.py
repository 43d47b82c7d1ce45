"""deploy/ stays consistent with the code: manifests parse, Prometheus accepts the configuration
and rules, every PromQL expression (alerts, PrometheusRule, Grafana dashboard) is valid and names
only metrics and labels the aggregator exports, and the image, compose file and Kubernetes
manifests agree on ports, probes, settings and relabel rules.

Fast (no Redis, no container engine). The promtool checks are skipped when promtool is not
installed (Debian package ``prometheus``), except with ``LSM_REQUIRE_PROMETHEUS=1``, where its
absence fails them.
"""

from __future__ import annotations

import ast
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from aggregator.catalog_data import METRICS
from aggregator.litellm_config import MetricsConfig
from aggregator.local_cluster import cluster_port
from aggregator.local_server import find_server_binary
from aggregator.settings import AggregatorSettings
from producer.settings import ProducerSettings
from tests.support import prometheus_tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
OPERATOR = K8S / "prometheus-operator"
DASHBOARD = DEPLOY / "grafana" / "litellm-stream-metrics.json"
JOB = "litellm-stream-metrics"
APP_LABELS = {"app.kubernetes.io/name": "litellm-stream-metrics", "app.kubernetes.io/component": "aggregator"}

# --------------------------------------------------------------------------------------------- helpers


def load_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_one(path: Path) -> Any:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path} holds {len(docs)} documents, expected 1"
    return docs[0]


def promtool() -> str:
    return prometheus_tool("promtool")


def run_promtool(*args: str) -> None:
    r = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"promtool {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"


def aggregator_job(path: Path) -> dict[str, Any]:
    jobs = [j for j in load_one(path)["scrape_configs"] if j["job_name"] == JOB]
    assert len(jobs) == 1, f"{path}: expected one scrape job named {JOB}"
    return jobs[0]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object for every manifest under deploy/kubernetes."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_docs(path):
            if isinstance(doc, dict) and "kind" in doc and "metadata" in doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def deployment() -> dict[str, Any]:
    return load_one(K8S / "deployment.yaml")


def aggregator_container() -> dict[str, Any]:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    return container


# --------------------------------------------------------------------------------------------- PromQL


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def rule_exprs(groups: list[dict[str, Any]], source: str) -> list[tuple[str, str]]:
    return [(f"{source}: {r.get('alert') or r.get('record')}", str(r["expr"])) for g in groups for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for panel in dashboard_panels():
        for t in panel.get("targets", []):
            if t.get("expr"):
                out.append((f"dashboard: {panel['title']} [{t['refId']}]", t["expr"]))
    return out


def variable_selectors() -> list[tuple[str, str, str]]:
    """(variable, series selector, label) of each label_values(selector, label) variable query."""
    out = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
        assert m, f"variable {var['name']}: expected label_values(selector, label), got {query!r}"
        out.append((var["name"], m.group(1), m.group(2)))
    return out


def all_exprs() -> list[tuple[str, str]]:
    rules = load_one(DEPLOY / "prometheus" / "rules.yml")["groups"]
    operator = load_one(OPERATOR / "prometheusrule.yaml")["spec"]["groups"]
    exprs = rule_exprs(rules, "rules.yml") + rule_exprs(operator, "prometheusrule.yaml") + dashboard_exprs()
    exprs += [(f"dashboard variable {name}", selector) for name, selector, _ in variable_selectors()]
    return exprs


def concrete(expr: str) -> str:
    """The expression with Grafana's variables replaced by values Prometheus accepts."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)(_s|_ms)?\}?", "5m", expr)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)  # $job, ${team}, ...: inside =~"..." matchers


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
KEYWORDS |= {"inf", "nan", "atan2"}


def _blank(expr: str) -> str:
    """Strings, label matchers, ranges and label lists removed: what is left names metrics and functions."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)


def metric_names(expr: str) -> set[str]:
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", _blank(concrete(expr))):
        if m.group(2) is None and m.group(1) not in KEYWORDS:
            names.add(m.group(1))
    return names


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric, label names in its matchers) of every `metric{...}` selector."""
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        if m.group(1) not in KEYWORDS:
            yield m.group(1), set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)))


def by_clauses(expr: str) -> Iterator[tuple[set[str], str]]:
    """(labels, inner expression) of every prefix `agg by (labels) (inner)`."""
    for m in re.finditer(r"\bby\s*\(([^)]*)\)\s*\(", expr):
        start = depth = m.end() - 1
        for i in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            if depth == start - 1:
                break
        labels = {label.strip() for label in m.group(1).split(",") if label.strip()}
        yield labels, expr[start : i + 1]


# Label names every scraped series carries (target labels), whatever it is.
TARGET_LABELS = {"job", "instance", "pod", "namespace"}
# Series Prometheus makes for every target.
PROMETHEUS_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}


@functools.cache
def business_metrics() -> dict[str, set[str]]:
    """Sample name -> label names, as the aggregator exposes LiteLLM's metrics."""
    out: dict[str, set[str]] = {}
    for m in METRICS:
        labels = set(m["labels"]) | set(m["base_labels"])
        if m["kind"] == "counter":
            out[m["family"] + "_total"] = labels
        elif m["kind"] == "histogram":
            out[m["name"] + "_bucket"] = labels | {"le"}
            out[m["name"] + "_count"] = labels
            out[m["name"] + "_sum"] = labels
        else:
            out[m["name"]] = labels
    return out


# Sample names of each kind: prometheus_client's MetricFamily classes (custom collectors, no
# _created samples) and its Counter/Gauge/Summary/Histogram (a registry: _created samples too).
SUFFIXES = {
    "CounterMetricFamily": ("_total",),
    "GaugeMetricFamily": ("",),
    "SummaryMetricFamily": ("", "_sum", "_count"),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Summary": ("", "_sum", "_count", "_created"),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
}
LOOSE = ("", "_total", "_sum", "_count", "_bucket", "_created")


def _literal_labels(node: ast.Call) -> set[str] | None:
    """The label names of a metric constructor call; None when not a literal list."""
    for kw in node.keywords:
        if kw.arg in ("labels", "labelnames"):
            value = kw.value
            break
    else:
        if len(node.args) < 3:
            return set()
        value = node.args[2]
    if isinstance(value, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Constant) for e in value.elts):
        return {str(e.value) for e in value.elts}  # type: ignore[attr-defined]
    return None


@functools.cache
def self_metrics() -> list[tuple[re.Pattern[str], set[str] | None]]:
    """(sample-name pattern, label names or None if unknown) of the lsm_* metrics, read from the
    sources: aggregator/selfexport.py and aggregator/budgets/ (when present). Metric constructor
    calls give the kind and labels; other "lsm_..." string constants (names built in a loop) are
    accepted with any sample suffix and unknown labels."""
    files = [ROOT / "aggregator" / "selfexport.py", *sorted((ROOT / "aggregator" / "budgets").rglob("*.py"))]
    calls: list[tuple[re.Pattern[str], set[str] | None]] = []
    bases: list[re.Pattern[str]] = []  # family names of the calls
    loose: list[str] = []
    for path in files:
        if not path.exists():
            continue
        named: set[int] = set()  # the name constants of constructor calls (ast.walk visits calls first)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                first = node.args[0]
                if func not in SUFFIXES:
                    continue
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    pattern = re.escape(first.value)
                elif isinstance(first, ast.JoinedStr):  # f"lsm_consumer_{name}"
                    pattern = "".join(
                        re.escape(v.value) if isinstance(v, ast.Constant) else "[a-z0-9_]+" for v in first.values
                    )
                else:
                    continue
                named.add(id(first))
                if pattern.startswith("lsm_"):
                    alternatives = "|".join(re.escape(s) for s in SUFFIXES[func])
                    calls.append((re.compile(f"{pattern}(?:{alternatives})"), _literal_labels(node)))
                    bases.append(re.compile(pattern))
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in named
                and re.fullmatch(r"lsm_[a-z0-9_]+", node.value)
            ):
                loose.append(node.value)
    alternatives = "|".join(re.escape(s) for s in LOOSE)
    return calls + [
        (re.compile(f"{re.escape(name)}(?:{alternatives})"), None)
        for name in loose
        if not any(base.fullmatch(name) for base in bases)  # a constructor call already tells its kind
    ]


def known_labels(name: str) -> set[str] | None:
    """Label names of a sample name (None: exists, labels unknown); KeyError if it does not exist."""
    if name in PROMETHEUS_SERIES:
        return set()
    business = business_metrics()
    if name in business:
        return business[name]
    for pattern, labels in self_metrics():
        if pattern.fullmatch(name):
            return labels
    raise KeyError(name)


# --------------------------------------------------------------------------------------------- files parse


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    paths = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
    assert len(paths) >= 15, paths
    for path in paths:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text())


# --------------------------------------------------------------------------------------------- promtool


def test_rules_pass_promtool() -> None:
    run_promtool("check", "rules", str(DEPLOY / "prometheus" / "rules.yml"))


def test_prometheus_configs_pass_promtool(tmp_path: Path) -> None:
    """prometheus.yml (with its rules) and the Kubernetes scrape job, credentials file replaced."""
    token = tmp_path / "token"
    token.write_text("test-token\n")
    config = load_one(DEPLOY / "prometheus" / "prometheus.yml")
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(token)
    shutil.copy(DEPLOY / "prometheus" / "rules.yml", tmp_path / "rules.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run_promtool("check", "config", str(tmp_path / "prometheus.yml"))

    k8s_job = aggregator_job(DEPLOY / "prometheus" / "kubernetes-scrape.yml")
    k8s_job["authorization"]["credentials_file"] = str(token)
    # Debian's Prometheus is built without the Kubernetes discovery ("field kubernetes_sd_configs
    # not found"): check everything else of the job with a static target in its place.
    assert k8s_job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    k8s_job["static_configs"] = [{"targets": ["aggregator:9464"]}]
    (tmp_path / "k8s.yml").write_text(yaml.safe_dump({"global": config["global"], "scrape_configs": [k8s_job]}))
    run_promtool("check", "config", str(tmp_path / "k8s.yml"))


def test_every_promql_expression_is_valid(tmp_path: Path) -> None:
    """Alerts, the PrometheusRule and every dashboard query, as recording rules through promtool."""
    exprs = all_exprs()
    assert len(exprs) > 40
    rules = [
        {"record": f"deploy_check:expr_{i}", "expr": concrete(expr), "labels": {"source": source}}
        for i, (source, expr) in enumerate(exprs)
    ]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "deploy-check", "rules": rules}]}, width=1000))
    run_promtool("check", "rules", str(path))


# --------------------------------------------------------------------------------------------- PromQL meaning


def expression_problems(source: str, expr: str) -> list[str]:
    """Unknown metrics, and label names (matchers, `by` lists) the metrics do not have."""
    problems = []
    for name in metric_names(expr):
        try:
            known_labels(name)
        except KeyError:
            problems.append(f"{source}: unknown metric {name} in {expr}")
    for name, labels in selectors(expr):
        try:
            have = known_labels(name)
        except KeyError:
            continue  # reported above
        if have is not None and (missing := labels - have - TARGET_LABELS - {"__name__"}):
            problems.append(f"{source}: {name} has no label {sorted(missing)} in {expr}")
    for labels, inner in by_clauses(concrete(expr)):
        for name in metric_names(inner):
            try:
                have = known_labels(name)
            except KeyError:
                continue
            if have is not None and (missing := labels - have - TARGET_LABELS):
                problems.append(f"{source}: `by` uses {sorted(missing)}, which {name} does not have: {expr}")
    return problems


def test_every_metric_and_label_in_the_expressions_exists() -> None:
    problems = []
    seen = set()
    for source, expr in all_exprs():
        seen |= metric_names(expr)
        problems += expression_problems(source, expr)
    for variable, selector, label in variable_selectors():
        for name in metric_names(selector):
            have = known_labels(name)
            assert have is None or label in have | TARGET_LABELS, f"variable {variable}: {name} has no {label}"
    assert not problems, "\n".join(problems)
    # The check is not vacuous: business and self-metrics, counters and histograms are all there.
    assert {"litellm_spend_metric_total", "litellm_request_total_latency_metric_bucket", "lsm_leader"} <= seen
    assert "lsm_producer_events_sent_total" in seen


def test_the_name_checker_rejects_what_does_not_exist() -> None:
    with pytest.raises(KeyError):
        known_labels("litellm_spend_metric")  # a counter is exposed with _total
    with pytest.raises(KeyError):
        known_labels("lsm_leader_total")
    with pytest.raises(KeyError):
        known_labels("lsm_stream_length_total")  # a gauge
    with pytest.raises(KeyError):
        known_labels("litellm_no_such_metric_total")
    assert known_labels("lsm_consumer_events_applied_total") == {"shard"}
    assert expression_problems("t", 'sum by (model_group) (rate(litellm_spend_metric_total{team="a"}[5m]))')
    assert expression_problems("t", 'sum(litellm_spend_metric_total{model_group="a"})')
    assert expression_problems("t", "max by (producer) (lsm_leader)")
    assert not expression_problems(
        "t", 'sum by (le, team) (rate(litellm_request_total_latency_metric_bucket{team="a"}[5m]))'
    )
    assert metric_names('sum by (le) (rate(x_bucket{a="b"}[$__rate_interval])) / on (c) y offset 5m') == {
        "x_bucket",
        "y",
    }


def test_dashboard_queries_stay_right_across_pods() -> None:
    """rate()/increase() before any aggregation, and every query aggregates (so the per-pod
    instance/pod labels never split one value into several series)."""
    for source, expr in dashboard_exprs():
        flat = " ".join(expr.split())
        assert not re.search(r"\b(rate|irate|increase)\s*\(\s*(sum|max|min|avg|count)\b", flat), source
        assert re.match(r"(sum|max|min|count|avg|histogram_quantile|bottomk|topk)\b", flat), (source, expr)
        if flat.startswith("histogram_quantile"):
            assert re.search(r"sum by \(le\b", flat), (source, expr)
        if re.search(r"\b(rate|increase)\(", flat):
            assert "$__rate_interval" in flat or "$__range" in flat, (source, expr)


def test_dashboard_uses_the_datasource_variable() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    (ds_var,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    ids = set()
    for panel in dashboard_panels():
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"], panel["title"]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, v["name"]


# --------------------------------------------------------------------------------------------- Prometheus / operator


def normalised_relabelings(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Relabel rules in prometheus.yml's spelling, with Prometheus' defaults filled in."""
    defaults = {"action": "replace", "separator": ";", "regex": "(.*)", "replacement": "$1"}
    out = []
    for rule in rules:
        snake = {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k): v for k, v in rule.items()}
        out.append({**defaults, **snake})
    return out


def test_relabelings_are_the_same_everywhere() -> None:
    reference = aggregator_job(DEPLOY / "prometheus" / "prometheus.yml")
    expected = normalised_relabelings(reference["metric_relabel_configs"])
    assert {"source_labels": ["__name__"], "regex": "litellm_.+", "target_label": "instance"}.items() <= expected[
        0
    ].items()
    k8s_job = aggregator_job(DEPLOY / "prometheus" / "kubernetes-scrape.yml")
    assert normalised_relabelings(k8s_job["metric_relabel_configs"]) == expected
    (endpoint,) = load_one(OPERATOR / "podmonitor.yaml")["spec"]["podMetricsEndpoints"]
    assert normalised_relabelings(endpoint["metricRelabelings"]) == expected
    for job in (reference, k8s_job):
        assert (job["scrape_interval"], job["scrape_timeout"]) == (endpoint["interval"], endpoint["scrapeTimeout"])
        assert job["authorization"]["type"] == endpoint["authorization"]["type"] == "Bearer"


def test_prometheus_rule_wraps_rules_yml() -> None:
    rules = load_one(DEPLOY / "prometheus" / "rules.yml")
    operator = load_one(OPERATOR / "prometheusrule.yaml")
    assert operator["apiVersion"] == "monitoring.coreos.com/v1" and operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == rules["groups"]


def test_pod_monitor_scrapes_the_aggregator_pods_as_the_rules_expect() -> None:
    monitor = load_one(OPERATOR / "podmonitor.yaml")["spec"]
    template = deployment()["spec"]["template"]
    assert monitor["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["labels"][monitor["jobLabel"]] == JOB  # job="litellm-stream-metrics" in rules.yml
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in aggregator_container()["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    token_env = next(e for e in aggregator_container()["env"] if e["name"] == "LSM_METRICS_BEARER_TOKEN")
    assert credentials == {k: token_env["valueFrom"]["secretKeyRef"][k] for k in ("name", "key")}


# --------------------------------------------------------------------------------------------- Kubernetes


def test_kustomization_lists_existing_files_and_not_the_example_secret() -> None:
    kustomization = load_one(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    for component in kustomization.get("components", []):
        comp = load_one(K8S / component / "kustomization.yaml")
        assert comp["kind"] == "Component"
        for resource in comp["resources"]:
            assert (K8S / component / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]
    (generator,) = kustomization["configMapGenerator"]
    for entry in generator["files"]:
        assert (K8S / entry.split("=")[-1]).is_file(), entry
    volumes = {v["name"]: v for v in deployment()["spec"]["template"]["spec"]["volumes"]}
    assert volumes["litellm-config"]["configMap"]["name"] == generator["name"]
    (image,) = kustomization["images"]
    assert aggregator_container()["image"] == image["name"]
    for (kind, name), obj in k8s_objects().items():
        assert "namespace" not in obj["metadata"], f"{kind}/{name} pins a namespace"


def test_deployment_probes_ports_and_service_agree() -> None:
    dep = deployment()
    spec = dep["spec"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"] == APP_LABELS == spec["template"]["metadata"]["labels"]
    container = aggregator_container()
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": AggregatorSettings().http_port, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    service = load_one(K8S / "service.yaml")
    assert service["spec"]["selector"] == APP_LABELS
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "metrics" and service_port["port"] == port["containerPort"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])

    pdb = load_one(K8S / "poddisruptionbudget.yaml")
    assert pdb["spec"]["selector"]["matchLabels"] == APP_LABELS
    assert pdb["spec"].get("maxUnavailable", 1) < spec["replicas"]


def test_deployment_security_and_shutdown() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    container = aggregator_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.search(r"^USER (\d+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert user and pod["securityContext"]["runAsUser"] == int(user.group(1))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # SIGTERM: the batch in hand (a read of LSM_BLOCK_SECONDS, an apply bounded by LSM_SOCKET_TIMEOUT
    # with up to 3 retries), the lease release and the HTTP server's close (joined for 5 s).
    defaults = AggregatorSettings()
    needed = defaults.block_seconds + 4 * defaults.socket_timeout + 5
    assert pod["terminationGracePeriodSeconds"] > needed


def test_environment_names_are_real_settings() -> None:
    aggregator_vars = {"LSM_" + name.upper() for name in AggregatorSettings.model_fields}
    # Read by the command line itself, not a settings field.
    assert '"LSM_LOG_LEVEL"' in (ROOT / "aggregator" / "__main__.py").read_text()
    aggregator_vars.add("LSM_LOG_LEVEL")
    producer_vars = {"LSM_" + name.upper() for name in ProducerSettings.model_fields}
    container = aggregator_container()
    names = {e["name"] for e in container["env"]}
    assert {"LSM_REDIS_URL", "LSM_METRICS_BEARER_TOKEN", "LSM_LITELLM_CONFIG"} <= names
    assert names <= aggregator_vars, names - aggregator_vars

    secret = load_one(K8S / "secret.example.yaml")
    for e in container["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and not ref.get("optional"):
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], e

    compose = load_one(DEPLOY / "compose.yaml")
    for name in ("aggregator-0", "aggregator-1"):
        env = set(compose["services"][name]["environment"])
        assert env <= aggregator_vars, env - aggregator_vars
    proxy_env = {k for k in compose["services"]["litellm"]["environment"] if k.startswith("LSM_")}
    assert proxy_env <= producer_vars, proxy_env - producer_vars

    proxy_patch = [d for d in load_docs(K8S / "litellm-proxy.example.yaml") if d["kind"] == "Deployment"]
    (proxy_container,) = proxy_patch[0]["spec"]["template"]["spec"]["containers"]
    assert {e["name"] for e in proxy_container["env"]} <= producer_vars | LITELLM_PROXY_VARS


# LiteLLM's own variables that the proxy examples set; each must be one LiteLLM really reads.
LITELLM_PROXY_VARS = {"GRACEFUL_SHUTDOWN_TIMEOUT"}


def test_litellm_variables_of_the_examples_exist() -> None:
    from litellm.proxy.shutdown import graceful_shutdown_manager

    source = Path(graceful_shutdown_manager.__file__).read_text()
    for name in LITELLM_PROXY_VARS:
        assert f'"{name}"' in source, name


def _seconds(value: object) -> float:
    text = str(value)
    return float(text[:-1]) if text.endswith("s") else float(text)


def test_proxies_have_time_to_flush_when_stopped() -> None:
    """The grace period covers the preStop sleep, LiteLLM's drain and the producer's flush."""
    defaults = ProducerSettings()
    proxy_patch = [d for d in load_docs(K8S / "litellm-proxy.example.yaml") if d["kind"] == "Deployment"]
    pod = proxy_patch[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    sleep = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env["GRACEFUL_SHUTDOWN_TIMEOUT"])
    flush = float(env.get("LSM_SHUTDOWN_TIMEOUT") or defaults.shutdown_timeout)
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain + flush + 2

    proxy = load_one(DEPLOY / "compose.yaml")["services"]["litellm"]
    env = proxy["environment"]
    drain, flush = float(env["GRACEFUL_SHUTDOWN_TIMEOUT"]), float(env["LSM_SHUTDOWN_TIMEOUT"])
    assert _seconds(proxy["stop_grace_period"]) >= drain + flush + 2


def test_litellm_configs_enable_the_producer_and_are_valid_for_the_aggregator() -> None:
    configs = [DEPLOY / "compose" / "litellm-config.yaml", K8S / "litellm-config.yaml"]
    snippet = next(d for d in load_docs(K8S / "litellm-proxy.example.yaml") if d["kind"] == "ConfigMap")
    for path in configs:
        MetricsConfig.from_config_file(path)  # what `python -m aggregator check-config` does
    for settings in [load_one(p)["litellm_settings"] for p in configs] + [
        yaml.safe_load(snippet["data"]["config.yaml"])["litellm_settings"]
    ]:
        assert "producer.stream_metrics_logger" in settings["callbacks"]
        assert "prometheus" not in settings["callbacks"]


# --------------------------------------------------------------------------------------------- compose


def test_compose_wires_the_services_together() -> None:
    compose = load_one(DEPLOY / "compose.yaml")
    services = compose["services"]
    aggregators = [name for name in services if name.startswith("aggregator-")]
    assert len(aggregators) == 2
    assert len({services[a]["hostname"] for a in aggregators}) == 2  # distinct LSM_CONSUMER_NAME defaults

    # Prometheus scrapes exactly these services on the aggregator's port, with the compose secret.
    job = aggregator_job(DEPLOY / "prometheus" / "prometheus.yml")
    (static,) = job["static_configs"]
    port = AggregatorSettings().http_port
    assert sorted(static["targets"]) == sorted(f"{a}:{port}" for a in aggregators)
    prometheus = services["prometheus"]
    (secret,) = prometheus["secrets"]
    assert secret["target"] == job["authorization"]["credentials_file"]
    assert compose["secrets"][secret["source"]] == {"environment": "LSM_METRICS_BEARER_TOKEN"}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if v.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    rules = load_one(DEPLOY / "prometheus" / "prometheus.yml")["rule_files"]
    assert [f"/etc/prometheus/{r}" for r in rules] == [m for m in mounts if m.endswith("rules.yml")]

    # Every bind-mounted file exists; Redis keeps its data durable.
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert (DEPLOY / volume.split(":")[0]).exists(), volume
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command

    # Grafana: the provisioning points at the mounted dashboard, the datasource at Prometheus.
    grafana = services["grafana"]
    provider = load_one(DEPLOY / "grafana/provisioning/dashboards/litellm-stream-metrics.yaml")["providers"][0]
    assert any(v.endswith(f"{provider['options']['path']}/litellm-stream-metrics.json:ro") for v in grafana["volumes"])
    (datasource,) = load_one(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


def test_the_cluster_variant_of_compose_points_everything_at_the_cluster(tmp_path: Path) -> None:
    """deploy/compose.cluster.yaml: six nodes from one configuration that a real redis-server
    accepts in cluster mode, a cluster formed of all six with one replica each, spread-shards
    run with the aggregator image's CLI after it, and the proxy and aggregators pointed at the
    cluster with the same shard count."""
    base = load_one(DEPLOY / "compose.yaml")["services"]
    services = load_one(DEPLOY / "compose.cluster.yaml")["services"]
    nodes = sorted(n for n in services if n.startswith("redis-cluster-") and n != "redis-cluster-init")
    assert len(nodes) == 6
    create = " ".join(services["redis-cluster-init"]["command"])
    assert all(f"{n}:6379" in create for n in nodes) and "--cluster-replicas 1" in create
    for n in nodes:
        command = services[n]["command"]
        assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
        assert command[command.index("--cluster-announce-hostname") + 1] == n
        assert any(
            v.startswith("./redis/cluster-node.conf:/usr/local/etc/redis/redis.conf") for v in services[n]["volumes"]
        )
    spread = services["spread-shards"]
    assert spread["entrypoint"] == ["python", "-m", "aggregator", "spread-shards"]
    assert spread["image"] == base["aggregator-0"]["image"]
    assert "spread-shards" in _cli_commands()
    aggregator_vars = {"LSM_" + name.upper() for name in AggregatorSettings.model_fields}
    producer_vars = {"LSM_" + name.upper() for name in ProducerSettings.model_fields}
    shards = set()
    for name, allowed in (
        ("aggregator-0", aggregator_vars),
        ("aggregator-1", aggregator_vars),
        ("litellm", producer_vars),
        ("spread-shards", aggregator_vars),
    ):
        env = services[name]["environment"]
        assert set(env) <= allowed, set(env) - allowed
        assert env["LSM_REDIS_URL"].startswith("redis://redis-cluster-0:6379") and env["LSM_REDIS_CLUSTER"] == "true"
        shards.add(env["LSM_SHARDS"])
        if name in base:
            assert set(services[name]["depends_on"]) <= {"spread-shards", "redis-cluster-init"}
    assert shards == {"6"}

    # The node configuration starts a real server in cluster mode.
    conf = (DEPLOY / "redis" / "cluster-node.conf").read_text()
    port = cluster_port()  # its cluster bus listens on port + 10000
    data = tmp_path / "data"
    data.mkdir()
    proc = subprocess.Popen(
        [find_server_binary(), "-", "--port", str(port), "--dir", str(data), "--cluster-announce-hostname", "node-a"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None
    proc.stdin.write(conf.replace("port 6379", f"port {port}").replace("dir /data", f"dir {data}").encode())
    proc.stdin.close()
    try:
        client = redis.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 15
        while True:
            try:
                info: Any = client.info("cluster")
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    raise AssertionError(f"the node did not start (port {port}):\n{output[-2000:]}") from None
                time.sleep(0.05)
        assert info["cluster_enabled"] == 1
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def _cli_commands() -> set[str]:
    """The subcommands of ``python -m aggregator``."""
    out = subprocess.run(
        [sys.executable, "-m", "aggregator", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"[a-z][a-z-]+", out.split("{", 1)[1].split("}", 1)[0]))


# --------------------------------------------------------------------------------------------- image


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_the_aggregator_image() -> None:
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    get = lambda word: [rest for w, rest in instructions if w == word]  # noqa: E731
    # Users build on python:3.11-slim; tests/test_image.py passes a local base (BASE_IMAGE).
    assert get("ARG") == ["BASE_IMAGE=python:3.11-slim"]
    assert get("FROM") == ["${BASE_IMAGE}"]
    assert json.loads(get("ENTRYPOINT")[-1]) == ["python", "-m", "aggregator", "run"]
    assert get("EXPOSE") == [str(AggregatorSettings().http_port)]
    assert any('pip install ".[aggregator,database,otlp]"' in r for r in get("RUN"))
    assert get("USER")[-1].split(":")[0] != "0"
    # Everything COPY takes from the context is kept by the Dockerfile's own .dockerignore.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for dockerfile in ("Dockerfile", "proxy.Dockerfile"):
        for word, rest in dockerfile_instructions(DEPLOY / dockerfile):
            if word == "COPY":
                for source in rest.split()[:-1]:
                    assert (ROOT / source).exists(), source
                    assert f"!{source.rstrip('/')}" in ignore, source
    assert (DEPLOY / "proxy.Dockerfile.dockerignore").read_text().split()[-7:] == ignore[-7:]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_dockerfile_healthcheck_command_works(status: int, healthy: bool) -> None:
    """The HEALTHCHECK's Python one-liner, run against a local /healthz answering `status`."""
    (healthcheck,) = [rest for w, rest in dockerfile_instructions(DEPLOY / "Dockerfile") if w == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[0] == "python" and "/healthz" in command[-1]
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "LSM_HTTP_PORT": str(server.server_address[1])}
        env.pop("LSM_TLS_CERT_FILE", None)
        r = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
        assert (r.returncode == 0) == healthy, r.stderr
    finally:
        server.shutdown()
        server.server_close()
