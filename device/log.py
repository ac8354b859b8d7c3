"""The local results log: SQLite in WAL mode (default) or JSON lines, written in batches.

Rows are buffered and committed at least once a second, so a crash or power cut loses at most
about a second, and an SD card is not worn by one write per frame. A full disk or a database
locked by another process keeps the batch and retries it each second for RETRY_FOR_S, with one
warning, while the run goes on; only then are those rows dropped, counted and said. SQLite's
transactions keep the database consistent. With `privacy`, only per-minute counts per label are
stored: no boxes, no per-face rows.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ferlite.config import RunConfig
from ferlite.errors import LogError

if TYPE_CHECKING:  # only for annotations: `ferlite serve` reads logs without numpy
    from ferlite.inputs import Box

log = logging.getLogger(__name__)

_DEFAULTS = RunConfig()  # retention defaults: the run options' own
MAX_AGE_S = _DEFAULTS.retention_days * 86400
MAX_BYTES = int(_DEFAULTS.retention_mb * 2**20)
COMMIT_EVERY_S = 0.5  # with a frame's time and a loaded machine on top, a killed run still loses under a second
SQLITE_HEADER = b"SQLite format 3\x00"
RETAIN_EVERY_S = 600.0  # age-based deletion; the size limit is checked at every commit
BUSY_TIMEOUT_S = 0.5  # how long one write waits for another process's lock: SIGTERM must end a run within 2 s
RETRY_FOR_S = 30.0  # how long results that cannot be written are kept and retried before they are dropped
SHRINK_TO = 0.8  # a log over its size limit is cut to this share of it, so it is not cut again at every commit


def is_sqlite(path: Path) -> bool:
    """Whether the file exists and starts with SQLite's header (logs are told apart by content, not name)."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(16) == SQLITE_HEADER


def utc(t: float) -> str:
    """ISO 8601 UTC with milliseconds; sorts as text."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def utc_minute(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")


@dataclass
class Result:
    """One tracked face in one frame, as logged: always the model's top label and its probability;
    `uncertain` flags a top probability under the run's threshold."""

    track: int
    box: Box
    label: str
    confidence: float
    probs: dict[str, float]
    uncertain: bool = False


@dataclass
class RunInfo:
    bundle_sha256: str
    labels: list[str]
    source: str
    detector: str
    config: dict


@dataclass
class _Pending:
    """What the next commit writes: detection rows, per-minute count increments, run counters."""

    detections: list[tuple] = field(default_factory=list)
    counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    events: list[tuple] = field(default_factory=list)  # track_events rows: what a fleet publisher sends

    def rows(self) -> int:
        """Results pending: one per detection row, and one per face counted in privacy mode."""
        return len(self.detections) + sum(c[0] for c in self.counts.values())

    def clear(self) -> None:
        self.detections.clear()
        self.counts.clear()
        self.events.clear()


@dataclass
class _OpenTrack:
    """A track the log has seen start and not yet end: what its `end` event reports."""

    start: float
    last: float
    label: str
    frames: Counter = field(default_factory=Counter)  # frames per smoothed top label


class ResultsLog(Protocol):
    path: Path
    run_id: int
    frames: int
    skipped: int
    read_failures: int
    stored: int
    dropped: int
    kept: int

    def write(self, frame: int, t: float, results: list[Result]) -> None:
        """Log one processed frame (results may be empty); commits when a second has passed."""

    def skip(self, frames: int = 1) -> None:
        """Count frames that could not be used."""

    def read_failure(self) -> None:
        """Count a camera read that delivered no frame."""

    def track_events(self, t: float, results: list[Result], ended: list[int]) -> None:
        """Turn one frame's tracks into track events (new, update, end) for the next commit."""

    def commit(self) -> None:
        """Write out everything pending now."""

    def close(self) -> None:
        """Commit, record the stop time and release the file."""


