"""Helpers for the operations tests: an HTTP GET of the ops endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request

import trio


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET http://127.0.0.1:port/path with the standard library (in a worker thread)."""
    return await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}{path}")
