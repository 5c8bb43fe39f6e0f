"""What `GrpcServerProtocol` assumes of the installed purerpc and h2, pinned so an upgrade fails here.

`GrpcServerProtocol` subclasses purerpc's `GRPCConnection` and overrides ten of its private hooks (plus
`__init__` and three public methods). Nothing in purerpc promises that those hooks keep their names,
signatures or callers, so each assumption is a test: the versions, the exact set of overridden names,
each signature against the base class, and, per hook, the behaviour relied upon (who calls it, with
what, and what becomes of its result). No I/O and no event loop; each test states one assumption.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.status import Status, StatusCode

from edge.grpc.events import PeerGoingAway, PeerSettingsReceived, RequestStarted, SendWindowOpened, StreamReadable
from edge.grpc.limits import ProtocolLimits
from edge.grpc.protocol import GrpcServerProtocol

#: The h2 event each private hook handles, as purerpc's `receive_data` dispatches it.
EVENT_HOOKS = {
    "_request_received": h2.events.RequestReceived,
    "_response_received": h2.events.ResponseReceived,
    "_trailers_received": h2.events.TrailersReceived,
    "_data_received": h2.events.DataReceived,
    "_window_updated": h2.events.WindowUpdated,
    "_remote_settings_changed": h2.events.RemoteSettingsChanged,
    "_stream_ended": h2.events.StreamEnded,
    "_stream_reset": h2.events.StreamReset,
    "_connection_terminated": h2.events.ConnectionTerminated,
}
#: Private hooks: the nine above and the one `__init__` calls.
PRIVATE_HOOKS = frozenset(EVENT_HOOKS) | {"_set_h2_connection_local_settings"}
#: Public methods of GRPCConnection that GrpcServerProtocol replaces.
PUBLIC_OVERRIDES = frozenset({"__init__", "initiate_connection", "receive_data", "data_to_send"})
#: Public methods of GRPCConnection that GrpcServerProtocol calls as they are.
INHERITED = {
    "start_response": ["self", "stream_id", "content_type_suffix", "custom_metadata"],
    "send_data": ["self", "stream_id", "data", "end_stream"],
    "flow_control_window": ["self", "stream_id"],
}

PATH = "/svc/Method"


def limits(**overrides: Any) -> ProtocolLimits:
    values: dict[str, Any] = {
        "max_message_bytes": 1024,
        "max_concurrent_streams": 7,
        "stream_inbound_queue": 2,
        "stream_window_bytes": 32 * 1024,
        "max_header_list_bytes": 4096,
    }
    values.update(overrides)
    return ProtocolLimits(**values)


def connected() -> tuple[GrpcServerProtocol, h2.connection.H2Connection, list[object]]:
    """A server and an h2 client past the connection preface; the server's events so far."""
    server = GrpcServerProtocol(limits())
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server.initiate_connection()
    client.initiate_connection()
    client.receive_data(server.data_to_send())
    events = server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return server, client, events


def request_headers() -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "x"),
            ("te", "trailers"), ("content-type", "application/grpc")]


def test_versions_are_the_ones_the_hooks_were_checked_against() -> None:
    """Moving either pin means re-reading purerpc's GRPCConnection against every test in this module."""
    assert version("purerpc") == "0.8.0"
    assert version("h2") == "3.2.0"


def test_the_overridden_names_are_exactly_the_pinned_ones() -> None:
    """A new override of a purerpc method (or a removed one) must be pinned here first."""
    overridden = {name for name in vars(GrpcServerProtocol) if hasattr(GRPCConnection, name)} - {
        "__doc__", "__module__", "__dict__", "__weakref__", "__annotations__",
    }
    assert overridden == PRIVATE_HOOKS | PUBLIC_OVERRIDES


@pytest.mark.parametrize("name", sorted(PRIVATE_HOOKS | PUBLIC_OVERRIDES - {"__init__"}))
def test_each_override_accepts_what_purerpc_passes_the_base_method(name: str) -> None:
    """Same name on the base class, a function there, and every argument purerpc's own signature
    declares (by position, as purerpc calls them) is accepted by ours."""
    base = inspect.getattr_static(GRPCConnection, name)
    ours = inspect.getattr_static(GrpcServerProtocol, name)
    assert inspect.isfunction(base) and inspect.isfunction(ours)
    base_params = list(inspect.signature(base).parameters.values())
    ours_signature = inspect.signature(ours)
    required = [p for p in base_params if p.default is inspect.Parameter.empty]
    ours_signature.bind(*(object() for _ in required))
    for count in range(len(required), len(base_params) + 1):
        ours_signature.bind(*(object() for _ in range(count)))


