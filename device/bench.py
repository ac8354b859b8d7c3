"""`ferlite bench`: per-stage latency, frames/s, faces/s, peak RSS and start-up time of the device pipeline.

The stages timed are the very objects `ferlite run` builds (`ferlite.device.run.build`): each one's
working method is wrapped with a clock, and the pipeline's own loop drives them, so the figures are
those of a real run rather than of a re-creation. The model-only mode times the bundle alone on
real faces found in the source, and the float model too when a `.keras` file is given (the only
case that imports TensorFlow).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ferlite.config import RunConfig
from ferlite.device.pipeline import Stats
from ferlite.device.sources import BadFrameError, Frame, FrameSource, open_source
from ferlite.errors import ConfigError, SourceError
from ferlite.inputs import KINDS
from ferlite.runtime import Predictor

STAGES = ("capture", "detect", "preprocess", "inference", "track", "log", "frame")
MAX_FACES = 64


def default_source() -> Path:
    """The committed test clip of a source checkout (a real face, 36 frames)."""
    clip = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "clip.avi"
    if not clip.is_file():
        raise SourceError("no default clip (tests/fixtures/clip.avi is in a source checkout): give --source VIDEO|DIR")
    return clip


def process_age() -> float | None:
    """Seconds since this process was started (Linux /proc); None where that cannot be read."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def summary(samples: list[float]) -> dict | None:
    """Median and 95th percentile in milliseconds, and the number of samples; None when there are none."""
    if not samples:
        return None
    ms = np.asarray(samples) * 1000.0
    return {"median": round(float(np.median(ms)), 4), "p95": round(float(np.percentile(ms, 95)), 4),
            "calls": len(samples)}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    """What the figures were taken on: CPU model, cores usable by this process, library versions."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "opencv": _version("opencv-python-headless") or _version("opencv-python")}


class Looped:
    """A video or folder read again from its start when it ends, so a short clip gives any number of frames.

    Frames are numbered on across passes; a pass that gives no frame at all ends the stream.
    """

    def __init__(self, source: FrameSource, reopen: Callable[[], FrameSource]) -> None:
        self.name, self.stills = source.name, source.stills
        self._source, self._reopen = source, reopen
        self._n = self._this_pass = 0

    def read(self) -> Frame | None:
        frame = self._source.read()
        if frame is None and self._this_pass:
            self._source.close()
            self._source, self._this_pass = self._reopen(), 0
            frame = self._source.read()
        if frame is None:
            return None
        self._this_pass += 1
        self._n += 1
        return replace(frame, number=self._n - 1)

    def close(self) -> None:
        self._source.close()


class Recorder:
    """The pipeline's hooks: after the warm-up frames, each frame's latency and the per-stage times the
    pipeline records in its stats; and the time from process start to the first frame with a face."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.first_prediction: float | None = None
        self.start = self.end = 0.0
        self.detections_at_start = 0
        self._last_frame = 0.0

    def begin(self, stats: Stats) -> None:
        """Start measuring now: what the warm-up frames recorded (first calls, caches) is dropped."""
        for samples in self.samples.values():
            samples.clear()
        self.start = self._last_frame = time.perf_counter()
        self.detections_at_start = stats.detections

    def ready(self, stats: Stats) -> None:
        """The first frame is done; nothing to do (the warm-up count starts the clock)."""

    def frame(self, stats: Stats) -> None:
        """Called after each processed frame: the time since the previous one is that frame's latency."""
        now = time.perf_counter()
        if stats.faces and self.first_prediction is None:
            self.first_prediction = process_age()
        if stats.frames == self.warmup:
            self.begin(stats)
            return
        if stats.frames > self.warmup:
            for stage, seconds in stats.stage_s.items():
                self.samples[stage].append(seconds)
            self.samples["frame"].append(now - self._last_frame)
            self._last_frame = self.end = now

    def stopping(self, stats: Stats) -> None:
        """The loop has ended; the figures are read from the recorder afterwards."""


