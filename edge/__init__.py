"""Giggityflix edge: long-lived gRPC peer streams joined to the backend through Kafka, on Trio.

Embedding:

    settings = edge.load_settings(os.environ)
    port = await nursery.start(edge.serve, settings)

    runtime = edge.EdgeRuntime.create(settings.edge_id)      # to read metrics, readiness, ports
    port = await nursery.start(functools.partial(edge.serve, runtime=runtime), settings)
"""

from importlib.metadata import PackageNotFoundError, version as _package_version

from edge.config import ConfigError, Settings, load_settings
from edge.nursery import serve
from edge.ops.runtime import EdgeRuntime

try:
    __version__: str = _package_version("giggityflix-edge")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "EdgeRuntime", "Settings", "__version__", "load_settings", "serve"]
