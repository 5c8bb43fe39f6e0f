"""Peer sessions under MockClock: liveness, handshake, takeover, endings, limits
(docs/protocol.md#heartbeats-and-timeouts, #registration, #endings, #bad-input).

Rules: the real handler behind the real transport over in-memory streams (tests/peers/support.py), an
in-memory channel in place of the Kafka bridge; `mock_clock` where a test must show that something
happens at an exact time and not before (the test moves time itself), `autojump_clock` elsewhere;
`wait_all_tasks_blocked()` to let the edge settle, never sleeps on the real clock.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from edge.config import settings_for_tests
from edge.grpc import ServerStream, StatusCode
from edge.peers import protocol
from edge.handoff import Delivery, SessionGone
from edge.proto import pb
from edge.records import DisconnectReason

from .support import capture_logs, memory_edge

HEARTBEAT = 10
TIMEOUT = 25
SETTINGS = settings_for_tests(heartbeat_interval_sec=HEARTBEAT, peer_timeout_sec=TIMEOUT)


def delete_response(request_id: str) -> pb.PeerMessage:
    return pb.PeerMessage(
        request_id=request_id, file_delete_response=pb.FileDeleteResponse(catalog_uuid="c", success=True)
    )


def reasons(edge: Any) -> list[tuple[str, str, str | None]]:
    return [(v["peer_id"], v["event_type"], v.get("reason")) for v in edge.lifecycle()]


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


# ------------------------------------------------------------------------------------------ liveness


async def test_silence_ends_the_session_at_exactly_the_peer_timeout(mock_clock: Any) -> None:
    """Registered at t0 and silent since: still connected at t0 + 25 - 1 ms, cut off at t0 + 25 with
    reason `timeout` and DEADLINE_EXCEEDED (the edge's own heartbeats at 10 and 20 do not count)."""
    async with memory_edge(SETTINGS) as edge:
        peer = await edge.connect()
        await peer.register("quiet")
        await settle()
        t0 = trio.current_time()
        assert edge.registry.lookup("quiet") is not None
        mock_clock.jump(TIMEOUT - 0.001)
        await settle()
        assert reasons(edge) == [("quiet", "connected", None)]
        assert peer.status() is None
        mock_clock.jump(0.001)
        await settle()
        assert reasons(edge) == [("quiet", "connected", None), ("quiet", "disconnected", "timeout")]
        assert edge.lifecycle_at("disconnected", "quiet") == [t0 + TIMEOUT]
        assert peer.status() == (StatusCode.DEADLINE_EXCEEDED, f"no message from the peer in {TIMEOUT} s")
        assert edge.registry.lookup("quiet") is None and len(edge.registry) == 0
        assert peer.kinds() == ["registration_response", "heartbeat", "heartbeat"]


async def test_any_inbound_message_refreshes_the_deadline(mock_clock: Any) -> None:
    """A heartbeat at t0+20 and a delete response at t0+40 each restart the 25 s clock: the cut-off
    comes at t0+65 exactly, not at t0+25 or t0+45."""
    async with memory_edge(SETTINGS) as edge:
        peer = await edge.connect()
        await peer.register("talker")
        await settle()
        t0 = trio.current_time()
        mock_clock.jump(20)
        await peer.heartbeat()
        await settle()
        mock_clock.jump(20)  # t0+40: past the first deadline
        await peer.send(delete_response("r1"))
        await settle()
        mock_clock.jump(TIMEOUT - 0.001)  # t0+65 - 1 ms
        await settle()
        assert edge.lifecycle_at("disconnected", "talker") == []
        mock_clock.jump(0.001)
        await settle()
        assert edge.lifecycle_at("disconnected", "talker") == [t0 + 40 + TIMEOUT]
        assert reasons(edge)[-1] == ("talker", "disconnected", "timeout")


async def test_edge_heartbeats_go_out_at_the_configured_interval(autojump_clock: Any) -> None:
    """A peer that heartbeats every 9 s stays for 10 minutes and receives the edge's heartbeats at
    exactly t0+10, t0+20, ... t0+600 (HEARTBEAT_INTERVAL_SEC; purerpc sends no HTTP/2 pings,
    docs/design.md#purerpc-no-keepalive), each stamped by the injected clock."""
    async with memory_edge(SETTINGS) as edge:
        peer = await edge.connect()
        await peer.register("steady")
        await peer.wait_kind("registration_response")
        t0 = trio.current_time()
        for _ in range(600 // 9):
            await trio.sleep(9)
            await peer.heartbeat()
        await trio.sleep(600 - 9 * (600 // 9) + 0.5)
        arrivals = [round(at - t0, 6) for at in peer.arrivals("heartbeat")]
        assert arrivals == [float(n * HEARTBEAT) for n in range(1, 61)]
        beat = next(m for m in peer.received() if m.WhichOneof("payload") == "heartbeat")
        assert beat.heartbeat.sent_at_unix_ms == 1767323045000  # support.FIXED_NOW
        assert reasons(edge) == [("steady", "connected", None)]


async def test_a_stream_that_never_registers_is_closed_at_the_handshake_timeout(mock_clock: Any) -> None:
    """No registration: a refusal (success false) and DEADLINE_EXCEEDED at exactly
    PEER_HANDSHAKE_TIMEOUT_SEC, not before; nothing is published."""
    settings = settings_for_tests(peer_handshake_timeout_sec=7.5)
    async with memory_edge(settings) as edge:
        peer = await edge.connect()
        await settle()
        mock_clock.jump(7.499)
        await settle()
        assert peer.status() is None
        mock_clock.jump(0.001)
        await settle()
        assert peer.status() == (StatusCode.DEADLINE_EXCEEDED, "no registration within 7.5 s")
        [refusal] = peer.received()
        assert not refusal.registration_response.success
        assert refusal.registration_response.error_message == "no registration within 7.5 s"
        assert edge.published == [] and edge.stats.streams_open == 0


# ------------------------------------------------------------------------------------------ takeover


async def test_takeover_publishes_replaced_strictly_before_the_new_connected(autojump_clock: Any) -> None:
    """A second stream registering a connected id: the old one ends ABORTED with `disconnected(replaced)`,
    queued before the new `connected`; epochs grow; the registry hands out the new session."""
    async with memory_edge(SETTINGS) as edge:
        first = await edge.connect()
        await first.register("dup", request_id="one")
        await first.wait_kind("registration_response")
        old = edge.registry.lookup("dup")
        second = await edge.connect()
        await second.register("dup", request_id="two")
        response = (await second.wait_kind("registration_response")).registration_response
        assert await first.wait_status() == (StatusCode.ABORTED, "replaced by a newer stream for the same peer id")
        life = edge.lifecycle("dup")
        assert [(v["event_type"], v.get("reason")) for v in life] == [
            ("connected", None),
            ("disconnected", "replaced"),
            ("connected", None),
        ]
        assert life[0]["session_id"] == life[1]["session_id"] == old.info.session_id
        assert life[2]["session_id"] == response.session_id != old.info.session_id
        assert life[0]["epoch"] == life[1]["epoch"] < life[2]["epoch"]
        new = edge.registry.lookup("dup")
        assert new is not None and new.info.session_id == response.session_id
        with pytest.raises(SessionGone):
            old.offer(Delivery(pb.EdgeMessage()))


async def test_takeover_of_a_session_held_up_by_backpressure_keeps_the_order(autojump_clock: Any) -> None:
    """The old session's reader is stuck on a full event channel (Kafka slow) with a message it read:
    the takeover still ends it; that message, then `disconnected(replaced)`, then the new `connected`
    come out in this order once the channel moves."""
    async with memory_edge(SETTINGS, drain=False, event_buffer=1) as edge:
        first = await edge.connect()
        await first.register("slow")
        assert (await edge.take()).value["event_type"] == "connected"
        assert (await edge.take()).value["update_type"] == "full"
        await first.send(delete_response("a"))
        await first.send(delete_response("b"))  # "a" fills the channel; the reader holds "b"
        await settle()
        second = await edge.connect()
        await second.register("slow")
        await settle()
        taken = [(await edge.take()).value for _ in range(5)]
        assert [(v.get("request_id"), v.get("event_type"), v.get("reason")) for v in taken] == [
            ("a", None, None),
            ("b", None, None),
            (None, "disconnected", "replaced"),
            (None, "connected", None),
            ("reg", None, None),  # the new session's catalog
        ]
        assert taken[2]["epoch"] < taken[3]["epoch"]
        assert await first.wait_status() == (StatusCode.ABORTED, "replaced by a newer stream for the same peer id")
        await second.half_close()
        assert (await edge.take()).value["reason"] == "stream_closed"


# ------------------------------------------------------------------------------------------- endings


async def test_cancelling_one_peers_scope_publishes_one_disconnected_and_touches_no_other(autojump_clock: Any) -> None:
    """`session.scope.cancel()` on one of three peers: exactly one `disconnected` (its reason
    `shutdown`, status UNAVAILABLE); the two others keep their sessions, heartbeats and deliveries."""
    async with memory_edge(SETTINGS) as edge:
        peers = {}
        for name in ("a", "b", "c"):
            peers[name] = await edge.connect()
            await peers[name].register(name)
            await peers[name].wait_kind("registration_response")
        target = edge.registry.lookup("b")
        others = {name: edge.registry.lookup(name) for name in ("a", "c")}
        target.scope.cancel()
        assert await peers["b"].wait_status() == (StatusCode.UNAVAILABLE, "edge shutting down")
        await settle()
        assert [v for v in reasons(edge) if v[1] == "disconnected"] == [("b", "disconnected", "shutdown")]
        for name, session in others.items():
            assert edge.registry.lookup(name) is session and session.end_reason is None
            await peers[name].heartbeat()
        delivery = Delivery(pb.EdgeMessage(request_id="cmd-1", file_hash_request=pb.FileHashRequest(catalog_uuid="x")))
        others["a"].offer(delivery)
        assert await delivery.wait() is True
        await trio.sleep(HEARTBEAT + 1)
        assert [m.request_id for m in peers["a"].received()][-2:] == ["cmd-1", ""]  # the command, a heartbeat
        assert peers["a"].status() is None and peers["c"].status() is None
        assert len(edge.registry) == 2
    assert sorted(v[0] for v in reasons(edge) if v[1] == "disconnected") == ["a", "b", "c"]


@pytest.mark.parametrize("how", ["half_close", "reset", "drop"])
async def test_a_peer_that_hangs_up_is_noticed_at_once(autojump_clock: Any, how: str) -> None:
    """Half-close (OK), RST_STREAM or a closed connection: `disconnected(stream_closed)` in the same
    instant, not at the heartbeat timeout; nothing is left in the registry or the transport."""
    async with memory_edge(SETTINGS) as edge:
        peer = await edge.connect()
        await peer.register("leaver")
        await peer.wait_kind("registration_response")
        left_at = trio.current_time()
        await getattr(peer, how)()
        await edge.wait_published(lambda ps: len(ps) == 3)
        assert reasons(edge)[-1] == ("leaver", "disconnected", "stream_closed")
        assert edge.lifecycle_at("disconnected", "leaver") == [left_at]
        await settle()
        assert len(edge.registry) == 0 and edge.stats.streams_open == 0
        if how == "half_close":
            assert peer.status() == (StatusCode.OK, "stream closed by peer")


async def test_a_reset_is_noticed_even_while_kafka_holds_the_reader(autojump_clock: Any) -> None:
    """The event channel is full (Kafka slow) and the reader waits on it: a reset still ends the
    session at once (the registry forgets it, commands fail fast), and the message the reader held is
    queued before `disconnected`."""
    async with memory_edge(SETTINGS, drain=False, event_buffer=1) as edge:
        peer = await edge.connect()
        await peer.register("stuck")
        await edge.take()  # connected
        await edge.take()  # catalog
        await peer.send(delete_response("held-1"))
        await peer.send(delete_response("held-2"))
        await settle()
        session = edge.registry.lookup("stuck")
        await peer.reset()
        await settle()
        assert session.end_reason is DisconnectReason.STREAM_CLOSED
        assert edge.registry.lookup("stuck") is None
        with pytest.raises(SessionGone):
            session.offer(Delivery(pb.EdgeMessage()))
        taken = [(await edge.take()).value for _ in range(3)]
        assert [v.get("request_id") or v["reason"] for v in taken] == ["held-1", "held-2", "stream_closed"]


async def test_shutdown_ends_every_session_with_unavailable(autojump_clock: Any) -> None:
    """Cancelling the server: each session's `disconnected(shutdown)` is queued before the event
    channel closes, and each peer gets UNAVAILABLE "edge shutting down"."""
    async with memory_edge(SETTINGS) as edge:
        peers = []
        for n in range(5):
            peer = await edge.connect()
            await peer.register(f"p{n}")
            peers.append(peer)
        for peer in peers:
            await peer.wait_kind("registration_response")
        await edge.shutdown()
        await edge.drained.wait()
        for peer in peers:
            assert await peer.wait_status() == (StatusCode.UNAVAILABLE, "edge shutting down")
    assert sorted(v for v in reasons(edge) if v[1] == "disconnected") == [
        (f"p{n}", "disconnected", "shutdown") for n in range(5)
    ]


async def test_a_bug_ends_only_its_session_with_reason_error(autojump_clock: Any, monkeypatch: Any) -> None:
    """A fault injected into the pure mapping for one message: that session ends `error` with INTERNAL
    "internal error" (no exception text), the traceback is logged with the peer's id; another peer
    on the same edge carries on."""
    real = protocol.records_for_message

    def faulty(message: pb.PeerMessage, *args: Any) -> Any:
        if message.request_id == "boom":
            raise RuntimeError("secret internals")
        return real(message, *args)

    monkeypatch.setattr(protocol, "records_for_message", faulty)
    with capture_logs() as logs:
        async with memory_edge(SETTINGS) as edge:
            victim, bystander = await edge.connect(), await edge.connect()
            await victim.register("victim")
            await bystander.register("bystander")
            await victim.wait_kind("registration_response")
            await victim.send(delete_response("boom"))
            assert await victim.wait_status() == (StatusCode.INTERNAL, "internal error")
            await bystander.send(delete_response("fine"))
            await settle()
            assert reasons(edge)[-1] == ("victim", "disconnected", "error")
            assert edge.published[-1].value["request_id"] == "fine"
            assert edge.registry.lookup("bystander") is not None
    [failure] = [entry for entry in logs if entry["event"] == "peer_session_failed"]
    assert failure["peer_id"] == "victim" and failure["log_level"] == "error" and failure["exc_info"]


async def test_a_call_deadline_set_by_the_peer_ends_the_session_as_stream_closed(autojump_clock: Any) -> None:
    """A peer that puts grpc-timeout on its Connect call: the transport ends the call at that deadline
    (DEADLINE_EXCEEDED); the session's reason is `stream_closed` (the peer's own call ended), not
    `shutdown`."""
    async with memory_edge(SETTINGS) as edge:
        timed = await edge.connect(extra_headers=(("grpc-timeout", "15S"),))
        await timed.register("deadline")
        started = trio.current_time()
        for _ in range(3):
            await trio.sleep(9)
            await timed.heartbeat()
        assert (await timed.wait_status())[0] == StatusCode.DEADLINE_EXCEEDED
        assert edge.lifecycle_at("disconnected", "deadline") == [started + 15]
        assert reasons(edge)[-1] == ("deadline", "disconnected", "stream_closed")


# --------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "first, code, detail",
    [
        (b"\xff\xfe garbage", StatusCode.INVALID_ARGUMENT, "message is not a valid PeerMessage"),
        (pb.PeerMessage(heartbeat=pb.Heartbeat()), StatusCode.INVALID_ARGUMENT, "first message must be a registration_request, got heartbeat"),
        (pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="")), StatusCode.INVALID_ARGUMENT, "peer_name must be"),
        (pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="x" * 129)), StatusCode.INVALID_ARGUMENT, "peer_name must be"),
        (b"\x12" + b"\x00" * 3000, StatusCode.RESOURCE_EXHAUSTED, "received message of 3001 bytes exceeds the limit of 2048 bytes"),
    ],
    ids=["random_bytes", "not_a_registration", "empty_id", "long_id", "oversized"],
)
async def test_a_bad_first_message_gets_a_refusal_and_a_clear_status(autojump_clock: Any, first: Any, code: int, detail: str) -> None:
    settings = settings_for_tests(grpc_max_message_bytes=2048)
    async with memory_edge(settings) as edge:
        peer = await edge.connect()
        await peer.send(first)
        status = await peer.wait_status()
        assert status[0] == code and status[1].startswith(detail)
        [refusal] = peer.received()
        assert refusal.registration_response.success is False
        assert refusal.registration_response.error_message == status[1]
        assert edge.published == []


