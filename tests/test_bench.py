"""The benchmark's own parts: the pure figures (no loop), and its lean load-generator peer speaking
to the edge's real transport over real TLS. Benchmarks themselves are never run as tests."""

from __future__ import annotations

import math

import pytest
import trio

from bench import stats, wire
from bench.machine import CpuPlan
from bench.report import Figure, at_least, at_most, table
from edge.grpc import GrpcServerConfig, ServerStream, StreamError
from edge.grpc.tls import server_ssl_context
from edge.proto import CONNECT_PATH, pb
from testing.harness import running_server


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 99) == 99
    assert stats.percentile([7.0], 99) == 7.0
    assert math.isnan(stats.percentile([], 50))


def test_summarize_sorts_and_reports_count_p50_p99_max():
    assert stats.summarize([3, 1, 2]) == {"count": 3, "p50": 2.0, "p99": 3.0, "max": 3}


def test_steady_rate_ignores_ramp_up_and_drain():
    # 1000 events/s for 10 s, plus a slow trickle before and after that would halve a naive rate.
    steady = [i / 1000 for i in range(10_000)]
    trickle = [-10 + i for i in range(5)] + [20 + i for i in range(5)]
    assert stats.steady_rate(steady + trickle) == pytest.approx(1000, rel=0.01)
    assert stats.steady_rate([0.0, 0.5, 1.0]) == pytest.approx(2.0)
    assert math.isnan(stats.steady_rate([1.0]))


def test_stack_limit_adds_cpu_costs_and_respects_each_rate():
    # gRPC alone: 10k/s at 100 us each; Kafka alone: 20k/s at 50 us each -> 1 / 150 us.
    assert stats.stack_limit((10_000, 100e-6), (20_000, 50e-6)) == pytest.approx(6_666.7, rel=1e-3)
    # A part held back by something else (the broker) bounds the composition.
    assert stats.stack_limit((10_000, 10e-6), (3_000, 10e-6)) == 3_000
    assert stats.ratio(5.0, 10.0) == 0.5
    assert stats.ratio(5.0, None) is None
    assert stats.ratio(5.0, math.nan) is None


def test_grpc_framing_round_trip_keeps_partial_messages():
    buffer = bytearray(wire.frame(b"one") + wire.frame(b"") + wire.frame(b"three"))
    partial = wire.frame(b"four")[:6]
    buffer += partial
    assert wire.unframe(buffer) == [b"one", b"", b"three"]
    assert bytes(buffer) == partial


def test_hash_responses_are_valid_stamped_peer_messages():
    responses = wire.HashResponses(7)
    first, second = (pb.PeerMessage.FromString(responses.next()) for _ in range(2))
    assert first.WhichOneof("payload") == "file_hash_response"
    assert first.request_id.startswith("e7-1-") and second.request_id.startswith("e7-2-")
    assert wire.stamp_of(second.request_id) >= wire.stamp_of(first.request_id) > 0
    assert dict(first.file_hash_response.hashes)["sha256"] == "ab" * 32


def test_cpu_plan_parses_lists_and_ranges():
    plan = CpuPlan.parse("0", "1-3,5")
    assert plan.edge == {0} and plan.load == {1, 2, 3, 5}


def test_figures_ratio_targets_and_table():
    figure = Figure("events: throughput", 700.0, "ev/s", 1000.0, ">= 0.7 x raw", at_least(0.7)(0.7))
    assert figure.ratio == pytest.approx(0.7) and figure.met
    assert at_most(50)(51.0) is False and at_most(50)(math.nan) is None
    text = table([figure, Figure("shutdown: FAILED", None, "")])
    assert "events: throughput" in text and "0.7" in text and "yes" in text


