"""ferlite against the `fer` package on the same work, in one run: speed, memory, accuracy, runtimes.

Run it with the project's Python (it needs OpenCV to make the video); the other programs run in
their own virtual environments, see benchmarks/README.md:

    .venv/bin/python benchmarks/compare_fer.py [--bundle B] [--rounds 3] [--only speed,accuracy,runtimes]

speed:     the annotated multi-face clip of benchmarks/scenes.py (or --video V resized to 640x360),
           written into a temporary folder, looped through
           `ferlite bench` and through fer's `FER(mtcnn=False).detect_emotions` frame by frame,
           both pinned to one core, runs interleaved (ferlite, fer, ferlite, fer, ...). Also whole
           processes: `ferlite run` over one pass of the video against fer over the same frames
           (wall time and peak RSS from wait4), and `ferlite run --max-frames 1`.
accuracy:  both models on FER2013 PublicTest: ours through `ferlite eval`, fer's Keras model
           (emotion_model.hdf5: 64x64 input scaled to [-1, 1]) and the quantized TFLite model its
           default pipeline runs.
runtimes:  `ferlite bench --model-only` on the bundle under ai-edge-litert, tflite-runtime and
           tf.lite, with 1 thread (pinned to one core) and 2 threads, interleaved.

This file is also the fer side's worker (`--worker-fer-speed`, `--worker-fer-accuracy`), run by
the fer venv's Python; everything it imports at the top is in the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_TEST = Path("/work/shared/data/fer2013/public_test.npz")
FER_PYTHON = Path("/tmp/fervenv/bin/python")
TFLITE_PYTHON = Path("/tmp/tflitevenv/bin/python")
SIZE = (640, 360)
# Runs the ferlite CLI with ai-edge-litert hidden, so ferlite.runtime falls back to tf.lite.
HIDE_LITERT = ("import sys; sys.modules['ai_edge_litert'] = None; sys.argv[0] = 'ferlite'; "
               "from ferlite.cli import main; main()")


def process_age() -> float:
    """Seconds since this process started (Linux)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- the fer side (runs in the fer venv) ---------------------------------------------------------


def fer_speed(video: str, frames: int, warmup: int, loop: bool, keras: bool, boxes_out: str | None = None) -> dict:
    """fer's Haar + emotion pipeline on each frame of a video, looped until warmup + frames frames;
    its default TFLite model, or its Keras model (`use_tflite=False`) with `keras`; `boxes_out`:
    write the boxes found in each frame there as JSON."""
    import resource

    import cv2
    from fer.fer import FER

    detector = FER(mtcnn=False) if not keras else FER(mtcnn=False, use_tflite=False)
    cap = cv2.VideoCapture(video)
    samples, faces, done, first, boxes = [], 0, 0, None, []
    while done < warmup + frames:
        started = time.perf_counter()
        ok, frame = cap.read()
        if not ok:
            cap.release()
            if not loop or done == 0:
                break
            cap = cv2.VideoCapture(video)
            continue
        found = detector.detect_emotions(frame)
        boxes.append([[int(v) for v in face["box"]] for face in found])
        if found and first is None:
            first = process_age()
        done += 1
        if done > warmup:
            samples.append(time.perf_counter() - started)
            faces += len(found)
    cap.release()
    if boxes_out:
        Path(boxes_out).write_text(json.dumps(boxes))
    seconds = sum(samples)
    return {"frames": len(samples), "faces": faces, "seconds": seconds, "fps": len(samples) / seconds,
            "faces_per_s": faces / seconds, "frame_ms": {"median": 1000 * statistics.median(samples),
                                                         "p95": 1000 * percentile(samples, 95)},
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "first_prediction_s": first}


