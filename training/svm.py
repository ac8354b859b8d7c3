"""`ferlite train svm`: landmark features -> one-vs-rest linear SVM (optionally on random Fourier
features) as a small Keras model, evaluated subject-independently.

The SVM is a Dense layer trained with squared hinge loss and L2 weight decay, on faces and their
mirror images. The exported model holds the standardization (a fixed Normalization layer), the
random projection of the RFF variant, and a temperature fitted on out-of-fold scores that turns
margins into calibrated softmax probabilities, so it maps raw feature vectors to probabilities.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ferlite.datasets import Dataset, load_dataset
from ferlite.errors import DatasetError, FerliteError
from ferlite.features import DEFAULT_RECIPE, RECIPES
from ferlite.labels import LABEL_SETS
from ferlite.landmarks import LandmarkSpec

# Without --l2 the weight decay is L2_PER_ROW[recipe] / training rows (faces plus mirror images), so
# the penalty per face stays the same whatever the data size, as with a fixed C in liblinear. Chosen
# by leave-one-subject-out on JAFFE alone (426 rows: hog 0.94, geometry 0.0094) and checked on JAFFE +
# CK+48 (2280 rows: hog 0.175); see docs/model-card.md.
L2_PER_ROW = {"geometry": 4.0, "hog": 400.0}


@dataclass
class SvmConfig:
    """Everything that defines a landmark-SVM run; saved as config.json in the run folder."""

    data: list[str]
    out: str
    labels: str = "fer7"
    group_by: str = "subject"
    folds: int = 10
    features: str = DEFAULT_RECIPE
    rff: int = 0
    gamma: float = 0.0
    l2: float | None = None
    epochs: int = 300
    learning_rate: float = 1e-2
    seed: int = 0
    landmarks: str | None = None
    min_side: int = LandmarkSpec.min_side
    preprocess: dict = field(default_factory=dict)


def _progress(description: str):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def extract_features(ds: Dataset, spec: LandmarkSpec, cache: Path,
                     landmarks: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors of pre-cropped faces and of their mirror images, NaN rows where landmarks failed.

    Cached in `cache/` under a key of the image bytes, the landmark model and the recipe, so reruns
    with other SVM settings skip the slow landmark fitting.
    """
    from ferlite.inputs import dataset_landmarks, landmark_inputs

    key = hashlib.sha256(ds.images.tobytes() + json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()
    path = cache / f"features-{key[:16]}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return cached["features"], cached["mirrored"]
    preprocess = spec.to_dict()
    faces, points = list(ds.images), dataset_landmarks(preprocess, ds.images, landmarks)
    features, mirrored = (landmark_inputs(preprocess, faces, points, mirror) for mirror in (False, True))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, features=features, mirrored=mirrored)
    return features, mirrored


