"""`ferlite train cnn`: mini-Xception on 48x48 faces, checkpointed every epoch and resumable."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ferlite.datasets import Dataset, load_dataset
from ferlite.errors import DatasetError, FerliteError
from ferlite.labels import FERPLUS, LABEL_SETS, ferplus_targets, remap
from ferlite.preprocess import PreprocessSpec


@dataclass
class CnnConfig:
    """Everything that defines a CNN training run; saved as config.json in the run folder."""

    data: str
    val: str  # "": hold `held` of --data out instead (by subject when the data knows its subjects)
    out: str
    labels: str = "fer7"
    soft_labels: bool = False
    ferplus_csv: str | None = None
    ferplus_share: float = 0.0  # share of the FER+ vote distribution in a FER2013 face's training target
    width: float = 1.0
    size: int = 48
    epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    augment: str = "light"
    erase: float = 0.0  # share of training faces with one patch replaced by noise
    mixup: float = 0.0  # mixup's alpha (0: off)
    optimizer: str = "adamw"  # or "sgd": SGD with Nesterov momentum 0.9
    class_weights: bool = False
    patience: int = 0
    seed: int = 0
    init: str | None = None  # a .keras model, a .ferlite bundle or a shipped bundle's name to fine-tune
    teachers: list[str] = field(default_factory=list)
    distill: float = 0.5
    held: float = 0.25
    freeze: int = 0  # leading stages (stem, b0, b1, b2, b3) kept as they are
    forget: str | None = None  # data the model should still know after fine-tuning (e.g. PublicTest)
    rehearse: str | None = None  # data mixed into training, `rehearse_share` faces per face of --data
    rehearse_share: float = 1.0

STAGES = ("stem", "b0", "b1", "b2", "b3")


def _targets(ds: Dataset, cfg: CnnConfig) -> tuple[Dataset, np.ndarray]:
    """The dataset in the run's label set and its training targets (one-hot or FER+ soft votes)."""
    names = LABEL_SETS[cfg.labels]
    if cfg.labels != "ferplus":
        ds = ds.relabel(names)
        return ds, np.eye(len(names), dtype=np.float32)[ds.labels]
    ds, shares = ds.with_ferplus_labels(cfg.ferplus_csv)
    if cfg.soft_labels:
        return ds, shares
    return ds, np.eye(len(names), dtype=np.float32)[ds.labels]


def _with_votes(train: Dataset, targets: np.ndarray, cfg: CnnConfig) -> np.ndarray:
    """FER2013 labels mixed with FER+'s ten annotators' votes, `cfg.ferplus_share` of the votes, on the faces
    with a clear FER+ majority for an emotion of the label set: one label is a noisy target (it agrees with the
    annotators' majority two times in three), the votes say how ambiguous a face is."""
    if cfg.labels == "ferplus":
        raise FerliteError("--ferplus-share mixes FER+ votes into FER2013 labels; with --labels ferplus use "
                           "--soft-labels")
    shares, keep = ferplus_targets(train.ferplus_votes(cfg.ferplus_csv), soft=True)
    mapped = np.zeros_like(targets)
    for code, to in enumerate(remap(np.arange(len(FERPLUS)), FERPLUS, train.label_names)):
        if to >= 0:
            mapped[:, to] += shares[:, code]
    total = mapped.sum(axis=1, keepdims=True)
    keep &= total[:, 0] > 0
    mixed = (1 - cfg.ferplus_share) * targets + cfg.ferplus_share * mapped / np.maximum(total, 1e-9)
    return np.where(keep[:, None], mixed, targets).astype(np.float32)


def _sample_weights(labels: np.ndarray, k: int, balanced: bool) -> np.ndarray:
    if not balanced:
        return np.ones(len(labels), dtype=np.float32)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    per_class = len(labels) / (k * np.maximum(counts, 1))
    return per_class[labels].astype(np.float32)


def _start_config(cfg: CnnConfig, resume: bool) -> CnnConfig:
    """Check the run folder, writing nothing: a new run needs a fresh folder, --resume the saved config."""
    out = Path(cfg.out)
    saved = out / "config.json"
    if resume:
        if not saved.is_file():
            raise FerliteError(f"{out}: nothing to resume (no config.json)")
        return CnnConfig(**json.loads(saved.read_text()))
    if saved.exists():
        raise FerliteError(f"{out}: a run already exists there; pass --resume to continue it or choose another -o")
    return cfg


