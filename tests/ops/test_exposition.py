"""What `/metrics` exposes, tested without a loop: process metrics, the version label, the gRPC server
metrics in the grpc-ecosystem shape, no `_created` series, and the choice between OpenMetrics and the
Prometheus text format by the Accept header."""

from __future__ import annotations

import sys

import prometheus_client
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from purerpc.grpclib.status import StatusCode

import edge
from edge.ops.grpc_metrics import HANDLING_BUCKETS, GrpcServerMetrics, Method, grpc_type, served_methods
from edge.ops.http import respond, wants_openmetrics
from edge.ops.metrics import REFUSAL_CAUSES, EdgeMetrics, edge_version
from edge.ops.runtime import EdgeRuntime
from edge.proto import CONNECT_PATH
from edge.proto import ops as ops_pb

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process metrics read /proc")


def sample(metrics: EdgeMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def sample_names(exposition: str, parse=parse_text) -> set[str]:
    return {sample.name for family in parse(exposition) for sample in family.samples}


@linux_only
def test_process_metrics_are_in_the_edges_own_registry():
    """RSS, open and maximum fds, CPU seconds and start time come from prometheus-client's
    ProcessCollector registered on the edge's registry (not the global one)."""
    metrics = EdgeMetrics.create("e")
    assert sample(metrics, "process_resident_memory_bytes") > 0
    assert sample(metrics, "process_open_fds") >= 3
    assert sample(metrics, "process_max_fds") >= sample(metrics, "process_open_fds")
    assert sample(metrics, "process_cpu_seconds_total") > 0
    assert sample(metrics, "process_start_time_seconds") > 1.7e9


def test_info_names_the_edge_and_its_version():
    metrics = EdgeMetrics.create("edge-9")
    assert edge_version() == edge.__version__ != ""
    assert sample(metrics, "giggityflix_edge_info", edge_id="edge-9", version=edge_version()) == 1


def test_no_created_series_in_either_format_and_the_global_switch_is_untouched():
    metrics = EdgeMetrics.create("e")
    metrics.session_started()
    metrics.delivery_latency.observe(0.2)
    metrics.grpc.call_started(CONNECT_PATH, 0.0).handled(StatusCode.OK, 1.0)
    text = metrics.exposition().decode()
    openmetrics = metrics.exposition(openmetrics_format=True).decode()
    assert "_created" not in text and "_created" not in openmetrics
    assert "giggityflix_edge_sessions_started_total 1.0" in text
    # The edge's registry is filtered; prometheus-client's process-wide setting is left as it was.
    other = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("other", "x", registry=other).inc()
    assert b"other_created" in prometheus_client.generate_latest(other)


def test_openmetrics_exposition_parses_and_ends_with_eof():
    metrics = EdgeMetrics.create("e")
    metrics.grpc.call_started(CONNECT_PATH, 0.0).received()
    openmetrics = metrics.exposition(openmetrics_format=True).decode()
    assert openmetrics.endswith("# EOF\n")
    names = sample_names(openmetrics, parse_openmetrics)
    assert sample_names(metrics.exposition().decode()) == names
    assert {"grpc_server_msg_received_total", "giggityflix_edge_peers_connected"} <= names


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("", False),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("text/plain;version=0.0.4", False),
        ("*/*", False),
        # Prometheus 2 and 3, default scrape protocols
        ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
         "text/plain;version=0.0.4;q=0.5,*/*;q=0.1", True),
        ("application/openmetrics-text;version=1.0.0;escaping=underscores,application/openmetrics-text;"
         "version=0.0.1;q=0.9,text/plain;version=1.0.0;escaping=underscores;q=0.8,text/plain;version=0.0.4;q=0.6,"
         "*/*;q=0.5", True),
        # scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0]
        ("text/plain;version=0.0.4,application/openmetrics-text;version=1.0.0;q=0.5", False),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=nonsense", False),
        ("application/openmetrics-text;version=2.0.0", False),  # not offered
        ("text/plain, Application/OpenMetrics-Text", True),  # a tie: the client named OpenMetrics
    ],
)
def test_accept_header_chooses_the_format(accept, openmetrics):
    assert wants_openmetrics(accept.encode()) is openmetrics


