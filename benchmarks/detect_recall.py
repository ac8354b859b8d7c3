"""How well ferlite's cheap frames (detection only near tracked faces) keep up with a full detection
on every frame: `ferlite run` on a video with `--detect-every 1` and with each N given, then the
share of the every-frame boxes matched (IoU >= 0.5) by a box in the same frame.

    .venv/bin/python benchmarks/detect_recall.py VIDEO [N ...]     (default N: 5 10)
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

from ferlite.device.detectors.base import iou


def boxes_per_frame(video: Path, every: int, db: Path) -> tuple[int, dict[int, list[tuple]]]:
    """Frames processed and the logged boxes of each frame of a one-core `ferlite run`."""
    subprocess.run([sys.executable, "-m", "ferlite", "run", "--source", str(video), "--detect-every", str(every),
                    "--threads", "1", "--no-status", "--log", str(db)], check=True, capture_output=True)
    with closing(sqlite3.connect(db)) as con:
        (frames,) = con.execute("SELECT frames FROM runs").fetchone()
        found: dict[int, list[tuple]] = {}
        for frame, *box in con.execute("SELECT frame, x, y, w, h FROM detections"):
            found.setdefault(frame, []).append(tuple(box))
    return frames, found


def matched(ref: dict[int, list[tuple]], other: dict[int, list[tuple]]) -> int:
    """Boxes of `ref` with a box of IoU >= 0.5 in the same frame of `other`."""
    return sum(any(iou(a, b) >= 0.5 for b in other.get(f, [])) for f, boxes in ref.items() for a in boxes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("every", type=int, nargs="*", default=[5, 10])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferlite-recall-") as tmp:
        frames, full = boxes_per_frame(args.video, 1, Path(tmp) / "every1.db")
        total = sum(map(len, full.values()))
        print(f"{args.video}: {frames} frames, {total} faces with a full detection on every frame")
        for n in args.every:
            _, cheap = boxes_per_frame(args.video, n, Path(tmp) / f"every{n}.db")
            found = sum(map(len, cheap.values()))
            print(f"--detect-every {n}: {found} faces; recall {matched(full, cheap) / max(total, 1):.3f}, "
                  f"precision {matched(cheap, full) / max(found, 1):.3f}")


if __name__ == "__main__":
    main()
