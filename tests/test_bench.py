"""`ferlite bench --json`: the fields are there and the figures positive (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import run_cli

from ferlite.device.bench import STAGES, Looped
from ferlite.device.sources import Frame
from ferlite.runtime import RUNTIMES

CLIP = Path(__file__).parent / "fixtures" / "clip.avi"
# Runs the command in one fresh interpreter, then checks that it never imported TensorFlow.
NO_TF = ("import sys; from ferlite.cli import app; app(sys.argv[1:], standalone_mode=False); "
         "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad")


def bench_json(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", NO_TF, "bench", *map(str, args), "--json"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_pipeline_report_has_every_stage_and_positive_figures(tiny_bundle):
    report = bench_json("--bundle", tiny_bundle, "--source", CLIP, "--frames", 12, "--warmup", 3, "--threads", 1)
    assert report["mode"] == "pipeline" and report["detector"] == "yunet" and report["threads"] == 1
    assert report["runtime"] in {name for name, _ in RUNTIMES}
    assert report["frames"] == 12 and report["warmup_frames"] == 3 and report["skipped"] == 0
    for key in ("faces", "seconds", "fps", "faces_per_s", "peak_rss_mib", "first_prediction_s"):
        assert positive(report[key]), key
    assert set(report["stages_ms"]) == set(STAGES)
    for stage, row in report["stages_ms"].items():
        assert row["calls"] == 12, stage
        assert positive(row["median"]) and row["p95"] >= row["median"], stage
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]


def test_model_only_report_times_the_bundle_on_real_faces(tiny_bundle):
    report = bench_json("--bundle", tiny_bundle, "--source", CLIP, "--model-only", "--frames", 20, "--warmup", 2)
    assert report["mode"] == "model-only" and "float" not in report
    assert positive(report["faces"]) and report["runs"] == 20
    assert positive(report["int8"]["model_bytes"])
    for call in ("invoke_ms", "predict_ms"):
        row = report["int8"][call]
        assert row["calls"] == 20 and positive(row["median"]) and row["p95"] >= row["median"]


def test_bad_options_are_one_line_errors(tiny_bundle, tmp_path):
    for args in (["--frames", "0"], ["--keras", tmp_path / "m.keras"], ["--source", tmp_path / "none.avi"]):
        result = run_cli("bench", "--bundle", tiny_bundle, *args)
        assert result.returncode == 2, args
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr


class ThreeFrames:
    name, stills = "three", False

    def __init__(self) -> None:
        self.n = 0
        self.closed = False

    def read(self) -> Frame | None:
        self.n += 1
        return Frame(np.zeros((4, 4, 3), np.uint8), self.n - 1, 0.0) if self.n <= 3 else None

    def close(self) -> None:
        self.closed = True


def test_looped_source_numbers_frames_on_across_passes():
    opened = [ThreeFrames()]

    def reopen() -> ThreeFrames:
        opened.append(ThreeFrames())
        return opened[-1]

    source = Looped(opened[0], reopen)
    assert [source.read().number for _ in range(7)] == list(range(7))
    assert len(opened) == 3 and opened[0].closed and opened[1].closed


def test_looped_source_ends_when_a_pass_gives_nothing():
    empty = ThreeFrames()
    empty.n = 3
    assert Looped(empty, ThreeFrames).read() is None
