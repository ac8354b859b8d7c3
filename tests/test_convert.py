"""Conversion: a CNN trained on real faces becomes an int8 bundle that agrees with its float model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TRAIN, VAL, run_cli

from ferlite.bundle import read_bundle
from ferlite.calibration import expected_calibration_error, nll
from ferlite.datasets import load_dataset
from ferlite.preprocess import FER2013_FRAMING, PreprocessSpec
from ferlite.runtime import Predictor


def test_int8_agrees_with_float_on_unseen_faces(tiny_bundle, trained_run):
    """Calibrated on training faces; verified on validation faces never used for calibration. The tiny
    model has many near-ties, and int8 may only flip those: where int8 and float disagree, float's top
    two classes are within 0.05 of each other."""
    bundle = read_bundle(tiny_bundle)
    metrics = bundle.manifest.metrics
    assert metrics["samples"] == 120 and metrics["calibration"]["samples"] == 150
    assert metrics["agreement"] >= 0.9, metrics  # the gate the fixture was converted with
    assert abs(metrics["float"]["accuracy"] - metrics["int8"]["accuracy"]) <= 0.05

    # Recompute int8 predictions independently of the converter and compare with Keras float.
    from ferlite.training.keras_model import keras_probs, load_keras

    val = load_dataset(VAL)
    int8 = Predictor(bundle, calibrated=False).predict(val.images)  # the model as converted, no temperature
    flt = keras_probs(load_keras(trained_run / "model.keras"), val.images)
    flipped = int8.argmax(1) != flt.argmax(1)
    assert abs(flipped.mean() - (1 - metrics["agreement"])) < 1e-3  # the converter measured the same
    second, first = np.sort(flt, axis=1)[:, -2:].T
    assert (first - second)[flipped].max(initial=0) < 0.05, (first - second)[flipped]
    assert np.abs(int8 - flt).max() < 0.15


def test_manifest_describes_the_model(tiny_bundle):
    m = read_bundle(tiny_bundle).manifest
    assert m.format == 2 and m.kind == "cnn"
    assert m.labels == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert m.input.shape == [1, 48, 48, 1] and m.input.dtype == "int8" and m.output.dtype == "int8"
    assert m.preprocess["size"] == 48
    assert len(m.model_sha256) == 64 and m.model_bytes > 10_000
    assert m.provenance["training_data"].endswith("fer_mini_train.npz")
    assert m.provenance["training_command"].startswith("ferlite train cnn")
    assert set(m.metrics["per_class"]) == {"happy", "surprise", "neutral"}
    assert PreprocessSpec.from_dict(m.preprocess).framing == FER2013_FRAMING  # the device frames as FER2013 did


def test_conversion_fits_a_temperature_that_calibrates_the_held_faces(tiny_bundle):
    """The temperature is fitted on the verification faces, int8 as the device runs it: their NLL
    falls, and every prediction stays the same."""
    bundle = read_bundle(tiny_bundle)
    fitted = bundle.manifest.metrics["temperature"]
    assert bundle.manifest.options["temperature"] == fitted["temperature"] != 1.0 and fitted["faces"] == 120
    val = load_dataset(VAL).relabel(tuple(bundle.manifest.labels))
    calibrated, raw = Predictor(bundle).predict(val.images), Predictor(bundle, calibrated=False).predict(val.images)
    assert (calibrated.argmax(1) == raw.argmax(1)).all()
    assert nll(val.labels, calibrated) < nll(val.labels, raw)
    assert fitted["ece_after"] == pytest.approx(expected_calibration_error(val.labels, calibrated), abs=0.02)


def test_no_augmentation_in_converted_graph(tiny_bundle):
    """Augmentation runs in tf.data only; the exported graph holds inference ops alone (a flip, shift or
    random op would add REVERSE_V2, a transform or a RANDOM_* op), and no tensor names, which the
    converter strips."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=read_bundle(tiny_bundle).model,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert set(ops) <= {"QUANTIZE", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D", "MEAN",
                        "SOFTMAX", "RESHAPE", "MUL", "SUB"}, ops
    assert ops.count("CONV_2D") == 2 + 4 * 3 + 1  # stem, per block two pointwise and a shortcut, classes
    assert {t["name"] for t in interpreter.get_tensor_details()} == {""}


