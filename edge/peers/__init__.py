"""The peer side: one task per `Connect` stream, from handshake to its `disconnected` event on the event
channel. A sibling of `edge.kafka`: neither imports the other; they meet in `edge.handoff` (a session
settles the router's `Delivery`s; every record goes through `send_event`).

Rooms, outermost first (`server.py` draws the task tree and the shutdown order):

    server.py      serve_peers: the gRPC server, the timers and endings tasks; owns the event channel's
                   send end
    endings.py     serve_endings: each ended session's last records and `disconnected`, in order
    handler.py     PeerStreamHandler: one Connect stream's handshake, registration, session, cleanup
    session.py     Session: one registered peer's cancel scope, outbound channel, reader and writer,
                   and its heartbeat and silence timers (on edge.timers)
    registry.py    PeerRegistry: peer id -> live session (the router's PeerDirectory), takeovers
    admission.py   Admission: who may register as which peer; the per-address throttle and the cap on
                   streams waiting to register
    protocol.py    what peer messages mean: records, replies, refusals (pure)
    auth.py        what a certificate or token proves (pure)
    tokens.py      the signed peer token verifier and minter
    limits.py      token buckets and throttles fed with Trio time (pure)

Imports: edge.grpc (the transport), edge.handoff, edge.timers, edge.ops (metrics, readiness), edge.records,
edge.config, edge.convert, edge.proto.
"""