class _BatchedLog:
    """Buffering, privacy counting and the commit clock, shared by both formats."""

    def __init__(self, path: Path, privacy: bool) -> None:
        self.path, self.privacy = path, privacy
        self.run_id = 0
        self.frames = self.skipped = self.stored = self.read_failures = 0
        self._pending = _Pending()
        self._seen: dict[tuple[str, str], set[int]] = {}
        self._last_commit = time.monotonic()
        self._failing_since: float | None = None
        self.dropped = 0  # results given up on: writes failed for RETRY_FOR_S, or nowhere to keep them at the stop
        self.kept = 0  # results kept in a side file at the stop, for the next run to write
        self._open_tracks: dict[int, _OpenTrack] = {}

    def write(self, frame: int, t: float, results: list[Result]) -> None:
        self.frames += 1
        if self.privacy:
            minute = utc_minute(t)
            if self._seen and next(iter(self._seen))[0] != minute:
                self._seen.clear()
            for r in results:
                counts = self._pending.counts.setdefault((minute, r.label), [0, 0])
                counts[0] += 1
                tracks = self._seen.setdefault((minute, r.label), set())
                if r.track not in tracks:
                    tracks.add(r.track)
                    counts[1] += 1
        else:
            stamp = utc(t)
            self._pending.detections.extend(
                (self.run_id, stamp, frame, r.track, *map(int, r.box), r.label, round(float(r.confidence), 4),
                 int(r.uncertain), json.dumps({k: round(float(v), 4) for k, v in r.probs.items()}))
                for r in results)
        self._maybe_commit()

    def skip(self, frames: int = 1) -> None:
        self.skipped += frames
        self._maybe_commit()

    def read_failure(self) -> None:
        self.read_failures += 1
        self._maybe_commit()

    def track_events(self, t: float, results: list[Result], ended: list[int]) -> None:
        """Track events for the next commit: `new` at a track's first frame, `update` when its smoothed label
        changes, `end` for the tracks the tracker dropped (`ended`); `_end_tracks` ends the rest at the stop.

        A privacy run stores none: an event is a row per face, which privacy mode promises not to keep.
        """
        if self.privacy:
            return
        for r in results:
            track = self._open_tracks.get(r.track)
            kind = "new" if track is None else "update" if track.label != r.label else None
            if track is None:
                track = self._open_tracks[r.track] = _OpenTrack(t, t, r.label)
            track.last, track.label = t, r.label
            track.frames[r.label] += 1
            if kind:
                self._pending.events.append(self._event_row(r.track, kind, t, track))
        for track_id in ended:
            if (track := self._open_tracks.pop(track_id, None)) is not None:
                self._pending.events.append(self._event_row(track_id, "end", track.last, track))

    def _end_tracks(self) -> None:
        """At the stop every open track ends where it was last seen."""
        self.track_events(0.0, [], list(self._open_tracks))

    def _event_row(self, track_id: int, kind: str, t: float, track: _OpenTrack) -> tuple:
        frames = sum(track.frames.values())
        shares = {label: round(n / frames, 4) for label, n in track.frames.most_common()}
        return (self.run_id, track_id, kind, utc(t), track.label, json.dumps(shares), frames, utc(track.start),
                utc(track.last) if kind == "end" else None)

    def _maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
            self.commit()

    def commit(self) -> None:
        """Write what is pending; when that fails, keep it for the next commit, and drop it (counted in
        `dropped`) only once writing has failed for RETRY_FOR_S."""
        self._last_commit = time.monotonic()
        try:
            self._store(self._pending)
        except (sqlite3.OperationalError, OSError) as exc:
            self._failed(exc)
            return
        if self._failing_since is not None:
            log.warning("results log %s: writing again", self.path)
            self._failing_since = None
        self.stored += self._pending.rows()
        self._pending.clear()

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("results log %s: cannot write (%s); retrying for %.0f s", self.path,
                        str(exc).splitlines()[0], RETRY_FOR_S)
        elif now - self._failing_since >= RETRY_FOR_S:
            rows = self._pending.rows()
            if rows:
                log.warning("results log %s: dropped %d results after %.0f s of failed writes (%s)", self.path,
                            rows, now - self._failing_since, str(exc).splitlines()[0])
            self.dropped += rows
            self._pending.clear()

    def _store(self, pending: _Pending) -> None:
        raise NotImplementedError


