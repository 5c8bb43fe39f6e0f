"""A Kafka readiness probe over a plain Trio socket: ApiVersions, then Metadata.

Just enough of Kafka's wire protocol to ask a broker whether it answers and which brokers it lists,
without aiokafka (and so without asyncio): the embedded broker (`edge.embedded_kafka`) waits on it
before it reports its bootstrap address, and the test suite's broker harness (`testing/kafka`) uses
it to tell when a broker it started is serving.

The encoders and decoders are plain functions over bytes, tested without a loop; `probe_kafka` is
the only I/O, under one deadline (PROBE_TIMEOUT_SEC). Every length a broker sends is checked against
what is left of its response, and a response is bounded by MAX_PROBE_RESPONSE_BYTES, so a stranger
answering on the port cannot make the probe allocate or wait without bound.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

import attrs
import trio

#: One readiness probe (connect + ApiVersions + Metadata) must finish within this.
PROBE_TIMEOUT_SEC: Final = 2.0
#: A probe response larger than this is not a sane answer to our two small requests.
MAX_PROBE_RESPONSE_BYTES: Final = 1 << 20
CLIENT_ID: Final = "giggityflix-edge-probe"
API_KEY_METADATA: Final = 3
API_KEY_API_VERSIONS: Final = 18
#: Metadata versions `encode_metadata_request` speaks (v9 and later use the flexible encoding).
METADATA_VERSIONS: Final = range(1, 9)
ERROR_NONE: Final = 0
ERROR_UNSUPPORTED_VERSION: Final = 35


class KafkaProbeError(Exception):
    """A broker's answer to a probe request was not what Kafka's protocol says it must be."""


@attrs.frozen
class ApiVersionRange:
    api_key: int
    min_version: int
    max_version: int


@attrs.frozen
class BrokerNode:
    node_id: int
    host: str
    port: int


# --- Kafka wire protocol, just enough for a readiness probe ------------------------------------


def _nullable_string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _frame(api_key: int, api_version: int, correlation_id: int, body: bytes) -> bytes:
    # Request header v1: api_key, api_version, correlation_id, client_id (nullable string).
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + _nullable_string(CLIENT_ID)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def encode_api_versions_request(correlation_id: int) -> bytes:
    """ApiVersions v0: every broker must answer it, whatever else it supports."""
    return _frame(API_KEY_API_VERSIONS, 0, correlation_id, b"")


def encode_metadata_request(version: int, correlation_id: int) -> bytes:
    """A Metadata request (v1-v8) asking for no topics: only the brokers and the controller."""
    if version not in METADATA_VERSIONS:
        raise ValueError(f"Metadata v{version} is not supported by this encoder")
    body = struct.pack(">i", 0)  # topics: empty array (null would mean all topics)
    if version >= 4:
        body += struct.pack(">?", False)  # allow_auto_topic_creation
    if version >= 8:
        body += struct.pack(">??", False, False)  # include cluster/topic authorized operations
    return _frame(API_KEY_METADATA, version, correlation_id, body)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._data):
            raise KafkaProbeError("response is truncated")
        values = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += size
        return values

    def int16(self) -> int:
        return self.take(">h")[0]

    def int32(self) -> int:
        return self.take(">i")[0]

    def nullable_string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        end = self._pos + length
        if end > len(self._data):
            raise KafkaProbeError("response is truncated")
        raw = self._data[self._pos : end]
        self._pos = end
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise KafkaProbeError("response holds a string that is not UTF-8") from None

    def array_length(self) -> int:
        count = self.int32()
        if count < -1 or count > len(self._data):
            raise KafkaProbeError(f"response holds an impossible array length {count}")
        return max(count, 0)


def _check_correlation(reader: _Reader, correlation_id: int) -> None:
    got = reader.int32()
    if got != correlation_id:
        raise KafkaProbeError(f"response correlation id {got}, expected {correlation_id}")


def decode_api_versions_response(payload: bytes, correlation_id: int) -> dict[int, ApiVersionRange]:
    """Decode an ApiVersions v0 response (without its length prefix) into ranges by api key.

    UNSUPPORTED_VERSION still carries the broker's ranges, so it counts as an answer.
    """
    reader = _Reader(payload)
    _check_correlation(reader, correlation_id)
    error_code = reader.int16()
    if error_code not in (ERROR_NONE, ERROR_UNSUPPORTED_VERSION):
        raise KafkaProbeError(f"ApiVersions answered error code {error_code}")
    ranges = {}
    for _ in range(reader.array_length()):
        api_key, min_version, max_version = reader.take(">hhh")
        ranges[api_key] = ApiVersionRange(api_key, min_version, max_version)
    return ranges


def choose_metadata_version(ranges: Mapping[int, ApiVersionRange]) -> int:
    """The newest Metadata version both the broker and `encode_metadata_request` speak."""
    supported = ranges.get(API_KEY_METADATA)
    if supported is None:
        raise KafkaProbeError("broker does not list the Metadata API")
    version = min(supported.max_version, METADATA_VERSIONS[-1])
    if version < max(supported.min_version, METADATA_VERSIONS[0]):
        raise KafkaProbeError(
            f"broker speaks Metadata v{supported.min_version}-v{supported.max_version}, "
            f"probe speaks v{METADATA_VERSIONS[0]}-v{METADATA_VERSIONS[-1]}"
        )
    return version


def decode_metadata_response(version: int, payload: bytes, correlation_id: int) -> tuple[BrokerNode, ...]:
    """Decode the broker list of a Metadata v1-v8 response (without its length prefix)."""
    reader = _Reader(payload)
    _check_correlation(reader, correlation_id)
    if version >= 3:
        reader.int32()  # throttle_time_ms
    brokers = []
    for _ in range(reader.array_length()):
        node_id = reader.int32()
        host = reader.nullable_string()
        port = reader.int32()
        reader.nullable_string()  # rack
        if host is None:
            raise KafkaProbeError("Metadata lists a broker without a host")
        brokers.append(BrokerNode(node_id, host, port))
    return tuple(brokers)


def split_frame(buffer: bytes) -> tuple[bytes, bytes] | None:
    """Split one length-prefixed response off `buffer`: (payload, rest), or None if incomplete."""
    if len(buffer) < 4:
        return None
    (length,) = struct.unpack_from(">i", buffer)
    if length < 0 or length > MAX_PROBE_RESPONSE_BYTES:
        raise KafkaProbeError(f"response length {length} is not plausible")
    if len(buffer) < 4 + length:
        return None
    return buffer[4 : 4 + length], buffer[4 + length :]


# --- the probe itself -----------------------------------------------------------------------


async def _request(stream: trio.SocketStream, request: bytes) -> bytes:
    await stream.send_all(request)
    buffer = b""
    while True:
        frame = split_frame(buffer)
        if frame is not None:
            return frame[0]
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise KafkaProbeError("broker closed the connection mid-response")
        buffer += chunk


async def probe_kafka(host: str, port: int) -> tuple[BrokerNode, ...]:
    """Ask the broker at host:port for its API versions and metadata; return the brokers it lists.

    Raises OSError when nothing accepts the connection, KafkaProbeError when what answers is not a
    working Kafka broker, and trio.TooSlowError past PROBE_TIMEOUT_SEC.
    """
    with trio.fail_after(PROBE_TIMEOUT_SEC):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            ranges = decode_api_versions_response(await _request(stream, encode_api_versions_request(1)), 1)
            version = choose_metadata_version(ranges)
            brokers = decode_metadata_response(
                version, await _request(stream, encode_metadata_request(version, 2)), 2
            )
    if not brokers:
        raise KafkaProbeError("Metadata lists no brokers yet")
    return brokers