def _save_config(cfg: CnnConfig) -> None:
    """Start the run folder, once TensorFlow and the data have loaded: a failed start leaves nothing."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))


def _val_accuracies(history: Path) -> list[float]:
    """Each finished epoch's val_accuracy in a run's history.csv (none without one): a resumed run keeps
    the best.keras of the epochs before the interruption unless it beats it, and a run that finished
    its epochs but not its reports writes only those."""
    if not history.is_file():
        return []
    with history.open(newline="") as f:
        return [float(row["val_accuracy"]) for row in csv.DictReader(f) if row.get("val_accuracy")]


def _distilled(train: Dataset, targets: np.ndarray, cfg: CnnConfig) -> np.ndarray:
    """Training targets mixed with the teachers' mean probabilities (each face averaged with its mirror),
    `cfg.distill` of the teachers: soft scores say which classes a face resembles, which labels do not.
    Computed once on the unaugmented faces, so training costs no teacher inference."""
    k = targets.shape[1]
    probs = [_teacher_probs(path, train, cfg, k) for path in cfg.teachers]
    return ((1 - cfg.distill) * targets + cfg.distill * np.mean(probs, axis=0)).astype(np.float32)


def _teacher_probs(path: str, train: Dataset, cfg: CnnConfig, k: int) -> np.ndarray:
    """One teacher's probabilities with flip-TTA: a float .keras model, or a .ferlite bundle (int8, on the
    device runtime, with its own preprocessing) such as the shipped default, so a user can distil from it."""
    if not path.endswith(".ferlite"):
        from ferlite.training.keras_model import keras_probs

        return keras_probs(_load_compatible(path, cfg, k, "a teacher"), train.images, tta_flip=True)
    from ferlite.bundle import read_bundle
    from ferlite.evaluate import predict_dataset
    from ferlite.inputs import dataset_inputs
    from ferlite.runtime import Predictor

    bundle = read_bundle(Path(path))
    if tuple(bundle.manifest.labels) != tuple(train.label_names):
        raise FerliteError(f"{path}: a teacher must give the {k} classes of {cfg.labels} "
                           f"({', '.join(train.label_names)}); it gives {', '.join(bundle.manifest.labels)}")
    predictor = Predictor(bundle, tta_flip=True)
    return predict_dataset(predictor, dataset_inputs(bundle.manifest, train.images), description="teacher")


def _initial_model(cfg: CnnConfig, k: int):
    """A fresh mini-Xception, or `cfg.init` to fine-tune (same input size and classes): a trained .keras
    model, or a CNN bundle rebuilt as a float model (ferlite.training.from_bundle), the shipped one too."""
    if not cfg.init:
        from ferlite.training.models import mini_xception

        return mini_xception(k, cfg.size, cfg.width)
    if not _is_bundle(cfg.init):
        return _load_compatible(cfg.init, cfg, k, "a model to fine-tune")
    from ferlite.bundle import read_bundle
    from ferlite.bundles import bundle_path
    from ferlite.training.from_bundle import keras_from_bundle

    bundle = read_bundle(bundle_path(cfg.init))
    if tuple(bundle.manifest.labels) != LABEL_SETS[cfg.labels]:
        raise FerliteError(f"{cfg.init}: gives {', '.join(bundle.manifest.labels)}, not the {k} classes of "
                           f"{cfg.labels}")
    return _check_compatible(keras_from_bundle(bundle), cfg.init, cfg, k, "a model to fine-tune")


def _is_bundle(name: str) -> bool:
    from ferlite.bundles import SHIPPED

    return name.endswith(".ferlite") or name in SHIPPED or name == "default"


def _freeze(model, stages: int) -> None:
    """Keep the first `stages` of mini-Xception as they are (their BatchNormalization in inference mode):
    a few hundred faces can move the last blocks, not the whole network."""
    frozen = STAGES[:stages]
    for layer in model.layers:
        if layer.name.startswith(frozen):
            layer.trainable = False


def _load_compatible(path: str, cfg: CnnConfig, k: int, role: str):
    """A trained .keras model that takes this run's input and gives its k classes, or a one-line error."""
    from ferlite.training.keras_model import load_keras

    return _check_compatible(load_keras(path), path, cfg, k, role)


def _check_compatible(model, path: str, cfg: CnnConfig, k: int, role: str):
    """`model` itself when it takes this run's input and gives its k classes, else a one-line error."""
    if tuple(model.input_shape[1:]) != (cfg.size, cfg.size, 1) or model.output_shape[-1] != k:
        got = f"{tuple(model.input_shape[1:])} and gives {model.output_shape[-1]}"
        raise FerliteError(f"{path}: {role} must take ({cfg.size}, {cfg.size}, 1) and give {k} classes "
                           f"({cfg.labels}); it takes {got}")
    return model


