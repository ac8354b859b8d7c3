"""The device loop: source -> detector -> face inputs -> predictor -> tracker -> results log.

The loop owns pacing (frame-rate cap, full detection every N frames), the status line, the preview,
signals and the hooks; each stage is handed in ready-made, and the pipeline closes them at the
end. Face pixels reach the disk only through `save_faces`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np

from ferlite.config import RunConfig
from ferlite.device.detectors.base import Detector, detect_near
from ferlite.device.faces import FaceStep
from ferlite.device.log import Result, ResultsLog
from ferlite.device.sources import BadFrameError, CameraReadError, CaptureThread, Frame, FrameSource
from ferlite.device.tracker import Tracker
from ferlite.inputs import Box, Face
from ferlite.runtime import Predictor

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
STATUS_EVERY_S = 0.5


@dataclass
class Stats:
    """What the loop has done so far; handed to hooks after every frame."""

    frames: int = 0
    skipped: int = 0
    read_failures: int = 0
    detections: int = 0
    faces: int = 0
    fps: float = 0.0
    labels: list[str] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)  # the last frame's seconds per stage
    broken: str = ""  # why the source ended early (a file whose last frames never decode), if it did


class _Clock:
    """Seconds per stage of one frame, in the order they ran."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = now - self._last
        self._last = now


class Hooks(Protocol):
    """Told about the loop's life, e.g. a systemd notifier: READY after the first frame, a watchdog
    ping and status per frame, STOPPING at the end."""

    def ready(self, stats: Stats) -> None: ...

    def frame(self, stats: Stats) -> None: ...

    def stopping(self, stats: Stats) -> None: ...


class NoHooks:
    def ready(self, stats: Stats) -> None:
        """Nobody to tell."""

    def frame(self, stats: Stats) -> None:
        """Nobody to tell."""

    def stopping(self, stats: Stats) -> None:
        """Nobody to tell."""


def classify(track: int, box: Box, probs: np.ndarray, labels: tuple[str, ...], threshold: float) -> Result:
    """A face's result: its most probable label and that probability, flagged uncertain under `threshold`."""
    best = int(np.argmax(probs))
    confidence = float(probs[best])
    return Result(track, tuple(int(v) for v in box), labels[best], confidence,
                  {k: round(float(v), 4) for k, v in zip(labels, probs)}, confidence < threshold)


def caption(r: Result) -> str:
    """"#track label probability", with "?" after an uncertain face's label."""
    return f"#{r.track} {r.label}{'?' if r.uncertain else ''} {r.confidence:.2f}"


BOX = (0, 200, 0)  # BGR: sure faces green, uncertain ones amber
UNSURE = (0, 170, 255)


