"""The container's health check: GET /healthz on the edge's ops endpoint; exit 0 if it answers 200.

Standard library only (the slim image has no curl). It reads HEALTH_HTTP_ADDRESS as the edge does, so
a container that moves the ops port is still checked on the right one; a wildcard host (0.0.0.0, ::)
is reached on loopback. With HEALTH_HTTP_ADDRESS=off there is nothing to ask: it says so and exits 0.
"""

from __future__ import annotations

import http.client
import os
import sys

DEFAULT_ADDRESS = "0.0.0.0:8080"
TIMEOUT_SEC = 3.0
WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def target(address: str) -> tuple[str, int] | None:
    """(host, port) to connect to for HEALTH_HTTP_ADDRESS `address`, None when the endpoint is off."""
    address = address.strip()
    if address.lower() in ("", "off", "none", "disabled"):
        return None
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    return WILDCARDS.get(host, host), int(port)


def main() -> int:
    where = target(os.environ.get("HEALTH_HTTP_ADDRESS", DEFAULT_ADDRESS))
    if where is None:
        print("HEALTH_HTTP_ADDRESS is off: no endpoint to check")
        return 0
    host, port = where
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SEC)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as error:
        print(f"/healthz on {host}:{port}: {error}")
        return 1
    finally:
        connection.close()
    if status != 200:
        print(f"/healthz on {host}:{port}: HTTP {status}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
