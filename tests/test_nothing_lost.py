"""Nothing stored is lost unnoticed, and a run always stops when told: a locked database retried, a
stop during the lock kept for the next run, a hung camera, corrupt video, kills, retention that
holds its limit. Real processes, a real second SQLite connection holding the lock, real files."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import kill_test
import numpy as np
import pytest
from clips import group_clip

from ferlite.device import log as results_log
from ferlite.device.log import Result, RunInfo, SqliteLog

TESTS = Path(__file__).parent
GROUP = TESTS / "fixtures" / "group.avi"

INFO = RunInfo("sha", ["happy", "sad"], "test", "yunet", {})


def query(db: Path, sql: str, *args: object) -> list[tuple]:
    with closing(sqlite3.connect(db)) as con:
        return con.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return group_clip(tmp_path_factory.mktemp("clip") / "long.avi", 320)


def _start(clip: Path, db: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ferlite", "run", "--source", str(clip), "--log", str(db),
                             "--max-fps", "10", "--no-status", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(db: Path, proc: subprocess.Popen, rows: int = 1) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if db.exists() and query(db, "SELECT COUNT(*) FROM detections")[0][0] >= rows:
                return
        except sqlite3.OperationalError:  # the run has created the file but not yet its tables
            pass
        time.sleep(0.05)
    raise AssertionError(f"no results in {db}: {proc.stderr.read() if proc.poll() is not None else 'still running'}")


def _lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the database's write lock for `seconds` (as a backup tool or a careless
    reader with an open write transaction would); it prints "locked" once it holds it."""
    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); "
            "c.execute('COMMIT')")
    locker = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert locker.stdout.readline().strip() == "locked"
    return locker


def _faces_logged(stderr: str) -> int:
    return int(re.search(r"(\d+) faces logged", stderr).group(1))


def test_a_database_locked_for_15_s_is_retried_and_nothing_is_lost(long_clip, tmp_path):
    db = tmp_path / "r.db"
    proc = _start(long_clip, db)
    _wait_for_rows(db, proc)
    _lock(db, 15.0).wait(timeout=60)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert err.count("cannot write (database is locked); retrying") == 1 and "writing again" in err
    stored = query(db, "SELECT COUNT(*) FROM detections")[0][0]
    assert stored == _faces_logged(err) == query(db, "SELECT detections FROM runs")[0][0]
    frames = query(db, "SELECT frames FROM runs")[0][0]
    assert query(db, "SELECT COUNT(DISTINCT frame) FROM detections")[0][0] == frames  # every frame's faces


