"""A stand-in for the `picamera2` package, for tests on machines without a Pi camera.

Same names and call order as picamera2 (Picamera2, create_preview_configuration, configure, start,
capture_array, stop, close); frames are real video frames in the configured format's memory layout:
RGB888 arrives as B, G, R and XBGR8888 as R, G, B, 255, as libcamera delivers them.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

CLIP = None  # set by the test: path of a video to serve frames from
FAIL_EVERY = 0  # when > 0, every FAIL_EVERY-th capture raises, as a flaky camera would
STALL_AFTER = 0  # when > 0, the capture after STALL_AFTER frames hangs for STALL_SECONDS, as a stuck camera would
STALL_SECONDS = 0.0
NO_CAMERA = False  # when True, Picamera2() fails as picamera2 does on a Pi with no camera connected
CAMERAS: list[Picamera2] = []


class Picamera2:
    def __init__(self) -> None:
        if NO_CAMERA:
            raise IndexError("list index out of range")  # picamera2 indexes its empty list of cameras
        self.calls: list[str] = []
        self.config: dict | None = None
        self._cap = cv2.VideoCapture(str(CLIP))
        self._captures = 0
        CAMERAS.append(self)

    def create_preview_configuration(self, main: dict | None = None, controls: dict | None = None) -> dict:
        self.calls.append("create_preview_configuration")
        main = {"format": "XBGR8888", "size": (640, 480), **(main or {})}
        return {"use_case": "preview", "main": main, "controls": dict(controls or {})}

    def configure(self, config: dict) -> None:
        self.calls.append("configure")
        self.config = config

    def start(self) -> None:
        assert self.config is not None, "configure before start"
        self.calls.append("start")

    def capture_array(self, name: str = "main") -> np.ndarray:
        assert self.calls[-1] in ("start", "capture_array"), "capture_array before start"
        self.calls.append("capture_array")
        self._captures += 1
        if FAIL_EVERY and self._captures % FAIL_EVERY == 0:
            raise RuntimeError("Camera frontend has timed out!")
        if STALL_AFTER and self._captures == STALL_AFTER + 1:
            time.sleep(STALL_SECONDS)
        ok, bgr = self._cap.read()
        if not ok:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        bgr = cv2.resize(bgr, tuple(self.config["main"]["size"]))
        if self.config["main"]["format"] == "XBGR8888":
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
        return np.ascontiguousarray(bgr)

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")
        self._cap.release()
