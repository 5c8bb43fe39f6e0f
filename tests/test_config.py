"""Settings: every variable of docs/protocol.md#configuration (table: docs/operations.md#settings) parsed from
the environment, seed defaults, precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import Address, ConfigError, Settings, env_variables, load_settings

SEED_DEFAULTS = {
    "EDGE_ID": "edge-1",
    "HEARTBEAT_INTERVAL_SEC": 30,
    "PEER_TIMEOUT_SEC": 120,
    "GRPC_SERVER_ADDRESS": Address("0.0.0.0", 50051),
    "GRPC_USE_TLS": True,
    "GRPC_CERT_PATH": Path("certs/server.crt"),
    "GRPC_KEY_PATH": Path("certs/server.key"),
    "GRPC_MAX_WORKERS": 10,
    "KAFKA_BOOTSTRAP_SERVERS": "localhost:9092",
    # The seed's `edge-service`, now one group per edge (`{}` is EDGE_ID): docs/scaling.md.
    "KAFKA_GROUP_ID": "edge-service-{}",
    "KAFKA_EDGE_COMMANDS_TOPIC_PATTERN": "edge-commands-{}",
    "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": "peer-lifecycle-events",
    "KAFKA_PEER_CATALOG_UPDATES_TOPIC": "peer-catalog-updates",
    "KAFKA_FILE_DELETE_RESPONSES_TOPIC": "file-delete-responses",
    "KAFKA_FILE_HASH_RESPONSES_TOPIC": "file-hash-responses",
    "KAFKA_SCREENSHOT_CAPTURE_RESPONSES_TOPIC": "screenshot-capture-responses",
    "KAFKA_DEADLETTER_TOPIC_PATTERN": "edge-commands-{}.deadletter",
    "KAFKA_FILE_REMAP_RESPONSES_TOPIC": "file-remap-responses",
    "RETRY_MAX_RETRIES": 3,
    "RETRY_INITIAL_DELAY_MS": 100,
    "RETRY_MAX_DELAY_MS": 1000,
    "RETRY_JITTER_FACTOR": 0.1,
    # added to the seed's variables (docs/protocol.md#configuration)
    "MAX_PEERS": 10000,
    "GRPC_MAX_MESSAGE_BYTES": 4 * 1024 * 1024,
    "SCREENSHOT_MAX_BYTES": 512 * 1024,
    "RETRY_MAX_HELD_COMMANDS": 10000,
}

# One acceptable non-default value per variable, as text, and the value it must become.
PARSED = {
    "EDGE_ID": ("edge-eu-7", "edge-eu-7"),
    "HEARTBEAT_INTERVAL_SEC": ("5", 5),
    "PEER_TIMEOUT_SEC": ("200", 200),
    "PEER_HANDSHAKE_TIMEOUT_SEC": ("2.5", 2.5),
    "MAX_PEERS": ("50", 50),
    "MAX_CATALOG_SIZE": ("10", 10),
    "PEER_OUTBOUND_QUEUE_SIZE": ("4", 4),
    "SHUTDOWN_TIMEOUT_SEC": ("3", 3.0),
    "SHUTDOWN_DEADLINE_SEC": ("40", 40.0),
    "HEALTH_HTTP_ADDRESS": ("127.0.0.1:9102", Address("127.0.0.1", 9102)),
    "LOG_LEVEL": ("debug", "debug"),
    "LOG_FORMAT": ("json", "json"),
    "GRPC_SERVER_ADDRESS": ("[::1]:0", Address("::1", 0)),
    "GRPC_USE_TLS": ("false", False),
    "GRPC_CERT_PATH": ("/etc/edge/tls.crt", Path("/etc/edge/tls.crt")),
    "GRPC_KEY_PATH": ("/etc/edge/tls.key", Path("/etc/edge/tls.key")),
    "GRPC_MAX_WORKERS": ("64", 64),
    "GRPC_MAX_MESSAGE_BYTES": ("1048576", 1048576),
    "GRPC_MAX_CONCURRENT_STREAMS": ("8", 8),
    "GRPC_MAX_CONNECTIONS": ("500", 500),
    "GRPC_MAX_CONNECTIONS_PER_ADDRESS": ("0", 0),
    "GRPC_IDLE_TIMEOUT_SEC": ("2.5", 2.5),
    "PEER_AUTH_MODE": ("mtls_or_token", "mtls_or_token"),
    "GRPC_CLIENT_CA_PATH": ("/etc/edge/peers-ca.pem", Path("/etc/edge/peers-ca.pem")),
    "PEER_TOKEN_HMAC_SECRET_PATH": ("/run/secrets/peer-token", Path("/run/secrets/peer-token")),
    "PEER_TOKEN_ED25519_PUBLIC_KEY_PATH": ("/etc/edge/token.pub", Path("/etc/edge/token.pub")),
    "PEER_TOKEN_AUDIENCE": ("edge.example", "edge.example"),
    "PEER_TOKEN_LEEWAY_SEC": ("5", 5.0),
    "PEER_REGISTRATION_RATE_PER_ADDRESS": ("0", 0.0),
    "PEER_REGISTRATION_BURST_PER_ADDRESS": ("5", 5),
    "PEER_MESSAGE_RATE": ("20.5", 20.5),
    "PEER_MESSAGE_BURST": ("40", 40),
    "MAX_UNREGISTERED_STREAMS": ("7", 7),
    "PEER_UNREGISTERED_BUFFER_BYTES": ("8388608", 8 * 1024 * 1024),
    "GRPC_INBOUND_BUFFER_BYTES": ("16777216", 16 * 1024 * 1024),
    "KAFKA_BOOTSTRAP_SERVERS": ("k1:9092,k2:9092", "k1:9092,k2:9092"),
    "KAFKA_GROUP_ID": ("edges", "edges"),
    "KAFKA_EDGE_COMMANDS_TOPIC_PATTERN": ("cmd.{}", "cmd.{}"),
    "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": ("life", "life"),
    "KAFKA_PEER_CATALOG_UPDATES_TOPIC": ("cat", "cat"),
    "KAFKA_FILE_DELETE_RESPONSES_TOPIC": ("del", "del"),
    "KAFKA_FILE_HASH_RESPONSES_TOPIC": ("hash", "hash"),
    "KAFKA_SCREENSHOT_CAPTURE_RESPONSES_TOPIC": ("shot", "shot"),
    "KAFKA_FILE_REMAP_RESPONSES_TOPIC": ("remap", "remap"),
    "KAFKA_DEADLETTER_TOPIC_PATTERN": ("dl.{}", "dl.{}"),
    "KAFKA_ENABLE_IDEMPOTENCE": ("0", False),
    "KAFKA_EVENT_BUFFER_SIZE": ("100", 100),
    "KAFKA_EVENT_BUFFER_BYTES": ("1048576", 1048576),
    "KAFKA_PRODUCE_BATCH_SIZE": ("10", 10),
    "KAFKA_REQUEST_TIMEOUT_SEC": ("5", 5.0),
    "KAFKA_MAX_PENDING_COMMANDS": ("50", 50),
    "KAFKA_COMMIT_INTERVAL_MS": ("200", 200),
    "KAFKA_SESSION_TIMEOUT_SEC": ("6", 6.0),
    "KAFKA_CREATE_TOPICS": ("no", False),
    "KAFKA_TOPIC_PARTITIONS": ("12", 12),
    "KAFKA_TOPIC_REPLICATION_FACTOR": ("3", 3),
    "SCREENSHOT_MAX_BYTES": ("1000", 1000),
    "KAFKA_MAX_RECORD_BYTES": ("65536", 65536),
    "RETRY_MAX_RETRIES": ("0", 0),
    "RETRY_INITIAL_DELAY_MS": ("50", 50),
    "RETRY_MAX_DELAY_MS": ("5000", 5000),
    "RETRY_JITTER_FACTOR": ("0.5", 0.5),
    "RETRY_MAX_HELD_COMMANDS": ("7", 7),
    "KAFKA_PEER_PRESENCE_TOPIC": ("presence.v2", "presence.v2"),
    "PRESENCE_MAX_PEERS": ("5000", 5000),
    "COMMAND_PEER_GRACE_SEC": ("2.5", 2.5),
    "COMMAND_MAX_HOPS": ("0", 0),
}

BAD = {
    "EDGE_ID": "has space",
    "HEARTBEAT_INTERVAL_SEC": "soon",
    "PEER_TIMEOUT_SEC": "-1",
    "PEER_HANDSHAKE_TIMEOUT_SEC": "0",
    "MAX_PEERS": "0",
    "LOG_LEVEL": "loud",
    "GRPC_SERVER_ADDRESS": "localhost",
    "GRPC_USE_TLS": "maybe",
    "GRPC_MAX_WORKERS": "0",
    "GRPC_MAX_MESSAGE_BYTES": "4MiB",
    "KAFKA_EDGE_COMMANDS_TOPIC_PATTERN": "edge-commands",
    "KAFKA_PEER_LIFECYCLE_EVENTS_TOPIC": "bad topic!",
    "KAFKA_DEADLETTER_TOPIC_PATTERN": "{}-{}",
    "RETRY_MAX_RETRIES": "-2",
    "RETRY_JITTER_FACTOR": "1.5",
    "SCREENSHOT_MAX_BYTES": "lots",
    "SHUTDOWN_DEADLINE_SEC": "0",
    "HEALTH_HTTP_ADDRESS": "8080",
    "KAFKA_MAX_PENDING_COMMANDS": "0",
    "KAFKA_COMMIT_INTERVAL_MS": "-5",
    "KAFKA_EVENT_BUFFER_BYTES": "0",
    "KAFKA_SESSION_TIMEOUT_SEC": "0.5",
    "PEER_AUTH_MODE": "password",
    "PEER_TOKEN_LEEWAY_SEC": "-1",
    "PEER_REGISTRATION_RATE_PER_ADDRESS": "-5",
    "PEER_REGISTRATION_BURST_PER_ADDRESS": "0",
    "PEER_MESSAGE_RATE": "0",
    "PEER_MESSAGE_BURST": "many",
    "MAX_UNREGISTERED_STREAMS": "0",
    "GRPC_MAX_CONNECTIONS": "0",
    "GRPC_MAX_CONNECTIONS_PER_ADDRESS": "-1",
    "GRPC_IDLE_TIMEOUT_SEC": "0",
    "PEER_UNREGISTERED_BUFFER_BYTES": "1048576",
    "GRPC_INBOUND_BUFFER_BYTES": "1048576",
    "KAFKA_MAX_RECORD_BYTES": "2000000",
    "KAFKA_GROUP_ID": "edges-{}-{}",
    "KAFKA_PEER_PRESENCE_TOPIC": "presence topic",
    "PRESENCE_MAX_PEERS": "0",
    "COMMAND_PEER_GRACE_SEC": "-1",
    "COMMAND_MAX_HOPS": "-1",
}


def test_group_id_is_one_per_edge_by_default():
    """KAFKA_GROUP_ID's `{}` is EDGE_ID: edges do not share a group unless told to."""
    assert load_settings({"EDGE_ID": "edge-7"}).group_id == "edge-service-edge-7"
    assert load_settings({"EDGE_ID": "edge-7", "KAFKA_GROUP_ID": "shared"}).group_id == "shared"