def bench_pipeline(cfg: RunConfig, frames: int, warmup: int) -> dict:
    """Run the device pipeline on cfg.source for warmup + frames frames; the figures as a dict."""
    from ferlite.device.run import build

    if frames < 1 or warmup < 0:
        raise ConfigError("--frames must be >= 1 and --warmup >= 0")
    recorder = Recorder(warmup)
    with tempfile.TemporaryDirectory(prefix="ferlite-bench-") as tmp:
        cfg = replace(cfg, log=str(Path(tmp) / "bench.db"), max_frames=warmup + frames, max_fps=0.0, status=False,
                      preview=False, save_faces=None)
        pipeline = build(cfg, recorder)
        size = (cfg.width, cfg.height) if cfg.width and cfg.height else None
        pipeline.source = Looped(pipeline.source, lambda: open_source(str(cfg.source), size))
        if warmup == 0:
            recorder.begin(pipeline.stats)
        stats = pipeline.run()
    measured = stats.frames - warmup
    if measured < 1:
        raise SourceError(f"{cfg.source}: only {stats.frames} usable frames, fewer than the {warmup} warm-up frames")
    wall = recorder.end - recorder.start
    faces = stats.detections - recorder.detections_at_start
    predictor = pipeline.predictor
    return {
        "mode": "pipeline", "bundle": str(predictor.bundle.path), "bundle_sha256": predictor.bundle.sha256,
        "kind": predictor.bundle.manifest.kind, "runtime": predictor.runtime,
        "runtime_version": _version(predictor.runtime), "threads": cfg.threads, "source": str(cfg.source),
        "detector": pipeline.detector.name, "detect_every": cfg.detect_every, "warmup_frames": warmup,
        "frames": measured, "faces": faces,
        "skipped": stats.skipped, "seconds": round(wall, 4), "fps": round(measured / wall, 2),
        "faces_per_s": round(faces / wall, 2), "stages_ms": {s: summary(v) for s, v in recorder.samples.items()},
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "first_prediction_s": None if recorder.first_prediction is None else round(recorder.first_prediction, 3),
        "machine": machine(),
    }


def real_faces(cfg: RunConfig, predictor: Predictor) -> np.ndarray:
    """Model inputs for up to MAX_FACES faces detected in the source, as the pipeline would prepare them."""
    from ferlite.device.faces import face_step

    step = face_step(cfg, predictor)
    source = open_source(str(cfg.source))
    found = []
    try:
        while sum(map(len, found)) < MAX_FACES:
            try:
                frame = source.read()
            except BadFrameError:
                continue
            if frame is None:
                break
            if faces := step.find(frame.image):
                found.append(step.inputs(frame.image, faces))
    finally:
        source.close()
    if not found:
        raise SourceError(f"{cfg.source}: no face found by the {step.detector.name} detector; give --source with faces")
    return np.concatenate(found)[:MAX_FACES]


def _time_calls(call: Callable[[int], object], runs: int, warmup: int) -> list[float]:
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(runs):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return samples


def _invoke_samples(interpreter, inputs: np.ndarray, runs: int, warmup: int) -> list[float]:
    """interpreter.invoke() alone on one face at a time, the input set outside the clock."""
    index = interpreter.get_input_details()[0]["index"]
    samples = []
    for i in range(-warmup, runs):
        interpreter.set_tensor(index, inputs[i % len(inputs)][None])
        started = time.perf_counter()
        interpreter.invoke()
        if i >= 0:
            samples.append(time.perf_counter() - started)
    return samples


def predictor_inputs(predictor: Predictor, faces: np.ndarray) -> np.ndarray:
    """The interpreter's input tensors for `faces` (N, S, S), quantized as Predictor.predict does."""
    from ferlite.preprocess import quantize

    x = KINDS[predictor.bundle.manifest.kind].tensor(faces)
    return quantize(x, predictor.input.dtype, predictor.input.scale, predictor.input.zero_point)


