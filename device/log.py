"""The local results log: SQLite in WAL mode (default) or JSON lines, written in batches.

Rows are buffered and committed at least once a second, so a crash or power cut loses at most
about a second, and an SD card is not worn by one write per frame. A full disk drops the batch
with one warning and the run goes on; SQLite's transactions keep the database consistent. With
`privacy`, only per-minute counts per label are stored: no boxes, no per-face rows.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from ferlite.config import RunConfig
from ferlite.errors import LogError
from ferlite.inputs import Box

log = logging.getLogger(__name__)

_DEFAULTS = RunConfig()  # retention defaults: the run options' own
MAX_AGE_S = _DEFAULTS.retention_days * 86400
MAX_BYTES = int(_DEFAULTS.retention_mb * 2**20)
COMMIT_EVERY_S = 1.0
RETAIN_EVERY_S = 600.0


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

    def clear(self) -> None:
        self.detections.clear()
        self.counts.clear()


class ResultsLog(Protocol):
    path: Path
    run_id: int
    frames: int
    skipped: int
    stored: int

    def write(self, frame: int, t: float, results: list[Result]) -> None:
        """Log one processed frame (results may be empty); commits when a second has passed."""

    def skip(self) -> None:
        """Count a frame that could not be used."""

    def commit(self) -> None:
        """Write out everything pending now."""

    def close(self) -> None:
        """Commit, record the stop time and release the file."""


class _BatchedLog:
    """Buffering, privacy counting and the commit clock, shared by both formats."""

    def __init__(self, path: Path, privacy: bool) -> None:
        self.path, self.privacy = path, privacy
        self.run_id = 0
        self.frames = self.skipped = self.stored = 0
        self._pending = _Pending()
        self._seen: dict[tuple[str, str], set[int]] = {}
        self._last_commit = time.monotonic()
        self._failing = False

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

    def skip(self) -> None:
        self.skipped += 1
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
            self.commit()

    def commit(self) -> None:
        self._last_commit = time.monotonic()
        rows = len(self._pending.detections) + sum(c[0] for c in self._pending.counts.values())
        try:
            self._store(self._pending)
        except (sqlite3.OperationalError, OSError) as exc:
            if not self._failing:
                log.warning("results log %s: cannot write (%s); dropping results until it can", self.path,
                            str(exc).splitlines()[0])
            self._failing = True
        else:
            if self._failing:
                log.warning("results log %s: writing again", self.path)
            self._failing = False
            self.stored += rows
        self._pending.clear()

    def _store(self, pending: _Pending) -> None:
        raise NotImplementedError


SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started_utc TEXT NOT NULL, stopped_utc TEXT, bundle_sha256 TEXT, labels TEXT,
    source TEXT, detector TEXT, config TEXT, privacy INTEGER NOT NULL DEFAULT 0,
    frames INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0, detections INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS detections (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), time_utc TEXT NOT NULL,
    frame INTEGER NOT NULL, track INTEGER NOT NULL, x INTEGER, y INTEGER, w INTEGER, h INTEGER,
    label TEXT NOT NULL, confidence REAL NOT NULL, uncertain INTEGER NOT NULL DEFAULT 0, probs TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS detections_time ON detections(time_utc);
CREATE TABLE IF NOT EXISTS counts (
    run_id INTEGER NOT NULL REFERENCES runs(id), minute_utc TEXT NOT NULL, label TEXT NOT NULL,
    detections INTEGER NOT NULL, faces INTEGER NOT NULL, PRIMARY KEY (run_id, minute_utc, label));
"""


