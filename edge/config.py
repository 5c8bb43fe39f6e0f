"""Settings: every environment variable the edge honours, as one frozen attrs value.

The environment is read once, in `edge.cli`, by `load_settings(os.environ)`; everything below that
receives a `Settings`. Each field names its variable and, for error messages, what it accepts. A bad
value raises `ConfigError`, which the CLI turns into exit code 2 and one line on stderr.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import cattrs

from edge import config_rules as rule
# Re-exported: callers import them from here.
from edge.config_rules import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from edge.config_rules import MIN_RECORD_BYTES as MIN_RECORD_BYTES
from edge.config_rules import Address as Address
from edge.config_rules import ConfigError as ConfigError
from edge.convert import make_env_converter

PEER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._\-:@]{1,128}")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "json", "console")
#: PEER_AUTH_MODE values (edge.peers.auth.AuthMode); see docs/security.md.
PEER_AUTH_MODES: Final = ("none", "mtls", "token", "mtls_or_token")


def _setting(env: str, default: Any, accepts: str, validator: Any = None, words: Mapping[str, Any] | None = None) -> Any:
    """A setting read from `env`; `words` are spelled-out values (case-insensitive) read as the value given."""
    return attrs.field(
        default=default,
        validator=validator,
        metadata={"env": env, "accepts": accepts, "words": dict(words or {})},
    )


@attrs.frozen
class Settings:
    """Everything the edge is configured with. Defaults are those of the seed README."""

    # Server
    edge_id: str = _setting("EDGE_ID", "edge-1", "1 to 64 of letters, digits and . _ -", rule.edge_id)
    #: The edge sends each peer a heartbeat this often (from its registration), and tells the peer to do
    #: the same (registration response). The transport sends no HTTP/2 pings: this is the liveness signal.
    heartbeat_interval_sec: int = _setting(
        "HEARTBEAT_INTERVAL_SEC", 30, "a whole number of seconds above 0", rule.positive
    )
    #: A registered peer that sends nothing for this long is cut off: reason `timeout`, DEADLINE_EXCEEDED.
    #: Any message counts. Time spent waiting on a full event channel (Kafka slow) does not count.
    peer_timeout_sec: int = _setting(
        "PEER_TIMEOUT_SEC", 120, "a whole number of seconds above HEARTBEAT_INTERVAL_SEC", rule.positive
    )
    #: A stream whose first message (its registration) has not arrived by then gets a refusal and
    #: DEADLINE_EXCEEDED; nothing is published for it.
    peer_handshake_timeout_sec: float = _setting(
        "PEER_HANDSHAKE_TIMEOUT_SEC", 10.0, "seconds above 0 (may be fractional)", rule.positive
    )
    #: Registered sessions at once (an ended one counts until its `disconnected` is queued); one more
    #: registration gets a refusal and RESOURCE_EXHAUSTED (a takeover of a connected id is not one
    #: more). Streams still in their handshake are not counted.
    max_peers: int = _setting("MAX_PEERS", 10000, "a whole number above 0", rule.positive)
    #: EdgeMessages (commands, heartbeats) queued for one peer beyond the one being written. When full,
    #: `Session.offer` raises trio.WouldBlock at once and the router retries by its backoff rules: a peer
    #: that stops reading holds this many messages at most.
    peer_outbound_queue_size: int = _setting(
        "PEER_OUTBOUND_QUEUE_SIZE", 32, "a whole number above 0", rule.positive
    )
    #: Catalog ids in one registration; more: a refusal and RESOURCE_EXHAUSTED.
    max_catalog_size: int = _setting(
        "MAX_CATALOG_SIZE", 100000, "a whole number of catalog ids above 0", rule.positive
    )
    #: Deadline of each shutdown phase (sessions' cleanup, the final flush to Kafka), of one session's
    #: cleanup, and of a registration's wait for the session it replaces to finish (then UNAVAILABLE).
    shutdown_timeout_sec: float = _setting(
        "SHUTDOWN_TIMEOUT_SEC", 10.0, "seconds above 0 (may be fractional)", rule.positive
    )
    shutdown_deadline_sec: float = _setting(
        "SHUTDOWN_DEADLINE_SEC",
        25.0,
        "seconds above 0 (may be fractional): the whole drain, from the first signal to exit",
        rule.positive,
    )
    health_http_address: Address | None = _setting(
        "HEALTH_HTTP_ADDRESS",
        Address("0.0.0.0", 8080),
        "host:port for /healthz, /readyz and /metrics (port 0 picks a free one), or off",
    )
    log_level: str = _setting("LOG_LEVEL", "info", "one of " + ", ".join(LOG_LEVELS), rule.one_of(*LOG_LEVELS))
    log_format: str = _setting(
        "LOG_FORMAT", "auto", "one of " + ", ".join(LOG_FORMATS), rule.one_of(*LOG_FORMATS)
    )

    # gRPC
    grpc_server_address: Address = _setting(
        "GRPC_SERVER_ADDRESS", Address("0.0.0.0", 50051), "host:port (port 0 picks a free one)"
    )
    grpc_use_tls: bool = _setting("GRPC_USE_TLS", True, "true or false")
    grpc_cert_path: Path = _setting("GRPC_CERT_PATH", Path("certs/server.crt"), "a path to a PEM certificate")
    grpc_key_path: Path = _setting("GRPC_KEY_PATH", Path("certs/server.key"), "a path to a PEM private key")
    #: Trio has no worker pool: the most commands one peer has in flight (offered to its session, not yet
    #: written); the router pipelines each peer's commands this deep. It caps neither peers nor throughput.
    grpc_max_workers: int = _setting(
        "GRPC_MAX_WORKERS", 10, "a whole number above 0 (commands in flight per peer)", rule.positive
    )
    #: Largest gRPC message either way, after decompression. A peer's larger message ends its session
    #: (`protocol_error`, RESOURCE_EXHAUSTED); a larger command is not written (the delivery fails).
    grpc_max_message_bytes: int = _setting(
        "GRPC_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, "a whole number of bytes above 0", rule.positive
    )
    grpc_max_concurrent_streams: int = _setting(
        "GRPC_MAX_CONCURRENT_STREAMS", 100, "a whole number above 0 (streams per connection)", rule.positive
    )
    #: Connections open at once on the peer port, TLS handshakes included; one more is reset at accept.
    grpc_max_connections: int = _setting(
        "GRPC_MAX_CONNECTIONS", 20000, "a whole number of connections above 0", rule.positive
    )
    #: The same from one source address (IPv6: one /64).
    grpc_max_connections_per_address: int = _setting(
        "GRPC_MAX_CONNECTIONS_PER_ADDRESS", 256, "a whole number of connections, 0 or more (0: no limit)",
        rule.non_negative,
    )
    #: Bytes received from peers and not yet taken by their sessions, over every stream and connection;
    #: when full, peers get backpressure (docs/security.md, "Inbound bytes"). At least GRPC_MAX_MESSAGE_BYTES.
    grpc_inbound_buffer_bytes: int = _setting(
        "GRPC_INBOUND_BUFFER_BYTES", 256 * 1024 * 1024, "a whole number of bytes, at least GRPC_MAX_MESSAGE_BYTES",
        rule.positive,
    )
    #: A peer-port connection with no open stream for this long gets GOAWAY and is closed.
    grpc_idle_timeout_sec: float = _setting(
        "GRPC_IDLE_TIMEOUT_SEC", 30.0, "seconds above 0 (may be fractional)", rule.positive
    )

    # Peer identity and abuse limits (docs/security.md)
    peer_auth_mode: str = _setting(
        "PEER_AUTH_MODE", "token", "one of " + ", ".join(PEER_AUTH_MODES), rule.one_of(*PEER_AUTH_MODES)
    )
    grpc_client_ca_path: Path | None = _setting(
        "GRPC_CLIENT_CA_PATH", None, "a path to PEM CA certificates that sign peer certificates (empty: none)"
    )
    peer_token_hmac_secret_path: Path | None = _setting(
        "PEER_TOKEN_HMAC_SECRET_PATH", None, "a path to a file of HS256 secrets, one per line (empty: none)"
    )
    peer_token_ed25519_public_key_path: Path | None = _setting(
        "PEER_TOKEN_ED25519_PUBLIC_KEY_PATH", None, "a path to PEM Ed25519 public keys (empty: none)"
    )
    peer_token_audience: str = _setting(
        "PEER_TOKEN_AUDIENCE", "", "the aud tokens must carry (empty: tokens carrying aud are refused)"
    )
    peer_token_leeway_sec: float = _setting(
        "PEER_TOKEN_LEEWAY_SEC", 30.0, "seconds, 0 or more, of clock skew allowed on exp and nbf", rule.non_negative
    )
    peer_registration_rate_per_address: float = _setting(
        "PEER_REGISTRATION_RATE_PER_ADDRESS",
        10.0,
        "new streams per second per source address, 0 or more (0: no limit)",
        rule.non_negative,
    )
    peer_registration_burst_per_address: int = _setting(
        "PEER_REGISTRATION_BURST_PER_ADDRESS", 50, "a whole number of streams above 0", rule.positive
    )
    peer_message_rate: float = _setting(
        "PEER_MESSAGE_RATE", 100.0, "messages per second per peer, above 0", rule.positive
    )
    peer_message_burst: int = _setting(
        "PEER_MESSAGE_BURST", 1000, "a whole number of messages above 0", rule.positive
    )
    max_unregistered_streams: int = _setting(
        "MAX_UNREGISTERED_STREAMS", 1000, "a whole number above 0 (streams not registered yet)", rule.positive
    )
    #: Bytes the edge holds, over every connection, for streams that have not registered yet (their
    #: first message on its way). A stream whose bytes would go over it is refused with
    #: RESOURCE_EXHAUSTED; at least GRPC_MAX_MESSAGE_BYTES, so one registration of the largest size fits.
    peer_unregistered_buffer_bytes: int = _setting(
        "PEER_UNREGISTERED_BUFFER_BYTES",
        64 * 1024 * 1024,
        "a whole number of bytes, at least GRPC_MAX_MESSAGE_BYTES",
        rule.positive,
    )

    # Kafka
    kafka_bootstrap_servers: str = _setting(
        "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092", "comma-separated host:port list"
    )
    #: The command consumer's group; `{}` stands for EDGE_ID, so by default every edge has a group of
    #: its own and one edge's start, stop or crash never rebalances another (docs/scaling.md).
    kafka_group_id: str = _setting(
        "KAFKA_GROUP_ID", "edge-service-{}", "a consumer group id, with at most one {} (EDGE_ID)", rule.group_id
    )
    kafka_edge_commands_topic_pattern: str = _setting(
        "KAFKA_EDGE_COMMANDS_TOPIC_PATTERN", "edge-commands-{}", "a topic name with one {}", rule.pattern
    )
    kafka_peer_lifecycle_events_topic: str = _setting(
        "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC", "peer-lifecycle-events", "a Kafka topic name", rule.topic_name
    )
    kafka_peer_catalog_updates_topic: str = _setting(
        "KAFKA_PEER_CATALOG_UPDATES_TOPIC", "peer-catalog-updates", "a Kafka topic name", rule.topic_name
    )
    kafka_file_delete_responses_topic: str = _setting(
        "KAFKA_FILE_DELETE_RESPONSES_TOPIC", "file-delete-responses", "a Kafka topic name", rule.topic_name
    )
    kafka_file_hash_responses_topic: str = _setting(
        "KAFKA_FILE_HASH_RESPONSES_TOPIC", "file-hash-responses", "a Kafka topic name", rule.topic_name
    )
    kafka_screenshot_capture_responses_topic: str = _setting(
        "KAFKA_SCREENSHOT_CAPTURE_RESPONSES_TOPIC",
        "screenshot-capture-responses",
        "a Kafka topic name",
        rule.topic_name,
    )
    kafka_file_remap_responses_topic: str = _setting(
        "KAFKA_FILE_REMAP_RESPONSES_TOPIC", "file-remap-responses", "a Kafka topic name", rule.topic_name
    )
    #: Compacted, keyed by peer id: the last lifecycle record of every peer, which every edge reads in
    #: full to know which edge holds which peer (docs/scaling.md#presence).
    kafka_peer_presence_topic: str = _setting(
        "KAFKA_PEER_PRESENCE_TOPIC", "peer-presence", "a Kafka topic name", rule.topic_name
    )
    #: Peers the presence view remembers; past it the least recently updated is forgotten.
    presence_max_peers: int = _setting(
        "PRESENCE_MAX_PEERS", 1_000_000, "a whole number of peers above 0", rule.positive
    )
    #: How long a command waits for a peer that presence saw connected moments ago (its edge ended
    #: the session or died) instead of being dead-lettered `peer_not_connected`.
    command_peer_grace_sec: float = _setting(
        "COMMAND_PEER_GRACE_SEC", 30.0, "seconds, 0 or more (0: no grace)", rule.non_negative
    )
    #: How many times a command may be forwarded from edge to edge following its peer.
    command_max_hops: int = _setting(
        "COMMAND_MAX_HOPS", 3, "a whole number, 0 or more (0: never forward)", rule.non_negative
    )
    kafka_deadletter_topic_pattern: str = _setting(
        "KAFKA_DEADLETTER_TOPIC_PATTERN", "edge-commands-{}.deadletter", "a topic name with one {}", rule.pattern
    )
    kafka_enable_idempotence: bool = _setting("KAFKA_ENABLE_IDEMPOTENCE", True, "true or false")
    kafka_event_buffer_size: int = _setting(
        "KAFKA_EVENT_BUFFER_SIZE", 10000, "a whole number of events above 0", rule.positive
    )
    #: Bytes of records (key + value) queued or in flight to Kafka; one larger record still goes alone.
    kafka_event_buffer_bytes: int = _setting(
        "KAFKA_EVENT_BUFFER_BYTES", 64 * 1024 * 1024, "a whole number of bytes above 0", rule.positive
    )
    kafka_produce_batch_size: int = _setting(
        "KAFKA_PRODUCE_BATCH_SIZE", 500, "a whole number of records above 0", rule.positive
    )
    kafka_request_timeout_sec: float = _setting(
        "KAFKA_REQUEST_TIMEOUT_SEC", 30.0, "seconds above 0 (may be fractional)", rule.positive
    )
    kafka_max_pending_commands: int = _setting(
        "KAFKA_MAX_PENDING_COMMANDS",
        1000,
        "a whole number of commands above 0 (read and not yet settled, held ones aside)",
        rule.positive,
    )
    kafka_commit_interval_ms: int = _setting(
        "KAFKA_COMMIT_INTERVAL_MS", 500, "a whole number of milliseconds above 0", rule.positive
    )
    kafka_session_timeout_sec: float = _setting(
        "KAFKA_SESSION_TIMEOUT_SEC",
        10.0,
        "seconds from 1 to 300 (the broker's group.min/max.session.timeout.ms must allow it)",
        rule.session_timeout,
    )
    kafka_create_topics: bool = _setting("KAFKA_CREATE_TOPICS", True, "true or false")
    kafka_topic_partitions: int = _setting(
        "KAFKA_TOPIC_PARTITIONS", 3, "a whole number above 0", rule.positive
    )
    #: 0 (`auto`): min(AUTO_REPLICATION_FACTOR, brokers in the cluster), read when topics are created.
    kafka_topic_replication_factor: int = _setting(
        "KAFKA_TOPIC_REPLICATION_FACTOR",
        1,
        "a whole number above 0, or auto (0): min(3, the brokers in the cluster)",
        rule.non_negative,
        words={"auto": 0},
    )
    #: Raw screenshot bytes forwarded (base64) in a screenshot response record; larger: an error record.
    screenshot_max_bytes: int = _setting(
        "SCREENSHOT_MAX_BYTES", 512 * 1024, "a whole number of bytes above 0", rule.positive
    )
    #: Largest JSON value of a record the edge produces from a peer message. Larger full catalogs and
    #: file offers are split into numbered parts; larger responses become error records.
    kafka_max_record_bytes: int = _setting(
        "KAFKA_MAX_RECORD_BYTES",
        MAX_RECORD_BYTES,
        f"a whole number of bytes from {MIN_RECORD_BYTES} to {MAX_RECORD_BYTES}",
        rule.record_bytes,
    )

    # Command delivery
    retry_max_retries: int = _setting("RETRY_MAX_RETRIES", 3, "a whole number, 0 or more", rule.non_negative)
    retry_initial_delay_ms: int = _setting(
        "RETRY_INITIAL_DELAY_MS", 100, "a whole number of milliseconds, 0 or more", rule.non_negative
    )
    retry_max_delay_ms: int = _setting(
        "RETRY_MAX_DELAY_MS", 1000, "a whole number of milliseconds, 0 or more", rule.non_negative
    )
    retry_jitter_factor: float = _setting(
        "RETRY_JITTER_FACTOR", 0.1, "a number from 0 to 1", rule.fraction
    )
    retry_max_held_commands: int = _setting(
        "RETRY_MAX_HELD_COMMANDS", 10000, "a whole number above 0", rule.positive
    )

    def __attrs_post_init__(self) -> None:
        if self.peer_timeout_sec <= self.heartbeat_interval_sec:
            raise ConfigError("PEER_TIMEOUT_SEC", _accepts("peer_timeout_sec"), self.peer_timeout_sec)
        for name in ("peer_unregistered_buffer_bytes", "grpc_inbound_buffer_bytes"):
            if getattr(self, name) < self.grpc_max_message_bytes:
                raise ConfigError(name.upper(), _accepts(name), getattr(self, name))
        if self.retry_max_delay_ms < self.retry_initial_delay_ms:
            raise ConfigError(
                "RETRY_MAX_DELAY_MS", "milliseconds at least RETRY_INITIAL_DELAY_MS", self.retry_max_delay_ms
            )

    # Derived names
    @property
    def commands_topic(self) -> str:
        return self.kafka_edge_commands_topic_pattern.format(self.edge_id)

    @property
    def deadletter_topic(self) -> str:
        return self.kafka_deadletter_topic_pattern.format(self.edge_id)

    @property
    def group_id(self) -> str:
        """The command consumer's group: KAFKA_GROUP_ID with `{}` replaced by EDGE_ID."""
        return self.kafka_group_id.replace("{}", self.edge_id)

    def commands_topic_of(self, edge_id: str) -> str:
        """The command topic of another edge (where commands for its peers are forwarded)."""
        return self.kafka_edge_commands_topic_pattern.format(edge_id)

    def produced_topics(self) -> tuple[str, ...]:
        """Every topic the edge writes to."""
        return (
            self.kafka_peer_lifecycle_events_topic,
            self.kafka_peer_catalog_updates_topic,
            self.kafka_file_delete_responses_topic,
            self.kafka_file_hash_responses_topic,
            self.kafka_screenshot_capture_responses_topic,
            self.kafka_file_remap_responses_topic,
            self.deadletter_topic,
            self.kafka_peer_presence_topic,
        )


