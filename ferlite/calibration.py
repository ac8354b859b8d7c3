"""Probability calibration: one temperature fitted on held faces, and the expected calibration error.

An int8 CNN trained with label smoothing and distillation is under- or over-confident by a roughly
constant factor in log space; dividing its log-probabilities by one temperature fixes most of that
without changing any prediction. numpy only, so `ferlite eval` reports it on the device too.
"""

from __future__ import annotations

import numpy as np

EPS = 1.0 / 512  # half the int8 output step: a probability quantized to 0 is "below one step", not impossible


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) for each row; T = 1 leaves the probabilities as they are."""
    if temperature == 1.0 or len(probs) == 0:
        return probs
    logits = np.log(np.maximum(probs, EPS)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], EPS)).mean())


def fit_temperature(labels: np.ndarray, probs: np.ndarray, low: float = 0.2, high: float = 10.0) -> float:
    """The temperature minimizing NLL on held faces (golden-section search over log T; NLL is convex in 1/T)."""
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    f_c, f_d = (nll(labels, apply_temperature(probs, float(np.exp(x)))) for x in (c, d))
    for _ in range(60):
        if f_c < f_d:
            b, d, f_d = d, c, f_c
            c = b - ratio * (b - a)
            f_c = nll(labels, apply_temperature(probs, float(np.exp(c))))
        else:
            a, c, f_c = c, d, f_d
            d = a + ratio * (b - a)
            f_d = nll(labels, apply_temperature(probs, float(np.exp(d))))
    return round(float(np.exp((a + b) / 2)), 4)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between top-1 confidence and accuracy, averaged over equal-width confidence bins
    weighted by their share of faces (0: a confidence of 0.7 is right 70 % of the time)."""
    if len(labels) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def calibration_figures(labels: np.ndarray, probs: np.ndarray) -> dict:
    """The fitted temperature and the ECE before and after it, on held faces: what a manifest records."""
    temperature = fit_temperature(labels, probs)
    return {"temperature": temperature, "faces": int(len(labels)),
            "ece_before": round(expected_calibration_error(labels, probs), 4),
            "ece_after": round(expected_calibration_error(labels, apply_temperature(probs, temperature)), 4)}