def test_a_lock_outlasting_the_retries_drops_counts_and_says_so(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(results_log, "RETRY_FOR_S", 1.0)
    db = tmp_path / "r.db"
    log = SqliteLog(db, INFO)
    locker = _lock(db, 2.5)
    for n in range(3):
        log.write(n, time.time(), [Result(1, (1, 2, 3, 4), "happy", 0.9, {"happy": 0.9, "sad": 0.1})])
        log.commit()
        time.sleep(0.6)
    locker.wait(timeout=30)
    log.write(9, time.time(), [Result(2, (1, 2, 3, 4), "sad", 0.9, {"happy": 0.1, "sad": 0.9})])
    log.close()
    assert log.dropped >= 1 and log.stored + log.dropped == 4
    assert any(f"dropped {log.dropped} results" in r.getMessage() for r in caplog.records)
    assert query(db, "SELECT COUNT(*), MAX(track) FROM detections") == [(log.stored, 2)]


def test_sigterm_with_the_database_locked_ends_within_2_s_and_the_next_run_writes_what_was_kept(long_clip, tmp_path):
    db = tmp_path / "r.db"
    proc = _start(long_clip, db)
    _wait_for_rows(db, proc, rows=30)
    locker = _lock(db, 30.0)
    time.sleep(1.0)
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - asked
    locker.kill()
    locker.wait()
    assert proc.returncode == 0 and took < 2.0, (took, err[-2000:])
    unsaved = tmp_path / "r.db-unsaved.jsonl"
    assert unsaved.exists() and "kept in" in err
    logged = _faces_logged(err)
    assert query(db, "SELECT stopped_utc FROM runs") == [(None,)]
    again = subprocess.run([sys.executable, "-m", "ferlite", "run", "--source", str(GROUP), "--log", str(db),
                            "--max-frames", "1", "--no-status"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not unsaved.exists()
    (stopped, frames, detections), = query(db, "SELECT stopped_utc, frames, detections FROM runs WHERE id = 1")
    rows = query(db, "SELECT COUNT(*), COUNT(DISTINCT frame) FROM detections WHERE run_id = 1")[0]
    assert stopped and rows == (detections, frames) and detections > logged  # the kept ones came back
    tracks = query(db, "SELECT COUNT(DISTINCT track) FROM detections WHERE run_id = 1")[0][0]
    assert query(db, "SELECT kind, COUNT(*) FROM track_events WHERE run_id = 1 AND kind != 'update' GROUP BY kind "
                 "ORDER BY kind") == [("end", tracks), ("new", tracks)]  # and so did the tracks' ends


BOOT = """
import sys
sys.path.insert(0, {tests!r})
import fake_picamera2
fake_picamera2.CLIP, fake_picamera2.STALL_AFTER, fake_picamera2.STALL_SECONDS = {clip!r}, 15, 120.0
fake_picamera2.NO_CAMERA = {no_camera!r}
sys.modules["picamera2"] = fake_picamera2
from ferlite.cli import main
sys.argv = ["ferlite", "run", "--camera", "--log", {log!r}, "--max-fps", "12", "--no-status"]
main()
"""


def _camera_run(tmp_path: Path, no_camera: bool = False) -> subprocess.Popen:
    boot = BOOT.format(tests=str(TESTS), clip=str(GROUP), log=str(tmp_path / "r.db"), no_camera=no_camera)
    return subprocess.Popen([sys.executable, "-c", boot], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_while_the_camera_hangs_ends_within_2_s_with_the_stop_logged(tmp_path):
    db = tmp_path / "r.db"
    proc = _camera_run(tmp_path)
    _wait_for_rows(db, proc)
    time.sleep(3.0)  # 15 frames at 12 fps, then the camera hangs in its driver for two minutes
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - asked
    assert proc.returncode == 0 and took < 2.0, (took, err[-2000:])
    (frames, stopped), = query(db, "SELECT frames, stopped_utc FROM runs")
    assert frames == 15 and stopped


def test_picamera2_without_a_camera_is_one_line(tmp_path):
    proc = _camera_run(tmp_path, no_camera=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().splitlines() == [
        "error: picamera2 finds no camera (list index out of range); is it connected and enabled?"]


def _corrupt(path: Path, codec: str, share: tuple[float, float]) -> Path:
    """120 frames of the six-person fixture in `codec`, with random bytes over `share` of the file."""
    group_clip(path, 120, codec=codec, bounce=False)
    data = bytearray(path.read_bytes())
    start, end = int(len(data) * share[0]), int(len(data) * share[1])
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _run(source: Path, db: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferlite", "run", "--source", str(source), "--log", str(db),
                           "--no-status"], capture_output=True, text=True, timeout=300)


def test_a_corrupt_stretch_in_an_mp4_is_skipped_past_not_taken_for_its_end(tmp_path):
    clip = _corrupt(tmp_path / "c.mp4", "mp4v", (0.4, 0.55))
    result = _run(clip, tmp_path / "r.db")
    assert result.returncode == 0, result.stderr[-2000:]
    stretch = re.findall(r"skipped: .*frames (\d+)-(\d+) cannot be decoded", result.stderr)
    assert len(stretch) == 1, result.stderr[-2000:]  # one warning for the whole stretch
    first, last = map(int, stretch[0])
    (frames, skipped), = query(tmp_path / "r.db", "SELECT frames, skipped FROM runs")
    assert skipped == last - first + 1 and frames + skipped == 120 and frames > first  # frames after it were read
    assert query(tmp_path / "r.db", "SELECT MAX(frame) FROM detections")[0][0] == 119


def test_a_video_whose_last_frames_never_decode_is_an_error_after_logging_the_rest(tmp_path):
    clip = _corrupt(tmp_path / "c.avi", "MJPG", (0.85, 1.0))
    result = _run(clip, tmp_path / "r.db")
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(r"error: the source ended early: .* cannot be decoded \(the file ends broken\)$",
                     result.stderr.strip())
    (frames, skipped, stopped), = query(tmp_path / "r.db", "SELECT frames, skipped, stopped_utc FROM runs")
    assert frames > 50 and skipped > 2 and frames + skipped == 120 and stopped


def test_sigkill_mid_run_again_and_again_leaves_sound_databases_losing_under_a_second(tmp_path):
    figures = kill_test.kill_runs(4, tmp_path, seed=1)
    assert figures["corrupt"] == 0 and figures["without_results"] == 0, figures
    assert figures["max_lost_s"] < 1.0, figures


def test_retention_holds_the_limit_as_the_log_grows_wal_counted_and_the_file_shrinks(tmp_path):
    db = tmp_path / "r.db"
    limit = 512 * 1024
    log = SqliteLog(db, INFO, max_bytes=limit)
    probs = {"happy": 0.6, "sad": 0.4}
    peak = 0
    for second in range(300):  # 300 one-second batches of 10 frames of 3 faces: about 4 MB unretained
        for frame in range(10):
            log.write(second * 10 + frame, time.time(),
                      [Result(t, (10, 20, 30, 40), "happy", 0.6, probs) for t in range(3)])
        log.commit()
        peak = max(peak, log.file_bytes())
    assert log.stored == 9000
    kept = query(db, "SELECT COUNT(*), MIN(frame), MAX(frame) FROM detections")[0]
    assert 0 < kept[0] < 9000 and kept[2] == 2999  # the oldest went, the newest stayed
    assert peak <= limit * 1.1, peak
    log.max_bytes = limit // 4
    log.retain()
    log.close()
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("r.db*"))
    assert on_disk <= limit // 4, on_disk  # the pages and the WAL went back to the file system


def test_an_old_log_without_auto_vacuum_is_converted_so_it_can_shrink(tmp_path):
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as old:
        old.executescript(results_log.SCHEMA)
    assert query(db, "PRAGMA auto_vacuum") == [(0,)]
    SqliteLog(db, INFO).close()
    assert query(db, "PRAGMA auto_vacuum") == [(2,)]


def test_a_jsonl_log_on_a_full_disk_says_how_many_faces_were_lost(small_disk, long_clip):
    result = subprocess.run(
        [sys.executable, "-m", "ferlite", "run", "--source", str(long_clip), "--log", str(small_disk / "r.jsonl"),
         "--log-format", "jsonl", "--no-status"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    stored, total = _faces_logged(result.stderr), 6 * 320
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {small_disk / 'r.jsonl'}: {total - stored} of {total} faces were lost (the disk was full or the "
        "database locked past the retries; see the warnings above)")