def test_metrics_reply_says_its_format_and_varies_on_accept():
    runtime = EdgeRuntime.create("e")
    text = respond(b"GET", b"/metrics", runtime)
    assert text.content_type == b"text/plain; version=0.0.4; charset=utf-8"
    assert (b"vary", b"accept") in text.extra_headers
    openmetrics = respond(b"GET", b"/metrics", runtime, accept=b"application/openmetrics-text")
    assert openmetrics.content_type == b"application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert openmetrics.body.endswith(b"# EOF\n") and (b"vary", b"accept") in openmetrics.extra_headers


# --- gRPC server metrics ----------------------------------------------------------------------------


def test_every_routed_method_has_a_type_from_its_descriptor():
    methods = served_methods()
    assert set(methods) == {CONNECT_PATH, *EdgeRuntime.create("e").ops_routes()}
    assert methods[CONNECT_PATH] == Method("bidi_stream", "giggityflix.edge.v1.PeerEdgeService", "Connect")
    assert methods[ops_pb.HEALTH_CHECK_PATH] == Method("unary", "grpc.health.v1.Health", "Check")
    assert methods[ops_pb.HEALTH_LIST_PATH].type == "unary"
    assert methods[ops_pb.HEALTH_WATCH_PATH].type == "server_stream"
    assert methods[ops_pb.REFLECTION_V1_PATH] == Method(
        "bidi_stream", "grpc.reflection.v1.ServerReflection", "ServerReflectionInfo"
    )
    assert methods[ops_pb.REFLECTION_V1ALPHA_PATH].type == "bidi_stream"
    assert grpc_type(True, False) == "client_stream"


def test_a_call_is_counted_in_the_grpc_ecosystem_shape():
    metrics = EdgeMetrics.create("e")
    labels = {
        "grpc_type": "bidi_stream",
        "grpc_service": "giggityflix.edge.v1.PeerEdgeService",
        "grpc_method": "Connect",
    }
    # Pre-initialised: every method with every code reads 0 before any call.
    for code in StatusCode:
        assert sample(metrics, "grpc_server_handled_total", **labels, grpc_code=code.name) == 0
    assert sample(metrics, "grpc_server_started_total", **labels) == 0

    call = metrics.grpc.call_started(CONNECT_PATH, 100.0)
    call.received()
    call.received()
    call.sent()
    call.handled(StatusCode.UNAVAILABLE, 160.0)
    metrics.grpc.call_started(CONNECT_PATH, 200.0).handled(StatusCode.CANCELLED, 200.5)

    assert sample(metrics, "grpc_server_started_total", **labels) == 2
    assert sample(metrics, "grpc_server_msg_received_total", **labels) == 2
    assert sample(metrics, "grpc_server_msg_sent_total", **labels) == 1
    assert sample(metrics, "grpc_server_handled_total", **labels, grpc_code="UNAVAILABLE") == 1
    assert sample(metrics, "grpc_server_handled_total", **labels, grpc_code="CANCELLED") == 1
    assert sample(metrics, "grpc_server_handled_total", **labels, grpc_code="OK") == 0
    assert sample(metrics, "grpc_server_handling_seconds_count", **labels) == 2
    assert sample(metrics, "grpc_server_handling_seconds_sum", **labels) == 60.5
    assert sample(metrics, "grpc_server_handling_seconds_bucket", **labels, le="1.0") == 1
    assert sample(metrics, "grpc_server_handling_seconds_bucket", **labels, le="60.0") == 2
    assert HANDLING_BUCKETS[-1] >= 24 * 3600  # a peer's stream lives for days


def test_a_route_without_a_descriptor_is_labelled_from_its_path():
    registry = prometheus_client.CollectorRegistry()
    metrics = GrpcServerMetrics.create(registry, methods={})
    metrics.call_started("/test.Echo/Say", 0.0).handled(StatusCode.OK, 0.0)
    value = registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": "unknown", "grpc_service": "test.Echo", "grpc_method": "Say", "grpc_code": "OK"},
    )
    assert value == 1


def test_refusal_and_handshake_failure_causes_read_zero_before_the_first():
    metrics = EdgeMetrics.create("e")
    for cause in REFUSAL_CAUSES:
        assert sample(metrics, "giggityflix_edge_registrations_refused_total", cause=cause) == 0
    for cause in ("timeout", "eof", "reset", "tls_error", "alpn"):
        assert sample(metrics, "giggityflix_edge_grpc_tls_handshake_failures_total", cause=cause) == 0
    metrics.grpc.handshake_failed("timeout")
    assert sample(metrics, "giggityflix_edge_grpc_tls_handshake_failures_total", cause="timeout") == 1
