"""Whether the Kafka bridge can do its job right now: written by the bridge's tasks, read
by the edge's readiness (`EdgeHealth` in edge.ops.health) and by `/metrics`.

It lives under ops, below both: the bridge reports into it, the health checks read it, and neither
imports the other.
"""

from __future__ import annotations

import attrs
import trio


@attrs.define
class KafkaState:
    """Connection state of the producer and the command consumer, and whether the presence view
    has caught up with the presence topic (read to its end offsets at start-up, edge.kafka.presence).
    Presence counts once the bridge enables it (`presence_enabled`); it stays caught up after that,
    whatever happens to the broker: the view is only ever behind by what Kafka has not delivered yet.

    `changed` is replaced by a fresh Event on every change, so a watcher awaits the current one and
    re-reads the state (no polling).
    """

    producer_connected: bool = False
    consumer_connected: bool = False
    consumer_enabled: bool = True
    presence_enabled: bool = False
    presence_caught_up: bool = False
    changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def ready(self) -> bool:
        return (
            self.producer_connected
            and (self.consumer_connected or not self.consumer_enabled)
            and (self.presence_caught_up or not self.presence_enabled)
        )

    def set_producer(self, connected: bool) -> None:
        if connected != self.producer_connected:
            self.producer_connected = connected
            self._notify()

    def set_consumer(self, connected: bool) -> None:
        if connected != self.consumer_connected:
            self.consumer_connected = connected
            self._notify()

    def set_presence_caught_up(self) -> None:
        if not self.presence_caught_up:
            self.presence_caught_up = True
            self._notify()

    def _notify(self) -> None:
        event, self.changed = self.changed, trio.Event()
        event.set()