@pytest.mark.parametrize(
    "message, code, detail",
    [
        (b"\xff\xfe garbage", StatusCode.INVALID_ARGUMENT, "message is not a valid PeerMessage"),
        (pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="again")), StatusCode.INVALID_ARGUMENT, "registration_request on an already registered stream"),
        (b"\x12" + b"\x00" * 3000, StatusCode.RESOURCE_EXHAUSTED, "received message of 3001 bytes exceeds the limit of 2048 bytes"),
    ],
    ids=["random_bytes", "second_registration", "oversized"],
)
async def test_bad_input_after_registration_is_a_protocol_error(autojump_clock: Any, message: Any, code: int, detail: str) -> None:
    settings = settings_for_tests(grpc_max_message_bytes=2048)
    async with memory_edge(settings) as edge:
        peer = await edge.connect()
        await peer.register("bad")
        await peer.wait_kind("registration_response")
        await peer.send(message)
        assert await peer.wait_status() == (code, detail)
        await settle()
        assert reasons(edge)[-1] == ("bad", "disconnected", "protocol_error")


async def test_an_unknown_payload_after_registration_is_ignored(autojump_clock: Any) -> None:
    """A newer peer's payload kind (field 99): logged, not an error, and it counts as liveness."""
    unknown = pb.PeerMessage(request_id="new").SerializeToString() + b"\x9a\x06\x00"
    with capture_logs() as logs:
        async with memory_edge(SETTINGS) as edge:
            peer = await edge.connect()
            await peer.register("newer")
            await peer.wait_kind("registration_response")
            await trio.sleep(20)
            await peer.send(unknown)
            await trio.sleep(20)  # 40 s after registration, 20 s after the unknown message
            assert peer.status() is None and reasons(edge) == [("newer", "connected", None)]
    assert any(e["event"] == "peer_message_kind_unknown" and e["peer_id"] == "newer" for e in logs)


