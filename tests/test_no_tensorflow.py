"""The device path never imports TensorFlow: checked in fresh interpreters through sys.modules."""

from __future__ import annotations

import subprocess
import sys

from conftest import VAL

CHECK = "import sys; {body}; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; " \
        "assert not bad, bad; print('clean')"


def _python(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True, timeout=300)


def test_core_modules_do_not_import_tensorflow():
    body = ("import ferlite.cli, ferlite.bundle, ferlite.runtime, ferlite.preprocess, ferlite.datasets, "
            "ferlite.inputs, ferlite.evaluate, ferlite.metrics, ferlite.labels")
    result = _python(body)
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr


def test_ferlite_eval_runs_without_tensorflow(tiny_bundle):
    """`ferlite eval` end to end inside one interpreter, then sys.modules is inspected."""
    body = ("from ferlite.cli import app; "
            f"app(['eval', r'{tiny_bundle}', '--data', r'{VAL}', '--json'], standalone_mode=False)")
    result = _python(body)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"accuracy"' in result.stdout and result.stdout.strip().endswith("clean")


def test_help_lists_commands_without_tensorflow():
    result = _python("from ferlite.cli import app; app(['--help'], standalone_mode=False)")
    assert result.returncode == 0, result.stderr
    for command in ("train", "convert", "info", "eval"):
        assert command in result.stdout
