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
    from bench.scenarios import Params, _edge_settings

    settings = _edge_settings(Params(), 1000)
    assert settings["peer_auth_mode"] == "none"
    assert settings["peer_registration_rate_per_address"] == 0
    assert settings["peer_message_rate"] >= 1_000_000
