"""Classification metrics from labels and probabilities (numpy only, so the device can evaluate)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Metrics:
    """What `ferlite eval` and the training report print; `confusion[i][j]` counts true i predicted j."""

    samples: int
    accuracy: float
    top2: float
    macro_f1: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]
    ece: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> Metrics:
    """Accuracy, top-2, macro-F1, per-class P/R/F1, the confusion matrix and the calibration error (ECE)."""
    from ferlite.calibration import expected_calibration_error

    k = len(names)
    pred = probs.argmax(axis=1)
    cm = np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros(k), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros(k), where=cm.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    top2 = np.argsort(-probs, axis=1)[:, :2]
    present = cm.sum(axis=1) > 0
    return Metrics(
        samples=int(len(y_true)),
        accuracy=float((pred == y_true).mean()),
        top2=float((top2 == y_true[:, None]).any(axis=1).mean()),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class=[ClassMetrics(n, float(p), float(r), float(f), int(s))
                   for n, p, r, f, s in zip(names, precision, recall, f1, cm.sum(axis=1))],
        confusion=cm.tolist(),
        ece=expected_calibration_error(y_true, probs),
    )


def metrics_table(m: Metrics) -> str:
    """Markdown table of per-class precision/recall/F1, with the summary figures above it."""
    lines = [
        f"accuracy {m.accuracy:.2%} · top-2 {m.top2:.2%} · macro-F1 {m.macro_f1:.3f} · ECE {m.ece:.3f} · "
        f"{m.samples} samples",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {c.name} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |" for c in m.per_class]
    return "\n".join(lines)
