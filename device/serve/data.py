"""What the dashboard shows, read from a results database that a writer may be filling right now.

Every call opens its own short read-only connection (device/log.py's SqliteReader: `mode=ro`) and
closes it, so no transaction outlives a request and `ferlite run` is never blocked: under WAL a
reader never stops a writer. Now, which every open page polls, reaches recent rows through the
`time_utc` index and rowid ranges only; the other views read what they show, and every answer is
computed at most twice a second however many pages ask. A fleet collector's database has the same
tables and a `device` column on `runs`; every query takes an optional device and the views name it
when there are several.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ferlite.device.log import SqliteReader, open_reader, utc, utc_minute
from ferlite.device.logview import summarize
from ferlite.errors import LogError

LIVE_FACES_S = 3.0  # a frame older than this is no longer "now" (commits come every second)
LIVE_WRITE_S = 10.0  # a run without a stop whose database was written this recently is running
FIRST_SEEN_WINDOW_S = 3600.0  # how far back "seen for" looks when serve starts during a long run
CACHE_S = 0.5  # many pollers, one query: each answer is recomputed at most twice a second
MAX_TRACKS = 1000
CACHE_KIB = 256  # SQLite's page cache per connection (its default, 2 MiB, times the threads weighs on a Pi)

# Range length -> bucket: at most a few hundred bars whatever the range.
BUCKETS = ((timedelta(hours=6), "minute", 16), (timedelta(days=14), "hour", 13), (timedelta.max, "day", 10))


@dataclass(frozen=True)
class Range:
    """A UTC time range [start, end) whole minutes, as the text prefixes the log's timestamps sort by."""

    start: datetime
    end: datetime

    def bucket(self) -> tuple[str, int]:
        """The bucket name and how many leading characters of a timestamp name it."""
        return next((name, width) for limit, name, width in BUCKETS if self.end - self.start <= limit)

    def keys(self) -> list[str]:
        """Every bucket in the range, in order, named like the timestamps' prefixes."""
        name, _ = self.bucket()
        step = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[name]
        fmt = {"minute": "%Y-%m-%dT%H:%M", "hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d"}[name]
        t = self.start if name == "minute" else self.start.replace(minute=0)
        t = t.replace(hour=0) if name == "day" else t
        keys = []
        while t < self.end:
            keys.append(t.strftime(fmt))
            t += step
        return keys


def _minute(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M")


class _LeanReader:
    """The reader summarize() needs, without decoding each detection's probabilities."""

    def __init__(self, reader: SqliteReader, uncertain: str) -> None:
        self.reader, self.uncertain = reader, uncertain

    def runs(self) -> list[dict]:
        return self.reader.runs()

    def detections(self) -> Iterator[dict]:
        for run, label, track, uncertain in self.reader.db.execute(
                f"SELECT run_id, label, track, {self.uncertain} FROM detections"):
            yield {"run": run, "label": label, "track": track, "uncertain": uncertain}

    def counts(self) -> Iterator[dict]:
        return self.reader.counts()


class _FirstSeen:
    """When each track of a live run was first logged, kept current by reading only the rows added
    since the last call (rowid order), so "seen for" costs the same after a minute as after a month."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[int, tuple[int, dict[int, list[str]]]] = {}  # run -> (last rowid read, track -> [first, last])

    def update(self, db: sqlite3.Connection, run: int, started_utc: str, now: float) -> dict[int, list[str]]:
        with self._lock:
            if run not in self._runs:
                since = max(started_utc, utc(now - FIRST_SEEN_WINDOW_S))
                first_id = db.execute("SELECT MIN(id) FROM detections WHERE time_utc >= ?", (since,)).fetchone()[0]
                self._runs[run] = ((first_id or 1) - 1, {})
            last_id, tracks = self._runs[run]
            for row_id, track, t in db.execute("SELECT id, track, time_utc FROM detections WHERE id > ? AND "
                                               "run_id = ? ORDER BY id", (last_id, run)):
                tracks.setdefault(track, [t, t])[1] = t
                last_id = row_id
            cutoff = utc(now - 60)
            for track in [k for k, (_, last) in tracks.items() if last < cutoff]:
                del tracks[track]  # a track unseen for a minute has ended
            self._runs[run] = (last_id, tracks)
            return tracks

    def keep(self, runs: set[int]) -> None:
        """Forget the runs that have stopped."""
        with self._lock:
            self._runs = {run: v for run, v in self._runs.items() if run in runs}


def _reported_state(db: sqlite3.Connection, device: str, now: float) -> dict | None:
    """What a device last reported it sees (its retained MQTT `state`, as a fleet collector stores it in
    `devices`), when that is fresh: a collected database holds no per-face rows to show instead."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'devices'").fetchone():
        return None
    row = db.execute("SELECT state FROM devices WHERE device = ?", (device,)).fetchone()
    state = json.loads(row[0]) if row and row[0] else None
    if not state or state.get("time_utc", "") < utc(now - LIVE_FACES_S):
        return None
    return {"time_utc": state["time_utc"], "faces": state["faces"], "labels": state["labels"]}


