"""Giggityflix edge: long-lived gRPC peer streams joined to the backend through Kafka, on Trio.

Embedding:

    settings = edge.load_settings(os.environ)
    port = await nursery.start(edge.serve, settings)

    runtime = edge.EdgeRuntime.create(settings.edge_id)      # to read metrics, readiness, ports
    port = await nursery.start(functools.partial(edge.serve, runtime=runtime), settings)
"""

from edge.config import ConfigError, Settings, load_settings
from edge.nursery import serve
from edge.ops.runtime import EdgeRuntime

__all__ = ["ConfigError", "EdgeRuntime", "Settings", "load_settings", "serve"]
