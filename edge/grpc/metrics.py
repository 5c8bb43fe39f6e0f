"""What the transport reports to metrics: calls (started, messages, final code) and failed TLS handshakes.

The transport knows no metrics library. `serve_grpc` and `serve_grpc_connection` take a `ServerMetrics`
(the edge passes `edge.ops.grpc_metrics.GrpcServerMetrics`, which registers the grpc-ecosystem
`grpc_server_*` families); it is always passed in, never made up here, so every server's numbers go
where its owner reads them.

* `call_started(path, now)` once a routed call's handler is about to start (unknown paths, answered
  UNIMPLEMENTED, are not reported: their names come from clients). It returns the call's `CallMetrics`.
* `CallMetrics.received()` / `sent()` per message the handler took or wrote.
* `CallMetrics.handled(code, now)` once, when the call's ending is queued: the status sent, or
  CANCELLED when none could be (the client reset the stream, or the connection is gone).
* `handshake_failed(cause)`: a TLS handshake that did not complete (`tls.handshake_failure_cause`).

`now` is Trio time.
"""

from __future__ import annotations

from typing import Protocol

from purerpc.grpclib.status import StatusCode


class CallMetrics(Protocol):
    def received(self) -> None: ...

    def sent(self) -> None: ...

    def handled(self, code: StatusCode, now: float) -> None: ...


class ServerMetrics(Protocol):
    def call_started(self, path: str, now: float) -> CallMetrics: ...

    def handshake_failed(self, cause: str) -> None: ...