def _tracks_from_events(db: sqlite3.Connection, run: int) -> dict[int, dict]:
    """A run's tracks from their `end` events, for a log without per-face rows: a collected fleet database
    keeps the events and counts its devices publish, not their detections."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'track_events'").fetchone():
        return {}
    per = {}
    for track, start, end, frames, shares in db.execute(
            "SELECT track, start_utc, end_utc, frames, shares FROM track_events WHERE run_id = ? AND kind = 'end'",
            (run,)):
        by_label = {label: round(share * frames) for label, share in json.loads(shares).items() if share > 0}
        per[track] = {"track": track, "first_utc": start, "last_utc": end or start, "by_label": by_label}
    return per


def _seconds(start: str, end: str) -> float:
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return round((parse(end) - parse(start)).total_seconds(), 1)


class _Recent:
    """The last answer per key for CACHE_S seconds, computed once however many requests ask at the same
    time (a lock per key: a slow Runs does not hold up Now). Keys unused for a minute are forgotten."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, tuple[threading.Lock, list]] = {}  # key -> (its lock, [computed at, answer])

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            self._keys = {k: v for k, v in self._keys.items() if k == key or now - v[1][0] < 60}
            lock, slot = self._keys.setdefault(key, (threading.Lock(), [-CACHE_S, None]))
        with lock:
            if time.monotonic() - slot[0] >= CACHE_S:
                slot[1] = compute()
                slot[0] = time.monotonic()
            return slot[1]


