"""`ferlite run`, `predict` and `log` end to end on real faces, with a real int8 bundle, SQLite and OpenCV."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import cv2
import fake_picamera2
import numpy as np
import pytest

from ferlite.bundle import read_bundle
from ferlite.cli import app
from ferlite.device.detectors.base import iou

FIXTURES = Path(__file__).parent / "fixtures"
CLIP = FIXTURES / "clip.avi"
ASTRONAUT = FIXTURES / "astronaut.jpg"
GAP = 12  # blank frames between the two passes of the clip: longer than --max-missed, so the track ends


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def clip_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    while (read := cap.read())[0]:
        frames.append(read[1])
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """The clip, GAP blank frames, the clip again: a face, no face, the face back."""
    frames = clip_frames()
    blank = np.full_like(frames[0], 90)
    return write_video(tmp_path_factory.mktemp("video") / "in.avi", frames + [blank] * GAP + frames)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "long.avi", clip_frames() * 10)


def ferlite(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferlite", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})})


def private_env(root: Path) -> dict:
    """HOME and TMPDIR inside the test folder, so a scan of it sees every file a run could write."""
    for name in ("home", "tmp"):
        (root / name).mkdir(exist_ok=True)
    return {"HOME": str(root / "home"), "TMPDIR": str(root / "tmp")}


def query(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as con:
        return con.execute(sql).fetchall()


def test_run_on_a_clip_logs_sensible_boxes_and_stable_tracks(tiny_bundle, video, tmp_path):
    result = ferlite("run", "--source", video, "--bundle", tiny_bundle, cwd=tmp_path, env=private_env(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    db = tmp_path / "results.db"
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    rows = query(db, "SELECT frame, track, x, y, w, h, label, confidence, uncertain, probs FROM detections "
                     "ORDER BY frame")
    with_face = list(range(36)) + list(range(36 + GAP, 72 + GAP))
    assert [r[0] for r in rows] == with_face  # one face in every frame that has one, none in the blank ones
    for _, _, x, y, w, h, label, confidence, uncertain, probs in rows:
        assert 200 < x + w / 2 < 300 and 50 < y + h / 2 < 130 and 60 < w < 120 and w < h  # his face: ~(248, 87)
        probs = json.loads(probs)
        assert abs(sum(probs.values()) - 1) < 0.01 and label == max(probs, key=probs.get)  # the top label, always
        assert confidence == pytest.approx(max(probs.values()), abs=1e-3) and uncertain == (confidence < 0.4)
    first, second = {r[1] for r in rows[:36]}, {r[1] for r in rows[36:]}
    assert len(first) == 1 and len(second) == 1 and first != second
    (run,) = query(db, "SELECT stopped_utc, frames, skipped, detections, bundle_sha256, labels, source, detector, "
                       "config FROM runs")
    manifest = read_bundle(tiny_bundle).manifest
    assert run[0] and run[1:4] == (72 + GAP, 0, 72)
    assert run[4] == manifest.model_sha256 and json.loads(run[5]) == manifest.labels
    assert run[6] == str(video) and run[7] == "yunet" and json.loads(run[8])["detect_every"] == 5
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["results.db"], written  # WAL files are merged at close; no image anywhere


def test_several_people_are_each_found_and_tracked_with_a_readable_label(tmp_path):
    """Six people at a table (tests/fixtures/group.avi, boxes in group.json), the default bundle and
    detector: every person found in every frame, one track per person, each with its top label."""
    truth = json.loads((FIXTURES / "group.json").read_text())["faces"]
    result = ferlite("run", "--source", FIXTURES / "group.avi", "--log", "g.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = query(tmp_path / "g.db", "SELECT frame, track, x, y, w, h, label, uncertain, probs FROM detections")
    track_of: dict[int, set[int]] = {}
    for frame, faces in enumerate(truth):
        found = [r for r in rows if r[0] == frame]
        assert len(found) == len(faces) == 6
        for person, box in enumerate(faces):
            (match,) = [r for r in found if iou(tuple(box), tuple(r[2:6])) >= 0.5]
            track_of.setdefault(person, set()).add(match[1])
    assert all(len(ids) == 1 for ids in track_of.values()) and len(set.union(*track_of.values())) == 6
    for *_, label, uncertain, probs in rows:
        probs = json.loads(probs)
        assert label == max(probs, key=probs.get) and label != "uncertain" and uncertain in (0, 1)
    summary = json.loads(ferlite("log", "summary", "g.db", "--json", cwd=tmp_path).stdout)
    assert summary[0]["tracks"] == 6 and "uncertain" not in summary[0]["by_label"]


def test_save_faces_is_the_only_way_to_get_face_pixels(tiny_bundle, tmp_path):
    result = ferlite("run", "--source", CLIP, "--bundle", tiny_bundle, "--save-faces", "faces", "--max-frames", 5,
                     cwd=tmp_path, env=private_env(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    images = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "results.db"]
    assert len(images) == 5 and all(p.parent == tmp_path / "faces" for p in images)
    crop = cv2.imread(str(images[0]))
    assert crop is not None and 70 < crop.shape[0] < 120


def test_fake_picamera2_runs_and_logs(tiny_bundle, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2)
    monkeypatch.setattr(fake_picamera2, "CLIP", CLIP)
    monkeypatch.setattr(fake_picamera2, "FAIL_EVERY", 7)
    db = tmp_path / "pi.db"
    app(["run", "--camera", "--bundle", str(tiny_bundle), "--log", str(db), "--max-frames", "20",
         "--resolution", "480x270", "--max-fps", "30"], standalone_mode=False)
    camera = fake_picamera2.CAMERAS[-1]
    assert camera.config["main"]["size"] == (480, 270) and camera.config["controls"] == {"FrameRate": 30.0}
    assert camera.calls[:3] == ["create_preview_configuration", "configure", "start"]
    assert camera.calls[-2:] == ["stop", "close"]
    # 20 frames, captures 7, 14 and 21 that failed, and perhaps the one read ahead while frame 20 was processed
    assert camera.calls.count("capture_array") in (23, 24)
    assert sum("timed out" in r.getMessage() for r in caplog.records) == 3
    assert query(db, "SELECT source, frames, read_failures, stopped_utc IS NOT NULL FROM runs") == [
        ("picamera2", 20, 3, 1)]
    rows = query(db, "SELECT DISTINCT track, COUNT(*), MIN(x) FROM detections GROUP BY track")
    assert len(rows) == 1 and rows[0][1] == 20 and 150 < rows[0][2] < 250


def test_picamera2_xbgr_frames_are_the_same_picture(monkeypatch):
    monkeypatch.setattr(fake_picamera2, "CLIP", CLIP)
    camera = fake_picamera2.Picamera2()
    camera.configure(camera.create_preview_configuration(main={"size": (480, 270)}))
    camera.start()
    from ferlite.device.sources import pi_to_bgr

    xbgr = camera.capture_array()
    camera.close()
    assert xbgr.shape == (270, 480, 4)
    assert np.abs(pi_to_bgr(xbgr, "XBGR8888").astype(int) - clip_frames()[0]).mean() < 1.0


def _wait_for_rows(db: Path, proc: subprocess.Popen, rows: int = 10) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                if query(db, "SELECT COUNT(*) FROM detections")[0][0] >= rows:
                    return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no results logged: {proc.communicate()[1][-2000:]}")


def _start(bundle: Path, video: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ferlite", "run", "--source", str(video), "--bundle", str(bundle),
                             "--max-fps", "10"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_leaves_a_sound_database_with_results_to_the_last_second(tiny_bundle, long_video, tmp_path):
    proc = _start(tiny_bundle, long_video, tmp_path)
    db = tmp_path / "results.db"
    _wait_for_rows(db, proc)
    time.sleep(2.5)
    killed = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    (last,) = query(db, "SELECT MAX(time_utc) FROM detections")[0]
    assert datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() > killed - 2.5  # 1 s batches + slack
    assert query(db, "SELECT stopped_utc FROM runs") == [(None,)]  # never stopped cleanly: summary says so


def test_sigterm_exits_0_with_everything_flushed(tiny_bundle, long_video, tmp_path):
    proc = _start(tiny_bundle, long_video, tmp_path)
    db = tmp_path / "results.db"
    _wait_for_rows(db, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    (frames, stored, stopped), = query(db, "SELECT frames, detections, stopped_utc FROM runs")
    assert stopped and query(db, "SELECT COUNT(*), COUNT(DISTINCT frame) FROM detections") == [(stored, frames)]
    assert f"run 1: {frames} frames" in err
    assert not (tmp_path / "results.db-wal").exists()


def test_detection_near_tracks_between_full_ones_photos_searched_afresh_bad_images_counted(tiny_bundle, tmp_path):
    db = tmp_path / "n.db"
    result = ferlite("run", "--source", CLIP, "--bundle", tiny_bundle, "--detect-every", 4, "--log", db, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert query(db, "SELECT COUNT(*), COUNT(DISTINCT track), COUNT(DISTINCT frame) FROM detections") == [(36, 1, 36)]
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.imread(str(ASTRONAUT)))
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    cv2.imwrite(str(folder / "c.png"), cv2.flip(cv2.imread(str(ASTRONAUT)), 1))  # her face on the other side
    result = ferlite("run", "--source", folder, "--bundle", tiny_bundle, "--log", db, cwd=tmp_path)
    assert result.returncode == 0 and "skipped" in result.stderr
    assert query(db, "SELECT frames, skipped, detections FROM runs WHERE id = 2") == [(2, 1, 2)]
    a, c = query(db, "SELECT x, w FROM detections WHERE run_id = 2 ORDER BY frame")
    assert abs((a[0] + a[1] / 2) + (c[0] + c[1] / 2) - 512) < 20  # each photo searched afresh: mirrored centres


def test_an_unknown_detector_and_no_camera_are_one_line_errors(tiny_bundle, tmp_path):
    result = ferlite("run", "--source", CLIP, "--bundle", tiny_bundle, "--detector", "blazeface", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: unknown detector 'blazeface' (choose yunet, haar, dlib)\n"
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "results.db").exists()


def test_predict_gives_one_result_per_face(tiny_bundle, tmp_path):
    astronaut = cv2.imread(str(ASTRONAUT))
    man = clip_frames()[0]
    two = np.hstack([astronaut, cv2.resize(man, (910, 512))])
    cv2.imwrite(str(tmp_path / "two.png"), two)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nothing else")
    result = ferlite("predict", tmp_path / "two.png", ASTRONAUT, tmp_path / "broken.png", "--bundle", tiny_bundle,
                     "--json", "--annotate", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # one photo was unreadable
    two_faces, one_face, broken = json.loads(result.stdout)
    assert [len(r["faces"]) for r in (two_faces, one_face)] == [2, 1] and broken["error"] == "unreadable image"
    xs = sorted(f["box"][0] + f["box"][2] / 2 for f in two_faces["faces"])
    assert xs[0] < 512 < xs[1]  # one face on each half
    face = one_face["faces"][0]
    assert abs(face["box"][0] - 177) < 15 and abs(face["box"][1] - 66) < 15  # as in the detector test
    assert face["label"] == max(face["probs"], key=face["probs"].get) and abs(sum(face["probs"].values()) - 1) < 0.01
    assert face["uncertain"] == (face["confidence"] < 0.4)
    drawn = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert drawn == ["astronaut.annotated.png", "two.annotated.png"]
    assert all(f"wrote {tmp_path / 'out' / name}" in result.stderr for name in drawn)
    assert cv2.imread(str(tmp_path / "out" / "two.annotated.png")).shape == two.shape
    missing = ferlite("predict", tmp_path / "nope.jpg", "--bundle", tiny_bundle, cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr == f"error: no such image or folder: {tmp_path / 'nope.jpg'}\n"


def test_log_summary_export_plot_for_both_formats_and_privacy(tiny_bundle, tmp_path):
    for fmt, extra in (("sqlite", []), ("jsonl", []), ("sqlite", ["--privacy"])):
        log = tmp_path / f"{fmt}{len(extra)}.{'jsonl' if fmt == 'jsonl' else 'db'}"
        result = ferlite("run", "--source", CLIP, "--bundle", tiny_bundle, "--log", log, "--log-format", fmt, *extra,
                         "--max-frames", 12, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        summary = ferlite("log", "summary", log, "--json", cwd=tmp_path)
        (run,) = json.loads(summary.stdout)
        assert run["frames"] == 12 and sum(run["by_label"].values()) == 12
        assert run["tracks"] == 1 if not extra else run["tracks"] >= 1  # counts: one per label and minute seen
        assert run["privacy"] == bool(extra)
        export = ferlite("log", "export", log, "--csv", "-", *(["--counts"] if extra else []), cwd=tmp_path)
        lines = export.stdout.strip().splitlines()
        if extra:
            assert lines[0] == "run,minute_utc,label,detections,faces" and "x" not in lines[0].split(",")
        else:
            header = "run,time_utc,frame,track,x,y,w,h,label,confidence,uncertain,p_"
            assert len(lines) == 13 and lines[0].startswith(header)
        plot = ferlite("log", "plot", log, "--out", tmp_path / f"{log.name}.png", cwd=tmp_path)
        assert plot.returncode == 0, plot.stderr
        assert cv2.imread(str(tmp_path / f"{log.name}.png")).shape[1] > 500
    jsonl = ferlite("log", "export", tmp_path / "sqlite0.db", "--jsonl", tmp_path / "out.jsonl", cwd=tmp_path)
    assert jsonl.returncode == 0 and len((tmp_path / "out.jsonl").read_text().splitlines()) == 12
    both = ferlite("log", "export", tmp_path / "sqlite0.db", "--jsonl", "a", "--csv", "b", cwd=tmp_path)
    assert both.returncode == 2 and both.stderr.startswith("error: give exactly one")


def test_run_predict_and_log_never_import_tensorflow(tiny_bundle, tmp_path):
    body = (f"from ferlite.cli import app; "
            f"app(['run', '--source', r'{CLIP}', '--bundle', r'{tiny_bundle}', '--max-frames', '3', '--log', "
            f"r'{tmp_path / 'r.db'}'], standalone_mode=False); "
            f"app(['predict', r'{ASTRONAUT}', '--bundle', r'{tiny_bundle}', '--json'], standalone_mode=False); "
            f"app(['log', 'summary', r'{tmp_path / 'r.db'}'], standalone_mode=False); "
            "import sys; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    result = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("clean")