# ------------------------------------------------------------------------------------------- limits


async def test_max_peers_refuses_registration_with_resource_exhausted(autojump_clock: Any) -> None:
    """At MAX_PEERS a new id is refused (refusal, then RESOURCE_EXHAUSTED, nothing published), while a
    takeover of a connected id still works, and a freed slot is usable again."""
    async with memory_edge(settings_for_tests(max_peers=2)) as edge:
        a, b = await edge.connect(), await edge.connect()
        await a.register("a")
        await b.register("b")
        await b.wait_kind("registration_response")
        c = await edge.connect()
        await c.register("c")
        assert await c.wait_status() == (StatusCode.RESOURCE_EXHAUSTED, "edge is at its peer limit (2)")
        assert c.received()[0].registration_response.success is False
        assert [v[0] for v in reasons(edge)] == ["a", "b"]
        a2 = await edge.connect()
        await a2.register("a")
        await a2.wait_kind("registration_response")
        await b.half_close()
        await b.wait_status()
        c2 = await edge.connect()
        await c2.register("c")
        await c2.wait_kind("registration_response")
        assert sorted(s.info.peer_id for s in edge.registry.sessions()) == ["a", "c"]


async def test_a_peer_that_stops_reading_cannot_grow_the_edges_memory(autojump_clock: Any) -> None:
    """The peer stops acknowledging data (HTTP/2 flow control closes): the writer stops, the outbound
    channel fills, and `offer` raises WouldBlock at once; of 1000 offered 8 KB commands the edge
    holds at most PEER_OUTBOUND_QUEUE_SIZE + the ones its window let through + one being written.
    When the session ends, every held delivery settles as not written."""
    settings = settings_for_tests(heartbeat_interval_sec=HEARTBEAT, peer_timeout_sec=TIMEOUT, peer_outbound_queue_size=4)
    async with memory_edge(settings) as edge:
        peer = await edge.connect()
        await peer.register("deaf")
        await peer.wait_kind("registration_response")
        peer.client.reading = False
        session = edge.registry.lookup("deaf")
        accepted, refused = [], 0
        for n in range(1000):
            delivery = Delivery(pb.EdgeMessage(request_id=f"c{n}", file_delete_request=pb.FileDeleteRequest(catalog_uuids=["u" * 8000])))
            try:
                session.offer(delivery)
                accepted.append(delivery)
            except trio.WouldBlock:
                refused += 1
            await settle()
        written = [d for d in accepted if d.settled and d.written]
        # What HTTP/2's initial window (65,535 bytes) lets through after the registration response.
        framed = 5 + len(accepted[0].message.SerializeToString())
        window_left = 65_535 - (5 + len(peer.received()[0].SerializeToString()))
        assert len(written) == window_left // framed == 8
        assert len(accepted) == len(written) + 1 + 4  # + the one being written + the queue
        assert refused == 1000 - len(accepted)
        assert peer.client.unacknowledged <= 65_535
        await trio.sleep(TIMEOUT + 1)  # the peer is silent too: the timeout ends it
        assert reasons(edge)[-1] == ("deaf", "disconnected", "timeout")
        assert all(d.settled for d in accepted)
        assert [d.written for d in accepted].count(True) == 8


