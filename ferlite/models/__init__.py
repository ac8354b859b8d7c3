"""The default bundles shipped with ferlite (package data)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CNN = Path(__file__).with_name("emotion-cnn.ferlite")
DEFAULT_LANDMARK_SVM = Path(__file__).with_name("emotion-landmark-svm.ferlite")