def annotate(image: np.ndarray, results: list[Result], bars: bool = False) -> np.ndarray:
    """A copy of a BGR image with each face's box and "#track label probability" drawn on a filled
    background (readable on light and dark scenes; "?" marks an uncertain face); with `bars`, each
    class's probability as a bar under the box."""
    import cv2

    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3].copy()
    thick = max(1, round(max(out.shape[:2]) / 500))
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick
    for r in results:
        x, y, w, h = r.box
        colour = UNSURE if r.uncertain else BOX
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, thick)
        text = caption(r)
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        top = y - th - base - 2 if y - th - base - 2 >= 0 else y + h
        cv2.rectangle(out, (x, top), (x + tw + 4, top + th + base + 2), colour, cv2.FILLED)
        cv2.putText(out, text, (x + 2, top + th + 1), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
        if bars:
            _bars(out, r, (x, y + h + (th + base + 2 if top == y + h else 0) + 2), font, scale, thick)
    return out


def _bars(out: np.ndarray, r: Result, origin: tuple[int, int], font: int, scale: float, thick: int) -> None:
    """One row per class under a face: a black strip, the class name, a bar as long as its probability."""
    import cv2

    x, y = origin
    row, width = round(12 * thick), round(60 * thick)
    for i, (name, p) in enumerate(r.probs.items()):
        top = y + i * row
        cv2.rectangle(out, (x, top), (x + width * 2, top + row - 1), (0, 0, 0), cv2.FILLED)
        cv2.rectangle(out, (x + width, top + 2), (x + width + round(width * p), top + row - 3),
                      UNSURE if r.uncertain else BOX, cv2.FILLED)
        cv2.putText(out, name[:8], (x + 2, top + row - 3), font, scale * 0.85, (255, 255, 255), 1, cv2.LINE_AA)


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Pipeline:
    def __init__(self, source: FrameSource, detector: Detector, predictor: Predictor, tracker: Tracker,
                 results: ResultsLog, cfg: RunConfig, hooks: Hooks | None = None,
                 status: TextIO | None = None) -> None:
        self.source, self.detector, self.predictor = source, detector, predictor
        self.capture = CaptureThread(source)
        self.step = FaceStep(detector, predictor)
        self.tracker, self.results, self.cfg = tracker, results, cfg
        self.hooks = hooks or NoHooks()
        self.stats = Stats()
        self._status = status if status is not None else sys.stderr
        self._stopping = False
        self._save_dir = Path(cfg.save_faces) if cfg.save_faces else None
        self._preview = cfg.preview
        self._last_status = 0.0
        self._frame_end = 0.0

    def stop(self, *_: object) -> None:
        """Ask the loop to finish after the current frame (also the SIGTERM/SIGINT handler)."""
        self._stopping = True

    def run(self) -> Stats:
        """Process frames until the source ends, max_frames, a signal or `stop()`; always flushes and closes."""
        restore = self._install_signals()
        if self._save_dir:
            self._save_dir.mkdir(parents=True, exist_ok=True)
        if self._preview and not has_display():
            log.warning("--preview: no display (DISPLAY/WAYLAND_DISPLAY unset); running without a window")
            self._preview = False
        try:
            self._loop()
        finally:
            self.hooks.stopping(self.stats)
            self._end_status()
            try:
                self.results.close()
            finally:
                self.capture.close()
                if self._preview:
                    import cv2

                    cv2.destroyAllWindows()
                for sig, handler in restore.items():
                    signal.signal(sig, handler)
        return self.stats

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _loop(self) -> None:
        period = 1.0 / self.cfg.max_fps if self.cfg.max_fps else 0.0
        failures = 0
        while not self._stopping and not (self.cfg.max_frames and self.stats.frames >= self.cfg.max_frames):
            started = time.monotonic()
            clock = _Clock()
            try:
                frame = self.capture.read(lambda: self._stopping)
            except CameraReadError as exc:
                failures += 1
                self.stats.read_failures += 1
                self.results.read_failure()
                delay = min(MAX_BACKOFF_S, 0.1 * 2 ** min(failures, 10))
                if failures == 1 or failures % 10 == 0:
                    log.warning("%s (failure %d in a row); retrying in %.1f s", exc, failures, delay)
                self.results.commit()
                self._sleep(delay)
                continue
            except BadFrameError as exc:
                self._skip(str(exc), exc.frames)
                if exc.at_end:
                    self.stats.broken = str(exc)
                continue
            if failures:
                log.warning("%s: frames again after %d failed reads", self.source.name, failures)
                failures = 0
            if frame is None:
                break
            clock.lap("capture")
            if not self._process(frame, clock):
                continue
            if self.stats.frames == 1:
                self.hooks.ready(self.stats)
            self.hooks.frame(self.stats)
            if period:
                self._sleep(started + period - time.monotonic())

    def _sleep(self, seconds: float) -> None:
        """Sleep in short slices so a signal stops the run within a tenth of a second."""
        end = time.monotonic() + seconds
        while not self._stopping and (left := end - time.monotonic()) > 0:
            time.sleep(min(0.1, left))

    def _skip(self, why: str, frames: int = 1) -> None:
        self.stats.skipped += frames
        self.results.skip(frames)
        log.warning("skipped: %s", why)

    def find_faces(self, image: np.ndarray) -> list[Face]:
        """The frame's faces: the whole frame every `detect_every` frames, and whenever nobody is tracked
        or the frames are separate photos; otherwise windows around the tracked faces, and the whole
        frame again when fewer faces are found than were seen in the last frame (a face joining the
        tracked ones waits for the next full detection)."""
        if self.source.stills or not self.tracker.tracks or self.stats.frames % self.cfg.detect_every == 0:
            return self.step.find(image)
        near = detect_near(self.detector, image, self.tracker.boxes())
        seen = sum(t.missed == 0 for t in self.tracker.tracks)
        return near if len(near) >= seen else self.step.find(image)

    def _process(self, frame: Frame, clock: _Clock) -> bool:
        """One frame through the stages, each one's time in `clock` (`ferlite bench` reads them from the stats;
        preprocess and inference only count for frames with faces)."""
        import cv2

        image = frame.image
        if image.ndim == 3 and image.shape[2] not in (3, 4):
            self._skip(f"frame {frame.number} has {image.shape[2]} channels")
            return False
        try:
            faces = self.find_faces(image)
            clock.lap("detect")
            inputs = self.step.inputs(image, faces)
            clock.lap("preprocess")
            probs = self.predictor.predict(inputs)
            clock.lap("inference")
        except cv2.error as exc:
            self._skip(f"frame {frame.number}: {str(exc).strip().splitlines()[-1]}")
            return False
        if not faces:
            del clock.stages["preprocess"], clock.stages["inference"]
        labels = self.predictor.labels
        results = []
        for track in self.tracker.update([f.box for f in faces], probs):
            results.append(classify(track.id, track.box, track.probs, labels, self.cfg.threshold))
        clock.lap("track")
        self.results.write(frame.number, frame.time, results)
        self.results.track_events(frame.time, results, self.tracker.ended)
        clock.lap("log")
        self.stats.stage_s = clock.stages
        if self._save_dir:
            self._save_faces(frame, results)
        self._count(results)
        if self._preview:
            self._show(image, results)
        return True

    def _count(self, results: list[Result]) -> None:
        now = time.monotonic()
        if self._frame_end:
            rate = 1.0 / max(now - self._frame_end, 1e-6)
            self.stats.fps = rate if not self.stats.fps else 0.9 * self.stats.fps + 0.1 * rate
        self._frame_end = now
        self.stats.frames += 1
        self.stats.faces = len(results)
        self.stats.detections += len(results)
        self.stats.labels = [caption(r) for r in results]
        if self.cfg.status and self._status.isatty() and now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            self._status.write(f"\r\x1b[K{self.stats.fps:5.1f} fps · {self.stats.faces} face(s) · "
                               f"{', '.join(self.stats.labels) or '-'}")
            self._status.flush()

    def _end_status(self) -> None:
        if self._last_status:
            self._status.write("\n")
            self._status.flush()

    def _save_faces(self, frame: Frame, results: list[Result]) -> None:
        import cv2

        for r in results:
            x, y, w, h = r.box
            crop = frame.image[max(0, y):y + h, max(0, x):x + w]
            if crop.size:
                cv2.imwrite(str(self._save_dir / f"run{self.results.run_id}_f{frame.number:07d}_t{r.track}.png"),
                            crop)

    def _show(self, image: np.ndarray, results: list[Result]) -> None:
        import cv2

        try:
            cv2.imshow("ferlite", annotate(image, results, self.cfg.bars))
            if cv2.waitKey(1) & 0xFF == ord("q"):
                self.stop()
        except cv2.error:
            log.warning("--preview: this OpenCV has no GUI support (opencv-python-headless); window off")
            self._preview = False
