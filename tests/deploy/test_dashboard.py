"""deploy/monitoring: the Grafana dashboard's and the alert rules' PromQL only names metrics (and labels) that
exist — synthrad_* ones from the gateway's own prometheus_client registry, ray_serve_* ones from the installed
Ray Serve source — and the dashboard covers every topic of the runbook."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from repo_paths import ROOT

from services.gateway import prometheus as platform_metrics

MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yaml"
RAY_SERVE_SRC = Path(importlib.util.find_spec("ray").origin).resolve().parent / "serve"  # read, not imported

# --------------------------------------------------------------------------------------------------------------
# A PromQL tokenizer good enough for dashboards and alert rules: strings, durations, ranges and Grafana
# variables are dropped; what is left is function calls, grouping clauses, selectors and metric names.

PROMQL_FUNCTIONS = {
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "limitk", "limit_ratio",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar",
    "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln",
    "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort",
    "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time", "mad_over_time",
    # Grafana's templating functions (variable queries)
    "label_values", "label_names", "metrics", "query_result",
}
GROUPING_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OTHER_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")  # [5m], [$__rate_interval], [1h:5m]
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:e[+-]?\d+)?[a-z]*)")
_TOKEN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*|=~|!~|!=|==|>=|<=|[{}(),=<>+\-*/%^@]")


@dataclass
class Parsed:
    """What one PromQL expression names: metric selectors (metric -> labels matched in its braces), grouping
    labels (by/without/on/ignoring/group_*), functions called, and labels in matchers without a metric name."""

    metrics: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    bare_matchers: set[str] = field(default_factory=set)


def _clean(expr: str) -> str:
    expr = _STRING.sub(" STR ", expr)
    expr = _RANGE.sub(" ", expr)
    expr = _VARIABLE.sub(" 0 ", expr)
    return _NUMBER.sub(" 0 ", expr)


def parse_promql(expr: str) -> Parsed:
    out = Parsed()
    label_values = re.fullmatch(r"\s*label_values\(\s*(?:([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*,)?\s*(\w+)\s*\)\s*", expr)
    if label_values:  # Grafana's label_values(metric{matchers}, label)
        metric, matchers, label = label_values.groups()
        out.functions.add("label_values")
        if metric:
            inner = parse_promql(f"{metric}{matchers or ''}")
            out.metrics[metric] = inner.metrics[metric] | {label}
        return out
    toks = [t for t in _TOKEN.findall(_clean(expr)) if t != "STR"]
    i = 0
    last_metric: str | None = None
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t in GROUPING_KEYWORDS:
            i += 1
            if i < len(toks) and toks[i] == "(":
                i += 1
                while i < len(toks) and toks[i] != ")":
                    if toks[i] != ",":
                        out.grouping.add(toks[i])
                    i += 1
            i += 1
            continue
        if t == "{":  # matchers: label op value (values are strings, already dropped)
            i += 1
            while i < len(toks) and toks[i] != "}":
                is_label = re.fullmatch(r"[A-Za-z_]\w*", toks[i]) is not None
                if is_label and i + 1 < len(toks) and toks[i + 1] in ("=", "!=", "=~", "!~"):
                    (out.metrics[last_metric] if last_metric else out.bare_matchers).add(toks[i])
                i += 1
            last_metric = None
            i += 1
            continue
        if re.fullmatch(r"[A-Za-z_:][\w:]*", t) and t != "STR":
            if nxt == "(" or nxt in ("by", "without"):  # a call, or an aggregation: sum by (x) (...)
                out.functions.add(t)
                last_metric = None
            elif t not in OTHER_KEYWORDS:
                out.metrics.setdefault(t, set())
                last_metric = t if nxt == "{" else None
            i += 1
            continue
        last_metric = None
        i += 1
    return out


def test_tokenizer_finds_metrics_labels_and_functions():
    p = parse_promql('histogram_quantile(0.99, sum by (le, model) (rate(foo_seconds_bucket{model=~"$model",'
                     'code!="5.. or bar"}[$__rate_interval]))) > 10')
    assert p.metrics == {"foo_seconds_bucket": {"model", "code"}}
    assert p.grouping == {"le", "model"}
    assert p.functions == {"histogram_quantile", "sum", "rate"}

    p = parse_promql("sum(rate(a_total[5m])) / on() group_left (x) (b{y='z'} offset 1h) > bool 1e3 and c")
    assert p.metrics == {"a_total": set(), "b": {"y"}, "c": set()}
    assert p.grouping == {"x"}

    p = parse_promql("max without (gpu) (used_bytes / total_bytes) * 100")
    assert p.metrics == {"used_bytes": set(), "total_bytes": set()} and p.grouping == {"gpu"}

    p = parse_promql("label_values(some_gauge{kind=\"batch\"}, model)")
    assert p.metrics == {"some_gauge": {"kind", "model"}}


# --------------------------------------------------------------------------------------------------------------
# What the platform exports: its prometheus_client registry; what Ray Serve exports: its source.

def _platform_series() -> dict[str, tuple[str, frozenset[str], bool]]:
    """Exported series name -> (metric family, its labels, whether it is a histogram series), from the
    registry the gateway's /metrics renders."""
    labels_by_family = {}
    for obj in vars(platform_metrics).values():
        if isinstance(obj, (Counter, Gauge, Histogram)):
            (fam,) = obj.describe()
            labels_by_family[fam.name] = frozenset(obj._labelnames)
    series: dict[str, tuple[str, frozenset[str], bool]] = {}
    families = list(platform_metrics.REGISTRY.collect())
    assert families, "the platform's registry is empty"
    for fam in families:
        labels = labels_by_family[fam.name]  # every family of the registry is one of the module's metrics
        if fam.type == "counter":
            series[f"{fam.name}_total"] = (fam.name, labels, False)
        elif fam.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                series[fam.name + suffix] = (fam.name, labels | ({"le"} if suffix == "_bucket" else set()), True)
        else:
            series[fam.name] = (fam.name, labels, False)
    return series


