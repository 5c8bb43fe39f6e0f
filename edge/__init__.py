"""Giggityflix edge: long-lived gRPC peer streams joined to the backend through Kafka, on Trio.

Embedding:

    settings = edge.load_settings(os.environ)
    port = await nursery.start(edge.serve, settings)
"""

from edge.config import ConfigError, Settings, load_settings
from edge.nursery import serve

__all__ = ["ConfigError", "Settings", "load_settings", "serve"]