def train_cnn(cfg: CnnConfig, resume: bool = False, command: str = "") -> Path:
    """Train, keep the best model on the validation set, and write the reports. Returns model.keras."""
    from ferlite.quiet import import_keras

    keras = import_keras()  # first: without TensorFlow, a one-line error and no run folder
    cfg = _start_config(cfg, resume)
    out = Path(cfg.out)
    spec = PreprocessSpec(size=cfg.size)
    data = load_dataset(cfg.data, spec)
    data, held = (data, load_dataset(cfg.val, spec)) if cfg.val else data.split(cfg.held, cfg.seed)
    train, y_train = _targets(data, cfg)
    val, y_val = _targets(held, cfg)
    if cfg.ferplus_share:
        y_train = _with_votes(train, y_train, cfg)
    if cfg.rehearse:
        train, y_train = _rehearsed(train, y_train, load_dataset(cfg.rehearse, spec), cfg)
    forget = _targets(load_dataset(cfg.forget, spec), cfg)[0] if cfg.forget else None
    if cfg.teachers:
        y_train = _distilled(train, y_train, cfg)
    if len(train) < cfg.batch_size:
        raise DatasetError(f"{cfg.data}: {len(train)} images, fewer than one batch of {cfg.batch_size}")
    if not resume:
        _save_config(cfg)

    from ferlite.training.augment import Augment, batches
    from ferlite.training.progress import EpochProgress

    keras.utils.set_random_seed(cfg.seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # same seed, same model: runs can be compared
    k = len(train.label_names)
    model = _initial_model(cfg, k)
    _freeze(model, cfg.freeze)
    before = _accuracies(model, val, forget) if cfg.init else None
    steps = len(train) // cfg.batch_size
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps * cfg.epochs, warmup_target=cfg.learning_rate, warmup_steps=steps * 2)
    model.compile(
        optimizer=_optimizer(keras, schedule, cfg),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    weights = _sample_weights(train.labels, k, cfg.class_weights)
    augment = Augment(cfg.augment, cfg.erase, cfg.mixup)
    train_ds = batches(train.images, y_train, weights, cfg.batch_size, augment=augment, seed=cfg.seed)
    val_ds = batches(val.images, y_val, np.ones(len(val), np.float32), cfg.batch_size, augment=None)
    done = _val_accuracies(out / "history.csv") if resume else []
    best = max(done, default=None)
    callbacks = [
        EpochProgress(cfg.epochs, steps, best or 0.0),
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.ModelCheckpoint(str(out / "best.keras"), monitor="val_accuracy", save_best_only=True,
                                        initial_value_threshold=best),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
    ]
    if cfg.patience:
        callbacks.append(keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.patience))
    started = time.time()
    # batches() shuffles each epoch itself; Keras' own shuffle flag would only warn that it is ignored.
    # Keras deletes the backup when fit returns and writes it before each epoch's history row, so
    # rows without a backup mean the epochs are done and only the reports are missing.
    if not (done and (out / "best.keras").is_file() and not (out / "backup").exists()):
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, shuffle=False,
                  verbose=0)

    from ferlite.training.report import write_report

    best = keras.models.load_model(out / "best.keras")
    model_path = out / "model.keras"
    best.save(model_path)
    probs = best.predict(val_ds, verbose=0)
    extra = {"fine_tune": {"held": val.source if cfg.val else f"{cfg.held:.0%} of {cfg.data}"
                           + (" (by subject)" if val.subjects is not None else " (stratified)"),
                           "forget": cfg.forget, "before": before, "after": _accuracies(best, val, forget)}
             } if before else None
    write_report(out, val.labels, probs, val.label_names, cfg=asdict(cfg), command=command,
                 session_seconds=time.time() - started, params=best.count_params(), extra=extra)
    return model_path


OPTIMIZERS = ("adamw", "sgd")


def _optimizer(keras, schedule, cfg: CnnConfig):
    """AdamW, or SGD with Nesterov momentum as the FER2013 literature's long schedules use."""
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)


def _rehearsed(train: Dataset, targets: np.ndarray, old: Dataset, cfg: CnnConfig) -> tuple[Dataset, np.ndarray]:
    """The training faces plus a random draw of the data the model already knew: fine-tuning on a few
    hundred faces of a few people then moves the model less far from everyone else."""
    from dataclasses import replace

    old, old_targets = _targets(old, cfg)
    rng = np.random.default_rng(cfg.seed)
    pick = rng.choice(len(old), min(len(old), round(cfg.rehearse_share * len(train))), replace=False)
    mixed = replace(train, images=np.concatenate([train.images, old.images[pick]]),
                    labels=np.concatenate([train.labels, old.labels[pick]]), index=None, subjects=None)
    return mixed, np.concatenate([targets, old_targets[pick]])


def _accuracies(model, held: Dataset, forget: Dataset | None) -> dict:
    """Float top-1 accuracy (flip-TTA) on the held faces and on the data the model should not forget."""
    from ferlite.training.keras_model import keras_probs

    def accuracy(ds: Dataset) -> float:
        return round(float((keras_probs(model, ds.images, tta_flip=True).argmax(1) == ds.labels).mean()), 4)

    return {"held": accuracy(held), **({"forget": accuracy(forget)} if forget is not None else {})}
