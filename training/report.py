"""Training reports: report.json, report.md, curves.png and confusion.png next to the model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ferlite.metrics import compute_metrics, metrics_table
from ferlite.plots import confusion_png, curves_png


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv (Keras CSVLogger, appended across resumes) as lists per column, last write wins."""
    if not path.is_file():
        return {}
    rows: dict[int, dict[str, str]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = row
    keys = [k for k in next(iter(rows.values()), {}) if k != "epoch"]
    return {k: [float(rows[e][k]) for e in sorted(rows) if rows[e].get(k)] for k in keys}


def write_report(out: Path, y_true: np.ndarray, probs: np.ndarray, names: tuple[str, ...], *, cfg: dict,
                 command: str, session_seconds: float, params: int, extra: dict | None = None) -> dict:
    """Write the four report files and return the report dict."""
    metrics = compute_metrics(y_true, probs, names)
    history = read_history(out / "history.csv")
    report = {
        "metrics": metrics.to_dict(),
        "validation": cfg.get("val"),
        "labels": list(names),
        "params": params,
        "epochs_run": len(history.get("loss", [])),
        "train_seconds": round(sum(history.get("seconds", [])) or session_seconds, 1),
        "command": command,
        "config": cfg,
        **(extra or {}),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    epochs = f" · epochs: {report['epochs_run']}" if history else ""
    md = [
        f"# Training report: {out.name}",
        "",
        f"Command: `{command}`",
        "",
        f"Parameters: {params:,}{epochs} · training time: {report['train_seconds'] / 60:.1f} min",
        "",
        f"## Validation ({cfg.get('val')})",
        "",
        metrics_table(metrics),
        "",
        *(["![curves](curves.png)", ""] if history else []),
        "![confusion](confusion.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
    if history:
        curves_png(history, out / "curves.png")
    confusion_png(metrics.confusion, names, out / "confusion.png")
    return report
