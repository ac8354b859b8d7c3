"""Fit how FER2013 frames its faces, per detector: the `framing` recipes in ferlite/preprocess.py.

Each FER2013 training face (48x48, exact pixels) is enlarged 4x and set in a border of its own mean
grey, so the detector sees a whole face with room around it; where the detector finds one face, its
box is expressed in the FER2013 frame. The medians over all such faces are the recipe:
the crop side and centre relative to the box.

    .venv/bin/python benchmarks/fit_framing.py [--data train.npz] [--faces 3000] [--detector yunet ...]

With --check BUNDLE (and --data public_test.npz), it instead scores the bundle on faces set in a border
the same way, found by each detector and framed by the bundle's recipe, aligned and not: if the recipe
reproduces FER2013's framing, the accuracy matches the bundle's on the crops themselves.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ferlite.device.detectors import DETECTORS, make_detector
from ferlite.preprocess import Framing

ENLARGE, BORDER = 4, 96


def in_border(img: np.ndarray, tilt: float = 0.0) -> np.ndarray:
    """A 48x48 face enlarged and set in a border of its mean grey: a photo of that face; `tilt` turns
    it by that many degrees about its centre (a tilted head)."""
    import cv2

    big = cv2.resize(img, (48 * ENLARGE, 48 * ENLARGE), interpolation=cv2.INTER_CUBIC)
    photo = cv2.copyMakeBorder(big, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_CONSTANT, value=int(img.mean()))
    if tilt:
        centre = (photo.shape[1] / 2, photo.shape[0] / 2)
        photo = cv2.warpAffine(photo, cv2.getRotationMatrix2D(centre, tilt, 1.0), photo.shape[1::-1],
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return photo


def fit(detector_name: str, images: np.ndarray) -> tuple[Framing, int]:
    """The median framing of `detector_name` on FER2013 faces, and on how many faces it was found."""
    detector = make_detector(detector_name, width=10_000, min_face=40)
    side = 48 * ENLARGE
    scales, dxs, dys = [], [], []
    for img in images:
        faces = detector.detect(in_border(img))
        if len(faces) != 1:
            continue
        x, y, w, h = faces[0].box
        size = np.sqrt(w * h)
        scales.append(side / size)
        dxs.append((BORDER + side / 2 - (x + w / 2)) / size)
        dys.append((BORDER + side / 2 - (y + h / 2)) / size)
    framing = Framing(round(float(np.median(scales)), 4), round(float(np.median(dxs)), 4),
                      round(float(np.median(dys)), 4))
    return framing, len(scales)


def check(bundle_path: str, images: np.ndarray, labels: np.ndarray, detectors: list[str], tilt: float,
          min_tilt: float | None) -> None:
    """Accuracy of the bundle on the faces in a border, per detector, aligned and not, beside the crops';
    with `tilt`, each face turned by +tilt or -tilt degrees (alternately); `min_tilt` overrides the
    bundle's align_min_tilt. Also the median eye tilt the detector's landmarks read."""
    from ferlite.bundle import read_bundle
    from ferlite.inputs import face_inputs
    from ferlite.preprocess import eye_tilt
    from ferlite.runtime import Predictor

    bundle = read_bundle(bundle_path)
    if min_tilt is not None:
        bundle.manifest.preprocess = {**bundle.manifest.preprocess, "align_min_tilt": min_tilt}
    predictor = Predictor(bundle)
    hits = predictor.predict(images).argmax(1) == labels
    print(f"{bundle_path}: {hits.mean():.2%} on the {len(images)} crops themselves", flush=True)
    for name in detectors:
        detector = make_detector(name, width=10_000, min_face=40)
        found, faces = [], []
        for i, img in enumerate(images):
            if detected := detector.detect(in_border(img, tilt * (-1) ** i)):
                found.append(i)
                faces.append(max(detected, key=lambda f: f.box[2] * f.box[3]))
        read = [abs(eye_tilt(f.landmarks)) for f in faces if f.landmarks is not None]
        if read:
            print(f"{name}: eye tilt read {np.median(read):.1f} degrees in the median (turned by {tilt:g})")
        for align in (True, False) if name == "yunet" else (False,):
            bundle.manifest.preprocess = {**bundle.manifest.preprocess, "align": align}
            x = np.concatenate([face_inputs(bundle.manifest, in_border(images[i], tilt * (-1) ** i), [f], name)
                                for i, f in zip(found, faces)])
            framed = predictor.predict(x).argmax(1) == labels[found]
            print(f"{name}{' aligned' if align else ''}: a face in {len(found)} of {len(images)}; "
                  f"{framed.mean():.2%} of those framed by the recipe, {hits[found].mean():.2%} as crops", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/shared/data/fer2013/train.npz")
    parser.add_argument("--faces", type=int, default=3000)
    parser.add_argument("--detector", action="append", choices=list(DETECTORS))
    parser.add_argument("--check", metavar="BUNDLE")
    parser.add_argument("--tilt", type=float, default=0.0, help="--check: turn the faces by this many degrees")
    parser.add_argument("--min-tilt", type=float, help="--check: level faces tilted by this much (default: the "
                        "bundle's align_min_tilt)")
    args = parser.parse_args()
    data = np.load(args.data)
    images = data["images"][data["exact"]] if "exact" in data else data["images"]
    if args.check:
        labels = data["labels"][data["exact"]] if "exact" in data else data["labels"]
        check(args.check, images, labels, args.detector or ["yunet", "haar"], args.tilt, args.min_tilt)
        return
    rng = np.random.default_rng(0)
    images = images[rng.choice(len(images), min(args.faces, len(images)), replace=False)]
    out = {}
    for name in args.detector or ["yunet", "haar"]:
        framing, found = fit(name, images)
        out[name] = framing.to_dict()
        print(f"{name}: one face found in {found} of {len(images)}", flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
