"""The "make it yours" walk-through, measured: JAFFE's ten subjects play the user. Their photos go
through `ferlite capture` (the device's own detection, alignment and framing); the shipped CNN is
fine-tuned on seven subjects (`ferlite train cnn --init default`), converted to int8, and judged on
the three subjects it never saw, and on FER2013 PublicTest (how much it forgot).

    python benchmarks/make_it_yours.py --out runs/mine [--freeze 0 3] [--epochs 30]   # prints JSON

JAFFE and FER2013 are research-only: the photos and crops stay in --out (outside git).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_SUBJECTS = ("UY", "YM", "NM")  # three of the ten, held out from everything but the final score


def ferlite(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "ferlite", *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"ferlite {' '.join(map(str, args))}: {result.stderr.strip().splitlines()[-1]}")
    return result


def capture_jaffe(out: Path) -> dict[str, int]:
    """JAFFE's photos, by subject and label, through the capture code into out/{train,test}/LABEL/."""
    import cv2

    from ferlite.config import RunConfig
    from ferlite.device.capture import capture

    jaffe = np.load(DATA / "jaffe" / "jaffe.npz")
    names = [str(n) for n in jaffe["label_names"]]
    photos = out / "photos"
    for image, label, subject, name in zip(jaffe["images"], jaffe["labels"], jaffe["subjects"], jaffe["filenames"]):
        folder = photos / str(subject) / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / (Path(str(name)).stem + ".png")), image)
    saved = {"train": 0, "test": 0}
    for folder in sorted(photos.glob("*/*")):
        subject, label = folder.parent.name, folder.name
        split = "test" if subject in TEST_SUBJECTS else "train"
        done = capture(RunConfig(source=str(folder), status=False), label, out / split, subject=subject)
        saved[split] += done.saved
    return saved


def accuracy(bundle: str, data: Path) -> float:
    return round(json.loads(ferlite("eval", bundle, "--data", data, "--json").stdout)["accuracy"], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--freeze", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rehearse", type=float, nargs="+", default=[0.0],
                        help="Shares of FER2013 training faces mixed in per own face (0: none).")
    args = parser.parse_args()
    public = DATA / "fer2013" / "public_test.npz"
    figures: dict = {"faces": capture_jaffe(args.out) if not (args.out / "train").exists() else "reused"}
    figures["default"] = {"test_subjects": accuracy("cnn", args.out / "test"), "public_test": accuracy("cnn", public)}
    for freeze, share in ((f, s) for f in args.freeze for s in args.rehearse):
        run = args.out / f"ft-freeze{freeze}" if not share else args.out / f"ft-freeze{freeze}-rehearse{share:g}"
        rehearse = ["--rehearse", DATA / "fer2013" / "train.npz", "--rehearse-share", share] if share else []
        if not (run / "model.keras").exists():
            ferlite("train", "cnn", "--init", "default", "--data", args.out / "train", "--freeze", freeze,
                    "--epochs", args.epochs, "--batch-size", 32, "--learning-rate", "5e-4", "--forget", public,
                    *rehearse, "-o", run)
        bundle = run / "mine.ferlite"
        # Calibrated on the user's faces and verified on their held-out people, as a user would.
        convert = ["convert", run / "model.keras", "--calibration", args.out / "train", "--eval", args.out / "test",
                   "--tta-flip", "-o", bundle, "--json"]
        gate = ferlite(*convert, check=False)
        passed = gate.returncode == 0
        if not passed:
            gate = ferlite(*convert, "--force")
        conversion = json.loads(gate.stdout)
        report = json.loads((run / "report.json").read_text())
        figures[run.name] = {
            "train_seconds": report["train_seconds"], "fine_tune": report["fine_tune"],
            "int8_gate": {"passed": passed, "agreement_flip_tta": conversion["tta_flip"]["agreement"],
                          "float": conversion["tta_flip"]["float"]["accuracy"],
                          "int8": conversion["tta_flip"]["int8"]["accuracy"]},
            "test_subjects": accuracy(str(bundle), args.out / "test"), "public_test": accuracy(str(bundle), public)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