_RAY_METRIC = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*(?:name\s*=\s*)?[\"']([a-z0-9_]+)[\"']")


def _ray_serve_series() -> dict[str, str]:
    """Series Ray's metrics agent exports for Ray Serve's metrics (``ray_`` + name; counters get ``_total``,
    histograms ``_bucket``/``_sum``/``_count``), read from the installed package's source."""
    series = {}
    for path in RAY_SERVE_SRC.rglob("*.py"):
        if "tests" in path.relative_to(RAY_SERVE_SRC).parts:
            continue
        for kind, name in _RAY_METRIC.findall(path.read_text(encoding="utf-8", errors="replace")):
            base = f"ray_{name}"
            if kind == "Counter":
                series[f"{base}_total"] = kind
            elif kind == "Histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    series[base + suffix] = kind
            else:
                series[base] = kind
    return series


def _ray_serve_tags() -> set[str]:
    """The tags Ray Serve puts on its deployment / replica metrics (ray.serve.metrics' *_TAG constants)."""
    text = (RAY_SERVE_SRC / "metrics.py").read_text(encoding="utf-8")
    return set(re.findall(r"^[A-Z]+_TAG\s*=\s*\"(\w+)\"", text, re.M))


PLATFORM = _platform_series()
RAY_SERVE = _ray_serve_series()
RAY_SERVE_TAGS = _ray_serve_tags()


def test_sources_of_truth_are_read():
    assert {"synthrad_requests_total", "synthrad_generation_latency_seconds_bucket", "synthrad_jobs"} <= set(PLATFORM)
    assert "synthrad_generation_queue_depth_bucket" not in PLATFORM  # a gauge has no buckets
    assert "ray_serve_deployment_replica_healthy" in RAY_SERVE
    assert {"deployment", "application", "replica"} <= RAY_SERVE_TAGS


