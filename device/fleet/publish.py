"""Publishing a results log over MQTT, at least once, from a cursor kept in the log itself.

The log is the buffer: the publisher reads what follows its cursor (runs, then track events by row
id, then complete minutes of counts), publishes it with QoS 1, and moves the cursor, persisted in the
log's `publish_cursor` table, only over messages the broker acknowledged. While the broker is away
nothing moves; after a restart of either side publishing resumes in order from the cursor. A message
may be sent twice (an acknowledgement lost with the connection); its id lets the collector drop it.

An acknowledgement means the broker holds a message, not that every subscriber has it: a broker that
crashes loses what it had not yet delivered or saved. So after a lost connection the publisher
sends again what the broker acknowledged in the RESEND_S before the loss; the collectors drop the
copies by id.

It reads with its own connection to the WAL database and a short busy timeout, so it never holds up
the writer; a cursor write that meets the writer's lock is retried at the next acknowledgement.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ferlite.config import RunConfig
from ferlite.device.fleet import messages
from ferlite.device.fleet.broker import Broker, Link, broker_from_config, device_name, make_client, paho, start
from ferlite.device.fleet.messages import Message
from ferlite.device.log import RETRY_FOR_S, SCHEMA, utc, utc_minute
from ferlite.errors import FleetError, LogError

log = logging.getLogger(__name__)

BATCH = 200  # messages in flight at most: what one pass reads from the log
POLL_S = 0.5  # how often an idle publisher looks for new rows
STATE_EVERY_S = 1.0
STATE_FRESH_S = 3.0  # faces last logged longer ago than this are out of view
RUN_EVERY_S = 30.0  # how often a live run's counters are re-sent
# A minute is complete once the log can no longer add to it: it retries a failed commit for RETRY_FOR_S.
MINUTE_LAG_S = RETRY_FOR_S + 5.0
BUSY_MS = 100  # how long a read or a cursor write waits for the writer's lock before trying at the next pass
RESEND_S = 10.0  # after a lost connection, acknowledged messages this recent are sent again
ACKED_KEPT = 5000  # acknowledgements remembered for that, at most


@dataclass(frozen=True)
class Cursor:
    """What the broker has acknowledged: runs done up to `runs`, events up to row `events`, counts up to
    (`counts_run`, `counts_minute`)."""

    runs: int = 0
    events: int = 0
    counts_run: int = 0
    counts_minute: str = ""


@dataclass
class Sent:
    """Messages acknowledged, per stream (named as their topics end)."""

    runs: int = 0
    events: int = 0
    counts: int = 0

    def total(self) -> int:
        return self.runs + self.events + self.counts


class LogFeed:
    """The messages a results log holds after a cursor, read in order."""

    def __init__(self, path: str | Path, device: str, broker: str) -> None:
        self.path, self.device, self.broker = Path(path), device, broker
        if not self.path.is_file():
            raise LogError(f"{self.path}: no such results log")
        try:
            self.db = sqlite3.connect(f"file:{self.path.resolve()}?mode=rw", uri=True, timeout=BUSY_MS / 1000,
                                      check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("SELECT id FROM runs LIMIT 1")
            if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'publish_cursor'").fetchone():
                self.db.executescript(SCHEMA)  # a log from before publishing: its cursor and events tables
        except sqlite3.DatabaseError as exc:
            raise LogError(f"{self.path}: not a ferlite SQLite results log to publish ({exc})") from None
        self._sent_runs: dict[int, tuple[float, tuple]] = {}

    def cursor(self) -> Cursor:
        rows = {r["stream"]: r for r in self.db.execute("SELECT * FROM publish_cursor WHERE broker = ?",
                                                        (self.broker,))}
        return Cursor(rows["runs"]["last_id"] if "runs" in rows else 0,
                      rows["events"]["last_id"] if "events" in rows else 0,
                      rows["counts"]["last_id"] if "counts" in rows else 0,
                      rows["counts"]["last_minute"] if "counts" in rows else "")

    def save(self, cursor: Cursor) -> bool:
        """Persist the cursor; False when the log is locked just now (the next save carries it)."""
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO publish_cursor VALUES (?, ?, ?, ?)",
                                    [(self.broker, "runs", cursor.runs, ""), (self.broker, "events", cursor.events, ""),
                                     (self.broker, "counts", cursor.counts_run, cursor.counts_minute)])
        except sqlite3.OperationalError:
            return False
        return True

    def _runs(self, after: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM runs WHERE id > ? ORDER BY id", (after,)).fetchall()

    def batch(self, cursor: Cursor, now: float, limit: int = BATCH) -> list[tuple[Message, Cursor]]:
        """Up to `limit` messages after `cursor`, each with the cursor that holds once it is acknowledged."""
        runs = self._runs(min(cursor.runs, max(cursor.counts_run - 1, 0)))
        out = self._run_messages(runs, cursor, now)
        out += self._event_messages(out[-1][1] if out else cursor, limit - len(out))
        out += self._count_messages(runs, out[-1][1] if out else cursor, now, limit - len(out))
        return out

    def _run_messages(self, runs: list[sqlite3.Row], cursor: Cursor, now: float) -> list[tuple[Message, Cursor]]:
        """Runs after the cursor whose figures changed since they were last sent (a live one every RUN_EVERY_S);
        a run is done, and the cursor passes it, once stopped or followed by another run."""
        out = []
        for i, run in enumerate(runs):
            if run["id"] <= cursor.runs:
                continue
            done = run["stopped_utc"] is not None or i + 1 < len(runs)
            figures = (run["stopped_utc"], run["frames"], run["skipped"], run["detections"])
            sent_at, sent = self._sent_runs.get(run["id"], (0.0, None))
            if figures != sent and (done or sent is None or now - sent_at >= RUN_EVERY_S):
                self._sent_runs[run["id"]] = (now, figures)
                if done:  # only the newest run can be live, so every run before a done one is done too
                    cursor = replace(cursor, runs=run["id"])
                out.append((messages.run_message(self.device, dict(run)), cursor))
        return out

    def _event_messages(self, cursor: Cursor, limit: int) -> list[tuple[Message, Cursor]]:
        if limit <= 0:
            return []
        rows = self.db.execute("SELECT * FROM track_events WHERE id > ? ORDER BY id LIMIT ?", (cursor.events, limit))
        return [(messages.event_message(self.device, dict(r)), replace(cursor, events=r["id"])) for r in rows]

    def _count_messages(self, runs: list[sqlite3.Row], cursor: Cursor, now: float,
                        limit: int) -> list[tuple[Message, Cursor]]:
        """Complete minutes after the cursor, all labels of a minute together: a minute is complete once its
        run is done or MINUTE_LAG_S after it ended. A normal run's counts come from its detections."""
        out: list[tuple[Message, Cursor]] = []
        if limit <= 0:
            return out
        for i, run in enumerate(runs):
            if run["id"] < cursor.counts_run:
                continue
            after = cursor.counts_minute if run["id"] == cursor.counts_run else ""
            for minute, labels in self._minutes(run, runs[i + 1] if i + 1 < len(runs) else None, after, now):
                if out and len(out) + len(labels) > limit:
                    return out
                for j, (label, n, faces) in enumerate(labels):
                    if j == len(labels) - 1:
                        cursor = replace(cursor, counts_run=run["id"], counts_minute=minute)
                    out.append((messages.count_message(self.device, run["id"], minute, label, n, faces), cursor))
        return out

    def _minutes(self, run: sqlite3.Row, following: sqlite3.Row | None, after: str,
                 now: float) -> list[tuple[str, list[tuple]]]:
        """A run's complete minutes after `after`, each with its (label, detections, faces). Only those rows
        are read: a live run's up to the last complete minute, an ended one's up to the next run's start."""
        done = run["stopped_utc"] is not None or following is not None
        until = utc_minute(now - MINUTE_LAG_S) if not done else "9999"
        if run["privacy"]:
            rows = self.db.execute("SELECT minute_utc, label, detections, faces FROM counts WHERE run_id = ? AND "
                                   "minute_utc > ? AND minute_utc < ? ORDER BY minute_utc, label",
                                   (run["id"], after, until))
        else:  # time stamps sort as text: "…T12:34:56.789Z" after "…T12:34" and before "…T12:34Z"
            until = following["started_utc"] if following is not None else until[:16]
            rows = self.db.execute("SELECT substr(time_utc, 1, 16) || 'Z' AS minute_utc, label, COUNT(*), "
                                   "COUNT(DISTINCT track) FROM detections WHERE run_id = ? AND time_utc > ? AND "
                                   "time_utc < ? GROUP BY minute_utc, label ORDER BY minute_utc, label",
                                   (run["id"], after, until))
        minutes: dict[str, list[tuple]] = {}
        for minute, label, n, faces in rows:
            minutes.setdefault(minute, []).append((label, n, faces))
        return list(minutes.items())

    def state(self, now: float) -> tuple[int, dict[str, int]] | None:
        """The newest run and its faces in view per label (a privacy run: its current minute's faces)."""
        run = self.db.execute("SELECT id, privacy FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if run is None:
            return None
        if run["privacy"]:
            rows = self.db.execute("SELECT label, faces FROM counts WHERE run_id = ? AND minute_utc = ?",
                                   (run["id"], utc_minute(now))).fetchall()
        else:
            last = self.db.execute("SELECT frame, time_utc FROM detections WHERE run_id = ? ORDER BY id DESC LIMIT 1",
                                   (run["id"],)).fetchone()
            fresh = last is not None and last["time_utc"] >= utc(now - STATE_FRESH_S)
            rows = self.db.execute("SELECT label, COUNT(*) FROM detections WHERE run_id = ? AND frame = ? "
                                   "GROUP BY label", (run["id"], last["frame"])).fetchall() if fresh else []
        return run["id"], {label: n for label, n in rows}

    def labels(self) -> list[str]:
        """The newest run's labels: the sensors Home Assistant discovery announces."""
        row = self.db.execute("SELECT labels FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return json.loads(row["labels"] or "[]") if row else []

    def forget_sent_runs(self) -> None:
        """Send every run after the cursor again, changed or not (after a lost connection)."""
        self._sent_runs.clear()

    def close(self) -> None:
        self.db.close()


class Publisher:
    """One log to one broker: `pump` moves messages while the connection allows, `close` says goodbye.

    `live` is a running device: it announces itself `online` (retained), leaves `offline` as its last
    will, publishes `state` and, when asked, Home Assistant discovery.
    """

    def __init__(self, feed: LogFeed, broker: Broker, client_id: str, live: bool = True,
                 discovery: bool = False) -> None:
        self.feed, self.broker, self.live, self.discovery = feed, broker, live, discovery
        self.link = Link(broker, "mqtt publish")
        self.client = make_client(broker, client_id, self.link)
        self.cursor = feed.cursor()
        self.sent = Sent()
        self._inflight: list[tuple[object, Message, Cursor]] = []
        self._acked: deque[tuple[float, Cursor]] = deque(maxlen=ACKED_KEPT)  # (when, the cursor before it)
        self._connects_seen = 0
        self._unsaved = False
        self._state_at = 0.0
        self._state: tuple[int, dict[str, int]] | None = None
        if live:
            will = messages.available(feed.device, online=False)
            self.client.will_set(will.topic, will.payload, qos=1, retain=True)
            self._labels = feed.labels()
            self.client.on_connect = self._on_connect
        start(self.client, broker)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        """A live device says `online` (and, opted in, its Home Assistant sensors) at every (re)connect."""
        self.link.on_connect(client, userdata, flags, reason_code, properties)
        if reason_code.is_failure:
            return
        hello = [messages.available(self.feed.device, online=True)]
        if self.discovery:
            hello += messages.discovery_messages(self.feed.device, self._labels)
        for m in hello:
            client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)

    def _advance(self) -> None:
        """Move the cursor over the acknowledged head of what is in flight, and persist it."""
        acked, now = 0, time.monotonic()
        while acked < len(self._inflight) and self._inflight[acked][0].is_published():
            acked += 1
        for _, message, after in self._inflight[:acked]:
            kind = message.topic.rsplit("/", 1)[1]
            setattr(self.sent, kind, getattr(self.sent, kind) + 1)
            self._acked.append((now, self.cursor))
            self.cursor = after
        del self._inflight[:acked]
        if acked or self._unsaved:
            self._unsaved = not self.feed.save(self.cursor)

    def _rewind(self) -> None:
        """Once the link is back and nothing is in flight, go back to the cursor of RESEND_S before the loss."""
        connects = self.link.connects
        if connects == self._connects_seen or self._inflight or not self.link.connected.is_set():
            return
        self._connects_seen = connects
        since = self.link.lost_at - RESEND_S
        resend = [cursor for at, cursor in self._acked if at >= since]
        if resend:  # none after a first connection: nothing was acknowledged before it
            log.info("mqtt publish: sending again the %d messages acknowledged in the %.0f s before the "
                     "connection was lost", len(resend), RESEND_S)
            self.cursor = resend[0]
            self.feed.forget_sent_runs()
        self._acked.clear()

    def _send(self, now: float) -> int:
        """Publish the next batch from the log; messages sent."""
        batch = self.feed.batch(self.cursor, now)
        for message, after in batch:
            info = self.client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            self._inflight.append((info, message, after))
        if self.live and now - self._state_at >= STATE_EVERY_S:
            self._state_at = now
            state = self.feed.state(now)
            if state is not None and state != self._state:
                self._state = state
                m = messages.state_message(self.feed.device, state[0], utc(now), state[1])
                self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        return len(batch)

    def pump(self, until: Callable[[], bool], idle_stops: bool = False) -> bool:
        """Publish and follow acknowledgements until `until()` (or, with `idle_stops`, until the log has
        nothing more to send); True when everything was sent and acknowledged."""
        while not until():
            try:
                self._advance()
                self._rewind()
                idle = not self._inflight and not (self.link.connected.is_set() and self._send(time.time()))
            except sqlite3.OperationalError as exc:  # the writer holds the log just now: next pass
                log.debug("mqtt publish: %s", exc)
                idle = False
            if idle and self.link.connected.is_set() and idle_stops:
                return True
            self._wait(until, POLL_S if idle or not self.link.connected.is_set() else 0.02)
        self._advance()
        return not self._inflight

    @staticmethod
    def _wait(until: Callable[[], bool], seconds: float) -> None:
        """Sleep in slices, so a stop is seen within a twentieth of a second."""
        end = time.monotonic() + seconds
        while not until() and time.monotonic() < end:
            time.sleep(min(0.05, seconds))

    def close(self, within_s: float = 0.5) -> None:
        """Say `offline` (if connected) and disconnect, waiting at most `within_s`."""
        if self.live and self.link.connected.is_set():
            bye = messages.available(self.feed.device, online=False)
            info = self.client.publish(bye.topic, bye.payload, qos=1, retain=True)
            end = time.monotonic() + within_s
            while not info.is_published() and time.monotonic() < end:
                time.sleep(0.02)
        self.link.closing = True
        self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, daemon=True)  # a connect attempt may hang
        stopper.start()
        stopper.join(within_s)
        self.feed.close()