def _accepts(field_name: str) -> str:
    accepts: str = attrs.fields_dict(Settings)[field_name].metadata["accepts"]
    return accepts


def env_variables() -> dict[str, attrs.Attribute[Any]]:
    """Variable name -> Settings field, in declaration order."""
    return {field.metadata["env"]: field for field in attrs.fields(Settings)}


def _optional_address(value: Any, _type: type) -> Address | None:
    if value is None or isinstance(value, Address):
        return value
    if str(value).strip().lower() in ("", "off", "none", "disabled"):
        return None
    return Address.parse(value)


def _make_converter() -> cattrs.Converter:
    converter = make_env_converter()
    converter.register_structure_hook(Address, lambda value, _t: value if isinstance(value, Address) else Address.parse(value))
    converter.register_structure_hook(Path, lambda value, _t: Path(value))
    converter.register_structure_hook_func(lambda t: t == (Address | None), _optional_address)
    converter.register_structure_hook(Path | None, _optional_path)
    converter.register_unstructure_hook(Address, str)
    converter.register_unstructure_hook(Path, str)
    return converter


def _optional_path(value: Any, _type: type) -> Path | None:
    if value is None or isinstance(value, Path):
        return value
    text = str(value).strip()
    return Path(text) if text else None


_CONVERTER: Final = _make_converter()


