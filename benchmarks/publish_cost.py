"""What publishing costs the device: `ferlite run --threads 1` pinned to one core, with and without
`--mqtt` to a local Mosquitto broker, over the same clip, interleaved rounds, medians.

    .venv/bin/python benchmarks/publish_cost.py [--rounds 3] [--passes 20] [--json]

The clip is the committed group clip (six people) played forth and back `--passes` times. Frames/s
is the run's frames over its time in the log (first frame to stop); CPU is the whole process's user
and system time (`wait4`), the steadier figure on a busy machine. Each round runs both, in turn
first; the broker (Debian's mosquitto) runs on another core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

from clips import group_clip


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = "user root\n" if os.geteuid() == 0 else ""
    (folder / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{user}")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(folder / "m.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=lambda: os.sched_setaffinity(0, {1}))
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return broker, port
        time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def one_run(clip: Path, log: Path, mqtt: str | None) -> dict:
    """Frames/s of one pinned `ferlite run`, and with --mqtt what its publisher sent (the log's cursor)."""
    log.unlink(missing_ok=True)
    extra = ["--mqtt", mqtt, "--device-id", "bench"] if mqtt else []
    proc = subprocess.Popen([sys.executable, "-m", "ferlite", "run", "--source", str(clip), "--threads", "1",
                             "--no-status", "--log", str(log), *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"ferlite run failed (exit {os.waitstatus_to_exitcode(status)})")
    with closing(sqlite3.connect(log)) as db:
        frames, first, stopped = db.execute("SELECT frames, (SELECT MIN(time_utc) FROM detections), stopped_utc "
                                            "FROM runs").fetchone()
        events = db.execute("SELECT COUNT(*) FROM track_events").fetchone()[0]
        cursor = dict(db.execute("SELECT stream, last_id FROM publish_cursor").fetchall())
    seconds = (datetime.fromisoformat(stopped) - datetime.fromisoformat(first)).total_seconds()
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "events": events,
            "events_acknowledged": cursor.get("events", 0) if mqtt else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferlite-publish-cost-") as tmp:
        folder = Path(tmp)
        clip = group_clip(folder / "clip.avi", 16 * args.passes, fps=12.0)
        broker, port = start_broker(folder)
        try:
            rounds = []
            for i in range(args.rounds):
                runs = {"without": None, "with": f"mqtt://127.0.0.1:{port}"}
                order = list(runs) if i % 2 == 0 else list(runs)[::-1]
                figures = {name: one_run(clip, folder / f"{name}.db", runs[name]) for name in order}
                rounds.append((figures["without"], figures["with"]))
        finally:
            broker.terminate()
            broker.wait(10)
    plain = statistics.median(r[0]["fps"] for r in rounds)
    mqtt = statistics.median(r[1]["fps"] for r in rounds)
    cpu = [round(statistics.median(r[k]["cpu_s"] for r in rounds), 3) for k in (0, 1)]
    frames = rounds[0][0]["frames"]
    report = {"clip_frames": frames, "faces_per_frame": 6, "rounds": args.rounds, "fps_without_mqtt": plain,
              "fps_with_mqtt": mqtt, "cpu_s_without_mqtt": cpu[0], "cpu_s_with_mqtt": cpu[1],
              "cpu_ms_per_frame_publishing": round(1000 * (cpu[1] - cpu[0]) / frames, 3),
              "runs": [{"without": a, "with": b} for a, b in rounds]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{frames} frames, 6 faces each, one core, medians of {args.rounds} rounds: {plain} frames/s without "
          f"--mqtt, {mqtt} with; CPU {cpu[0]} s without, {cpu[1]} s with "
          f"({report['cpu_ms_per_frame_publishing']} ms a frame for publishing)")


if __name__ == "__main__":
    main()
