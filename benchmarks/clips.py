"""Long clips made from the committed six-person fixture (tests/fixtures/group.avi, 8 frames), for the
benchmarks and tests whose runs must last: the frames played forth and back, six faces in every one."""

from __future__ import annotations

from pathlib import Path

GROUP = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "group.avi"


def group_frames() -> list:
    """The fixture's frames, BGR."""
    import cv2

    cap = cv2.VideoCapture(str(GROUP))
    frames = []
    while (read := cap.read())[0]:
        frames.append(read[1])
    cap.release()
    return frames


def group_clip(path: Path, frames: int, fps: float = 10.0, codec: str = "MJPG", bounce: bool = True) -> Path:
    """A clip of `frames` frames at `path`: the fixture forth and back (the people pan smoothly), or, with
    `bounce` False, its frames over and over."""
    import cv2

    images = group_frames()
    cycle = images + images[-2:0:-1] if bounce else images
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, images[0].shape[1::-1])
    for n in range(frames):
        writer.write(cycle[n % len(cycle)])
    writer.release()
    return path