async def test_delivery_is_settled_written_once_on_the_stream(autojump_clock: Any) -> None:
    """`offer` + `wait()`: True once the message is written, and the peer has it; SessionGone after
    the end, and a message over GRPC_MAX_MESSAGE_BYTES settles False without ending the session."""
    async with memory_edge(settings_for_tests(grpc_max_message_bytes=2048)) as edge:
        peer = await edge.connect()
        await peer.register("target")
        await peer.wait_kind("registration_response")
        session = edge.registry.lookup("target")
        big = Delivery(pb.EdgeMessage(request_id="big", file_delete_request=pb.FileDeleteRequest(catalog_uuids=["x" * 4000])))
        ok = Delivery(pb.EdgeMessage(request_id="ok", file_remap_request=pb.FileRemapRequest(old_catalog_uuid="o", new_catalog_uuid="n")))
        session.offer(big)
        session.offer(ok)
        assert await big.wait() is False
        assert await ok.wait() is True
        await settle()
        assert [m.request_id for m in peer.received()] == ["reg", "ok"]
        await peer.half_close()
        await settle()
        with pytest.raises(SessionGone):
            session.offer(Delivery(pb.EdgeMessage()))
        assert edge.registry.lookup("target") is None


async def test_commands_queued_together_are_handed_to_the_stream_in_one_write(autojump_clock: Any, monkeypatch: Any) -> None:
    """Ten deliveries offered at once leave the session's writer as one `send_messages` call, in order,
    and each is settled written."""
    calls: list[int] = []
    original = ServerStream.send_messages

    async def counting(self: ServerStream, messages: Any, sent: Any = None) -> None:
        calls.append(len(messages))
        await original(self, messages, sent)

    monkeypatch.setattr(ServerStream, "send_messages", counting)
    async with memory_edge(SETTINGS) as edge:
        peer = await edge.connect()
        await peer.register("busy")
        await peer.wait_kind("registration_response")
        session = edge.registry.lookup("busy")
        calls.clear()
        deliveries = [Delivery(pb.EdgeMessage(request_id=f"c{n}", file_delete_request=pb.FileDeleteRequest(catalog_uuids=["u"]))) for n in range(10)]
        for delivery in deliveries:
            session.offer(delivery)
        assert [await d.wait() for d in deliveries] == [True] * 10
        await settle()
        assert calls == [10]
        assert [m.request_id for m in peer.received()][1:] == [f"c{n}" for n in range(10)]