class BackgroundPublisher:
    """The publisher of a running `ferlite run`: a thread beside the pipeline, stopped after it."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-publish", daemon=True)
        self._drain_until = 0.0
        self._thread.start()

    def _run(self) -> None:
        try:
            self.publisher.pump(self._stop.is_set)
            self.publisher.pump(lambda: time.monotonic() >= self._drain_until, idle_stops=True)
        except sqlite3.DatabaseError as exc:  # the run goes on logging; the next run or `ferlite publish` resumes
            log.warning("mqtt publish: stopped, cannot read %s (%s)", self.publisher.feed.path, exc)

    def stop(self, drain_s: float = 1.0) -> None:
        """After the run: publish what the log's last commit added, for at most `drain_s`, then go offline.
        What is left stays after the cursor, for the next run or `ferlite publish`."""
        self._drain_until = time.monotonic() + drain_s
        self._stop.set()
        self._thread.join(drain_s + 0.5)
        self.publisher.close(within_s=0.3)


def drain(feed: LogFeed, broker: Broker, client_id: str, wait_s: float) -> Sent:
    """`ferlite publish`: send everything after the cursor; FleetError when the broker refuses us or stays
    unreachable (or stops acknowledging) for `wait_s`."""
    publisher = Publisher(feed, broker, client_id, live=False)
    try:
        moved, moved_at = 0, time.monotonic()

        def stuck() -> bool:
            nonlocal moved, moved_at
            if publisher.sent.total() != moved:
                moved, moved_at = publisher.sent.total(), time.monotonic()
            return publisher.link.refused is not None or time.monotonic() - moved_at > wait_s

        done = publisher.pump(stuck, idle_stops=True)
        if publisher.link.refused:
            raise FleetError(f"{broker.name} refused the connection ({publisher.link.refused})")
        if not done or not publisher.link.connected.is_set():
            raise FleetError(f"{broker.name}: no progress for {wait_s:.0f} s ({publisher.sent.total()} messages "
                             "acknowledged); run it again to go on from there")
        return publisher.sent
    finally:
        publisher.close()


def prepare(cfg: RunConfig) -> tuple[Broker, str]:
    """The broker and device id of a run with --mqtt, checked before the run opens anything."""
    broker = broker_from_config(cfg)
    paho()  # missing: say so now, not after the camera opened
    return broker, device_name(cfg)


def in_background(cfg: RunConfig, broker: Broker, device: str) -> BackgroundPublisher:
    """The publisher of `ferlite run --mqtt`, started once the run's log exists."""
    feed = LogFeed(cfg.log_path(), device, broker.name)
    return BackgroundPublisher(Publisher(feed, broker, f"ferlite-{device}", live=True, discovery=cfg.mqtt_discovery))
