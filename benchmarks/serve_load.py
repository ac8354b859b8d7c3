"""Does `ferlite serve` slow the writer? `ferlite run` processes a long clip at full speed into a log,
alone and then while `ferlite serve` answers bursts of 200 concurrent requests, rounds interleaved.

    python benchmarks/serve_load.py [--rounds 3] [--frames 1500] [--every 1] [--out DIR]     # prints JSON
    python benchmarks/serve_load.py --big 1000000      # each view's first answer on a log of a million faces

The writer is pinned to CPU 0 with one thread, the dashboard and the load to CPU 1 (a Pi has four
cores; the camera loop uses one), so what is measured is what the reads do to the writer through
the database, not two programs sharing a core. The dashboard runs at Nice=10, as its unit runs it;
its peak resident memory is VmHWM at the end. frames/s is the run's own: frames over the time
between its start and stop in the log; CPU ms per frame is the writer's user and system time (from
wait4, start-up included) over its frames, which other programs taking turns on its core do not
change. Each burst mixes the routes a browser calls (mostly /api/now, which every open page polls
each second); `errors` counts every answer that is not a 200, `error_kinds` says what they were.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime
from pathlib import Path

from clips import GROUP, group_clip

ROUTES = ["/api/now"] * 5 + ["/api/runs", "/api/timeline", "/api/tracks?run=1", "/", "/static/app.js"]
BURST = 200


def pinned(cpu: int, nice: int = 0):
    """A child's pre-exec: run on `cpu` only, at `nice` (the dashboard's unit says Nice=10)."""
    return lambda: (os.sched_setaffinity(0, {cpu}), os.nice(nice))


def start_writer(clip: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ferlite", "run", "--source", str(clip), "--log", str(log),
                             "--no-status", "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=pinned(0))


def running(pid: int) -> bool:
    """Whether the process still runs, without reaping it: its resource usage is read once it has ended."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def finish(writer: subprocess.Popen) -> float:
    """Wait for the writer to end; the CPU seconds it used (user and system, from wait4)."""
    _, status, usage = os.wait4(writer.pid, 0)
    writer.returncode = os.waitstatus_to_exitcode(status)
    if writer.returncode != 0:
        raise SystemExit(f"the writer failed: {writer.stderr.read()[-500:]}")
    return usage.ru_utime + usage.ru_stime


def writer_figures(log: Path, run: int, cpu_s: float) -> tuple[float, float]:
    """The run's frames/s (frames over the time from its start to its stop) and its CPU milliseconds per frame."""
    with closing(sqlite3.connect(log)) as db:
        frames, start, stop = db.execute("SELECT frames, started_utc, stopped_utc FROM runs WHERE id = ?",
                                         (run,)).fetchone()
    seconds = (datetime.fromisoformat(stop.replace("Z", "+00:00")) -
               datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    return round(frames / seconds, 1), round(1000 * cpu_s / frames, 2)


def get(port: int, path: str) -> tuple[int, float, bytes]:
    start = time.perf_counter()
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=60)) as conn:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    return response.status, time.perf_counter() - start, body


def load_while(writer: subprocess.Popen, port: int, every: float) -> dict:
    """A burst of BURST concurrent requests every `every` seconds (0: back to back) until the writer exits."""
    statuses, latencies, bursts, errors = [], [], 0, Counter()
    with ThreadPoolExecutor(BURST) as pool:
        while running(writer.pid):
            start = time.monotonic()
            for status, seconds, body in pool.map(lambda i: get(port, ROUTES[i % len(ROUTES)]), range(BURST)):
                statuses.append(status)
                latencies.append(seconds)
                if status != 200:
                    errors[f"{status} {body[:120].decode(errors='replace')}"] += 1
            bursts += 1
            time.sleep(max(0.0, every - (time.monotonic() - start)))
    latencies.sort()
    return {"bursts": bursts, "requests": len(statuses), "errors": sum(s != 200 for s in statuses),
            "error_kinds": dict(errors),
            "latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
            "latency_p95_ms": round(1000 * latencies[int(len(latencies) * 0.95)], 1) if latencies else None}


