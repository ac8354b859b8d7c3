"""Annotated real faces to measure detectors and whole pipelines on: photos, clips and a multi-face clip.

- `photos()`: the group photos in shared/data/faces with dlib's face boxes (its imglab XML).
- `clips()`: the two real clips in shared/data/video with the boxes in benchmarks/annotations/.
- `make_scene_clip(path)`: a 640x360 clip of several people per frame, built from the group photos:
  a slow pan and zoom over each photo (2 s at 12 fps), in daylight, a dark room and an over-lit one,
  with the photo's boxes carried through the same transform. Nothing is written into the repository.

A face is a truth box; one lying partly outside the frame, or under `MIN_FACE` pixels wide, is kept
as "ignored": a detection on it is neither a hit nor a false face.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ANNOTATIONS = Path(__file__).with_name("annotations")
MIN_FACE = 24
SCENE_SIZE = (640, 360)
SCENE_FPS = 12.0
SCENE_FRAMES = 24  # per photo
LIGHTS = {"daylight": (1.0, 1.0), "dark room": (0.35, 1.0), "over-lit": (1.0, 0.55)}  # (gain, gamma)

Box = tuple[int, int, int, int]


@dataclass
class Frame:
    image: np.ndarray
    faces: list[Box]  # counted
    ignored: list[Box]  # partly outside or too small: matching them is neither right nor wrong


def _xml_boxes(root: Path = SHARED / "faces") -> dict[str, list[Box]]:
    boxes: dict[str, list[Box]] = {}
    for name in ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml"):
        for image in ET.parse(root / name).getroot().iter("image"):
            if (root / image.get("file")).exists():
                boxes[image.get("file")] = [tuple(int(b.get(k)) for k in ("left", "top", "width", "height"))
                                            for b in image.iter("box")]
    return boxes


def _split(boxes: list[Box], size: tuple[int, int]) -> tuple[list[Box], list[Box]]:
    width, height = size
    inside = [b for b in boxes if b[0] >= 0 and b[1] >= 0 and b[0] + b[2] <= width and b[1] + b[3] <= height]
    counted = [b for b in inside if b[2] >= MIN_FACE]
    return counted, [b for b in boxes if b not in counted]


def photos() -> Iterator[tuple[str, Frame]]:
    """Each group photo with its boxes."""
    import cv2

    for name, boxes in sorted(_xml_boxes().items()):
        image = cv2.imread(str(SHARED / "faces" / name))
        yield name, Frame(image, *_split(boxes, image.shape[1::-1]))


def clips() -> Iterator[tuple[str, list[Frame]]]:
    """Each annotated real clip, frame by frame."""
    import cv2

    for file in sorted(ANNOTATIONS.glob("*.json")):
        doc = json.loads(file.read_text())
        cap = cv2.VideoCapture(str(SHARED / doc["video"]))
        frames = []
        for boxes in doc["boxes"]:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(Frame(image, *_split([tuple(b) for b in boxes], image.shape[1::-1])))
        cap.release()
        yield Path(doc["video"]).stem, frames


def _light(image: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    table = np.clip(255.0 * gain * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    return table[image]


def scene_frames(only: str | None = None, size: tuple[int, int] = SCENE_SIZE) -> Iterator[Frame]:
    """The multi-face clip's frames: per photo a pan and zoom of a 16:9 window, lit one of three ways;
    `only`: that photo alone."""
    import cv2

    lights = list(LIGHTS.values())
    for k, (name, boxes) in enumerate(sorted(_xml_boxes().items())):
        if only is not None and name != only:
            continue
        photo = cv2.imread(str(SHARED / "faces" / name))
        height, width = photo.shape[:2]
        gain, gamma = lights[k % len(lights)] if only is None else (1.0, 1.0)
        for i in range(SCENE_FRAMES):
            t = i / (SCENE_FRAMES - 1)
            zoom = 1.0 + 0.12 * t  # the window shrinks: the camera moves in
            win_w = min(width, height * 16 / 9) / zoom
            win_h = win_w * 9 / 16
            x0 = (width - win_w) * (0.2 + 0.6 * t if k % 2 else 0.8 - 0.6 * t)
            y0 = (height - win_h) / 2
            scale = size[0] / win_w
            matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]])
            image = cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            moved = [(round((x - x0) * scale), round((y - y0) * scale), round(w * scale), round(h * scale))
                     for x, y, w, h in boxes]
            yield Frame(_light(image, gain, gamma), *_split(moved, size))


def make_scene_clip(path: Path, only: str | None = None, size: tuple[int, int] = SCENE_SIZE,
                    frames: int | None = None) -> list[Frame]:
    """Write the multi-face clip (or the pan over photo `only`, its first `frames` frames) as MJPG,
    what a camera or a phone would hand over, and return its frames as decoded from that file."""
    import cv2

    frames = list(scene_frames(only, size))[:frames]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), SCENE_FPS, size)
    for frame in frames:
        writer.write(frame.image)
    writer.release()
    cap = cv2.VideoCapture(str(path))
    for frame in frames:
        frame.image = cap.read()[1]
    cap.release()
    return frames


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter) if inter else 0.0


def match(frame: Frame, found: list[Box], threshold: float = 0.5) -> tuple[int, int]:
    """(true faces found, false faces) for one frame: greedy one-to-one matching at IoU >= threshold;
    a detection matching an ignored face counts as neither."""
    pairs = sorted(((iou(t, d), ti, di) for ti, t in enumerate(frame.faces) for di, d in enumerate(found)),
                   reverse=True)
    hit_t, hit_d = set(), set()
    for overlap, ti, di in pairs:
        if overlap < threshold:
            break
        if ti not in hit_t and di not in hit_d:
            hit_t.add(ti)
            hit_d.add(di)
    spare = [d for di, d in enumerate(found) if di not in hit_d]
    false = sum(not any(iou(d, g) >= threshold / 2 for g in frame.ignored) for d in spare)
    return len(hit_t), false


def main() -> None:
    """Write the test fixture: the first frames of the pan over one group photo, and its boxes."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("photo")
    parser.add_argument("out", type=Path, help="VIDEO.avi; the boxes go to VIDEO.json")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--width", type=int, default=480)
    args = parser.parse_args()
    frames = make_scene_clip(args.out, args.photo, (args.width, args.width * 9 // 16), args.frames)
    args.out.with_suffix(".json").write_text(json.dumps({
        "source": f"benchmarks/scenes.py {args.photo} {args.out.name} --frames {args.frames} --width {args.width}",
        "faces": [frame.faces for frame in frames], "ignored": [frame.ignored for frame in frames]}) + "\n")
    print(f"{args.out}: {len(frames)} frames, faces per frame {[len(f.faces) for f in frames]}")


if __name__ == "__main__":
    main()
