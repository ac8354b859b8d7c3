"""The default bundles shipped with ferlite (package data), and their short names."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CNN = Path(__file__).with_name("emotion-cnn.ferlite")
DEFAULT_LANDMARK_SVM = Path(__file__).with_name("emotion-landmark-svm.ferlite")
SHIPPED = {"cnn": DEFAULT_CNN, "landmark-svm": DEFAULT_LANDMARK_SVM}


def bundle_path(given: str | Path | None) -> Path:
    """The bundle a command was given: a file, a shipped bundle's short name (`cnn`, `landmark-svm`, or
    its file name), or, given nothing or `default`, the default CNN. A name that is neither is returned
    as a path, for the bundle reader's one-line error."""
    if given is None or (str(given) == "default" and not Path(given).is_file()):
        return DEFAULT_CNN
    path = Path(given)
    if path.is_file():
        return path
    by_file = {p.name: p for p in SHIPPED.values()}
    return SHIPPED.get(str(given)) or by_file.get(str(given)) or path
