"""`ferlite collect`: subscribe to `ferlite/#` and store every device's messages in one database.

A persistent session (a fixed client id, clean_session off) makes the broker keep QoS 1 messages
for the collector while it is away, and each message is acknowledged only once it is stored, so a
failed write is sent again. Each message is checked against the fleet's shapes first: a
malformed one is one warning line and stores nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import Counter

from ferlite.device.fleet.broker import Broker, Link, make_client, start
from ferlite.device.fleet.messages import PREFIX, MessageError, parse
from ferlite.device.fleet.store import CollectedDb
from ferlite.errors import FleetError

log = logging.getLogger(__name__)

STORED = ("runs", "events", "counts")


class Collector:
    def __init__(self, broker: Broker, db: CollectedDb, client_id: str) -> None:
        self.broker, self.db = broker, db
        self.link = Link(broker, "collect")
        self.client = make_client(broker, client_id, self.link, clean_session=False)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.stats: Counter = Counter()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.link.on_connect(client, userdata, flags, reason_code, properties)
        if not reason_code.is_failure:
            client.subscribe(f"{PREFIX}/#", qos=1)

    def _on_message(self, client, userdata, message) -> None:
        try:
            incoming = parse(message.topic, message.payload)
        except MessageError as exc:
            self.stats["ignored"] += 1
            log.warning("collect: ignored a message on %s: %s", message.topic[:80], exc)
            client.ack(message.mid, message.qos)
            return
        try:
            new = self.db.put(incoming)
        except self.db.errors as exc:
            self.stats["failed"] += 1
            log.warning("collect: cannot store a message on %s in %s (%s); the broker will send it again",
                        message.topic, self.db.name, str(exc).strip().splitlines()[0])
            return
        client.ack(message.mid, message.qos)
        if incoming.kind in STORED:
            self.stats[incoming.kind if new else "duplicates"] += 1

    def run(self, stop: threading.Event) -> Counter:
        """Collect until `stop` is set; FleetError when the broker refuses the connection."""
        start(self.client, self.broker)
        try:
            while not stop.wait(0.2):
                if self.link.refused:
                    raise FleetError(f"{self.broker.name} refused the connection ({self.link.refused})")
        finally:
            self.link.closing = True
            self.client.disconnect()
            self.client.loop_stop()
        return self.stats


def collect_until_signal(broker: Broker, db: CollectedDb, client_id: str) -> Counter:
    """Collect until SIGTERM or SIGINT (a terminal's Ctrl-C, a service's stop)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return Collector(broker, db, client_id).run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