async def test_an_ending_while_kafka_is_away_is_published_when_it_is_back(autojump_clock: Any) -> None:
    """The event channel is full and stays full for 100 s (Kafka away, far past SHUTDOWN_TIMEOUT_SEC):
    a session that ends meanwhile gets its status at once, its `disconnected` waits and comes out
    when the channel moves, never lost. A takeover of that id meanwhile is told to come back
    (UNAVAILABLE after SHUTDOWN_TIMEOUT_SEC), and succeeds once the old ending is queued."""
    async with memory_edge(SETTINGS, drain=False, event_buffer=3) as edge:
        peer = await edge.connect()
        await peer.register("patient")
        await settle()  # connected, its presence twin and the catalog fill the channel
        ended_at = trio.current_time()
        await peer.send(b"\xff\xfe not protobuf")
        assert await peer.wait_status() == (StatusCode.INVALID_ARGUMENT, "message is not a valid PeerMessage")
        assert trio.current_time() == ended_at
        early = await edge.connect()
        await early.register("patient")
        assert await early.wait_status() == (StatusCode.UNAVAILABLE, "previous session for this peer id is still closing")
        assert trio.current_time() - ended_at == pytest.approx(SETTINGS.shutdown_timeout_sec)
        await trio.sleep(100)
        taken = [(await edge.take()).value for _ in range(3)]
        assert [(v.get("event_type"), v.get("update_type"), v.get("reason")) for v in taken] == [
            ("connected", None, None),
            (None, "full", None),
            ("disconnected", None, "protocol_error"),
        ]
        again = await edge.connect()
        await again.register("patient")
        assert (await edge.take()).value["event_type"] == "connected"
        await again.wait_kind("registration_response")
