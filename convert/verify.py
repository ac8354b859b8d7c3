"""Float against int8 on the same faces: accuracy, agreement, per-class accuracy, and the gate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gate:
    """int8 may lose at most `max_drop` accuracy points and must agree with float on `min_agreement`."""

    max_drop: float = 1.0
    min_agreement: float = 0.97


def _summary(y: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> dict:
    from ferlite.metrics import compute_metrics

    m = compute_metrics(y, probs, names)
    return {"accuracy": round(m.accuracy, 5), "macro_f1": round(m.macro_f1, 5), "top2": round(m.top2, 5)}


def compare(y: np.ndarray, float_probs: np.ndarray, int8_probs: np.ndarray, names: tuple[str, ...]) -> dict:
    """The figures recorded in the manifest for one mode (plain or flip-TTA)."""
    f_pred, q_pred = float_probs.argmax(1), int8_probs.argmax(1)
    per_class = {}
    for code, name in enumerate(names):
        rows = y == code
        if rows.any():
            per_class[name] = {"float": round(float((f_pred[rows] == code).mean()), 5),
                               "int8": round(float((q_pred[rows] == code).mean()), 5), "support": int(rows.sum())}
    return {
        "float": _summary(y, float_probs, names),
        "int8": _summary(y, int8_probs, names),
        "agreement": round(float((f_pred == q_pred).mean()), 5),
        "per_class": per_class,
    }


def gate_failure(figures: dict, gate: Gate) -> str | None:
    """Why the int8 model falls outside the gate, or None when it passes."""
    drop = 100 * (figures["float"]["accuracy"] - figures["int8"]["accuracy"])
    if drop > gate.max_drop:
        return f"int8 accuracy drops {drop:.2f} pp (> {gate.max_drop} pp)"
    if figures["agreement"] < gate.min_agreement:
        return f"int8/float top-1 agreement {figures['agreement']:.2%} < {gate.min_agreement:.0%}"
    return None