def subject_folds(groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out index arrays: one per subject when there are at most `folds` subjects (leave-one-
    subject-out), else `folds` folds of whole subjects with about equal image counts."""
    subjects, counts = np.unique(groups, return_counts=True)
    if len(subjects) <= folds:
        return [np.flatnonzero(groups == s) for s in subjects]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(subjects))
    order = order[np.argsort(-counts[order], kind="stable")]
    load, members = np.zeros(folds), [[] for _ in range(folds)]
    for s in order:
        f = int(np.argmin(load))
        members[f].append(subjects[s])
        load[f] += counts[s]
    return [np.flatnonzero(np.isin(groups, m)) for m in members]


def image_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Stratified folds of single images, for data without subject ids (not subject-independent)."""
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = np.arange(len(idx)) % folds
    return [np.flatnonzero(fold_of == f) for f in range(folds)]


class _Svm:
    """Standardization, optional random Fourier features and the linear head, fitted with Keras."""

    def __init__(self, cfg: SvmConfig, features: int, k: int, seed: int) -> None:
        self.cfg, self.k = cfg, k
        rng = np.random.default_rng(seed)
        gamma = cfg.gamma or 1.0 / features
        self.omega = rng.normal(0, math.sqrt(2 * gamma), (features, cfg.rff)).astype(np.float32) if cfg.rff else None
        self.phase = rng.uniform(0, 2 * math.pi, cfg.rff).astype(np.float32) if cfg.rff else None

    def _lift(self, z: np.ndarray) -> np.ndarray:
        if self.omega is None:
            return z
        return math.sqrt(2 / self.cfg.rff) * np.cos(z @ self.omega + self.phase)

    def fit(self, x: np.ndarray, mirrored: np.ndarray, y: np.ndarray, seed: int) -> _Svm:
        """Fit on faces x and their mirror images (a mirrored expression is the same expression)."""
        from ferlite.quiet import import_keras

        keras = import_keras()
        keras.utils.set_random_seed(seed)
        x, y = np.concatenate([x, mirrored]), np.concatenate([y, y])
        self.l2 = L2_PER_ROW[self.cfg.features] / len(x) if self.cfg.l2 is None else self.cfg.l2
        self.mean, self.std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
        h = self._lift((x - self.mean) / self.std).astype(np.float32)
        counts = np.bincount(y, minlength=self.k)
        weights = (len(y) / (self.k * np.maximum(counts, 1)))[y].astype(np.float32)
        head = keras.Sequential([keras.Input((h.shape[1],)),
                                 keras.layers.Dense(self.k, kernel_regularizer=keras.regularizers.L2(self.l2))])
        head.compile(optimizer=keras.optimizers.Adam(self.cfg.learning_rate), loss=keras.losses.SquaredHinge(),
                     steps_per_execution=50)
        targets = np.where(np.eye(self.k, dtype=np.float32)[y] > 0, 1.0, -1.0).astype(np.float32)
        # Full-batch steps from one repeated dataset: one Keras epoch, no per-epoch overhead.
        import tensorflow as tf

        steps = tf.data.Dataset.from_tensors((h, targets, weights)).repeat(self.cfg.epochs)
        head.fit(steps, epochs=1, shuffle=False, verbose=0)
        self.kernel, self.bias = (w.astype(np.float64) for w in head.layers[-1].get_weights())
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        """One-vs-rest margins (N, K)."""
        return self._lift((x - self.mean) / self.std) @ self.kernel + self.bias

    def export(self, temperature: float):
        """Keras model raw features -> probabilities: standardization, projection and temperature are weights."""
        from ferlite.training.models import landmark_svm

        model = landmark_svm(len(self.mean), self.k, self.cfg.rff, self.mean, self.std)
        kernel = self.kernel
        if self.omega is not None:
            model.get_layer("rff_projection").set_weights([self.omega, self.phase])
            kernel = kernel * math.sqrt(2 / self.cfg.rff)
        model.get_layer("svm").set_weights([(kernel / temperature).astype(np.float32),
                                             (self.bias / temperature).astype(np.float32)])
        return model


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nll(scores: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = _softmax(scores / temperature)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimizing the negative log-likelihood of held-out scores (golden-section on log T)."""
    lo, hi = math.log(1e-3), math.log(1e2)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _nll(scores, y, math.exp(a)) < _nll(scores, y, math.exp(b)):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


@dataclass
class _Faces:
    """Every usable face of the run's datasets: features, mirrored features, labels, subject ids
    (prefixed by dataset), the index of the dataset each came from, and how many faces had no landmarks."""

    x: np.ndarray
    mirrored: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    sources: np.ndarray
    failures: int


def _load(cfg: SvmConfig, spec: LandmarkSpec, out: Path) -> _Faces:
    names = LABEL_SETS[cfg.labels]
    parts: list[tuple] = []
    failures = 0
    for i, data in enumerate(cfg.data):
        ds = load_dataset(data).relabel(names)
        if cfg.group_by == "subject" and ds.subjects is None:
            raise DatasetError(f"{data}: has no subject ids; use --group-by image (not subject-independent)")
        x, mirrored = extract_features(ds, spec, out / "cache", cfg.landmarks)
        ok = np.isfinite(x).all(axis=1) & np.isfinite(mirrored).all(axis=1)
        failures += int((~ok).sum())
        subjects = ds.subjects if ds.subjects is not None else np.arange(len(ds))
        parts.append((x[ok], mirrored[ok], ds.labels[ok], np.array([f"{i}:{s}" for s in subjects[ok]]),
                      np.full(ok.sum(), i)))
    return _Faces(*(np.concatenate(column) for column in zip(*parts)), failures=failures)


def train_svm(cfg: SvmConfig, command: str = "") -> Path:
    """Cross-validate, fit the temperature, train on all data, write model.keras and the reports."""
    from ferlite.landmarks import file_sha256, find_landmark_model
    from ferlite.metrics import compute_metrics

    if cfg.labels not in LABEL_SETS:
        raise FerliteError(f"unknown label set {cfg.labels!r} (choose {', '.join(LABEL_SETS)})")
    if cfg.group_by not in ("subject", "image"):
        raise FerliteError("--group-by must be subject or image")
    if cfg.features not in RECIPES:
        raise FerliteError(f"unknown feature recipe {cfg.features!r} (choose {', '.join(RECIPES)})")
    out = Path(cfg.out)
    model_file = find_landmark_model(cfg.landmarks)
    spec = LandmarkSpec(landmark_sha256=file_sha256(model_file), features=RECIPES[cfg.features],
                        min_side=cfg.min_side)
    cfg = replace(cfg, preprocess=spec.to_dict())
    started = time.time()
    faces = _load(cfg, spec, out)
    x, y, groups, sources = faces.x, faces.y, faces.groups, faces.sources
    names = LABEL_SETS[cfg.labels]
    k = len(names)
    folds = subject_folds(groups, cfg.folds, cfg.seed) if cfg.group_by == "subject" else \
        image_folds(y, cfg.folds, cfg.seed)
    if len(folds) < 2:
        raise DatasetError("cross-validation needs at least 2 subjects (or folds)")
    scores = np.zeros((len(y), k))
    with _progress("cross-validation") as bar:
        for f, held in enumerate(bar.track(folds)):
            train = np.ones(len(y), bool)
            train[held] = False
            svm = _Svm(cfg, x.shape[1], k, cfg.seed + f).fit(x[train], faces.mirrored[train], y[train], cfg.seed + f)
            scores[held] = svm.scores(x[held])
    temperature = fit_temperature(scores, y)
    probs = _softmax(scores / temperature)
    svm = _Svm(cfg, x.shape[1], k, cfg.seed).fit(x, faces.mirrored, y, cfg.seed)
    model = svm.export(temperature)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.keras"
    model.save(model_path)
    config = {**asdict(cfg), "kind": "landmark-svm"}
    (out / "config.json").write_text(json.dumps(config, indent=2))

    scheme = ("leave-one-subject-out" if len(folds) == len(np.unique(groups)) else f"{len(folds)}-fold by subject") \
        if cfg.group_by == "subject" else f"{len(folds)}-fold by image (NOT subject-independent)"
    per_source = {}
    for i, data in enumerate(cfg.data):
        rows = sources == i
        m = compute_metrics(y[rows], probs[rows], names)
        per_source[data] = {"accuracy": round(m.accuracy, 5), "macro_f1": round(m.macro_f1, 5),
                            "samples": m.samples, "subjects": int(len(np.unique(groups[rows])))}
    extra = {
        "kind": "landmark-svm",
        "evaluation": f"{scheme}, out-of-fold predictions over {len(folds)} folds",
        "per_source": per_source,
        "l2": round(svm.l2, 6),
        "temperature": round(temperature, 5),
        "nll": {"uncalibrated": round(_nll(scores, y, 1.0), 4), "calibrated": round(_nll(scores, y, temperature), 4)},
        "landmark_failures": faces.failures,
        "landmarks": {"model": str(model_file), **spec.to_dict()},
    }
    from ferlite.training.report import write_report

    report = write_report(out, y, probs, names, cfg={**config, "val": scheme + " on " + ", ".join(cfg.data)},
                          command=command, session_seconds=time.time() - started, params=model.count_params(),
                          extra=extra)
    _append_markdown(out / "report.md", report)
    return model_path


def _append_markdown(path: Path, report: dict) -> None:
    """Per-dataset figures and the calibration under the shared report layout."""
    lines = ["", "## Per dataset", "", "| data | subjects | samples | accuracy | macro-F1 |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {d} | {s['subjects']} | {s['samples']} | {s['accuracy']:.2%} | {s['macro_f1']:.3f} |"
              for d, s in report["per_source"].items()]
    lines += ["", f"Evaluation: {report['evaluation']}. L2 weight decay of the final fit: {report['l2']:g}.", "",
              f"Temperature {report['temperature']:g} (NLL {report['nll']['uncalibrated']} -> "
              f"{report['nll']['calibrated']} on out-of-fold scores); landmark failures dropped: "
              f"{report['landmark_failures']}.", ""]
    with path.open("a") as f:
        f.write("\n".join(lines))