def test_every_variable_is_covered():
    """The tables above name every variable the edge reads, so none goes untested."""
    assert set(PARSED) == set(env_variables())


def test_defaults_equal_the_seed():
    settings = load_settings({})
    fields = env_variables()
    for variable, expected in SEED_DEFAULTS.items():
        assert getattr(settings, fields[variable].name) == expected, variable


@pytest.mark.parametrize("variable", sorted(PARSED))
def test_each_variable_is_parsed(variable):
    text, expected = PARSED[variable]
    environ = {variable: text}
    if variable == "HEARTBEAT_INTERVAL_SEC":
        environ["PEER_TIMEOUT_SEC"] = "20"
    if variable == "RETRY_INITIAL_DELAY_MS":
        environ["RETRY_MAX_DELAY_MS"] = "100"
    settings = load_settings(environ)
    assert getattr(settings, env_variables()[variable].name) == expected


@pytest.mark.parametrize("variable", sorted(BAD))
def test_bad_values_name_the_variable(variable):
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: BAD[variable]})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: expected ")
    assert "\n" not in str(caught.value)


def test_replication_factor_auto_reads_as_zero():
    assert load_settings({"KAFKA_TOPIC_REPLICATION_FACTOR": " Auto "}).kafka_topic_replication_factor == 0
    assert load_settings({"KAFKA_TOPIC_REPLICATION_FACTOR": "0"}).kafka_topic_replication_factor == 0
    with pytest.raises(ConfigError) as caught:
        load_settings({"KAFKA_TOPIC_REPLICATION_FACTOR": "-1"})
    assert "auto" in caught.value.accepts


