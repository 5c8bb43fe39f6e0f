"""The Kafka bridge: the only place the edge talks to Kafka, and the only place asyncio runs (aiokafka
on one trio-asyncio loop). A sibling of `edge.peers`: neither imports the other; they meet in
`edge.handoff` (a command's `Delivery` to a `PeerSession`; the event channel and `send_event`).

Rooms, outermost first (`bridge.py` draws the task tree and the shutdown order):

    bridge.py      serve_kafka_bridge: topic check, then producer, router and consumer, wired once
    producer.py    serve_event_producer: the event channel -> Kafka, in batches, acks=all, never dropped
    router.py      CommandRouter: valid commands -> the right peer's session, in order per peer, retried
    consumer.py    serve_command_consumer: the command topic -> parse -> router or dead letter; commits
    topics.py      the start-up check that the topics exist (or are created)
    aio.py         the asyncio side: thin coroutines over aiokafka, called from Trio in batches
    commands.py    what a command record means, and its dead letter (pure)
    offsets.py     which offsets may be committed (pure)
    backoff.py     how long retry n waits (pure)
    tools.py       Kafka for the operator tools (`send-command`, `tail`), not for the edge itself

Imports: edge.handoff, edge.ops (the readiness state it writes, metrics), edge.records, edge.config,
edge.convert, edge.proto.
"""