def fer_accuracy(data: str) -> dict:
    """Accuracy of fer's Keras model and of its quantized TFLite model on a FER2013 .npz split."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import fer
    import keras
    import numpy as np
    import tensorflow as tf

    found = np.load(data)
    faces = np.stack([cv2.resize(img, (64, 64)) for img in found["images"]]).astype(np.float32)
    x = ((faces / 255.0 - 0.5) * 2.0)[..., None]  # fer's preprocessing: [-1, 1]
    labels = found["labels"]
    model_dir = Path(fer.__file__).parent / "data"
    model = keras.models.load_model(model_dir / "emotion_model.hdf5", compile=False)
    keras_pred = model.predict(x, batch_size=256, verbose=0).argmax(axis=1)
    interpreter = tf.lite.Interpreter(model_path=str(model_dir / "emotion_model_quantized.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    tflite_pred = []
    for face in x:
        interpreter.set_tensor(inp, face[None])
        interpreter.invoke()
        tflite_pred.append(int(interpreter.get_tensor(out)[0].argmax()))
    return {"faces": len(labels), "keras_accuracy": float((keras_pred == labels).mean()),
            "tflite_accuracy": float((np.array(tflite_pred) == labels).mean())}


# --- the driver (any Python) ------------------------------------------------------------------------


def pinned(cpus: set[int] | None):
    """A preexec_fn pinning the child to `cpus` (the `taskset -c` of the standard library)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def measure(cmd: list[str], cpus: set[int] | None = None) -> tuple[str, float, float]:
    """Run cmd to its end: (stdout, wall seconds, peak RSS in MiB from wait4)."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, preexec_fn=pinned(cpus), cwd=ROOT)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()[-3000:]}")
    return out.decode(), wall, usage.ru_maxrss / 1024


def make_video(src: Path, dst: Path, size: tuple[int, int]) -> int:
    """The real clip resized to `size`, written as MJPG at the source frame rate; the frame count."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise SystemExit(f"{src}: cannot be read")
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), cap.get(cv2.CAP_PROP_FPS) or 12.0, size)
    count = 0
    while (read := cap.read())[0]:
        writer.write(cv2.resize(read[1], size, interpolation=cv2.INTER_LINEAR))
        count += 1
    cap.release()
    writer.release()
    return count


def med(rows: list[dict], *path: str) -> float:
    values = []
    for row in rows:
        for key in path:
            row = row[key]
        values.append(row)
    return statistics.median(values)


def logged_boxes(db: Path) -> dict[int, list[tuple]]:
    """The boxes a `ferlite run` logged, per frame number."""
    import sqlite3
    from contextlib import closing

    found: dict[int, list[tuple]] = {}
    with closing(sqlite3.connect(db)) as con:
        for frame, *box in con.execute("SELECT frame, x, y, w, h FROM detections"):
            found.setdefault(frame, []).append(tuple(box))
    return found


def true_faces(truth: list, found: dict[int, list[tuple]]) -> dict:
    """How many of the annotated faces a one-pass run found (IoU >= 0.5), and its false faces per frame."""
    from scenes import match

    hits = false = 0
    for number, frame in enumerate(truth):
        hit, wrong = match(frame, found.get(number, []))
        hits, false = hits + hit, false + wrong
    total = sum(len(frame.faces) for frame in truth)
    return {"true_faces": total, "found": hits, "recall": hits / max(total, 1), "false_per_frame": false / len(truth)}