def _add_uncertain_column(db: sqlite3.Connection) -> None:
    """Logs written before the `uncertain` flag get the column (0: their labels were replaced instead)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(detections)")}
    if "uncertain" not in columns:
        with db:
            db.execute("ALTER TABLE detections ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0")


class SqliteLog(_BatchedLog):
    """Results in SQLite (WAL, synchronous=NORMAL: a killed process loses nothing committed)."""

    def __init__(self, path: str | Path, info: RunInfo, privacy: bool = False, max_age_s: float = MAX_AGE_S,
                 max_bytes: int = MAX_BYTES) -> None:
        super().__init__(Path(path), privacy)
        self.max_age_s, self.max_bytes = max_age_s, max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=10)
            self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.executescript(SCHEMA)
            _add_uncertain_column(self.db)
            with self.db:
                self.run_id = self.db.execute(
                    "INSERT INTO runs (started_utc, bundle_sha256, labels, source, detector, config, privacy) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (utc(time.time()), info.bundle_sha256, json.dumps(info.labels), info.source, info.detector,
                     json.dumps(info.config), int(privacy))).lastrowid
        except sqlite3.DatabaseError as exc:
            raise LogError(f"{self.path}: cannot open the results database ({exc})") from None
        self._last_retain = time.monotonic()
        self.retain()

    def _store(self, pending: _Pending) -> None:
        with self.db:
            self.db.executemany("INSERT INTO detections (run_id, time_utc, frame, track, x, y, w, h, label, "
                                "confidence, uncertain, probs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                pending.detections)
            self.db.executemany(
                "INSERT INTO counts VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, minute_utc, label) DO UPDATE SET "
                "detections = detections + excluded.detections, faces = faces + excluded.faces",
                [(self.run_id, minute, label, n, faces) for (minute, label), (n, faces) in pending.counts.items()])
            stored = self.stored + len(pending.detections) + sum(c[0] for c in pending.counts.values())
            self.db.execute("UPDATE runs SET frames = ?, skipped = ?, detections = ? WHERE id = ?",
                            (self.frames, self.skipped, stored, self.run_id))
        if time.monotonic() - self._last_retain >= RETAIN_EVERY_S:
            self._last_retain = time.monotonic()
            self.retain()

    def used_bytes(self) -> int:
        """Bytes in use by data (free pages left by deletions do not count)."""
        pages, free, size = (self.db.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
        return (pages - free) * size

    def retain(self) -> None:
        """Delete results older than max_age_s, then the oldest until the data fits in max_bytes."""
        cutoff = utc(time.time() - self.max_age_s)
        try:
            with self.db:
                self.db.execute("DELETE FROM detections WHERE time_utc < ?", (cutoff,))
                self.db.execute("DELETE FROM counts WHERE minute_utc < ?", (cutoff[:16] + "Z",))
            while self.used_bytes() > self.max_bytes:
                rows = self.db.execute("SELECT COUNT(*) FROM detections").fetchone()[0]
                table, key = ("detections", "id") if rows else ("counts", "minute_utc")
                batch = max(100, (rows or self.db.execute("SELECT COUNT(*) FROM counts").fetchone()[0]) // 10)
                with self.db:
                    gone = self.db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                                           f"ORDER BY {key} LIMIT ?)", (batch,)).rowcount
                if not gone:
                    break
            self.db.execute("PRAGMA incremental_vacuum")
        except sqlite3.OperationalError as exc:
            log.warning("results log %s: retention failed (%s)", self.path, exc)

    def close(self) -> None:
        self.commit()
        try:
            with self.db:
                self.db.execute("UPDATE runs SET stopped_utc = ? WHERE id = ?", (utc(time.time()), self.run_id))
        except sqlite3.OperationalError as exc:
            log.warning("results log %s: cannot record the stop (%s)", self.path, exc)
        self.db.close()


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
        self._broken = self._torn()
        try:
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise LogError(f"{self.path}: cannot open the results log ({exc.strerror})") from None
        self._append([self._header])
        self.retain()

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
            self._file.write(text)
            self._file.flush()
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
            self._file = self.path.open("a", encoding="utf-8")
            self._append([self._header])

    def close(self) -> None:
        self.commit()
        try:
            self._append([{"type": "stop", "run": self.run_id, "stopped_utc": utc(time.time()),
                           "frames": self.frames, "skipped": self.skipped, "detections": self.stored}])
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
    def __init__(self, path: Path) -> None:
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

    def runs(self) -> list[dict]:
        rows = [dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY id")]
        for r in rows:
            r["labels"], r["config"] = json.loads(r["labels"] or "[]"), json.loads(r["config"] or "{}")
            r["privacy"] = bool(r["privacy"])
        return rows

    def detections(self) -> Iterator[dict]:
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(detections)")}
        flag = "uncertain" if "uncertain" in columns else "0 AS uncertain"
        for r in self.db.execute(f"SELECT run_id AS run, time_utc, frame, track, x, y, w, h, label, confidence, "
                                 f"{flag}, probs FROM detections ORDER BY id"):
            row = dict(r)
            row["uncertain"], row["probs"] = bool(row["uncertain"]), json.loads(row["probs"])
            yield row

    def counts(self) -> Iterator[dict]:
        for r in self.db.execute("SELECT run_id AS run, minute_utc, label, detections, faces FROM counts "
                                 "ORDER BY minute_utc, label"):
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
                                            "skipped": None, "detections": None, **record})
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


def open_reader(path: str | Path) -> LogReader:
    """A reader for a SQLite or JSONL results log, told apart by the SQLite file header."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: no such results log")
    with path.open("rb") as f:
        header = f.read(16)
    if header == b"SQLite format 3\x00":
        return SqliteReader(path)
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
