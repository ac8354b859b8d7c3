"""Where frames come from: a Pi camera (picamera2), an OpenCV/V4L2 camera, a video file, images.

Every source gives BGR uint8 frames through one small protocol. A source tells the pipeline what
went wrong with the exception it raises: `CameraReadError` (a camera hiccup, worth retrying) or
`BadFrameError` (this frame or image is unusable, skip it); `read()` returning None is the end.
"""

from __future__ import annotations

import glob
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ferlite.datasets import IMAGE_SUFFIXES
from ferlite.errors import SourceError


@dataclass
class Frame:
    """One captured image: BGR uint8, its number in the stream and the wall-clock time it was read."""

    image: np.ndarray
    number: int
    time: float
    name: str = ""


class CameraReadError(Exception):
    """A camera did not deliver a frame this time; the pipeline retries with backoff."""


class BadFrameError(Exception):
    """This frame or image is corrupt or unreadable; the pipeline skips and counts it."""


class FrameSource(Protocol):
    name: str
    stills: bool  # frames are separate photos: find faces in each one afresh, never near a previous face

    def read(self) -> Frame | None:
        """The next frame; None at the end of a file or folder (cameras never end)."""

    def close(self) -> None: ...


def _valid(image: np.ndarray | None) -> bool:
    return image is not None and image.dtype == np.uint8 and image.ndim in (2, 3) and image.size > 0


# picamera2 formats are named after libcamera's (little-endian) layout: "RGB888" arrives as B, G, R
# and "XBGR8888" as R, G, B, 255 (picamera2 manual, section 4.2.2).
_PI_TO_BGR = {"RGB888": None, "BGR888": "RGB2BGR", "XRGB8888": "BGRA2BGR", "XBGR8888": "RGBA2BGR"}


def pi_to_bgr(array: np.ndarray, fmt: str) -> np.ndarray:
    """A picamera2 `capture_array` result in format `fmt` as a BGR image."""
    import cv2

    if fmt not in _PI_TO_BGR:
        raise SourceError(f"picamera2 format {fmt!r} is not supported (use one of {', '.join(_PI_TO_BGR)})")
    code = _PI_TO_BGR[fmt]
    return array if code is None else cv2.cvtColor(array, getattr(cv2, f"COLOR_{code}"))


class PiCamera:
    """The Raspberry Pi camera through picamera2, main stream in RGB888 (already BGR in memory)."""

    def __init__(self, size: tuple[int, int] | None = None, fps: float = 0.0) -> None:
        from picamera2 import Picamera2

        self.name, self.stills = "picamera2", False
        self._cam = Picamera2()
        main = {"format": "RGB888", **({"size": size} if size else {})}
        controls = {"FrameRate": fps} if fps else {}
        config = self._cam.create_preview_configuration(main=main, controls=controls)
        self._cam.configure(config)
        self._format = config["main"]["format"]
        self._cam.start()
        self._n = 0

    def read(self) -> Frame:
        try:
            array = self._cam.capture_array()
        except Exception as exc:  # picamera2 raises plain RuntimeError/OSError subclasses on camera trouble
            raise CameraReadError(f"picamera2 capture failed: {exc}") from None
        if not _valid(array):
            raise BadFrameError("picamera2 returned an empty or malformed array")
        frame = Frame(pi_to_bgr(array, self._format), self._n, time.time())
        self._n += 1
        return frame

    def close(self) -> None:
        self._cam.stop()
        self._cam.close()


