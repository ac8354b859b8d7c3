"""Where frames come from: a Pi camera (picamera2), an OpenCV/V4L2 camera, a video file, images.

Every source gives BGR uint8 frames through one small protocol. A source tells the pipeline what
went wrong with the exception it raises: `CameraReadError` (a camera hiccup, worth retrying) or
`BadFrameError` (this frame or image is unusable, skip it); `read()` returning None is the end.
"""

from __future__ import annotations

import glob
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ferlite.datasets import IMAGE_SUFFIXES
from ferlite.errors import SourceError

log = logging.getLogger(__name__)


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
    """Frames or an image that are corrupt or unreadable; the pipeline skips and counts them.

    `frames` is how many (a video's corrupt stretch is one error); `at_end` says the source ended
    inside the stretch, so the run stopped on a broken file rather than at its end.
    """

    def __init__(self, message: str, frames: int = 1, at_end: bool = False) -> None:
        super().__init__(message)
        self.frames, self.at_end = frames, at_end


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
        try:
            self._cam = Picamera2()
        except (IndexError, RuntimeError) as exc:  # picamera2 indexes an empty camera list when none is connected
            raise SourceError(f"picamera2 finds no camera ({exc or type(exc).__name__}); is it connected "
                              "and enabled?") from None
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
    """A video file read frame by frame. A stretch of frames that fail to decode is skipped past, as
    one BadFrameError, and reading goes on after it; only the frame count (or, for a file that gives
    none, MAX_BAD failures in a row) ends it. A file whose last frames never decode is reported as such."""

    MAX_BAD = 25
    END_SLACK = 2  # containers may announce a frame or two more than they hold: failing there is just the end

    def __init__(self, path: Path) -> None:
        import cv2

        self.name, self.stills = str(path), False
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            raise SourceError(f"{path}: not a video OpenCV can read")
        self._count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self._n = 0
        self._held: Frame | None = None

    def _next(self) -> Frame | None:
        ok, image = self._cap.read()
        self._n += 1
        return Frame(image, self._n - 1, time.time()) if ok and _valid(image) else None

    def _more(self, bad: int) -> bool:
        """Whether frames may follow `bad` failed reads in a row."""
        return self._n < self._count if self._count > 0 else bad < self.MAX_BAD

    def read(self) -> Frame | None:
        if self._held is not None:
            frame, self._held = self._held, None
            return frame
        first = self._n
        frame = self._next()
        if frame is not None:
            return frame
        bad = 1
        while self._held is None and self._more(bad):
            self._held = self._next()
            bad += self._held is None
        if self._held is None and (self._count <= 0 or first >= self._count - self.END_SLACK):
            return None
        span = f"frame {first}" if bad == 1 else f"frames {first}-{first + bad - 1}"
        at_end = self._held is None
        raise BadFrameError(f"{self.name}: {span} cannot be decoded" + (" (the file ends broken)" if at_end else ""),
                            frames=bad, at_end=at_end)

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


class CaptureThread:
    """A source read in a daemon thread, one frame ahead: capture overlaps the processing of the last
    frame, and a camera that hangs inside its driver never holds the loop. `read` waits in short slices,
    returns None as soon as `stopping()` says so, and raises CameraReadError when no frame came for
    `deadline_s` (the stuck read stays in flight; the next `read` waits on it again)."""

    SLICE_S = 0.05

    def __init__(self, source: FrameSource, deadline_s: float = 10.0) -> None:
        self.source, self.name, self.stills = source, source.name, source.stills
        self.deadline_s = deadline_s
        self._asks: queue.Queue[bool] = queue.Queue()
        self._answers: queue.Queue[tuple[Frame | None, BaseException | None]] = queue.Queue()
        self._in_flight = False
        self._thread = threading.Thread(target=self._work, name="capture", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while self._asks.get():
            try:
                self._answers.put((self.source.read(), None))
            except Exception as exc:  # handed to the loop, which tells camera hiccups from bad frames
                self._answers.put((None, exc))

    def _ask(self) -> None:
        if not self._in_flight:
            self._asks.put(True)
            self._in_flight = True

    def read(self, stopping: Callable[[], bool] = lambda: False) -> Frame | None:
        self._ask()
        started = time.monotonic()
        while not stopping():
            try:
                frame, error = self._answers.get(timeout=self.SLICE_S)
            except queue.Empty:
                if time.monotonic() - started >= self.deadline_s:
                    raise CameraReadError(f"{self.name}: no frame for {self.deadline_s:.0f} s") from None
                continue
            self._in_flight = False
            if error is not None:
                raise error
            if frame is not None:
                self._ask()
            return frame
        return None

    def close(self) -> None:
        """Close the source once the thread is idle; a read stuck in a driver is left to the process's exit."""
        if self._in_flight:
            try:
                self._answers.get(timeout=0.5)
                self._in_flight = False
            except queue.Empty:
                log.warning("%s: a read is still stuck; leaving the device to close at exit", self.name)
                return
        self._asks.put(False)
        self.source.close()


def read_image(path: Path) -> np.ndarray:
    """A photo as BGR, or a BadFrameError with one line: unreadable, a file over ferlite.MAX_IMAGE_BYTES,
    or claiming more pixels than ferlite.MAX_IMAGE_PIXELS (OpenCV refuses those before decoding anything)."""
    import cv2

    from ferlite import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadFrameError(f"{path}: unreadable image ({exc.strerror})") from None
    if size > MAX_IMAGE_BYTES:
        raise BadFrameError(f"{path}: image file too large ({size:,} bytes, over {MAX_IMAGE_BYTES:,})")
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
