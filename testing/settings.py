"""Settings for one test's edge: `tls_settings` (no Kafka of its own) and `edge_settings` (with Kafka)."""

from __future__ import annotations

from typing import Any

from edge.config import Settings, settings_for_tests
from testing.tls import TlsFiles


def tls_settings(tls_files: TlsFiles, **overrides: Any) -> Settings:
    """`settings_for_tests` (loopback, port 0, no peer authentication) with TLS on, serving the
    `tls_files` server certificate. `overrides` are Settings fields."""
    return settings_for_tests(
        **{"grpc_use_tls": True, "grpc_cert_path": tls_files.cert_path, "grpc_key_path": tls_files.key_path, **overrides}
    )


def edge_settings(edge_id: str, bootstrap: str, tls_files: TlsFiles, idempotence: bool, **overrides: Any) -> Settings:
    """`tls_settings` for an edge on the Kafka broker at `bootstrap`, whose topics and consumer group are
    all named after `edge_id` (so tests never read each other's records), with Kafka timeouts short
    enough for a test to see an outage."""
    kafka: dict[str, Any] = dict(
        edge_id=edge_id,
        kafka_bootstrap_servers=bootstrap,
        kafka_enable_idempotence=idempotence,
        kafka_group_id=f"{edge_id}-group",
        kafka_peer_lifecycle_events_topic=f"{edge_id}-lifecycle",
        kafka_peer_presence_topic=f"{edge_id}-presence",
        kafka_peer_catalog_updates_topic=f"{edge_id}-catalog",
        kafka_file_delete_responses_topic=f"{edge_id}-delete",
        kafka_file_hash_responses_topic=f"{edge_id}-hash",
        kafka_screenshot_capture_responses_topic=f"{edge_id}-shot",
        kafka_file_remap_responses_topic=f"{edge_id}-remap",
        kafka_session_timeout_sec=6.0,
        kafka_request_timeout_sec=10.0,
        kafka_commit_interval_ms=200,
    )
    return tls_settings(tls_files, **{**kafka, **overrides})