def load_settings(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Build Settings from an environment mapping (and keyword overrides by field name).

    Raises ConfigError naming the first variable whose value is not acceptable.
    """
    raw: dict[str, Any] = {}
    for variable, field in env_variables().items():
        if variable in environ:
            text = environ[variable]
            raw[field.name] = field.metadata.get("words", {}).get(text.strip().lower(), text)
    raw.update(overrides)
    try:
        return _CONVERTER.structure(raw, Settings)
    except ConfigError:
        raise
    except cattrs.ClassValidationError as group:
        field_name = _first_failing_field(group)
        field = attrs.fields_dict(Settings)[field_name]
        raise ConfigError(field.metadata["env"], field.metadata["accepts"], raw.get(field_name)) from None


def _first_failing_field(group: cattrs.ClassValidationError) -> str:
    for exc in group.exceptions:
        if isinstance(exc, ConfigError):
            raise exc from None
    for exc in group.exceptions:
        for note in getattr(exc, "__notes__", ()):
            name = getattr(note, "name", None)
            if isinstance(name, str):
                return name
    # A validator in attrs' __init__ raised: cattrs wraps it without a per-field note.
    for exc in group.exceptions:
        if isinstance(exc, cattrs.ClassValidationError):
            return _first_failing_field(exc)
    raise group


def settings_for_tests(**overrides: Any) -> Settings:
    """Settings with defaults suited to in-process tests: plaintext, port 0, loopback, and no peer
    authentication (tests of identity set PEER_AUTH_MODE themselves)."""
    base: dict[str, Any] = {
        "grpc_server_address": Address("127.0.0.1", 0),
        "grpc_use_tls": False,
        "health_http_address": Address("127.0.0.1", 0),
        "peer_auth_mode": "none",
    }
    base.update(overrides)
    return Settings(**base)


def validate_peer_id(peer_id: str) -> bool:
    return PEER_ID_PATTERN.fullmatch(peer_id) is not None
