"""Face-detector recall on annotated real faces, per detector and setting, on one core.

Each detector runs on every frame of: the group photos (dlib's boxes), the two real clips (boxes in
benchmarks/annotations/) and the 640x360 multi-face clip built from the photos (benchmarks/scenes.py).
A true face (>= 24 px wide, wholly in the frame) is found when a detection overlaps it at IoU >= 0.5,
one detection per face; a detection matching no face is a false face. Time is the detector's
`detect` on the whole frame (its second call on that frame), pinned to CPU 0 with OpenCV on one thread.

    .venv/bin/python benchmarks/face_recall.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from scenes import Frame, clips, make_scene_clip, match, photos

from ferlite.config import RunConfig
from ferlite.device.detectors import DEFAULT, make_detector

DEFAULTS = RunConfig()
SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models" / "yunet"
# (label, detector, detect width, min face, another YuNet model file or None); the default's row first.
SETTINGS = [
    (f"{DEFAULT} (default)", DEFAULT, DEFAULTS.detect_width, DEFAULTS.min_face, None),
    ("yunet", "yunet", 320, DEFAULTS.min_face, None),
    ("yunet", "yunet", 400, DEFAULTS.min_face, None),
    ("yunet", "yunet", 640, DEFAULTS.min_face, None),
    ("yunet, s model (not shipped)", "yunet", DEFAULTS.detect_width, DEFAULTS.min_face,
     SHARED_MODELS / "yunet_s_640_640.onnx"),
    ("haar", "haar", 320, DEFAULTS.min_face, None),
    ("haar", "haar", DEFAULTS.detect_width, DEFAULTS.min_face, None),
    ("dlib", "dlib", 640, DEFAULTS.min_face, None),
]


def detector_for(name: str, width: int, min_face: int, model: Path | None):
    if model is None:
        return make_detector(name, width, min_face, threads=1)
    from ferlite.device.detectors.yunet import YuNetDetector

    return YuNetDetector(width, min_face, model)


def score(detector, frames: list[Frame]) -> dict:
    found = false = total = 0
    times = []
    for frame in frames:
        detector.detect(frame.image)  # a photo of a new size loads a network of that size: not timed
        started = time.perf_counter()
        faces = detector.detect(frame.image)
        times.append(time.perf_counter() - started)
        hit, wrong = match(frame, [f.box for f in faces])
        found, false, total = found + hit, false + wrong, total + len(frame.faces)
    return {"faces": total, "found": found, "recall": found / max(total, 1), "false": false,
            "false_per_frame": false / max(len(frames), 1), "frames": len(frames),
            "ms_per_frame": 1000 * statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import cv2

    os.sched_setaffinity(0, {0})
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="ferlite-scenes-") as tmp:
        sets = {"photos": [frame for _, frame in photos()],
                "clips": [frame for _, frames in clips() for frame in frames],
                "scene clip": make_scene_clip(Path(tmp) / "scene.avi")}
    rows = []
    print("| detector | width | " + " | ".join(f"{s}: recall, false/frame, ms" for s in sets) + " | all: recall |")
    print("|---|---:|" + "---:|" * (len(sets) + 1))
    for label, name, width, min_face, model in SETTINGS:
        if model is not None and not model.exists():
            print(f"| {label} | {width} | skipped: {model} not found |")
            continue
        detector = detector_for(name, width, min_face, model)
        detector.detect(sets["photos"][0].image)  # load and warm up outside the clock
        result = {s: score(detector, frames) for s, frames in sets.items()}
        found, total = sum(r["found"] for r in result.values()), sum(r["faces"] for r in result.values())
        rows.append({"detector": label, "width": width, "min_face": min_face, **result, "recall": found / total})
        cells = [f"{r['found']}/{r['faces']} = {r['recall']:.1%}, {r['false_per_frame']:.3f}, {r['ms_per_frame']:.1f}"
                 for r in result.values()]
        print(f"| {label} | {width} | " + " | ".join(cells) + f" | {found / total:.1%} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