def test_timeout_must_exceed_heartbeat():
    with pytest.raises(ConfigError) as caught:
        load_settings({"HEARTBEAT_INTERVAL_SEC": "60", "PEER_TIMEOUT_SEC": "60"})
    assert caught.value.variable == "PEER_TIMEOUT_SEC"


def test_max_delay_below_initial_is_rejected():
    with pytest.raises(ConfigError) as caught:
        load_settings({"RETRY_INITIAL_DELAY_MS": "500", "RETRY_MAX_DELAY_MS": "100"})
    assert caught.value.variable == "RETRY_MAX_DELAY_MS"


def test_security_defaults():
    """Peers must prove their id by default; unset key paths are None, not the current directory."""
    settings = load_settings({"GRPC_CLIENT_CA_PATH": "", "PEER_TOKEN_HMAC_SECRET_PATH": "  "})
    assert settings.peer_auth_mode == "token"
    assert settings.grpc_client_ca_path is None and settings.peer_token_hmac_secret_path is None
    assert settings.peer_token_ed25519_public_key_path is None and settings.peer_token_audience == ""
    assert (settings.peer_registration_rate_per_address, settings.peer_registration_burst_per_address) == (10.0, 50)
    assert (settings.peer_message_rate, settings.peer_message_burst) == (100.0, 1000)
    assert settings.max_unregistered_streams == 1000 and settings.max_catalog_size == 100000


def test_derived_topic_names_use_the_edge_id():
    settings = load_settings({"EDGE_ID": "edge-9"})
    assert settings.commands_topic == "edge-commands-edge-9"
    assert settings.deadletter_topic == "edge-commands-edge-9.deadletter"
    assert isinstance(settings, Settings)


@pytest.mark.parametrize("text", ["off", "OFF", "", "none"])
def test_health_http_can_be_turned_off(text):
    assert load_settings({"HEALTH_HTTP_ADDRESS": text}).health_http_address is None