def big_log(path: Path, rows: int) -> None:
    """A log of `rows` faces through the real writer (SqliteLog): six faces a frame, ten frames a second of
    timestamps from now on (hours ahead of the clock: written in seconds, they must follow the run's start)."""
    from ferlite.device.log import Result, RunInfo, SqliteLog

    labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    log = SqliteLog(path, RunInfo("0" * 64, labels, "synthetic", "none", {}))
    frames = rows // 6
    start = time.time()
    for n in range(frames):
        faces = [Result(track, (60 * track, 40, 48, 48), labels[(n // 50 + track) % 7], 0.7,
                        {label: 0.7 if i == (n // 50 + track) % 7 else 0.05 for i, label in enumerate(labels)})
                 for track in range(n // 3000 * 6 + 1, n // 3000 * 6 + 7)]  # new tracks every 5 minutes
        log.write(n, start + n / 10, faces)
    log.close()


def first_answers(log: Path) -> dict:
    """Seconds to each view's first (uncached) answer."""
    serve = subprocess.Popen([sys.executable, "-m", "ferlite", "serve", str(log), "--port", "0"],
                             stderr=subprocess.PIPE, text=True)
    port = int(re.search(r"listening on \S+:(\d+)", serve.stderr.readline())[1])
    try:
        answers = {}
        for route in ("/api/runs", "/api/timeline", "/api/tracks?run=1", "/api/now"):
            status, seconds, _ = get(port, route)
            assert status == 200, route
            answers[route] = round(seconds, 2)
        return answers
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1500, help="Frames in the writer's clip.")
    parser.add_argument("--every", type=float, default=1.0,
                        help="Seconds from one burst's start to the next (1: 200 open pages polling; 0: no pause).")
    parser.add_argument("--big", type=int, metavar="ROWS", help="Instead: time each view on a log of ROWS faces.")
    parser.add_argument("--out", type=Path, help="Working folder (default: a temporary one).")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="serve-load-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.big:
        start = time.monotonic()
        big_log(out / "big.db", args.big)
        written = time.monotonic() - start
        print(json.dumps({"rows": args.big, "bytes": (out / "big.db").stat().st_size, "write_s": round(written, 1),
                          "first_answer_s": first_answers(out / "big.db")}, indent=1))
        return
    clip = group_clip(out / "long.avi", args.frames)
    log = out / "results.db"
    # A first run creates the log serve needs, and warms the caches for both sides.
    subprocess.run([sys.executable, "-m", "ferlite", "run", "--source", str(GROUP), "--log", str(log),
                    "--no-status"], check=True, capture_output=True)
    serve = subprocess.Popen([sys.executable, "-m", "ferlite", "serve", str(log), "--port", "0"],
                             stderr=subprocess.PIPE, text=True, preexec_fn=pinned(1, nice=10))
    os.sched_setaffinity(0, {1})  # the load's own threads too
    line = serve.stderr.readline()
    port = int(re.search(r"listening on \S+:(\d+)", line)[1])
    run, figures, loads = 1, {False: [], True: []}, []
    try:
        for _ in range(args.rounds):
            for with_load in (False, True):
                run += 1
                writer = start_writer(clip, log)
                if with_load:
                    loads.append(load_while(writer, port, args.every))
                figures[with_load].append(writer_figures(log, run, finish(writer)))
        status = Path(f"/proc/{serve.pid}/status").read_text()
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=10)
    (fps_alone, cpu_alone), (fps_loaded, cpu_loaded) = (list(zip(*figures[k])) for k in (False, True))
    drop = 100 * (1 - statistics.median(fps_loaded) / statistics.median(fps_alone))
    more_cpu = 100 * (statistics.median(cpu_loaded) / statistics.median(cpu_alone) - 1)
    print(json.dumps({"frames_per_run": args.frames, "burst": BURST, "every_s": args.every,
                      "writer_fps_alone": fps_alone, "writer_fps_under_load": fps_loaded,
                      "median_fps_drop_percent": round(drop, 1), "writer_cpu_ms_per_frame_alone": cpu_alone,
                      "writer_cpu_ms_per_frame_under_load": cpu_loaded,
                      "median_cpu_per_frame_change_percent": round(more_cpu, 1),
                      "load": loads, "requests": sum(x["requests"] for x in loads),
                      "errors": sum(x["errors"] for x in loads), "serve_peak_rss_mib": round(peak, 1)}, indent=1))


if __name__ == "__main__":
    main()
