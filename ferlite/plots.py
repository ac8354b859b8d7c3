"""PNG figures (confusion matrix, training curves); matplotlib is imported only when drawing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferlite.errors import RuntimeMissingError


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display on a Pi), or a one-line error without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeMissingError("plots need matplotlib: pip install 'ferlite[device]' or matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(confusion: list[list[int]], names: tuple[str, ...], path: str | Path, title: str = "") -> Path:
    """Row-normalized confusion matrix (recall on the diagonal) with counts in each cell."""
    plt = pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(names), 0.6 + 0.8 * len(names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (row-normalized)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def curves_png(history: dict[str, list[float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train against validation."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        epochs = range(1, len(history.get(key, [])) + 1)
        ax.plot(epochs, history.get(key, []), label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def emotions_png(minutes: list[str], series: dict[str, list[int]], path: str | Path, title: str = "") -> Path:
    """Faces per label per minute as stacked bars, beside each label's share of all faces."""
    plt = pyplot()
    names = list(series)
    counts = np.array([series[n] for n in names], dtype=np.float64).reshape(len(names), len(minutes))
    fig, (timeline, share) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(minutes))
    bottom = np.zeros(len(minutes))
    for name, row in zip(names, counts):
        timeline.bar(x, row, bottom=bottom, width=1.0, label=name)
        bottom += row
    ticks = x[:: max(1, len(x) // 8)]
    timeline.set_xticks(ticks, [minutes[i][5:16].replace("T", " ") for i in ticks], rotation=30, ha="right")
    timeline.set_ylabel("faces per minute")
    timeline.set_title(title or "emotions over time (UTC)")
    timeline.legend(loc="upper left", fontsize=8)
    totals = counts.sum(axis=1)
    share.barh(names, totals / max(totals.sum(), 1))
    share.set_xlabel("share of faces")
    share.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