def problems(expr: str) -> list[str]:
    """Why ``expr`` would not work against what synthrad and Ray Serve export ([] when it would)."""
    p = parse_promql(expr)
    errs = [f"unknown function {f}()" for f in sorted(p.functions - PROMQL_FUNCTIONS)]
    errs += [f"label matcher without a metric: {lab}" for lab in sorted(p.bare_matchers)]
    if not p.metrics:
        errs.append("no metric in the expression")
    for metric, labels in sorted(p.metrics.items()):
        if metric.startswith("synthrad_"):
            if metric not in PLATFORM:
                errs.append(f"{metric} is not exported by the platform")
                continue
            _, known, _ = PLATFORM[metric]
            errs += [f"{metric} has no label {lab!r}" for lab in sorted((labels | p.grouping) - known)]
        elif metric.startswith("ray_serve_"):
            if metric not in RAY_SERVE:
                errs.append(f"{metric} is not a Ray Serve metric of the installed Ray")
                continue
            known = RAY_SERVE_TAGS | ({"le"} if metric.endswith("_bucket") else set())
            errs += [f"{metric} has no label {lab!r}" for lab in sorted((labels | p.grouping) - known)]
        else:
            errs.append(f"{metric}: neither a synthrad_ nor a ray_serve_ metric")
    return errs


# --------------------------------------------------------------------------------------------------------------
# The dashboard

def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # panels of collapsed rows


def _panel_exprs(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dash) for t in p.get("targets", []) if t.get("expr")]


def _variable_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append((f"${v['name']}", q["query"] if isinstance(q, dict) else q))
    return out


def test_dashboard_is_a_grafana_dashboard_with_datasource_and_model_variables():
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36 and dash["title"] and dash["uid"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query"
    assert "label_values(" in json.dumps(variables["model"]["query"])
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in _panels(dash):
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]  # every panel follows the variable
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


@pytest.mark.parametrize("where,expr", _panel_exprs(_dashboard()) + _variable_exprs(_dashboard()))
def test_dashboard_query_names_only_exported_metrics_and_labels(where, expr):
    assert problems(expr) == [], f"{where}: {expr}"


def test_model_filter_is_applied_to_model_metrics():
    """Every panel query on a metric with a ``model`` label honours the $model variable."""
    for title, expr in _panel_exprs(_dashboard()):
        for metric in parse_promql(expr).metrics:
            if metric in PLATFORM and "model" in PLATFORM[metric][1]:
                sel = re.search(re.escape(metric) + r"\{([^}]*)\}", expr)
                assert sel and 'model=~"$model"' in sel.group(1), f"{title}: {metric} ignores $model"


REQUIRED_TOPICS = {  # topic -> (a word of the panel title, a metric its queries must use)
    "throughput": ("images", "synthrad_images_generated_total"),
    "request rate": ("request", "synthrad_requests_total"),
    "error rate": ("error", "synthrad_requests_total"),
    "latency": ("latency", "synthrad_generation_latency_seconds_bucket"),
    "queue time": ("queue time", "synthrad_generation_queue_seconds_bucket"),
    "batch size": ("batch size", "synthrad_generation_batch_size_sum"),
    "queue depth": ("queue depth", "synthrad_generation_queue_depth"),
    "jobs": ("jobs", "synthrad_jobs"),
    "job finishes": ("job finishes", "synthrad_jobs_finished_total"),
    "chunk retries": ("retries", "synthrad_generation_chunk_retries_total"),
    "scoring latency": ("scoring", "synthrad_scoring_latency_seconds_bucket"),
    "replicas": ("replicas", "ray_serve_deployment_replica_healthy"),
    "replica restarts": ("replica starts", "ray_serve_deployment_replica_starts_total"),
    "GPU memory": ("gpu memory", "synthrad_gpu_memory_used_bytes"),
    "GPU memory total": ("gpu memory", "synthrad_gpu_memory_total_bytes"),
    "GPU utilisation": ("gpu utilisation", "synthrad_gpu_utilization_ratio"),
}


@pytest.mark.parametrize("topic", sorted(REQUIRED_TOPICS))
def test_dashboard_has_a_panel_per_topic(topic):
    word, metric = REQUIRED_TOPICS[topic]
    panels = [p for p in _panels(_dashboard()) if word in p["title"].lower()]
    assert any(metric in parse_promql(t["expr"]).metrics for p in panels for t in p.get("targets", [])), (
        f"no panel titled '*{word}*' queries {metric}")


