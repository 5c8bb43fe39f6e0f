"""Giggityflix edge: long-lived gRPC peer streams joined to the backend through Kafka, on Trio.

Embedding:

    settings = edge.load_settings(os.environ)
    started = await nursery.start(edge.serve, settings)  # an edge.Started, once peers can connect
    started.grpc_port     # the bound ports (with port 0 in the settings); started.http_port is None
    started.http_port     #   when HEALTH_HTTP_ADDRESS is off
    started.runtime       # metrics, readiness, transport counters
    started.registry      # the live peer sessions

Cancel the nursery to stop the edge (it drains first).
"""

from importlib.metadata import PackageNotFoundError, version as _package_version

from edge.config import ConfigError, Settings, load_settings
from edge.nursery import Started, serve
from edge.ops.runtime import EdgeRuntime

try:
    __version__: str = _package_version("giggityflix-edge")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "EdgeRuntime", "Settings", "Started", "__version__", "load_settings", "serve"]