# Tables retention deletes from, each with the UTC time column it deletes by (oldest first).
RETAINED = (("detections", "time_utc"), ("counts", "minute_utc"), ("track_events", "time_utc"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started_utc TEXT NOT NULL, stopped_utc TEXT, bundle_sha256 TEXT, labels TEXT,
    source TEXT, detector TEXT, config TEXT, privacy INTEGER NOT NULL DEFAULT 0,
    frames INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0, detections INTEGER NOT NULL DEFAULT 0,
    read_failures INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS detections (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), time_utc TEXT NOT NULL,
    frame INTEGER NOT NULL, track INTEGER NOT NULL, x INTEGER, y INTEGER, w INTEGER, h INTEGER,
    label TEXT NOT NULL, confidence REAL NOT NULL, uncertain INTEGER NOT NULL DEFAULT 0, probs TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS detections_time ON detections(time_utc);
CREATE TABLE IF NOT EXISTS counts (
    run_id INTEGER NOT NULL REFERENCES runs(id), minute_utc TEXT NOT NULL, label TEXT NOT NULL,
    detections INTEGER NOT NULL, faces INTEGER NOT NULL, PRIMARY KEY (run_id, minute_utc, label));
CREATE TABLE IF NOT EXISTS track_events (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), track INTEGER NOT NULL,
    kind TEXT NOT NULL, time_utc TEXT NOT NULL, label TEXT NOT NULL, shares TEXT NOT NULL, frames INTEGER NOT NULL,
    start_utc TEXT NOT NULL, end_utc TEXT);
CREATE INDEX IF NOT EXISTS track_events_time ON track_events(time_utc);
CREATE TABLE IF NOT EXISTS publish_cursor (
    broker TEXT NOT NULL, stream TEXT NOT NULL, last_id INTEGER NOT NULL, last_minute TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (broker, stream));
"""


# Columns added after the first logs were written: (table, column, declaration). Old logs gain them at open.
ADDED_COLUMNS = (
    ("detections", "uncertain", "INTEGER NOT NULL DEFAULT 0"),  # 0: old labels were replaced instead
    ("runs", "read_failures", "INTEGER NOT NULL DEFAULT 0"),
)


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, declaration in ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            with db:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


class SqliteLog(_BatchedLog):
    """Results in SQLite (WAL, synchronous=NORMAL: a killed process loses nothing committed).

    The size limit counts the database and its WAL and is checked at every commit: over it, the
    oldest results go, the freed pages are returned to the file system and the WAL is truncated.
    Results that cannot be written when the run stops (a database locked past the stop deadline)
    are kept in PATH-unsaved.jsonl with the stop time, and written by the next run that opens PATH.
    """

    def __init__(self, path: str | Path, info: RunInfo, privacy: bool = False, max_age_s: float = MAX_AGE_S,
                 max_bytes: int = MAX_BYTES) -> None:
        super().__init__(Path(path), privacy)
        self.max_age_s, self.max_bytes = max_age_s, max_bytes
        self.unsaved = self.path.with_name(self.path.name + "-unsaved.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
            self._set_up()
            with self.db:
                self.run_id = self.db.execute(
                    "INSERT INTO runs (started_utc, bundle_sha256, labels, source, detector, config, privacy) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (utc(time.time()), info.bundle_sha256, json.dumps(info.labels), info.source, info.detector,
                     json.dumps(info.config), int(privacy))).lastrowid
        except sqlite3.DatabaseError as exc:
            raise LogError(f"{self.path}: cannot open the results database ({str(exc).splitlines()[0]})") from None
        self._replay_unsaved()
        self._last_retain = time.monotonic()
        self.retain()

    def _set_up(self) -> None:
        """WAL, the schema, and a file that can shrink: a log made before auto_vacuum is vacuumed once."""
        new = not self.db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
        self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect now on a new file, else after VACUUM
        if not new and self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            log.info("results log %s: converting to a file that shrinks (once)", self.path)
            try:
                self.db.execute("VACUUM")
            except sqlite3.OperationalError as exc:  # another process has it open: try again next time
                log.warning("results log %s: cannot convert it yet (%s)", self.path, str(exc).splitlines()[0])
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        wal_bytes = min(4 * 2**20, max(64 * 1024, self.max_bytes // 8))
        self.db.execute(f"PRAGMA journal_size_limit = {wal_bytes}")  # the WAL is cut back after checkpoints
        self.db.execute(f"PRAGMA wal_autocheckpoint = {max(16, wal_bytes // 4096)}")
        self.db.executescript(SCHEMA)
        _add_columns(self.db)

    def _store(self, pending: _Pending, stopped: bool = False) -> None:
        """One transaction: the pending rows, the run's counters and, at the end, its stop time."""
        stored = self.stored + pending.rows()
        with self.db:
            self._insert(pending.detections, [(self.run_id, minute, label, n, faces)
                                              for (minute, label), (n, faces) in pending.counts.items()],
                         pending.events)
            self.db.execute("UPDATE runs SET frames = ?, skipped = ?, read_failures = ?, detections = ? WHERE id = ?",
                            (self.frames, self.skipped, self.read_failures, stored, self.run_id))
            if stopped:
                self.db.execute("UPDATE runs SET stopped_utc = ? WHERE id = ?", (utc(time.time()), self.run_id))
        if time.monotonic() - self._last_retain >= RETAIN_EVERY_S:
            self._last_retain = time.monotonic()
            self.retain()
        elif self.file_bytes() > self.max_bytes:
            self.retain()

    def _insert(self, detections: list, counts: list, events: list) -> None:
        """Rows into the three result tables (counts are increments, added to a minute's), in the caller's
        transaction: a commit's batch, or what an earlier run kept."""
        self.db.executemany("INSERT INTO detections (run_id, time_utc, frame, track, x, y, w, h, label, "
                            "confidence, uncertain, probs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", detections)
        self.db.executemany(
            "INSERT INTO counts VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, minute_utc, label) DO UPDATE SET "
            "detections = detections + excluded.detections, faces = faces + excluded.faces", counts)
        self.db.executemany("INSERT INTO track_events (run_id, track, kind, time_utc, label, shares, frames, "
                            "start_utc, end_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", events)

    def file_bytes(self) -> int:
        """The log's size on disk: the database and its write-ahead log."""
        return (self.path.stat().st_size if self.path.exists() else 0) + self._wal_bytes()

    def used_bytes(self) -> int:
        """Bytes in use by data (free pages left by deletions do not count)."""
        pages, free, size = (self.db.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
        return (pages - free) * size

    def retain(self) -> None:
        """Delete results older than max_age_s; then, while the log is over max_bytes, the oldest results
        until it is under SHRINK_TO of it; return the free pages and truncate the WAL."""
        cutoff = utc(time.time() - self.max_age_s)
        try:
            with self.db:
                for table, column in RETAINED:
                    self.db.execute(f"DELETE FROM {table} WHERE {column} < ?",
                                    (cutoff[:16] + "Z" if column.startswith("minute") else cutoff,))
            self._shrink()
            if self.file_bytes() > self.max_bytes:
                target = int(self.max_bytes * SHRINK_TO) - self._wal_bytes()
                while self.used_bytes() > target and self._delete_oldest():
                    pass
                self._shrink()
        except sqlite3.OperationalError as exc:
            log.warning("results log %s: retention failed (%s)", self.path, str(exc).splitlines()[0])

    def _wal_bytes(self) -> int:
        wal = self.path.with_name(self.path.name + "-wal")
        return wal.stat().st_size if wal.exists() else 0

    def _delete_oldest(self) -> int:
        """Delete a tenth (at least 100 rows) of the table holding the oldest result; rows deleted."""
        oldest = []
        for table, column in RETAINED:
            first = self.db.execute(f"SELECT MIN({column}), COUNT(*) FROM {table}").fetchone()
            if first[1]:
                oldest.append((first[0][:16], table, column, first[1]))
        if not oldest:
            return 0
        _, table, column, rows = min(oldest)
        with self.db:
            return self.db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                                   f"ORDER BY {column}, rowid LIMIT ?)", (max(100, rows // 10),)).rowcount

    def _shrink(self) -> None:
        """Give free pages back to the file system and truncate the WAL once no reader needs it. The pragma
        frees one page per step; `execute` steps it once, `executescript` to the end."""
        self.db.executescript("PRAGMA incremental_vacuum;")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        """The last results and the stop time in one transaction; when the database stays locked past
        BUSY_TIMEOUT_S, both go to PATH-unsaved.jsonl for the next run, so the stop never waits long."""
        self._end_tracks()
        try:
            self._store(self._pending, stopped=True)
            self.stored += self._pending.rows()
        except (sqlite3.OperationalError, OSError) as exc:
            self._keep_unsaved(exc)
        self._pending.clear()
        self.db.close()

    def _keep_unsaved(self, exc: Exception) -> None:
        record = {"run": self.run_id, "stopped_utc": utc(time.time()), "frames": self.frames,
                  "skipped": self.skipped, "read_failures": self.read_failures,
                  "detections": self._pending.detections, "events": self._pending.events,
                  "counts": [[m, label, n, faces] for (m, label), (n, faces) in self._pending.counts.items()]}
        try:
            with self.unsaved.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as spill:
            self.dropped += self._pending.rows()
            log.warning("results log %s: cannot record the stop (%s; nor in %s: %s)", self.path,
                        str(exc).splitlines()[0], self.unsaved.name, spill.strerror)
            return
        self.kept = self._pending.rows()
        log.warning("results log %s: cannot record the stop (%s); %d results and the stop time kept in %s, "
                    "written by the next run", self.path, str(exc).splitlines()[0], self.kept, self.unsaved)

    def _replay_unsaved(self) -> None:
        """Write what an earlier run kept in PATH-unsaved.jsonl, then remove the file."""
        if not self.unsaved.exists():
            return
        try:
            with self.db:
                for line in self.unsaved.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        r = json.loads(line)
                        self._replay(r)
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError, sqlite3.IntegrityError):
                        log.warning("results log %s: skipped a malformed line of %s", self.path, self.unsaved.name)
            self.unsaved.unlink()
        except (sqlite3.OperationalError, OSError) as exc:
            log.warning("results log %s: cannot write %s yet (%s)", self.path, self.unsaved.name,
                        str(exc).splitlines()[0])

    def _replay(self, r: dict) -> None:
        self._insert([tuple(d) for d in r["detections"]], [(r["run"], *c) for c in r["counts"]],
                     [tuple(e) for e in r.get("events", [])])
        rows = len(r["detections"]) + sum(c[2] for c in r["counts"])
        self.db.execute("UPDATE runs SET stopped_utc = ?, frames = ?, skipped = ?, read_failures = ?, "
                        "detections = detections + ? WHERE id = ?",
                        (r["stopped_utc"], r["frames"], r["skipped"], r.get("read_failures", 0), rows, r["run"]))


class JsonlLog(_BatchedLog):
    """Results as JSON lines, one object per line with a `type` (run, detection, count, stop).

    Retention rotates the file to PATH.1 at half of max_bytes (so both stay under it) and deletes
    PATH.1 once it is older than max_age_s. Count lines are increments: readers add them up.
    """

    def __init__(self, path: str | Path, info: RunInfo, privacy: bool = False, max_age_s: float = MAX_AGE_S,
                 max_bytes: int = MAX_BYTES) -> None:
        super().__init__(Path(path), privacy)
        self.max_age_s, self.max_bytes = max_age_s, max_bytes
        self.run_id = int(time.time() * 1000)
        self._header = {"type": "run", "run": self.run_id, "started_utc": utc(time.time()),
                        "bundle_sha256": info.bundle_sha256, "labels": info.labels, "source": info.source,
                        "detector": info.detector, "config": info.config, "privacy": privacy}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if is_sqlite(self.path):
            raise LogError(f"{self.path}: is a SQLite results database; give a .jsonl path for --log-format jsonl")
        self._broken = self._torn()
        try:
            self._file = self._open()
            self._append([self._header])
        except OSError as exc:
            raise LogError(f"{self.path}: cannot write the results log ({exc.strerror})") from None
        self.retain()

    def _open(self):
        """Unbuffered: a write that fails (a full disk) fails then, never again later at close."""
        return self.path.open("ab", buffering=0)

    def _torn(self) -> bool:
        """Whether a crash left the file without a final newline."""
        if not self.path.is_file() or not self.path.stat().st_size:
            return False
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def _append(self, records: list[dict]) -> None:
        text = "".join(json.dumps(r) + "\n" for r in records)
        if self._broken:  # a failed write may have left half a line; end it so the next line parses
            text = "\n" + text
        try:
            data = memoryview(text.encode())
            while data:
                data = data[self._file.write(data):]
        except OSError:
            self._broken = True
            raise
        self._broken = False

    def _store(self, pending: _Pending) -> None:
        names = ("run", "time_utc", "frame", "track", "x", "y", "w", "h", "label", "confidence")
        records = [dict(zip(names, row), type="detection", uncertain=bool(row[-2]), probs=json.loads(row[-1]))
                   for row in pending.detections]
        records += [{"type": "count", "run": self.run_id, "minute_utc": minute, "label": label, "detections": n,
                     "faces": faces} for (minute, label), (n, faces) in pending.counts.items()]
        names = ("run", "track", "kind", "time_utc", "label", "shares", "frames", "start_utc", "end_utc")
        records += [{**dict(zip(names, row)), "type": "event", "shares": json.loads(row[5])} for row in pending.events]
        self._append(records)
        if self.path.stat().st_size > self.max_bytes / 2:
            self.retain()

    def retain(self) -> None:
        old = self.path.with_name(self.path.name + ".1")
        if old.exists() and time.time() - old.stat().st_mtime > self.max_age_s:
            old.unlink()
        if self.path.stat().st_size > self.max_bytes / 2:
            self._file.close()
            os.replace(self.path, old)
            self._file = self._open()
            self._append([self._header])

    def close(self) -> None:
        self._end_tracks()
        self.commit()
        if self._pending.rows():  # the last try failed too: nowhere left to keep them
            self.dropped += self._pending.rows()
            log.warning("results log %s: %d results could not be written", self.path, self._pending.rows())
        self._pending.clear()
        try:
            self._append([{"type": "stop", "run": self.run_id, "stopped_utc": utc(time.time()),
                           "frames": self.frames, "skipped": self.skipped, "read_failures": self.read_failures,
                           "detections": self.stored}])
        except OSError as exc:
            log.warning("results log %s: cannot record the stop (%s)", self.path, exc.strerror)
        self._file.close()


def open_log(path: str | Path, fmt: str, info: RunInfo, privacy: bool = False, max_age_s: float = MAX_AGE_S,
             max_bytes: int = MAX_BYTES) -> ResultsLog:
    cls = JsonlLog if fmt == "jsonl" else SqliteLog
    return cls(path, info, privacy=privacy, max_age_s=max_age_s, max_bytes=max_bytes)


# Reading logs back (`ferlite log ...`), both formats as plain dicts.

class LogReader(Protocol):
    def runs(self) -> list[dict]: ...

    def detections(self) -> Iterator[dict]: ...

    def counts(self) -> Iterator[dict]: ...


class SqliteReader:
    """A device's log, or a database `ferlite collect` filled (its runs have a `device`): with `device`,
    only that device's runs and their rows."""

    def __init__(self, path: Path, device: str | None = None) -> None:
        # A log no writer holds open has no -wal file; reading it as immutable then creates no -wal and
        # -shm files, which a read-only connection could not remove again. A live log is read as usual.
        live = path.with_name(path.name + "-wal").exists()
        try:
            self.db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro" + ("" if live else "&immutable=1"),
                                      uri=True)
            self.db.row_factory = sqlite3.Row
            self.db.execute("SELECT id FROM runs LIMIT 1")
        except sqlite3.DatabaseError as exc:
            raise LogError(f"{path}: not a ferlite results database ({exc})") from None
        self._runs, self._rows, self._device = "", "", () if device is None else (device,)
        if device is not None:
            if "device" not in {row[1] for row in self.db.execute("PRAGMA table_info(runs)")}:
                raise LogError(f"{path}: a device's own log; --device picks a device in a database `ferlite collect` "
                               "filled")
            self._runs, self._rows = "WHERE device = ?", "WHERE run_id IN (SELECT id FROM runs WHERE device = ?)"
            known = [row[0] for row in self.db.execute("SELECT DISTINCT device FROM runs ORDER BY device")]
            if device not in known:
                raise LogError(f"{path}: no device {device!r} (it holds: {', '.join(known) or 'none yet'})")

    def runs(self) -> list[dict]:
        rows = [dict(r) for r in self.db.execute(f"SELECT * FROM runs {self._runs} ORDER BY id",
                                                 self._device)]
        for r in rows:
            r["labels"], r["config"] = json.loads(r["labels"] or "[]"), json.loads(r["config"] or "{}")
            r["privacy"] = bool(r["privacy"])
        return rows

    def detections(self) -> Iterator[dict]:
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(detections)")}
        flag = "uncertain" if "uncertain" in columns else "0 AS uncertain"
        for r in self.db.execute(f"SELECT run_id AS run, time_utc, frame, track, x, y, w, h, label, confidence, "
                                 f"{flag}, probs FROM detections {self._rows} ORDER BY id", self._device):
            row = dict(r)
            row["uncertain"], row["probs"] = bool(row["uncertain"]), json.loads(row["probs"])
            yield row

    def counts(self) -> Iterator[dict]:
        for r in self.db.execute(f"SELECT run_id AS run, minute_utc, label, detections, faces FROM counts "
                                 f"{self._rows} ORDER BY minute_utc, label", self._device):
            yield dict(r)


class JsonlReader:
    """Reads PATH.1 then PATH; lines that do not parse (a torn last write) are skipped."""

    def __init__(self, path: Path) -> None:
        self.files = [p for p in (path.with_name(path.name + ".1"), path) if p.exists()]

    def _records(self, kind: str) -> Iterator[dict]:
        for file in self.files:
            with file.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(record, dict) and record.get("type") == kind:
                        yield record

    def runs(self) -> list[dict]:
        runs: dict[int, dict] = {}
        for record in self._records("run"):
            runs.setdefault(record["run"], {"id": record["run"], "stopped_utc": None, "frames": None,
                                            "skipped": None, "read_failures": None, "detections": None, **record})
        for record in self._records("stop"):
            if record["run"] in runs:
                runs[record["run"]].update(record)
        for r in runs.values():
            r.pop("type", None)
            r.pop("run", None)
        return list(runs.values())

    def detections(self) -> Iterator[dict]:
        for record in self._records("detection"):
            record.pop("type")
            record.setdefault("uncertain", False)
            yield record

    def counts(self) -> Iterator[dict]:
        for record in self._records("count"):
            record.pop("type")
            yield record


def open_reader(path: str | Path, device: str | None = None) -> LogReader:
    """A reader for a SQLite or JSONL results log, told apart by the SQLite file header; `device`: one
    device's runs in a collected database."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: no such results log")
    if is_sqlite(path):
        return SqliteReader(path, device)
    if device is not None:
        raise LogError(f"{path}: a JSON-lines log holds one device; --device reads a collected database")
    if not _starts_as_jsonl_log(path):
        raise LogError(f"{path}: not a ferlite results log (neither its SQLite database nor its JSON lines)")
    return JsonlReader(path)


def _starts_as_jsonl_log(path: Path) -> bool:
    """Whether the file's first line is a ferlite JSON-lines record (an empty file is a log not yet written)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if not first.strip():
        return True
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "type" in record