def speed(args, video: Path, video_frames: int, truth: list | None) -> dict:
    """Every program once per round, in the same order each round, all pinned to CPU 0; with `truth`
    (the annotated multi-face clip), also how many true faces each one-pass run found."""
    ferlite = [str(args.ferlite_python), "-m", "ferlite"]
    bench = [*ferlite, "bench", "--bundle", str(args.bundle), "--source", str(video), "--threads", "1",
             "--frames", str(args.frames), "--warmup", str(args.warmup), "--json"]
    fer = [str(args.fer_python), __file__, "--worker-fer-speed", str(video)]
    loops = ["--frames", str(args.frames), "--warmup", str(args.warmup)]
    one_pass = ["--frames", str(video_frames), "--warmup", "0", "--no-loop"]
    run = [*ferlite, "run", "--source", str(video), "--bundle", str(args.bundle), "--threads", "1", "--no-status"]
    every = f"ferlite_detect_every_{args.detect_every}"
    rows: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="ferlite-compare-") as tmp:
        programs = {
            "ferlite": bench,
            "fer": [*fer, *loops],
            every: [*bench, "--detect-every", str(args.detect_every)],
            "fer_keras": [*fer, *loops, "--fer-keras"],
            "ferlite_run_one_pass": [*run, "--log", str(Path(tmp) / "pass.db")],
            f"{every}_run_one_pass": [*run, "--detect-every", str(args.detect_every), "--log",
                                      str(Path(tmp) / "every.db")],
            "fer_one_pass": [*fer, *one_pass, "--boxes", str(Path(tmp) / "fer_boxes.json")],
            "ferlite_run_one_frame": [*run, "--log", str(Path(tmp) / "first.db"), "--max-frames", "1"],
        }
        outputs = {  # the boxes each one-pass run found, per frame number
            "ferlite_run_one_pass": lambda: logged_boxes(Path(tmp) / "pass.db"),
            f"{every}_run_one_pass": lambda: logged_boxes(Path(tmp) / "every.db"),
            "fer_one_pass": lambda: dict(enumerate(json.loads((Path(tmp) / "fer_boxes.json").read_text()))),
        }
        for r in range(args.rounds):
            print(f"speed round {r + 1}/{args.rounds}", file=sys.stderr)
            for name, cmd in programs.items():
                for stale in Path(tmp).glob("*.db*"):
                    stale.unlink()
                out, wall, rss = measure(cmd, {0})
                rows.setdefault(name, []).append({**(json.loads(out) if out.strip() else {}), "process_s": wall,
                                                  "wait4_rss_mib": rss})
                if truth is not None and name in outputs:
                    rows[name][-1]["truth"] = true_faces(truth, outputs[name]())
    name = f"{args.video.name} resized to {SIZE[0]}x{SIZE[1]}" if args.video else "the multi-face scene clip"
    summary: dict = {"video": f"{name}, {video_frames} frames, looped",
                     "frames": args.frames, "warmup": args.warmup, "rounds": args.rounds}
    for name in ("ferlite", "fer", every, "fer_keras"):
        runs = rows[name]
        frames = [run["stages_ms"]["frame"] if "stages_ms" in run else run["frame_ms"] for run in runs]
        summary[name] = {"fps": med(runs, "fps"), "faces_per_s": med(runs, "faces_per_s"),
                         "peak_rss_mib": med(runs, "wait4_rss_mib"), "process_s": med(runs, "process_s"),
                         "first_prediction_s": med(runs, "first_prediction_s"),
                         "frame_ms": {"median": med(frames, "median"), "p95": med(frames, "p95")}}
    for ours in ("ferlite", every):
        for theirs in ("fer", "fer_keras"):
            summary[f"fps_ratio_{ours}_vs_{theirs}"] = statistics.median(
                a["fps"] / b["fps"] for a, b in zip(rows[ours], rows[theirs]))
            summary[f"rss_ratio_{theirs}_vs_{ours}"] = summary[theirs]["peak_rss_mib"] / summary[ours]["peak_rss_mib"]
    summary["ferlite_stages_ms"] = {stage: {"median": med(rows["ferlite"], "stages_ms", stage, "median"),
                                            "p95": med(rows["ferlite"], "stages_ms", stage, "p95")}
                                    for stage, row in rows["ferlite"][0]["stages_ms"].items() if row}
    for name in ("ferlite_run_one_pass", f"{every}_run_one_pass", "fer_one_pass", "ferlite_run_one_frame"):
        summary[name] = {"process_s": med(rows[name], "process_s"), "peak_rss_mib": med(rows[name], "wait4_rss_mib")}
        if "truth" in rows[name][-1]:
            summary[name]["truth"] = rows[name][-1]["truth"]
    return {"summary": summary, "rounds": rows}


def accuracy(args) -> dict:
    out, _, _ = measure([str(args.ferlite_python), "-m", "ferlite", "eval", str(args.bundle), "--data",
                         str(args.data), "--json"])
    ours = json.loads(out)
    out, _, _ = measure([str(args.fer_python), __file__, "--worker-fer-accuracy", str(args.data)])
    theirs = json.loads(out)
    return {"data": str(args.data), "faces": ours["samples"], "ferlite_accuracy": ours["accuracy"],
            "ferlite_macro_f1": ours["macro_f1"], "ferlite_tta_flip": ours["tta_flip"],
            "fer_keras_accuracy": theirs["keras_accuracy"], "fer_tflite_accuracy": theirs["tflite_accuracy"]}


