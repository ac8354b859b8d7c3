"""Device stages one at a time, on real files: sources, detectors, BlazeFace decoding, tracker, results log."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlite.config import RunConfig
from ferlite.device.detectors import (
    DlibDetector,
    HaarDetector,
    blazeface_anchors,
    decode_blazeface,
    detect_near,
    drop_nested,
    find_blazeface_model,
    iou,
    nms,
)
from ferlite.device.log import JsonlLog, Result, RunInfo, SqliteLog, open_reader
from ferlite.device.sources import BadFrameError, ImageFiles, VideoFile, open_source, pi_to_bgr
from ferlite.device.tracker import Tracker
from ferlite.errors import ConfigError, ModelError, SourceError

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

def test_haar_finds_the_astronaut_and_nothing_in_a_blank_frame():
    image = cv2.imread(str(ASTRONAUT))
    boxes = HaarDetector(width=320).detect(image)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert 150 < x + w / 2 < 260 and 80 < y + h / 2 < 160 and 70 < w < 130  # her face, by eye: centre ~(224, 113)
    assert HaarDetector().detect(np.full((240, 320, 3), 127, np.uint8)) == []


def test_dlib_agrees_with_haar():
    image = cv2.imread(str(ASTRONAUT))
    haar, hog = HaarDetector(width=512).detect(image), DlibDetector().detect(image)
    assert any(iou(haar[0], box) > 0.4 for box in hog)  # HOG also fires on the flag patch of her suit


def test_nested_boxes_are_dropped():
    face, mouth, other = (200, 40, 93, 93), (202, 74, 86, 86), (10, 10, 50, 50)
    assert drop_nested([mouth, face, other]) == [face, other]


def test_blazeface_anchors_follow_the_short_range_layout():
    anchors = blazeface_anchors()
    assert anchors.shape == (896, 2)
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16]) and np.allclose(anchors[1], anchors[0])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[512], [0.5 / 8, 0.5 / 8]) and np.allclose(anchors[517], anchors[512])
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_blazeface_decoding_and_nms():
    anchors = blazeface_anchors()
    raw = np.zeros((896, 16), np.float32)
    scores = np.full(896, -10.0, np.float32)
    # anchor 600 sits in the 8x8 grid; a face 32 px wide, shifted 4 px right of its centre
    raw[600, :4] = [4, 0, 32, 40]
    raw[601, :4] = [5, 1, 30, 38]  # a near duplicate from the neighbouring anchor, lower score
    raw[100, :4] = [0, 0, 16, 16]
    scores[[600, 601, 100]] = [3.0, 1.0, 0.0]  # sigmoid(0) = 0.5 is just kept
    boxes, probs = decode_blazeface(raw, scores, anchors)
    assert len(boxes) == 3
    cx, cy = anchors[600] + np.array([4, 0]) / 128
    best = boxes[np.argmax(probs)]
    assert np.allclose(best, [cx - 16 / 128, cy - 20 / 128, cx + 16 / 128, cy + 20 / 128], atol=1e-6)
    kept = nms(boxes, probs)
    assert len(kept) == 2 and np.allclose(boxes[kept[0]], best)


def test_blazeface_without_a_model_is_a_clear_error(tmp_path):
    assert "mediapipe" not in sys.modules
    with pytest.raises(ModelError, match="--blazeface-model"):
        find_blazeface_model(None)
    with pytest.raises(ModelError, match="no such BlazeFace model"):
        find_blazeface_model(str(tmp_path / "face.tflite"))


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
    with pytest.raises(ConfigError, match="detector"):
        RunConfig(source="x", detector="yolo").validate()
    with pytest.raises(ConfigError, match="threshold"):
        RunConfig(camera=True, threshold=2).validate()
    assert RunConfig(source="x", log_format="jsonl").validate().log_path() == "results.jsonl"


def test_blazeface_detector_runs_a_real_tflite_model_through_the_runtime(tmp_path):
    """A TFLite model with BlazeFace's tensors (128x128x3 in; 896x16 boxes and 896x1 scores out) whose
    outputs are fixed by its biases: the detector must letterbox, decode, suppress and map back to pixels."""
    from ferlite.quiet import import_keras

    keras = import_keras()
    import tensorflow as tf

    anchors = blazeface_anchors()
    raw = np.zeros((896, 16), np.float32)
    scores = np.full(896, -10.0, np.float32)
    raw[722, :4], raw[723, :4] = [4, 0, 32, 40], [5, 1, 30, 38]  # 8x8 grid, row 4, column 3: mid-frame
    scores[[722, 723]] = [3.0, 1.0]
    inp = keras.Input((128, 128, 3), batch_size=1)
    pooled = keras.layers.GlobalAveragePooling2D()(inp)
    outputs = [keras.layers.Reshape((896, k))(keras.layers.Dense(896 * k, kernel_initializer="zeros",
                                                                 bias_initializer=keras.initializers.Constant(v))
                                              (pooled)) for k, v in ((16, raw.ravel()), (1, scores))]
    model = tmp_path / "face.tflite"
    model.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, outputs)).convert())

    from ferlite.device.detectors import BlazeFaceDetector

    frame = np.zeros((128, 256, 3), np.uint8)  # wide: padded 64 px above and below to a 256 square
    (box,) = BlazeFaceDetector(str(model), min_face=10).detect(frame)
    cx, cy = (anchors[722] + np.array([4, 0]) / 128) * 256 - [0, 64]
    assert np.allclose(box, [cx - 32, cy - 40, 64, 80], atol=1)
    assert BlazeFaceDetector(str(model), min_face=100).detect(frame) == []



def test_detection_near_a_tracked_face_follows_it_and_finds_nothing_elsewhere():
    source, haar = VideoFile(CLIP), HaarDetector()
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame.image)
    tracked = haar.detect(frames[0])
    for image in frames[1:]:
        near, full = detect_near(haar, image, tracked), haar.detect(image)
        assert len(near) == 1 and iou(near[0], full[0]) > 0.6
        tracked = near
    height, width = frames[0].shape[:2]
    assert detect_near(haar, frames[0], [(0, height - 60, 60, 60), (width - 2, 0, 80, 80)]) == []
