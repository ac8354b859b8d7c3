"""Shared fixtures: a tiny CNN trained once per session on committed real FER2013 faces, and its bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
# The benchmarks' helpers (long clips from the fixtures, the kill loop) are the tests' too: one copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
TRAIN = FIXTURES / "fer_mini_train.npz"
VAL = FIXTURES / "fer_mini_val.npz"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `ferlite ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "ferlite", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """Run folder of `ferlite train cnn` on the committed subset (happy / surprise / neutral)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = run_cli("train", "cnn", "--data", TRAIN, "--val", VAL, "-o", out, "--width", "0.5",
                     "--epochs", "25", "--batch-size", "16", "--learning-rate", "3e-3")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def tiny_bundle(trained_run: Path, tmp_path_factory) -> Path:
    """The tiny CNN converted to an int8 bundle, calibrated on training faces, verified on validation faces."""
    out = tmp_path_factory.mktemp("bundle") / "tiny.ferlite"
    result = run_cli("convert", trained_run / "model.keras", "--calibration", TRAIN, "--eval", VAL,
                     "--calibration-size", "150", "--min-agreement", "0.9", "--max-drop", "5", "-o", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture
def small_disk(tmp_path):
    """A real 160 KB file system (tmpfs), where a results log soon fills the disk."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()[:100]}")
    yield where
    subprocess.run(["umount", str(where)], check=False)
