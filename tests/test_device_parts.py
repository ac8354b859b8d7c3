"""Device stages one at a time, on real files: sources, detectors, tracker, results log."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlite.config import RunConfig
from ferlite.device.detectors import DETECTORS, check_detector, make_detector
from ferlite.device.detectors.base import detect_near, drop_nested, iou
from ferlite.device.detectors.dlib import DlibDetector
from ferlite.device.detectors.haar import HaarDetector
from ferlite.device.log import JsonlLog, Result, RunInfo, SqliteLog, open_reader
from ferlite.device.sources import BadFrameError, ImageFiles, VideoFile, open_source, pi_to_bgr
from ferlite.device.tracker import Tracker
from ferlite.errors import ConfigError, SourceError
from ferlite.inputs import Face

FIXTURES = Path(__file__).parent / "fixtures"
CLIP = FIXTURES / "clip.avi"
ASTRONAUT = FIXTURES / "astronaut.jpg"
LABELS = ["happy", "sad", "neutral"]
INFO = RunInfo("0" * 64, LABELS, "test", "haar", {})


def result(track: int, label: str = "happy", box=(10, 20, 30, 30)) -> Result:
    return Result(track, box, label, 0.8, {"happy": 0.8, "sad": 0.1, "neutral": 0.1})


# sources

def test_video_file_gives_every_frame_in_order():
    source = open_source(str(CLIP))
    assert isinstance(source, VideoFile)
    numbers = []
    while (frame := source.read()) is not None:
        assert frame.image.shape == (270, 480, 3) and frame.image.dtype == np.uint8
        numbers.append(frame.number)
    source.close()
    assert numbers == list(range(36))


def test_image_folder_skips_unreadable_files(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), cv2.imread(str(ASTRONAUT)))
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageFiles)
    assert source.read().name == "a.png"
    with pytest.raises(BadFrameError, match="b.jpg"):
        source.read()
    assert source.read() is None


@pytest.mark.parametrize("spec, message", [("missing.avi", "no such file"), ("/dev/video99", "no such camera"),
                                           (str(FIXTURES / "README.md"), "not a video")])
def test_bad_sources_are_one_line_errors(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_picamera2_formats_become_bgr():
    bgr = cv2.imread(str(ASTRONAUT))
    assert np.array_equal(pi_to_bgr(bgr, "RGB888"), bgr)
    assert np.array_equal(pi_to_bgr(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA), "XBGR8888"), bgr)
    assert np.array_equal(pi_to_bgr(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), "XRGB8888"), bgr)
    with pytest.raises(SourceError, match="YUV420"):
        pi_to_bgr(bgr, "YUV420")


# detectors

def test_yunet_finds_the_astronaut_with_five_landmarks_and_nothing_in_a_blank_frame():
    image = cv2.imread(str(ASTRONAUT))
    (face,) = make_detector("yunet", 480, 24).detect(image)
    x, y, w, h = face.box
    assert 180 < x + w / 2 < 270 and 80 < y + h / 2 < 160 and 70 < w < 130  # her face, by eye: centre ~(224, 113)
    right_eye, left_eye, nose, mouth_right, mouth_left = face.landmarks
    assert right_eye[0] < nose[0] < left_eye[0] and mouth_right[0] < mouth_left[0]  # her right is the image's left
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_right[1], mouth_left[1])
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in face.landmarks) and face.score > 0.8
    assert make_detector("yunet", 480, 24).detect(np.full((240, 320, 3), 127, np.uint8)) == []


def test_haar_finds_the_astronaut_and_nothing_in_a_blank_frame():
    image = cv2.imread(str(ASTRONAUT))
    faces = HaarDetector(width=320, min_face=40).detect(image)
    assert len(faces) == 1 and faces[0].landmarks is None
    x, y, w, h = faces[0].box
    assert 150 < x + w / 2 < 260 and 80 < y + h / 2 < 160 and 70 < w < 130
    assert HaarDetector(320, 40).detect(np.full((240, 320, 3), 127, np.uint8)) == []


def test_dlib_agrees_with_yunet():
    image = cv2.imread(str(ASTRONAUT))
    (face,) = make_detector("yunet", 512, 24).detect(image)
    assert any(iou(face.box, f.box) > 0.4 for f in DlibDetector(512, 40).detect(image))  # HOG also fires on her suit


def test_detect_width_and_min_face_mean_the_same_for_every_detector():
    image = cv2.imread(str(ASTRONAUT))  # 512 px wide, her face about 100 px
    for name in DETECTORS:
        assert len(make_detector(name, 512, 60).detect(image)) >= 1, name
        assert make_detector(name, 512, 160).detect(image) == [], name  # her face is under 160 px
    (small,) = make_detector("yunet", 128, 24).detect(image)  # searched at 128 px wide: her face is 25 px there
    (full,) = make_detector("yunet", 512, 24).detect(image)
    assert iou(small.box, full.box) > 0.7  # and the box comes back in the frame's pixels


def test_the_registry_is_the_one_list_of_detectors():
    assert list(DETECTORS) == ["yunet", "haar", "dlib"]
    with pytest.raises(ConfigError, match=r"unknown detector 'blazeface' \(choose yunet, haar, dlib\)"):
        check_detector("blazeface")
    with pytest.raises(ConfigError, match="unknown detector"):
        make_detector("yolo", 320, 24)


def test_nested_boxes_are_dropped():
    face, mouth, other = Face((200, 40, 93, 93)), Face((202, 74, 86, 86)), Face((10, 10, 50, 50))
    assert drop_nested([mouth, face, other]) == [face, other]


# tracker

def test_tracker_keeps_ids_smooths_and_ends_tracks():
    tracker = Tracker(iou_threshold=0.3, alpha=0.5, max_missed=2)
    a, b = (100, 100, 50, 50), (300, 100, 50, 50)
    first = tracker.update([a, b], np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert [t.id for t in first] == [1, 2]
    moved = tracker.update([(305, 102, 50, 50), (104, 98, 50, 50)], np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert [t.id for t in moved] == [2, 1]
    assert np.allclose(moved[1].probs, [0.5, 0.5]) and np.allclose(moved[0].probs, [0.5, 0.5])
    for _ in range(3):  # face 2 leaves; after max_missed frames without it, its track ends
        tracker.update([(104, 98, 50, 50)], np.array([[0.0, 1.0]]))
    assert [t.id for t in tracker.tracks] == [1]
    back = tracker.update([(104, 98, 50, 50), (305, 102, 50, 50)], np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert [t.id for t in back] == [1, 3]


# results log

def test_sqlite_log_commits_in_batches_with_wal(tmp_path, monkeypatch):
    path = tmp_path / "r.db"
    log = SqliteLog(path, INFO)
    reader = sqlite3.connect(path)
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log.write(0, time.time(), [result(1)])
    assert reader.execute("SELECT COUNT(*) FROM detections").fetchone()[0] == 0  # batched, not yet committed
    monkeypatch.setattr(log, "_last_commit", time.monotonic() - 1.0)
    log.write(1, time.time(), [result(1), result(2, "sad")])
    assert reader.execute("SELECT COUNT(*) FROM detections").fetchone()[0] == 3
    log.close()
    run = reader.execute("SELECT stopped_utc, frames, detections, labels FROM runs").fetchone()
    assert run[0] and run[1:3] == (2, 3) and json.loads(run[3]) == LABELS
    row = reader.execute("SELECT time_utc, track, x, y, w, h, label, probs FROM detections WHERE frame = 1 "
                         "ORDER BY track DESC").fetchone()
    assert row[0].endswith("Z") and row[1:7] == (2, 10, 20, 30, 30, "sad") and json.loads(row[7])["happy"] == 0.8


def test_the_uncertain_flag_is_logged_beside_the_label_and_old_logs_gain_it(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # a log written before the flag existed
    old.executescript("""
        CREATE TABLE runs (id INTEGER PRIMARY KEY, started_utc TEXT NOT NULL, stopped_utc TEXT, bundle_sha256 TEXT,
            labels TEXT, source TEXT, detector TEXT, config TEXT, privacy INTEGER NOT NULL DEFAULT 0,
            frames INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
            detections INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE detections (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id),
            time_utc TEXT NOT NULL, frame INTEGER NOT NULL, track INTEGER NOT NULL, x INTEGER, y INTEGER,
            w INTEGER, h INTEGER, label TEXT NOT NULL, confidence REAL NOT NULL, probs TEXT NOT NULL);
        INSERT INTO runs (started_utc, labels) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), '[]');
        INSERT INTO detections (run_id, time_utc, frame, track, label, confidence, probs)
            VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 0, 1, 'uncertain', 0.3, '{}');""")
    old.commit()
    old.close()
    for fmt, log in (("sqlite", SqliteLog(path, INFO)), ("jsonl", JsonlLog(tmp_path / "r.jsonl", INFO))):
        unsure = Result(2, (1, 2, 3, 4), "sad", 0.31, {"happy": 0.3, "sad": 0.31, "neutral": 0.29}, uncertain=True)
        log.write(0, time.time(), [result(1), unsure])
        log.close()
        rows = list(open_reader(log.path).detections())
        got = [(r["label"], r["uncertain"]) for r in rows]
        assert got[-2:] == [("happy", False), ("sad", True)], fmt
    assert got == [("happy", False), ("sad", True)]
    assert [(r["label"], r["uncertain"]) for r in open_reader(path).detections()][0] == ("uncertain", False)


def test_retention_by_age_and_by_size(tmp_path):
    path = tmp_path / "r.db"
    log = SqliteLog(path, INFO, max_age_s=86400, max_bytes=10**9)
    old, now = time.time() - 3 * 86400, time.time()
    for n in range(3000):
        log.write(n, old if n < 1000 else now, [result(1)])
    log.commit()
    log.retain()
    times = [r[0] for r in log.db.execute("SELECT time_utc FROM detections")]
    assert len(times) == 2000 and min(times) > "2000" and all(t >= log.db.execute(
        "SELECT started_utc FROM runs").fetchone()[0][:10] for t in times)
    before = log.used_bytes()
    log.max_bytes = before // 2
    log.retain()
    assert log.used_bytes() <= before // 2
    frames = [r[0] for r in log.db.execute("SELECT frame FROM detections ORDER BY frame")]
    assert 0 < len(frames) < 2000 and frames[-1] == 2999  # the oldest went first
    log.close()
    assert path.stat().st_size < 10 * before  # incremental vacuum returned the pages


def test_full_disk_warns_keeps_running_and_keeps_the_database_sound(tmp_path, caplog):
    path = tmp_path / "r.db"
    log = SqliteLog(path, INFO)
    log.commit()
    pages = log.db.execute("PRAGMA page_count").fetchone()[0]
    log.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite then fails writes with SQLITE_FULL
    caplog.set_level(logging.WARNING)
    for n in range(5):
        for _ in range(200):
            log.write(n, time.time(), [result(1)])
        log.commit()
    assert sum("database or disk is full" in r.message for r in caplog.records) == 1  # one warning, not one a second
    log.db.execute("PRAGMA max_page_count = 1000000")
    log.write(99, time.time(), [result(7)])
    log.commit()
    assert any("writing again" in r.message for r in caplog.records)
    log.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = db.execute("SELECT COUNT(*) FROM detections").fetchone()[0]
    assert stored == db.execute("SELECT detections FROM runs").fetchone()[0]
    assert db.execute("SELECT COUNT(*) FROM detections WHERE track = 7").fetchone()[0] == 1


def test_privacy_mode_stores_counts_per_minute_only(tmp_path):
    path = tmp_path / "r.db"
    log = SqliteLog(path, INFO, privacy=True)
    minute = (time.time() // 60) * 60
    log.write(0, minute + 1, [result(1), result(2, "sad")])
    log.write(1, minute + 2, [result(1), result(2, "sad")])
    log.commit()
    log.write(2, minute + 3, [result(1), result(3, "sad")])
    log.write(3, minute + 61, [result(1)])
    log.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM detections").fetchone()[0] == 0
    rows = db.execute("SELECT minute_utc, label, detections, faces FROM counts ORDER BY minute_utc, label").fetchall()
    first, second = rows[0][0], rows[-1][0]
    assert rows == [(first, "happy", 3, 1), (first, "sad", 3, 2), (second, "happy", 1, 1)]
    blob = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("r.db-*"))
    assert b"[10, 20" not in blob and b'"x"' not in blob


def test_jsonl_log_round_trips_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    crashed = JsonlLog(path, INFO)
    crashed.write(0, time.time(), [result(1)])
    crashed.commit()
    with path.open("a") as f:
        f.write('{"type": "detection", "run": 1, "ti')  # what a crash mid-write leaves, without a newline
    time.sleep(0.01)  # run ids are start times in milliseconds
    log = JsonlLog(path, INFO)
    log.write(0, time.time(), [result(1, "sad")])
    log.write(1, time.time(), [])
    log.close()
    reader = open_reader(path)
    rows = list(reader.detections())
    assert [(r["frame"], r["label"], r["probs"]["happy"]) for r in rows] == [(0, "happy", 0.8), (0, "sad", 0.8)]
    first, second = reader.runs()
    assert first["stopped_utc"] is None and first["labels"] == LABELS
    assert second["frames"] == 2 and second["detections"] == 1 and second["stopped_utc"]


def test_jsonl_rotates_to_stay_under_its_size(tmp_path):
    path = tmp_path / "r.jsonl"
    log = JsonlLog(path, INFO, max_bytes=20_000)
    for n in range(300):
        log.write(n, time.time(), [result(1)])
        log.commit()
    log.close()
    old = tmp_path / "r.jsonl.1"
    assert old.exists() and path.stat().st_size + old.stat().st_size <= 20_000 + 2_000
    frames = [r["frame"] for r in open_reader(path).detections()]
    assert frames == sorted(frames) and frames[-1] == 299 and frames[0] > 0


def test_run_config_rejects_bad_options():
    with pytest.raises(ConfigError, match="exactly one"):
        RunConfig().validate()
    with pytest.raises(ConfigError, match="threshold"):
        RunConfig(camera=True, threshold=2).validate()
    assert RunConfig(source="x", log_format="jsonl").validate().log_path() == "results.jsonl"


@pytest.mark.parametrize("name", ["yunet", "haar"])
def test_detection_near_a_tracked_face_follows_it_and_finds_nothing_elsewhere(name):
    source, detector = VideoFile(CLIP), make_detector(name, 480, 24)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame.image)
    tracked = [f.box for f in detector.detect(frames[0])]
    for image in frames[1:]:
        near, full = detect_near(detector, image, tracked), detector.detect(image)
        assert len(near) == 1 and iou(near[0].box, full[0].box) > 0.6
        if near[0].landmarks is not None:
            assert np.abs(near[0].landmarks - full[0].landmarks).max() < 0.15 * full[0].box[2]
        tracked = [near[0].box]
    height, width = frames[0].shape[:2]
    assert detect_near(detector, frames[0], [(0, height - 60, 60, 60), (width - 2, 0, 80, 80)]) == []