def test_gate_failure_writes_nothing(trained_run, tmp_path):
    """An impossible gate fails with exit 1 and leaves no bundle; --force writes it anyway."""
    out = tmp_path / "gated.ferlite"
    args = ["convert", trained_run / "model.keras", "--calibration", TRAIN, "--eval", VAL,
            "--calibration-size", "60", "--max-drop", "100", "--min-agreement", "1.01", "-o", out]
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    assert "agreement" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    forced = run_cli(*args, "--force", "--json")
    assert forced.returncode == 0 and out.exists()
    assert "warning:" in forced.stderr
    assert json.loads(forced.stdout)["agreement"] > 0.5


def test_eval_bundle_and_keras_agree(tiny_bundle, trained_run, tmp_path):
    plot = tmp_path / "cm.png"
    q = run_cli("eval", tiny_bundle, "--data", VAL, "--json", "--plot", plot)
    f = run_cli("eval", trained_run / "model.keras", "--data", VAL, "--json")
    assert q.returncode == 0 and f.returncode == 0, q.stderr + f.stderr
    qj, fj = json.loads(q.stdout), json.loads(f.stdout)
    assert qj["runtime"] == "ai-edge-litert" and fj["runtime"] == "keras (float)"
    assert qj["samples"] == fj["samples"] == 120
    assert abs(qj["accuracy"] - fj["accuracy"]) <= 0.05
    assert np.array(qj["confusion"]).sum() == 120 and len(qj["per_class"]) == 7
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_ensemble_scores_the_mean_of_its_bundles_probabilities(tmp_path):
    """`ferlite eval A --ensemble B`: the shipped CNN with flip-TTA and a copy of it without (one bundle
    file each), scored on the mean of their probabilities; a bundle of another kind is one line."""
    from ferlite.bundle import write_bundle
    from ferlite.bundles import DEFAULT_CNN
    from ferlite.evaluate import Truth
    from ferlite.inputs import dataset_inputs
    from ferlite.runtime import Ensemble

    shipped = read_bundle(DEFAULT_CNN)
    assert shipped.manifest.options["tta_flip"]
    plain = read_bundle(DEFAULT_CNN)
    plain.manifest.options = {**plain.manifest.options, "tta_flip": False}
    copy = write_bundle(tmp_path / "no-flip.ferlite", plain.manifest, plain.model)

    faces = Truth().faces(str(VAL), tuple(shipped.manifest.labels))
    x = dataset_inputs(shipped.manifest, faces.images)
    flip_probs, plain_probs = Predictor(shipped).predict(x), Predictor(read_bundle(copy)).predict(x)
    assert (flip_probs.argmax(1) != plain_probs.argmax(1)).any()  # the members differ on some faces
    mean = (flip_probs + plain_probs) / 2
    both = Ensemble([Predictor(shipped), Predictor(read_bundle(copy))])
    assert np.allclose(both.predict(x), mean, atol=1e-6)

    result = run_cli("eval", DEFAULT_CNN, "--ensemble", copy, "--data", VAL, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    scored = json.loads(result.stdout)
    assert scored["model"] == f"{DEFAULT_CNN} + {copy}" and scored["samples"] == len(faces) == 120
    assert scored["accuracy"] == pytest.approx(float((mean.argmax(1) == faces.labels).mean()))

    other = run_cli("eval", DEFAULT_CNN, "--ensemble", "landmark-svm", "--data", VAL)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert other.stderr.strip().count("\n") == 0 and "ensemble" in other.stderr


def test_per_tensor_bundle_is_smaller_and_still_agrees(tiny_bundle, trained_run, tmp_path):
    """--per-tensor drops the per-channel scales and zero points: fewer bytes, same verification gate."""
    from ferlite.convert.quantize import per_channel_tensors

    out = tmp_path / "per-tensor.ferlite"
    result = run_cli("convert", trained_run / "model.keras", "--calibration", TRAIN, "--eval", VAL,
                     "--calibration-size", "150", "--min-agreement", "0.9", "--max-drop", "5", "--per-tensor",
                     "--json", "-o", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["quantization"] == "per-tensor"
    small, default = read_bundle(out).model, read_bundle(tiny_bundle).model
    assert per_channel_tensors(small) == 0 and per_channel_tensors(default) > 0
    assert len(small) < len(default)
    assert (Predictor(read_bundle(out)).predict(load_dataset(VAL).images).argmax(1) ==
            Predictor(read_bundle(tiny_bundle)).predict(load_dataset(VAL).images).argmax(1)).mean() >= 0.9
