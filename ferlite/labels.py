"""Label sets and the mappings between them, by canonical emotion name."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ferlite.errors import DatasetError

FER7 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER6 = ("angry", "fear", "happy", "sad", "surprise", "neutral")
FERPLUS = ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt")
LABEL_SETS: dict[str, tuple[str, ...]] = {"fer7": FER7, "fer6": FER6, "ferplus": FERPLUS}

# Other spellings found in datasets (CK+48 folders, FER+ columns, JAFFE codes).
_ALIASES = {
    "anger": "angry", "an": "angry", "ang": "angry",
    "disgusted": "disgust", "di": "disgust", "dis": "disgust",
    "fearful": "fear", "afraid": "fear", "fe": "fear", "fea": "fear",
    "happiness": "happy", "joy": "happy", "ha": "happy", "hap": "happy",
    "sadness": "sad", "sa": "sad",
    "surprised": "surprise", "su": "surprise", "sur": "surprise",
    "neutrality": "neutral", "ne": "neutral", "calm": "neutral",
    "contemptuous": "contempt", "co": "contempt",
}
# Merges applied when a target set lacks a class (fer6 folds disgust into angry).
_MERGES = {"disgust": "angry"}


def canonical(name: str) -> str:
    """Canonical emotion name for `name`; raises DatasetError for a name no set knows."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FERPLUS:
        raise DatasetError(f"unknown emotion label {name!r} (known: {', '.join(FERPLUS)})")
    return key


def remap(labels: np.ndarray, source: tuple[str, ...], target: tuple[str, ...]) -> np.ndarray:
    """Map label codes of `source` names to codes of `target`; -1 where `target` has no such class."""
    table = np.full(len(source), -1, dtype=np.int64)
    for code, name in enumerate(source):
        name = canonical(name)
        if name not in target and _MERGES.get(name) in target:
            name = _MERGES[name]
        if name in target:
            table[code] = target.index(name)
    return table[labels]


def ferplus_votes(csv_path: str | Path, rows: np.ndarray) -> np.ndarray:
    """FER+ votes (N, 10) for the given 0-based rows of fer2013new.csv (column order of the file)."""
    path = Path(csv_path)
    if not path.is_file():
        raise DatasetError(f"{path}: FER+ votes file not found")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        try:
            table = np.array([[int(v) for v in row[2:12]] for row in reader], dtype=np.int64)
        except (ValueError, IndexError) as exc:
            raise DatasetError(f"{path}: not a FER+ votes CSV ({exc})") from None
    if rows.max(initial=0) >= len(table):
        raise DatasetError(f"{path}: has {len(table)} rows, dataset refers to row {rows.max()}")
    return table[rows]


def ferplus_targets(votes: np.ndarray, soft: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Majority (or vote-distribution) FER+ targets and the mask of usable rows.

    Rows whose top vote is 'unknown' or 'not a face', or whose emotion vote is tied, are dropped,
    as Microsoft's FER+ 'majority' mode does.
    """
    emotions = votes[:, :8].astype(np.float64)
    top = emotions.max(axis=1)
    ties = (emotions == top[:, None]).sum(axis=1) > 1
    keep = (top > votes[:, 8:].max(axis=1)) & ~ties & (top > 0)
    if soft:
        return (emotions / np.maximum(emotions.sum(axis=1, keepdims=True), 1)).astype(np.float32), keep
    return emotions.argmax(axis=1).astype(np.int64), keep
