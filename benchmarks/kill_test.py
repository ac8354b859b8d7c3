"""SIGKILL `ferlite run` mid-run, again and again, into one results database, as a power cut or the OOM
killer would: after each kill the database must pass SQLite's integrity check, and the results lost
(the kill's time minus the newest stored frame's) must stay under a second.

    python benchmarks/kill_test.py [--kills 30] [--out DIR]     # prints JSON

The clip is the committed six-person fixture, looped into a long video in DIR; runs go at 10 frames/s.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

from clips import group_clip


def _newest(db: Path, run_id: int) -> float | None:
    """The time of run `run_id`'s newest stored result; None before it has one (or before the run has
    made its tables: the file exists a moment earlier)."""
    with closing(sqlite3.connect(db)) as con:
        try:
            (last,) = con.execute("SELECT MAX(time_utc) FROM detections WHERE run_id = ?", (run_id,)).fetchone()
        except sqlite3.OperationalError:
            return None
    return datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() if last else None


def _integrity(db: Path) -> str:
    with closing(sqlite3.connect(db)) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def kill_runs(kills: int, folder: Path, seed: int = 0, bundle: str | None = None) -> dict:
    """`kills` runs, each killed 1.5-4 s after its first stored result; the figures per kill and overall."""
    rng = random.Random(seed)
    clip, db = group_clip(folder / "long.avi", 320), folder / "results.db"
    command = [sys.executable, "-m", "ferlite", "run", "--source", str(clip), "--log", str(db), "--max-fps", "10",
               "--no-status", *(["--bundle", bundle] if bundle else [])]
    per_kill = []
    for run_id in range(1, kills + 1):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while (not db.exists() or _newest(db, run_id) is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(1.5, 4.0))
        killed = time.time()
        proc.kill()
        proc.wait()
        newest = _newest(db, run_id)
        per_kill.append({"run": run_id, "integrity": _integrity(db),
                         "lost_s": round(killed - newest, 3) if newest else None})
    losses = [k["lost_s"] for k in per_kill if k["lost_s"] is not None]
    return {"kills": kills, "corrupt": sum(k["integrity"] != "ok" for k in per_kill),
            "without_results": kills - len(losses), "max_lost_s": max(losses, default=None),
            "median_lost_s": sorted(losses)[len(losses) // 2] if losses else None, "per_kill": per_kill}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--out", type=Path, help="Folder for the clip and the database (default: a temporary one).")
    parser.add_argument("--bundle", help="Bundle to run (default: the shipped CNN).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(json.dumps(kill_runs(args.kills, folder, bundle=args.bundle), indent=2))


if __name__ == "__main__":
    main()
