"""deploy/grafana/giggityflix-edge.json is held to the metrics the edge exports: every metric a panel
queries is one the edge's own registry exposes (with the suffix the exposition gives it: `_total`,
`_bucket`, ...), every query is scoped by the `job` and `instance` variables, and every panel reads
the data source chosen in the `datasource` variable, so the dashboard cannot drift from the code."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from purerpc.grpclib.status import StatusCode

from edge.ops.runtime import EdgeRuntime
from edge.proto import CONNECT_PATH
from edge.records import OutboundRecord

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = json.loads((REPO / "deploy" / "grafana" / "giggityflix-edge.json").read_text())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# ------------------------------------------------------------------------------- reading PromQL

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
     "inf", "nan", "start", "end"}
)  # fmt: skip


def selectors(expr: str) -> list[tuple[str, str]]:
    """`(metric name, label matchers)` of every vector selector in a PromQL expression.

    Strings, ranges (`[5m]`) and grouping label lists (`by (le)`) are blanked out first, so their
    contents are not taken for names; an identifier followed by `(` is a function or an aggregation.
    """
    blank = lambda match: " " * len(match.group())  # noqa: E731
    masked = _STRING.sub(lambda match: '"' + " " * (len(match.group()) - 2) + '"', expr)
    masked = _RANGE.sub(blank, _GROUPING.sub(blank, masked))
    found = []
    for match in _IDENTIFIER.finditer(masked):
        name = match.group()
        before = masked[: match.start()]
        if name in _KEYWORDS or before.count("{") > before.count("}"):
            continue  # a keyword, or a label name inside a matcher
        after = match.end() + len(masked[match.end() :]) - len(masked[match.end() :].lstrip())
        if masked.startswith("(", after):
            continue
        matchers = ""
        if masked.startswith("{", after):
            matchers = expr[after + 1 : masked.index("}", after)]
        found.append((name, matchers))
    return found


def test_selectors_are_read_from_promql():
    expr = (
        'histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket'
        '{job=~"$job",grpc_type="unary", x="a{b} sum(c)"}[$__rate_interval] offset 1h))) '
        "/ on (instance) group_left (version) -process_max_fds > bool 1e3"
    )
    assert selectors(expr) == [
        ("grpc_server_handling_seconds_bucket", 'job=~"$job",grpc_type="unary", x="a{b} sum(c)"'),
        ("process_max_fds", ""),
    ]


# ------------------------------------------------------------------------------ the dashboard


def panels(container: dict[str, Any] = DASHBOARD) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)  # a collapsed row holds its panels


def queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel.get("targets", [])]


def exported_sample_names() -> set[str]:
    """Every sample name in the exposition of an edge whose every metric family has a sample: the
    runtime built in-process, with the values that appear only once used (labelled counters without
    pre-created labels, the event buffer bound by `serve`) exercised once each."""
    runtime = EdgeRuntime.create("dashboard")
    metrics = runtime.metrics
    send, _receive = trio.open_memory_channel[OutboundRecord](10)
    metrics.observe_event_buffer(send, 10)
    metrics.message_received("heartbeat")
    metrics.message_sent("heartbeat")
    metrics.commands_received.inc()
    metrics.command_delivered("file_remap", 0.01)
    metrics.commands_retried.labels(cause="peer_not_connected").inc()
    metrics.commands_dead_lettered.labels(reason="peer_not_connected").inc()
    metrics.produced([OutboundRecord("peer-lifecycle-events", "p", {})], 0.01)
    metrics.events_produce_retried.inc()
    metrics.event_backpressure.inc(0.5)
    call = metrics.grpc.call_started(CONNECT_PATH, 0.0)
    call.received()
    call.sent()
    call.handled(StatusCode.OK, 1.0)
    exposition = metrics.exposition().decode()
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def test_every_metric_a_panel_queries_is_exported():
    exported = exported_sample_names()
    queried = {name for _, expr in queries() for name, _ in selectors(expr)}
    for variable in ("job", "instance"):
        # Grafana's label_values(selector, label): the selector is PromQL, the label is not.
        selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", _variable_query(variable))
        assert selector is not None, variable
        queried |= {name for name, _ in selectors(selector.group(1))}
    assert queried, "no queries found"
    if not sys.platform.startswith("linux"):
        queried = {name for name in queried if not name.startswith("process_")}  # read from /proc
    missing = sorted(queried - exported)
    assert not missing, f"queried but not exported by the edge: {missing}"


@pytest.mark.parametrize(("title", "expr"), queries())
def test_every_query_reads_the_chosen_job_and_instance(title, expr):
    found = selectors(expr)
    assert found, (title, expr)
    for name, matchers in found:
        assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, (title, name)


def test_the_panels_an_operator_looks_for_are_there():
    """Peers, sessions by reason, event backlog, produce and command latency, command outcomes,
    refusals, handshake failures, Kafka state and readiness, gRPC codes, the process."""
    by_metric: dict[str, set[str]] = {}
    for title, expr in queries():
        for name, _ in selectors(expr):
            by_metric.setdefault(name, set()).add(title)
    for metric in (
        "giggityflix_edge_peers_connected",
        "giggityflix_edge_sessions_started_total",
        "giggityflix_edge_sessions_ended_total",
        "giggityflix_edge_event_buffer_depth",
        "giggityflix_edge_event_backpressure_seconds_total",
        "giggityflix_edge_kafka_produce_latency_seconds_bucket",
        "giggityflix_edge_command_delivery_latency_seconds_bucket",
        "giggityflix_edge_commands_delivered_total",
        "giggityflix_edge_commands_retried_total",
        "giggityflix_edge_commands_dead_lettered_total",
        "giggityflix_edge_registrations_refused_total",
        "giggityflix_edge_grpc_tls_handshake_failures_total",
        "giggityflix_edge_kafka_connected",
        "giggityflix_edge_ready",
        "grpc_server_handled_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
    ):
        assert metric in by_metric, metric
    latency = [expr for _, expr in queries() if "command_delivery_latency_seconds_bucket" in expr]
    assert any("histogram_quantile(0.5," in expr for expr in latency)
    assert any("histogram_quantile(0.99," in expr for expr in latency)
    assert any("by (reason)" in expr for _, expr in queries() if "sessions_ended_total" in expr)
    assert any("grpc_code" in expr for _, expr in queries() if "grpc_server_handled_total" in expr)


def _variable(name: str) -> dict[str, Any]:
    [variable] = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    return variable


def _variable_query(name: str) -> str:
    query = _variable(name)["query"]
    return query["query"] if isinstance(query, dict) else query


def test_data_source_job_and_instance_are_variables():
    assert _variable("datasource")["type"] == "datasource" and _variable("datasource")["query"] == "prometheus"
    assert _variable_query("job") == "label_values(giggityflix_edge_info, job)"
    assert _variable_query("instance") == 'label_values(giggityflix_edge_info{job=~"$job"}, instance)'
    for name in ("job", "instance"):
        variable = _variable(name)
        assert variable["datasource"] == DATASOURCE and variable["multi"] and variable["includeAll"], name
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]


def test_panels_fit_the_grid_and_have_unique_ids():
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    assert DASHBOARD["uid"] == "giggityflix-edge" and "id" not in DASHBOARD  # importable anywhere