@pytest.mark.parametrize("name", sorted(EVENT_HOOKS))
def test_event_hooks_take_one_event(name: str) -> None:
    assert list(inspect.signature(getattr(GRPCConnection, name)).parameters) == ["self", "event"]


@pytest.mark.parametrize(("name", "params"), sorted(INHERITED.items()))
def test_inherited_methods_keep_their_signature(name: str, params: list[str]) -> None:
    assert name not in vars(GrpcServerProtocol)
    assert list(inspect.signature(getattr(GRPCConnection, name)).parameters) == params


@pytest.mark.parametrize(("name", "event_type"), sorted(EVENT_HOOKS.items()))
def test_purerpc_receive_data_routes_each_h2_event_to_its_hook(name: str, event_type: type) -> None:
    """Our `receive_data` hands bytes to purerpc's, which must call hook `name` once with each h2
    event of `event_type` and return what the hooks return, in order."""
    calls: list[tuple[str, object]] = []

    class Recorder(GrpcServerProtocol):
        pass

    for hook in EVENT_HOOKS:
        setattr(Recorder, hook, lambda self, event, hook=hook: calls.append((hook, event)) or [f"{hook}:{id(event)}"])
    server = Recorder(limits())
    first, second = event_type(), event_type()
    server.h2_connection.receive_data = lambda data: [first, second]  # type: ignore[method-assign]
    results = GRPCConnection.receive_data(server, b"")
    assert calls == [(name, first), (name, second)]
    assert results == [f"{name}:{id(first)}", f"{name}:{id(second)}"]


def test_init_lets_the_settings_hook_have_the_last_word() -> None:
    """purerpc's `__init__` calls `_set_h2_connection_local_settings` after making the H2Connection and
    sets nothing after it: our limits are what h2 enforces and what `initiate_connection` announces."""
    server = GrpcServerProtocol(limits())
    local = server.h2_connection.local_settings
    assert local[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
    assert local[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 32 * 1024
    assert local[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 4096
    assert server.h2_connection.decoder.max_header_list_size == 4096
    # The H2Connection is made in __init__ with a config object we may still change afterwards.
    assert server.h2_connection.config.header_encoding is None
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.initiate_connection()
    [changed] = [e for e in client.receive_data(server.data_to_send()) if isinstance(e, h2.events.RemoteSettingsChanged)]
    announced = {code: setting.new_value for code, setting in changed.changed_settings.items()}
    assert announced[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
    assert announced[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 32 * 1024


def test_hooks_see_a_whole_call_in_the_order_h2_emits_it() -> None:
    """On real bytes from an h2 client, the hooks turn settings, a request, a message, the end of the
    request, window updates and GOAWAY into our events (purerpc's own hooks would emit its events)."""
    server, client, preface_events = connected()
    assert PeerSettingsReceived() in preface_events
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, request_headers())
    client.send_data(stream_id, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    client.increment_flow_control_window(1000)
    events = server.receive_data(client.data_to_send())
    assert [type(e) for e in events] == [RequestStarted, StreamReadable, StreamReadable, SendWindowOpened]
    assert server.next_message(stream_id) == b"hi"
    assert server.next_message(stream_id) is None
    client.close_connection()
    assert [type(e) for e in server.receive_data(client.data_to_send())] == [PeerGoingAway]


def test_inherited_response_methods_write_what_grpc_clients_expect() -> None:
    """`start_response` sends :status 200, the gRPC content type and our accepted encodings (from the
    GRPCConfiguration we pass); `send_data` queues DATA; `flow_control_window` is what may be sent."""
    server, client, _ = connected()
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, request_headers())
    server.receive_data(client.data_to_send())
    assert server.flow_control_window(stream_id) == min(
        server.h2_connection.max_outbound_frame_size, server.h2_connection.local_flow_control_window(stream_id)
    )
    server.start_response(stream_id)
    server.send_data(stream_id, b"\x00\x00\x00\x00\x00")
    server.finish(stream_id, Status(StatusCode.OK), response_started=True)
    events = client.receive_data(server.data_to_send())
    [response] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    headers = dict(response.headers)
    assert headers[b":status"] == b"200"
    assert headers[b"content-type"] == b"application/grpc"
    assert headers[b"grpc-accept-encoding"] == b"identity,deflate,gzip"
    assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [b"\x00\x00\x00\x00\x00"]
    [trailers] = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert dict(trailers.headers)[b"grpc-status"] == b"0"