class LogData:
    """Read-only queries over one SQLite results database: a device's log or a fleet collector's."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not isinstance(open_reader(self.path), SqliteReader):
            raise LogError(f"{self.path}: a JSON-lines log; `ferlite serve` reads SQLite logs (the default "
                           f"--log-format), whose indexes keep it fast while the run writes")
        with self._db() as db:
            self.run_columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            detection_columns = {row[1] for row in db.execute("PRAGMA table_info(detections)")}
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"detections", "counts"} <= tables:
            raise LogError(f"{self.path}: not a ferlite results database (no detections or counts table)")
        self.has_device = "device" in self.run_columns
        self._uncertain = "uncertain" if "uncertain" in detection_columns else "0"
        self._first_seen = _FirstSeen()
        self._recent = _Recent()

    @contextmanager
    def _reader(self) -> Iterator[SqliteReader]:
        reader = SqliteReader(self.path)
        with closing(reader.db):
            reader.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # the OS caches the file; keep serve small
            yield reader

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._reader() as reader:
            yield reader.db

    def _device_filter(self, device: str | None) -> tuple[str, tuple]:
        """A WHERE clause's tail keeping the rows of one device's runs (nothing without a device)."""
        if device is None or not self.has_device:
            return "", ()
        return " AND run_id IN (SELECT id FROM runs WHERE device = ?)", (device,)

    def _written_recently(self, now: float) -> bool:
        """Whether the database or its WAL (which the writer deletes as it stops) changed in the last seconds."""
        for path in (self.path.with_name(self.path.name + "-wal"), self.path):
            try:
                if now - path.stat().st_mtime <= LIVE_WRITE_S:
                    return True
            except FileNotFoundError:
                continue
        return False

    def _run_rows(self, db: sqlite3.Connection) -> list[dict]:
        device = "device" if self.has_device else "NULL AS device"
        failures = "read_failures" if "read_failures" in self.run_columns else "NULL AS read_failures"
        return [dict(r) for r in db.execute(f"SELECT id, {device}, {failures}, bundle_sha256, labels, config, "
                                            f"privacy, started_utc, stopped_utc, source, detector, frames, skipped "
                                            f"FROM runs ORDER BY id")]

    def _live(self, rows: list[dict], now: float) -> set[int]:
        """Runs still going: the newest of each device, without a stop, in a database written just now."""
        newest = {r["device"]: r for r in rows}
        recent = self._written_recently(now)
        return {r["id"] for r in newest.values() if r["stopped_utc"] is None and recent}

    def runs(self, device: str | None = None) -> dict:
        """summarize()'s figures per run (what `ferlite log summary --json` prints) with its device and state."""
        return self._recent.get(("runs", device), lambda: self._compute_runs(device))

    def _compute_runs(self, device: str | None) -> dict:
        now = time.time()
        with self._reader() as reader:
            summary = summarize(_LeanReader(reader, self._uncertain))
            extra = {r["id"]: r for r in self._run_rows(reader.db)}  # read after: holds every run summarized
        live = self._live(list(extra.values()), now)
        runs = []
        for run in summary:
            row = extra[run["id"]]
            if device is not None and row["device"] != device:
                continue
            state = "stopped" if run["stopped_utc"] else "running" if run["id"] in live else "not stopped cleanly"
            runs.append({**run, "device": row["device"], "read_failures": row["read_failures"], "state": state,
                         "bundle": (row["bundle_sha256"] or "")[:12],
                         "faces": sum(run["by_label"].values()), "saved_faces": bool(self._faces_dir(row))})
        return {"devices": sorted({r["device"] for r in extra.values() if r["device"] is not None}), "runs": runs}

    def now(self) -> dict:
        """The faces of the latest frame of each running run (or, in privacy, this minute's counts)."""
        return self._recent.get("now", lambda: self._compute_now(time.time()))

    def _compute_now(self, now: float) -> dict:
        with self._db() as db:
            rows = self._run_rows(db)
            live = self._live(rows, now)
            out = []
            for row in (r for r in rows if r["id"] in live):
                entry = {"run": row["id"], "privacy": bool(row["privacy"]), "labels": json.loads(row["labels"] or "[]"),
                         **{k: row[k] for k in ("device", "started_utc", "source", "detector", "frames", "skipped")},
                         "faces": [], "minute": {}}
                if row["privacy"]:
                    minute = utc_minute(now)
                    entry["minute"] = {label: n for label, n in db.execute(
                        "SELECT label, detections FROM counts WHERE run_id = ? AND minute_utc = ? ORDER BY label",
                        (row["id"], minute))}
                    entry["minute_utc"] = minute
                else:
                    entry.update(self._latest_frame(db, row["id"], row["started_utc"], now))
                if not entry["faces"] and row["device"] is not None:
                    entry["reported"] = _reported_state(db, row["device"], now)
                out.append(entry)
        self._first_seen.keep(live)
        return {"time_utc": utc(now), "runs": out}

    def _latest_frame(self, db: sqlite3.Connection, run: int, started_utc: str, now: float) -> dict:
        latest = db.execute("SELECT MAX(time_utc) FROM detections WHERE time_utc >= ? AND run_id = ?",
                            (utc(now - LIVE_FACES_S), run)).fetchone()[0]
        if latest is None:
            return {}
        tracks = self._first_seen.update(db, run, started_utc, now)
        window_start = utc(now - FIRST_SEEN_WINDOW_S)
        rows = db.execute(f"SELECT frame, track, label, confidence, {self._uncertain} AS uncertain, probs "
                          f"FROM detections WHERE time_utc = ? AND run_id = ? ORDER BY track", (latest, run)).fetchall()
        faces = []
        for r in rows:
            first = tracks.get(r["track"], [latest])[0]
            faces.append({"track": r["track"], "label": r["label"], "confidence": r["confidence"],
                          "uncertain": bool(r["uncertain"]), "probs": json.loads(r["probs"]),
                          "seen_s": _seconds(first, latest), "seen_at_least": first <= window_start})
        return {"frame": rows[0]["frame"], "frame_utc": latest, "faces": faces}

    def span(self, device: str | None = None) -> Range | None:
        """The whole minutes the log has results for (detections and per-minute counts)."""
        where, args = self._device_filter(device)
        with self._db() as db:
            bounds = [db.execute(f"SELECT MIN(time_utc), MAX(time_utc) FROM detections WHERE 1{where}", args)
                      .fetchone(),
                      db.execute(f"SELECT MIN(minute_utc), MAX(minute_utc) FROM counts WHERE 1{where}", args)
                      .fetchone()]
        starts = [lo[:16] for lo, _ in bounds if lo]
        ends = [hi[:16] for _, hi in bounds if hi]
        if not starts:
            return None
        parse = lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)  # noqa: E731
        return Range(parse(min(starts)), parse(max(ends)) + timedelta(minutes=1))

    def timeline(self, span: Range, run: int | None = None, device: str | None = None) -> dict:
        """Faces per label per bucket over the range, from the detections and the privacy runs' counts alike."""
        return self._recent.get(("timeline", span, run, device), lambda: self._compute_timeline(span, run, device))

    def _compute_timeline(self, span: Range, run: int | None, device: str | None) -> dict:
        bucket, width = span.bucket()
        where, args = self._device_filter(device)
        if run is not None:
            where, args = where + " AND run_id = ?", (*args, run)
        bounds = (_minute(span.start), _minute(span.end))
        per: dict[str, Counter] = defaultdict(Counter)
        with self._db() as db:
            for key, label, n in db.execute(
                    f"SELECT substr(time_utc, 1, {width}), label, COUNT(*) FROM detections WHERE time_utc >= ? AND "
                    f"time_utc < ?{where} GROUP BY 1, 2", (*bounds, *args)):
                per[key][label] += n
            for key, label, n in db.execute(
                    f"SELECT substr(minute_utc, 1, {width}), label, SUM(detections) FROM counts WHERE minute_utc >= ? "
                    f"AND minute_utc < ?{where} GROUP BY 1, 2", (*bounds, *args)):
                per[key][label] += n
        keys = span.keys()
        labels = sorted({label for counts in per.values() for label in counts})
        series = {label: [per[k][label] for k in keys] for label in labels}
        return {"from": bounds[0] + "Z", "to": bounds[1] + "Z", "bucket": bucket, "buckets": keys,
                "series": series, "totals": {label: sum(v) for label, v in series.items()}}

    def tracks(self, run: int) -> dict | None:
        """Each track of a run: first and last seen, duration, faces logged and faces per label (None: no such run)."""
        return self._recent.get(("tracks", run), lambda: self._compute_tracks(run))

    def _compute_tracks(self, run: int) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT id, started_utc, stopped_utc, privacy, config FROM runs WHERE id = ?",
                             (run,)).fetchone()
            if row is None:
                return None
            per: dict[int, dict] = {}
            for track, label, n, first, last in db.execute(
                    "SELECT track, label, COUNT(*), MIN(time_utc), MAX(time_utc) FROM detections WHERE time_utc >= ? "
                    "AND run_id = ? GROUP BY track, label", (row["started_utc"], run)):
                t = per.setdefault(track, {"track": track, "first_utc": first, "last_utc": last, "by_label": {}})
                t["first_utc"], t["last_utc"] = min(t["first_utc"], first), max(t["last_utc"], last)
                t["by_label"][label] = n
            if not per:
                per = _tracks_from_events(db, run)
        tracks = sorted(per.values(), key=lambda t: t["track"])
        for t in tracks:
            t["duration_s"] = _seconds(t["first_utc"], t["last_utc"])
            t["faces"] = sum(t["by_label"].values())
            t["by_label"] = dict(Counter(t["by_label"]).most_common())
        return {"run": run, "privacy": bool(row["privacy"]), "saved_faces": bool(self._faces_dir(dict(row))),
                "total": len(tracks), "tracks": tracks[:MAX_TRACKS]}

    def _faces_dir(self, run: dict) -> Path | None:
        """Where the run saved face crops (`--save-faces`; a relative path is taken from the log's folder)."""
        folder = json.loads(run["config"] or "{}").get("save_faces")
        if not folder:
            return None
        path = Path(folder) if Path(folder).is_absolute() else self.path.parent / folder
        return path.resolve() if path.is_dir() else None

    def face(self, run: int, track: int) -> Path | None:
        """One saved crop of a track (its middle one), only from inside the run's own faces folder."""
        with self._db() as db:
            row = db.execute("SELECT config FROM runs WHERE id = ?", (run,)).fetchone()
        folder = self._faces_dir(dict(row)) if row else None
        if folder is None:
            return None
        crops = sorted(folder.glob(f"run{run}_f*_t{track}.png"))
        if not crops:
            return None
        crop = crops[len(crops) // 2].resolve()
        return crop if crop.is_relative_to(folder) and crop.is_file() else None