def bench_model(cfg: RunConfig, runs: int, warmup: int, float_model: tuple[str, bytes] | None = None) -> dict:
    """Inference latency of the bundle alone, one real face per call (no flip averaging): the interpreter's
    invoke() and the whole Predictor.predict (quantize, invoke, dequantize); with `float_model` (its name
    and a float TFLite model, which the caller converts: the device never imports TensorFlow), that too."""
    from ferlite.bundle import read_bundle
    from ferlite.device.run import bundle_path
    from ferlite.runtime import load_interpreter

    if runs < 1 or warmup < 0:
        raise ConfigError("--frames must be >= 1 and --warmup >= 0")
    bundle = read_bundle(bundle_path(cfg))
    if bundle.manifest.kind != "cnn" and float_model is not None:
        raise ConfigError("--keras compares float and int8 CNNs: the bundle is not a cnn bundle")
    predictor = Predictor(bundle, cfg.threads, tta_flip=False)
    faces = real_faces(cfg, predictor)
    int8 = {"model_bytes": len(bundle.model),
            "invoke_ms": summary(_invoke_samples(predictor.interpreter, predictor_inputs(predictor, faces), runs,
                                                 warmup)),
            "predict_ms": summary(_time_calls(lambda i: predictor.predict(faces[i % len(faces)][None]), runs,
                                              warmup))}
    report = {"mode": "model-only", "bundle": str(bundle.path), "bundle_sha256": bundle.sha256,
              "kind": bundle.manifest.kind, "runtime": predictor.runtime,
              "runtime_version": _version(predictor.runtime), "threads": cfg.threads, "source": str(cfg.source),
              "faces": len(faces), "runs": runs, "int8": int8}
    if float_model is not None:
        name, model = float_model
        interpreter, _ = load_interpreter(model, cfg.threads)
        x = faces.astype(np.float32)[..., None]
        report["float"] = {"model": name, "model_bytes": len(model),
                           "invoke_ms": summary(_invoke_samples(interpreter, x, runs, warmup))}
    report["peak_rss_mib"] = round(peak_rss_mib(), 1)
    report["machine"] = machine()
    return report


def print_bench(report: dict, as_json: bool) -> None:
    """The report as JSON, or as a table of stages and a few lines of totals."""
    if as_json:
        from ferlite.console import emit_json

        emit_json(report)
        return
    from ferlite.console import console, table

    con = console()
    threads = report["threads"] or "default"
    con.print(f"[bold]{report['bundle']}[/] ({report['kind']}) · {report['runtime']} {report['runtime_version']} · "
              f"threads {threads} · {report['source']}")
    if report["mode"] == "model-only":
        rows = table("model", "call", "median ms", "p95 ms", "calls")
        for name in ("int8", "float"):
            for call in ("invoke_ms", "predict_ms"):
                row = report.get(name, {}).get(call)
                if row:
                    rows.add_row(name, call[:-3], f"{row['median']:.3f}", f"{row['p95']:.3f}", str(row["calls"]))
        con.print(rows)
        con.print(f"{report['faces']} real faces, batch 1 · peak RSS {report['peak_rss_mib']:.0f} MiB")
        return
    rows = table("stage", "median ms", "p95 ms", "calls")
    for stage, row in report["stages_ms"].items():
        if row:
            rows.add_row(stage, f"{row['median']:.3f}", f"{row['p95']:.3f}", str(row["calls"]))
    con.print(rows)
    first = report["first_prediction_s"]
    con.print(f"{report['fps']:.1f} frames/s · {report['faces_per_s']:.1f} faces/s over {report['frames']} frames "
              f"(after {report['warmup_frames']} warm-up; {report['detector']} every {report['detect_every']} "
              f"frame(s)) · peak RSS "
              f"{report['peak_rss_mib']:.0f} MiB · first prediction "
              f"{'n/a' if first is None else f'{first:.2f} s'} after process start")