def runtimes(args) -> dict:
    pythons = {"ai-edge-litert": [str(args.ferlite_python), "-m", "ferlite"],
               "tflite-runtime": [str(args.tflite_python), "-m", "ferlite"],
               "tensorflow": [str(args.ferlite_python), "-c", HIDE_LITERT]}
    rows: dict[str, list] = {f"{name} x{threads}": [] for name in pythons for threads in (1, 2)}
    for r in range(args.rounds):
        print(f"runtimes round {r + 1}/{args.rounds}", file=sys.stderr)
        for name, prefix in pythons.items():
            for threads in (1, 2):
                cmd = [*prefix, "bench", "--model-only", "--bundle", str(args.bundle), "--threads", str(threads),
                       "--frames", str(args.calls), "--warmup", "50", "--json"]
                report = json.loads(measure(cmd, {0} if threads == 1 else None)[0])
                if report["runtime"] != name:
                    raise SystemExit(f"{name}: the command ran {report['runtime']} instead")
                rows[f"{name} x{threads}"].append(report)
    return {key: {"runtime_version": reports[0]["runtime_version"],
                  "invoke_ms": med(reports, "int8", "invoke_ms", "median"),
                  "invoke_p95_ms": med(reports, "int8", "invoke_ms", "p95"),
                  "predict_ms": med(reports, "int8", "predict_ms", "median")} for key, reports in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "ferlite" / "bundles" / "emotion-cnn.ferlite")
    parser.add_argument("--video", type=Path, help="another video, resized to 640x360 (default: the annotated "
                        "multi-face clip of benchmarks/scenes.py)")
    parser.add_argument("--data", type=Path, default=PUBLIC_TEST)
    parser.add_argument("--ferlite-python", type=Path, default=Path(sys.executable))
    parser.add_argument("--fer-python", type=Path, default=FER_PYTHON)
    parser.add_argument("--tflite-python", type=Path, default=TFLITE_PYTHON)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of each measurement")
    parser.add_argument("--frames", type=int, default=300, help="frames measured per speed run")
    parser.add_argument("--warmup", type=int, default=20, help="frames run before measuring")
    parser.add_argument("--detect-every", type=int, default=1,
                        help="ferlite's second speed setting (its default is 5: near tracked faces in between)")
    parser.add_argument("--calls", type=int, default=2000, help="model-only calls per runtime run")
    parser.add_argument("--only", default="speed,accuracy,runtimes", help="comma-separated parts to run")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--worker-fer-speed", metavar="VIDEO", help=argparse.SUPPRESS)
    parser.add_argument("--worker-fer-accuracy", metavar="NPZ", help=argparse.SUPPRESS)
    parser.add_argument("--no-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fer-keras", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--boxes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_fer_speed:
        print(json.dumps(fer_speed(args.worker_fer_speed, args.frames, args.warmup, not args.no_loop, args.fer_keras,
                                   args.boxes)))
        return
    if args.worker_fer_accuracy:
        print(json.dumps(fer_accuracy(args.worker_fer_accuracy)))
        return
    parts = set(args.only.split(","))
    report: dict = {"bundle": str(args.bundle), "command": " ".join(sys.argv)}
    if "speed" in parts:
        with tempfile.TemporaryDirectory(prefix="ferlite-video-") as tmp:
            if args.video:
                video = Path(tmp) / f"{args.video.stem}_640x360.avi"
                report["speed"] = speed(args, video, make_video(args.video, video, SIZE), None)
            else:
                from scenes import make_scene_clip

                video = Path(tmp) / "scene_640x360.avi"
                truth = make_scene_clip(video)
                report["speed"] = speed(args, video, len(truth), truth)
    if "accuracy" in parts:
        report["accuracy"] = accuracy(args)
    if "runtimes" in parts:
        report["runtimes"] = runtimes(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v["summary"] if k == "speed" else v for k, v in report.items()}, indent=2))


if __name__ == "__main__":
    main()