def test_latency_panel_shows_p50_p95_p99():
    (panel,) = [p for p in _panels(_dashboard()) if p["title"].lower().startswith("generation latency")]
    quantiles = {re.match(r"histogram_quantile\(([\d.]+),", t["expr"]).group(1) for t in panel["targets"]}
    assert quantiles == {"0.5", "0.95", "0.99"}


# --------------------------------------------------------------------------------------------------------------
# Negative tests: the checks catch what they are for

def _fake_dashboard(expr: str) -> dict:
    dash = _dashboard()
    dash["panels"].append({"id": 999, "type": "timeseries", "title": "fake", "datasource": {"uid": "${datasource}"},
                           "gridPos": {"h": 8, "w": 8, "x": 0, "y": 99}, "targets": [{"refId": "A", "expr": expr}]})
    return dash


@pytest.mark.parametrize("expr,why", [
    ("sum(rate(synthrad_images_made_total[5m]))", "synthrad_images_made_total is not exported"),
    ("synthrad_generation_queue_depth_bucket", "synthrad_generation_queue_depth_bucket is not exported"),
    ("synthrad_images_generated", "synthrad_images_generated is not exported"),  # a counter is only seen as _total
    ('sum(synthrad_generation_queue_depth{replica="r1"})', "has no label 'replica'"),
    ("sum by (operation) (synthrad_jobs)", "has no label 'operation'"),
    ("sum(ray_serve_replica_restarts_total)", "is not a Ray Serve metric"),
    ("sum by (model) (ray_serve_deployment_replica_healthy)", "has no label 'model'"),
    ("nv_inference_count", "neither a synthrad_ nor a ray_serve_ metric"),
    ("sum(rated(synthrad_requests_total[5m]))", "unknown function rated()"),
])
def test_a_made_up_metric_or_label_is_caught(expr, why):
    dash = _fake_dashboard(expr)
    found = {title: problems(e) for title, e in _panel_exprs(dash) if problems(e)}
    assert list(found) == ["fake"]
    assert any(why in err for err in found["fake"]), found


# --------------------------------------------------------------------------------------------------------------
# The alert rules

def _rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"]
    rules = [r for g in doc["spec"]["groups"] for r in g["rules"]]
    assert all(g["name"] and g["rules"] for g in doc["spec"]["groups"])
    return rules


def test_alert_rules_are_well_formed():
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert r["alert"] and r["expr"].strip(), r
        assert re.fullmatch(r"\d+[smh]", str(r["for"])), r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert re.search(r"(>|<|==|!=)\s*[\d.]+\s*$", r["expr"].strip()), f"{r['alert']}: no threshold"


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_alert_expr_names_only_exported_metrics_and_labels(rule):
    assert problems(rule["expr"]) == [], f"{rule['alert']}: {rule['expr']}"
    # $labels.<x> in the annotations must be labels the expression's result keeps
    used = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
    grouping = parse_promql(rule["expr"]).grouping - {"le"}
    assert used <= grouping, f"{rule['alert']}: annotations use {used - grouping}, not in by (...)"


REQUIRED_ALERTS = {  # metric the alert must query -> (threshold, for)
    "synthrad_requests_total": ("0.01", "5m"),
    "synthrad_generation_latency_seconds_bucket": ("10", "10m"),
    "synthrad_generation_queue_depth": (None, None),
    "ray_serve_deployment_replica_starts_total": ("3", None),
    "synthrad_gpu_memory_used_bytes": ("0.9", None),
}


@pytest.mark.parametrize("metric", sorted(REQUIRED_ALERTS))
def test_required_alerts_exist(metric):
    threshold, for_ = REQUIRED_ALERTS[metric]
    rules = [r for r in _rules() if metric in parse_promql(r["expr"]).metrics]
    assert rules, f"no alert on {metric}"
    if threshold is not None:
        assert any(re.search(r">\s*" + re.escape(threshold) + r"\s*$", r["expr"].strip()) for r in rules)
    if for_ is not None:
        assert any(r["for"] == for_ for r in rules)