async def test_load_peer_registers_sends_and_resets_over_tls(tls_files, tmp_path):
    """The bench's peer speaks the edge's own transport: registration, messages under flow control,
    and a stream reset the server notices at once."""
    received: list[pb.PeerMessage] = []
    ended = trio.Event()
    ending: list[str] = []

    async def handler(stream: ServerStream):
        first = pb.PeerMessage.FromString(await stream.receive_message())
        reply = pb.EdgeMessage(
            request_id=first.request_id,
            registration_response=pb.PeerRegistrationResponse(peer_name=first.registration_request.peer_name, success=True),
        )
        await stream.send_message(reply.SerializeToString())
        await stream.send_message(pb.EdgeMessage(request_id="c1-1-5", file_hash_request=pb.FileHashRequest()).SerializeToString())
        try:
            while (data := await stream.receive_message()) is not None:
                received.append(pb.PeerMessage.FromString(data))
        except StreamError as error:
            ending.append(type(error).__name__)
        finally:
            ended.set()

    config = GrpcServerConfig(host="127.0.0.1", port=0, ssl_context=server_ssl_context(tls_files.cert_path, tls_files.key_path))
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(tls_files.ca_pem)
    commands: list[str] = []
    peer = wire.Peer("peer-1", lambda _peer, message, _now: commands.append(message.request_id))
    async with running_server(config, {CONNECT_PATH: handler}) as server, trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(peer.run, "127.0.0.1", server.port, wire.client_ssl_context(str(ca_path)),
                                wire.registration("peer-1", 3))
            responses = wire.HashResponses(1)
            # Far more than one 256 KiB stream window: the sender must wait for window updates.
            for _ in range(20):
                await peer.send([responses.next() for _ in range(100)])
            while len(received) < 2000:
                await trio.sleep(0.01)
            await peer.reset()
            await ended.wait()
        nursery.cancel_scope.cancel()
    assert [m.request_id.split("-")[1] for m in received[:3]] == ["1", "2", "3"]
    assert len(received) == 2000
    assert commands == ["c1-1-5"]
    assert ending == ["StreamReset"]


def test_scenario_argument_takes_one_several_or_all_and_rejects_unknown_names(capsys):
    from bench.__main__ import parse_args

    assert parse_args(["events,commands"]).scenario == "events,commands"
    assert parse_args(["all"]).scenario == "all"
    with pytest.raises(SystemExit):
        parse_args(["events,nope"])
    assert "not a scenario: 'events,nope'" in capsys.readouterr().err


def test_edges_under_test_run_without_authentication_or_admission_limits():
    from bench.scenarios import Params, edge_settings

    settings = edge_settings(Params(), 1000)
    assert settings["peer_auth_mode"] == "none"
    assert settings["peer_registration_rate_per_address"] == 0
    assert settings["peer_message_rate"] >= 1_000_000


def test_soak_and_comparison_options():
    from bench.__main__ import ALL, params_from, parse_args

    args = parse_args(["soak", "--duration", "1800", "--warmup", "120", "--no-aio"])
    params = params_from(args)
    assert (params.soak_sec, params.soak_warmup_sec, args.no_aio) == (1800, 120, True)
    assert params_from(parse_args(["soak"])).soak_sec == 1800  # the default: 30 minutes
    assert "soak" not in ALL and "capacity" in ALL


def test_figures_of_both_stacks_merge_by_name_or_by_name_but_the_measured_rate():
    from bench.compare import merge

    edge = [Figure("events: latency p99 @1000/s", 20.0, "ms"), Figure("events: latency p99 @2000/s", 40.0, "ms"),
            Figure("commands: latency p99 @2510/s (half max)", 30.0, "ms"), Figure("soak: only here", 1.0, "%")]
    aio = [Figure("events: latency p99 @2000/s", 10.0, "ms"), Figure("events: latency p99 @1000/s", 5.0, "ms"),
           Figure("commands: latency p99 @6020/s (half max)", 15.0, "ms")]
    merged = merge(edge, aio)
    assert [f.aio for f in merged] == [5.0, 10.0, 15.0, None]
    assert merged[2].aio_ratio == 2.0
    # Two candidates differing only in the rate: no guess.
    assert merge([Figure("x @3/s", 1.0, "")], [Figure("x @1/s", 1.0, ""), Figure("x @2/s", 2.0, "")])[0].aio is None


def test_table_shows_edge_over_raw_and_edge_over_grpcaio():
    text = table([Figure("events: throughput", 700.0, "ev/s", 1000.0, aio=1400.0)])
    header, _rule, row = text.splitlines()
    assert header.split()[:6] == ["figure", "edge", "raw", "stack", "edge/raw", "grpc.aio"]
    assert "0.7" in row and "1,400" in row and "0.5" in row


def test_quantile_curve_keeps_min_percentiles_and_max():
    curve = stats.quantile_curve([float(v) for v in range(1, 1001)], points=10)
    assert curve[0] == (0.0, 1.0) and curve[-1] == (100.0, 1000.0)
    assert curve[5] == (50.0, 500.0) and len(curve) == 11
    assert stats.quantile_curve([]) == []


