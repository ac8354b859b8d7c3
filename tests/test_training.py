"""`ferlite train cnn` learns on real faces and writes its reports."""

from __future__ import annotations

import json

import numpy as np


def test_train_cnn_learns_and_reports(trained_run):
    report = json.loads((trained_run / "report.json").read_text())
    accuracy = report["metrics"]["accuracy"]
    # Three balanced classes: the majority-class rate is 1/3.
    assert accuracy > 0.5, accuracy
    assert report["epochs_run"] == 25
    assert report["command"].startswith("ferlite train cnn")
    support = {c["name"]: c["support"] for c in report["metrics"]["per_class"] if c["support"]}
    assert support == {"happy": 40, "surprise": 40, "neutral": 40}
    assert np.array(report["metrics"]["confusion"]).sum() == 120
    for name in ("model.keras", "report.md", "curves.png", "confusion.png", "history.csv"):
        assert (trained_run / name).stat().st_size > 0, name
    assert (trained_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