class OpenCVCamera:
    """A USB/V4L2 camera by index or /dev/videoN; reopened after repeated read failures."""

    REOPEN_AFTER = 3

    def __init__(self, device: int | str, size: tuple[int, int] | None = None, fps: float = 0.0) -> None:
        self.name, self.stills = f"camera:{device}", False
        self._device, self._size, self._fps = device, size, fps
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(f"camera {device} cannot be opened")
        self._n = self._failures = 0

    def _open(self):
        import cv2

        cap = cv2.VideoCapture(self._device)
        if not cap.isOpened():
            cap.release()
            return None
        if self._size:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        if self._fps:
            cap.set(cv2.CAP_PROP_FPS, self._fps)
        return cap

    def read(self) -> Frame:
        if self._cap is None or self._failures >= self.REOPEN_AFTER:
            if self._cap is not None:
                self._cap.release()
            self._cap = self._open()
            self._failures = 0
            if self._cap is None:
                raise CameraReadError(f"{self.name} cannot be reopened")
        ok, image = self._cap.read()
        if not ok or not _valid(image):
            self._failures += 1
            raise CameraReadError(f"{self.name} delivered no frame")
        self._failures = 0
        frame = Frame(image, self._n, time.time())
        self._n += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()


class VideoFile:
    """A video file read frame by frame; a frame that fails to decode before the end is skipped."""

    MAX_BAD = 25

    def __init__(self, path: Path) -> None:
        import cv2

        self.name, self.stills = str(path), False
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            raise SourceError(f"{path}: not a video OpenCV can read")
        self._count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self._n = self._bad = 0

    def read(self) -> Frame | None:
        ok, image = self._cap.read()
        n = self._n
        self._n += 1
        if ok and _valid(image):
            self._bad = 0
            return Frame(image, n, time.time())
        if n < self._count - 1 and self._bad < self.MAX_BAD:
            self._bad += 1
            raise BadFrameError(f"{self.name}: frame {n} cannot be decoded")
        return None

    def close(self) -> None:
        self._cap.release()


class ImageFiles:
    """Images in name order (a folder, or a single file); unreadable ones are skipped."""

    def __init__(self, paths: list[Path], name: str) -> None:
        self.name, self.stills = name, True
        self._paths = paths
        self._n = 0

    def read(self) -> Frame | None:
        if self._n >= len(self._paths):
            return None
        path = self._paths[self._n]
        self._n += 1
        return Frame(read_image(path), self._n - 1, time.time(), path.name)

    def close(self) -> None:
        """Nothing to release: each image is opened and closed as it is read."""


def read_image(path: Path) -> np.ndarray:
    """A photo as BGR, or a BadFrameError with one line: unreadable, or claiming more pixels than
    ferlite.MAX_IMAGE_PIXELS (OpenCV refuses those before decoding anything)."""
    import cv2

    from ferlite import MAX_IMAGE_PIXELS

    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        raise BadFrameError(f"{path}: image too large (over {MAX_IMAGE_PIXELS:,} pixels)") from None
    if not _valid(image):
        raise BadFrameError(f"{path}: unreadable image")
    return image


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    """The images in a folder, in name order; a folder without one is a SourceError."""
    images = sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))
    if not images:
        raise SourceError(f"{folder}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def video_devices() -> list[str]:
    """The /dev/videoN nodes in numeric order."""
    return sorted(glob.glob("/dev/video*"), key=lambda p: int(re.sub(r"\D", "", p) or 0))


def open_camera(size: tuple[int, int] | None = None, fps: float = 0.0) -> FrameSource:
    """The Pi camera when picamera2 is importable, else the first /dev/videoN that OpenCV opens."""
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        return PiCamera(size, fps)
    for device in video_devices():
        try:
            return OpenCVCamera(device, size, fps)
        except SourceError:
            continue
    raise SourceError("no camera found: picamera2 is not installed and no /dev/video* device opens")


def open_source(source: str, size: tuple[int, int] | None = None, fps: float = 0.0) -> FrameSource:
    """A camera index, /dev/videoN, a folder of images, an image or a video file."""
    if source.isdigit():
        return OpenCVCamera(int(source), size, fps)
    if source.startswith("/dev/video"):
        if not Path(source).exists():
            raise SourceError(f"{source}: no such camera device")
        return OpenCVCamera(source, size, fps)
    path = Path(source)
    if path.is_dir():
        return ImageFiles(image_files(path), str(path))
    if not path.is_file():
        raise SourceError(f"{path}: no such file, folder or camera")
    if is_image(path):
        return ImageFiles([path], str(path))
    return VideoFile(path)