def _rounds(rss_mib: list[float], fds: list[int], every: float = 10.0) -> list[dict[str, float]]:
    return [{"t": every * (i + 1), "rss_bytes": mib * 2**20, "fds": f} for i, (mib, f) in enumerate(zip(rss_mib, fds, strict=True))]


def test_soak_growth_counts_only_rounds_after_the_warm_up():
    # Warm-up climbs 80 -> 90 MiB; after it, 90 -> 90.9 MiB over 8 rounds: the quarters' medians differ by 0.5 %.
    rss = [80, 85, 88, 90.0, 90.1, 90.2, 90.3, 90.4, 90.5, 90.7, 90.9]
    summary = stats.soak_summary(_rounds(rss, [18] * 11), warmup_sec=35, baseline_fds=18)
    assert summary["rounds"] == 11 and summary["measured_rounds"] == 8
    assert summary["rss_first_mib"] == 90.0 and summary["rss_last_mib"] == 90.7
    assert summary["rss_growth_pct"] == pytest.approx(100 * 0.7 / 90, abs=1e-3)
    assert summary["rss_trend_pct_per_hour"] > 0
    assert summary["fds_above_baseline"] == 0 and summary["max_fds_excess"] == 0


def test_soak_flat_rss_has_no_growth_and_leaked_fds_are_counted():
    summary = stats.soak_summary(_rounds([100.0] * 8, [18, 18, 19, 18, 25, 18, 18, 18]), warmup_sec=0, baseline_fds=18)
    assert summary["rss_growth_pct"] == 0 and summary["rss_trend_pct_per_hour"] == 0
    assert summary["fds_above_baseline"] == 2 and summary["max_fds_excess"] == 7
    too_short = stats.soak_summary(_rounds([100.0] * 3, [18] * 3), warmup_sec=25, baseline_fds=18)
    assert too_short["measured_rounds"] == 1 and math.isnan(too_short["rss_growth_pct"])


def test_grpcaio_stack_maps_the_contract_records_and_commands():
    from bench.aio_edge import command_message, event_record

    response = pb.PeerMessage(request_id="e1-1-5", file_hash_response=pb.FileHashResponse(
        catalog_uuid="c-1", hashes={"sha256": "ab"}))
    record = event_record("peer-1", "edge-1", response)
    assert record is not None
    assert {k: record[k] for k in ("peer_id", "edge_id", "request_id", "catalog_uuid", "hashes", "error_message")} == {
        "peer_id": "peer-1", "edge_id": "edge-1", "request_id": "e1-1-5", "catalog_uuid": "c-1",
        "hashes": {"sha256": "ab"}, "error_message": ""}
    assert record["timestamp"].endswith("Z")
    assert event_record("peer-1", "edge-1", pb.PeerMessage(heartbeat=pb.Heartbeat())) is None
    message = command_message({"peer_id": "peer-1", "command_type": "file_hash", "request_id": "r1",
                               "command_data": {"catalog_uuid": "c-1", "hash_types": ["sha256"]}})
    assert message is not None and message.request_id == "r1"
    assert message.file_hash_request.catalog_uuid == "c-1" and list(message.file_hash_request.hash_types) == ["sha256"]
    assert command_message({"peer_id": "peer-1", "command_type": "screenshot_capture", "command_data": {}}) is None


def test_plots_are_written_from_the_results(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.plots import write_plots

    curve = stats.quantile_curve([1.0, 2.0, 5.0, 9.0])
    steps = [{"offered_rate": 500, "latency_curve_ms": curve}, {"offered_rate": "max", "latency_curve_ms": curve}]
    capacity = [{"peers": n, "rss_mib": n / 10, "hold_cpu_share": n / 1000} for n in (50, 100)]
    soak = {"rounds": _rounds([90.0, 90.5], [18, 18]), "baseline_fds": 18}
    results = {
        "events": {"steps": steps, "grpcaio": {"steps": steps}},
        "commands": {"half": {"rate": 100.0, "latency_curve_ms": curve}, "grpcaio": {"error": "failed"}},
        "capacity": {"steps": capacity, "raw_steps": capacity, "grpcaio": {"steps": capacity}},
        "soak": {**soak, "grpcaio": soak},
        "shutdown": {"error": "RuntimeError"},
    }
    written = write_plots(results, tmp_path, warmup_sec=5)
    assert sorted(p.name for p in written) == ["capacity.png", "latency-commands.png", "latency-events.png", "soak.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
