"""`ferlite convert`: Keras model -> calibrated int8 TFLite -> verified against float -> one bundle."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import ferlite
from ferlite.bundle import Manifest, TensorSpec, write_bundle
from ferlite.calibration import calibration_figures
from ferlite.datasets import load_dataset
from ferlite.errors import FerliteError, ModelError
from ferlite.preprocess import FER2013_FRAMING, PreprocessSpec
from ferlite.training.keras_model import keras_probs, load_keras, model_labels

from .quantize import calibration_split, quantize_keras
from .verify import Gate, compare, gate_failure


@dataclass
class ConvertResult:
    """The written bundle (None when the gate failed without `force`), the figures, and the gate's verdict."""

    path: Path | None
    figures: dict
    failure: str | None = None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def provenance(model_path: Path, command: str) -> dict:
    """Where the model came from: the training run's files beside it, plus this conversion."""
    config = _read_json(model_path.parent / "config.json")
    report = _read_json(model_path.parent / "report.json")
    return {
        "training_data": config.get("data"),
        "training_command": report.get("command"),
        "training_seconds": report.get("train_seconds"),
        "training_config": config or None,
        "convert_command": command,
        "ferlite_version": ferlite.__version__,
        "git_commit": _git_commit(),
        "created_utc": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


def _int8_probs(model_bytes: bytes, manifest: Manifest, inputs: np.ndarray, tta_flip: bool) -> np.ndarray:
    from ferlite.bundle import Bundle
    from ferlite.evaluate import predict_dataset
    from ferlite.runtime import Predictor

    predictor = Predictor(Bundle(manifest, model_bytes, Path("<converted>")), tta_flip=tta_flip)
    return predict_dataset(predictor, inputs, description="int8 eval" + (" (flip)" if tta_flip else ""))


def _plan(model, model_path: Path, margin: float, landmarks: str | None) -> tuple[object, str, dict, dict]:
    """The model to quantize, the bundle kind, its preprocess recipe and options, from the model's
    input shape and its run folder. A landmark model's standardize layer moves into the recipe."""
    shape = model.input_shape
    if len(shape) == 4 and shape[1] == shape[2] and shape[3] == 1:
        return model, "cnn", PreprocessSpec(size=int(shape[1]), margin=margin, framing=FER2013_FRAMING).to_dict(), {}
    if len(shape) == 2:
        from ferlite.features import RECIPES, recipe_size
        from ferlite.landmarks import LandmarkSpec, landmarker

        spec = LandmarkSpec.from_dict(_read_json(model_path.parent / "config.json").get("preprocess", {}))
        if spec.features not in RECIPES.values() or shape[1] != recipe_size(spec.features):
            raise ModelError(f"{model_path}: {shape[1]} inputs do not match landmark feature recipe {spec.features} "
                             f"of its run's config.json; retrain with `ferlite train svm`")
        fitter = landmarker(spec, landmarks)
        preprocess = replace(spec, landmark_sha256=fitter.sha256).to_dict()
        return (*_lift_standardize(model, preprocess), {"detector": spec.detector})
    raise ModelError(f"{model_path}: expected a square grayscale image input (N, S, S, 1) or landmark features "
                     f"(N, F), got {shape}")


def _lift_standardize(model, preprocess: dict) -> tuple[object, str, dict]:
    """The landmark model without its leading standardize layer, whose mean and std join the recipe."""
    from ferlite.training.models import landmark_svm

    names = [layer.name for layer in model.layers]
    if "standardize" not in names:
        return model, "landmark-svm", preprocess
    norm = model.get_layer("standardize")
    mean = np.asarray(norm.mean, np.float64).reshape(-1)
    std = np.sqrt(np.asarray(norm.variance, np.float64).reshape(-1))
    rff = model.get_layer("rff_projection").units if "rff_projection" in names else 0
    head = landmark_svm(len(mean), model.output_shape[-1], rff)
    for layer in head.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return head, "landmark-svm", {**preprocess, "standardize": {"mean": mean.tolist(), "std": std.tolist()}}


def convert_model(model_path: str | Path, calibration: str, out: str | Path, *, eval_data: str | None = None,
                  calibration_size: int = 500, gate: Gate = Gate(), force: bool = False, tta_flip: bool = False,
                  margin: float = PreprocessSpec.margin, command: str = "", seed: int = 0,
                  landmarks: str | None = None, per_tensor: bool = False) -> ConvertResult:
    """Quantize, verify and (if the gate passes or `force`) write the bundle."""
    from ferlite.inputs import images_inputs

    model_path = Path(model_path)
    model = load_keras(model_path)
    model, kind, preprocess, options = _plan(model, model_path, margin, landmarks)
    if tta_flip and kind != "cnn":
        raise FerliteError("--tta-flip applies to cnn models only")
    labels = model_labels(model_path, model.output_shape[-1])
    size = PreprocessSpec.from_dict(preprocess) if kind == "cnn" else None
    calib, rest = calibration_split(load_dataset(calibration, size).relabel(labels), calibration_size, seed)
    evaluation = load_dataset(eval_data, size).relabel(labels) if eval_data else rest
    if len(evaluation) == 0:
        raise FerliteError("no faces left to verify on: give --eval or a larger --calibration set")
    calib_x = images_inputs(kind, preprocess, calib.images, landmarks)
    eval_x = images_inputs(kind, preprocess, evaluation.images, landmarks)
    if kind == "landmark-svm":
        calib_x = calib_x[np.isfinite(calib_x).all(axis=1)]

    tflite = quantize_keras(model, calib_x, per_tensor=per_tensor)
    manifest = _manifest(tflite, kind, labels, preprocess, {**options, "tta_flip": tta_flip})
    int8 = _int8_probs(tflite, manifest, eval_x, False)
    figures = compare(evaluation.labels, keras_probs(model, eval_x), int8, labels)
    figures.update(data=evaluation.source if eval_data else f"{calibration} (not calibration faces)",
                   samples=len(evaluation), calibration={"data": calibration, "samples": len(calib_x)},
                   quantization="per-tensor" if per_tensor else "per-channel")
    if kind == "landmark-svm":
        figures["landmark_failures"] = int((~np.isfinite(eval_x).all(axis=1)).sum())
    if tta_flip:
        int8 = _int8_probs(tflite, manifest, eval_x, True)
        figures["tta_flip"] = compare(evaluation.labels, keras_probs(model, eval_x, True), int8, labels)
    figures["temperature"] = calibration_figures(evaluation.labels, int8)
    manifest.options["temperature"] = figures["temperature"]["temperature"]
    manifest.metrics = figures
    manifest.provenance = provenance(model_path, command)
    failure = gate_failure(figures["tta_flip"] if tta_flip else figures, gate)
    path = write_bundle(out, manifest, tflite) if failure is None or force else None
    return ConvertResult(path, figures, failure)


def _manifest(tflite: bytes, kind: str, labels: tuple[str, ...], preprocess: dict, options: dict) -> Manifest:
    """Manifest with the tensor specs read back from the converted model."""
    from ferlite.runtime import load_interpreter

    interpreter, _ = load_interpreter(tflite)
    specs = []
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        scale, zero_point = detail["quantization"]
        specs.append(TensorSpec([int(d) for d in detail["shape"]], np.dtype(detail["dtype"]).name,
                                float(scale), int(zero_point)))
    return Manifest(kind=kind, labels=list(labels), input=specs[0], output=specs[1], preprocess=preprocess,
                    options=options)

