"""Landmark-SVM: invariant features on real faces, subject-independent training, int8 conversion,
and the bundle on a real photo through `ferlite predict`, `ferlite eval` and ferlite.inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, run_cli

from ferlite.errors import ModelError
from ferlite.features import RECIPES
from ferlite.landmarks import LandmarkSpec, find_landmark_model, landmarker

try:
    find_landmark_model()
except ModelError as exc:
    pytest.skip(f"dlib's landmark model is not installed ({exc})", allow_module_level=True)

JAFFE = FIXTURES / "jaffe_mini.npz"
PHOTO = FIXTURES / "astronaut.jpg"


def _place(face: np.ndarray, scale: float, angle: float, cx: float, cy: float) -> np.ndarray:
    """The face scaled, rotated in-plane by `angle` degrees and centred at (cx, cy) in a 480x360 frame."""
    import cv2

    m = cv2.getRotationMatrix2D((face.shape[1] / 2, face.shape[0] / 2), angle, scale)
    m[:, 2] += (cx - face.shape[1] / 2, cy - face.shape[0] / 2)
    return cv2.warpAffine(face, m, (480, 360), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def _features(frame: np.ndarray, recipe: int) -> np.ndarray:
    """Features of the largest face dlib's HOG detector finds, as the device computes them."""
    import dlib

    from ferlite.features import recipe_features

    rects = dlib.get_frontal_face_detector()(frame, 0)
    assert rects, "no face detected"
    r = max(rects, key=lambda r: r.area())
    points = landmarker(LandmarkSpec()).fit(frame, (r.left(), r.top(), r.width(), r.height()))
    return recipe_features(recipe, [frame], points[None])[0]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_features_invariant_to_position_size_and_tilt(recipe):
    """One JAFFE subject (KA): moving, resizing and tilting her face by up to 5 degrees changes the
    vector far less than changing her expression (happy, surprise, neutral) does.

    Measured worst/expression ratios: geometry 0.37, hog 0.45 (HOG of a 48 px crop moves with the
    sub-pixel jitter of the landmark fit that aligns it).
    """
    faces = np.load(JAFFE)
    images = {name: faces["images"][int(np.flatnonzero(faces["filenames"] == name)[0])]
              for name in ("KA.HA1.29.tiff", "KA.SU1.36.tiff", "KA.NE1.26.tiff")}
    base = {name: _features(_place(img, 2.0, 0, 240, 180), RECIPES[recipe]) for name, img in images.items()}
    names = list(base)
    expression = min(np.linalg.norm(base[a] - base[b]) for i, a in enumerate(names) for b in names[i + 1:])
    moves = [(2.0, 0, 150, 120), (2.0, 0, 330, 200), (1.5, 0, 240, 180), (3.0, 0, 240, 180), (2.0, 5, 240, 180),
             (2.0, -5, 200, 160), (2.5, 4, 300, 190)]
    worst = max(np.linalg.norm(_features(_place(images[n], *move), RECIPES[recipe]) - base[n])
                for n in names for move in moves)
    assert worst < {"geometry": 0.4, "hog": 0.5}[recipe] * expression, (worst, expression)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_mirrored_features_equal_features_of_the_mirrored_face(recipe):
    """Training's mirror augmentation: the recipe's `mirror` output is what the flipped photo gives."""
    from ferlite.features import MIRROR, recipe_features

    faces = np.load(JAFFE)["images"][:4]
    points = np.stack([landmarker(LandmarkSpec()).fit_image(img) for img in faces])
    flipped = [np.ascontiguousarray(img[:, ::-1]) for img in faces]
    flipped_points = (points * np.array([-1, 1], np.float32) + np.array([faces.shape[2] - 1, 0], np.float32))[:, MIRROR]
    expected = recipe_features(RECIPES[recipe], flipped, flipped_points)
    mirrored = recipe_features(RECIPES[recipe], list(faces), points, mirror=True)
    assert np.isfinite(mirrored).all()
    assert np.abs(mirrored - expected).max() < 0.05 * np.abs(expected).max()


def test_missing_landmark_model_is_one_line_error(tmp_path):
    with pytest.raises(ModelError, match="face-recognition-models"):
        find_landmark_model(tmp_path / "nope.dat")
    result = run_cli("train", "svm", "--data", JAFFE, "-o", tmp_path / "run", "--landmarks", tmp_path / "nope.dat")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def svm_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("svm") / "jaffe-mini"
    result = run_cli("train", "svm", "--data", JAFFE, "-o", out, "--group-by", "subject")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "leave-one-subject-out" in result.stdout
    return out


@pytest.fixture(scope="module")
def svm_bundle(svm_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("svm-bundle") / "lm.ferlite"
    result = run_cli("convert", svm_run / "model.keras", "--calibration", JAFFE, "--calibration-size", "12",
                     "--min-agreement", "0.9", "--max-drop", "10", "-o", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_subject_independent_training_reports(svm_run):
    """Four JAFFE subjects: each is held out once, and the shared report files are written."""
    report = json.loads((svm_run / "report.json").read_text())
    assert report["evaluation"].startswith("leave-one-subject-out") and "4 folds" in report["evaluation"]
    metrics = report["metrics"]
    assert metrics["samples"] == 24 and metrics["accuracy"] > 0.5  # chance: 1/3 (happy, surprise, neutral)
    assert {c["name"] for c in metrics["per_class"] if c["support"]} == {"happy", "surprise", "neutral"}
    assert report["temperature"] > 0 and report["landmark_failures"] == 0
    assert report["l2"] == pytest.approx(400 / 48, rel=1e-4)  # hog default: 400 / (24 faces + 24 mirrored)
    for name in ("report.md", "confusion.png", "model.keras", "config.json"):
        assert (svm_run / name).is_file()
    assert "| happy |" in (svm_run / "report.md").read_text()
    assert list((svm_run / "cache").glob("features-*.npz")), "features are cached in the run folder"


def test_geometry_recipe_trains_too(tmp_path):
    result = run_cli("train", "svm", "--data", JAFFE, "-o", tmp_path / "geometry", "--features", "geometry")
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((tmp_path / "geometry" / "config.json").read_text())
    assert config["preprocess"]["features"] == RECIPES["geometry"]
    assert json.loads((tmp_path / "geometry" / "report.json").read_text())["metrics"]["accuracy"] > 0.5
    result = run_cli("train", "svm", "--data", JAFFE, "-o", tmp_path / "bad", "--features", "pixels")
    assert result.returncode == 2 and result.stderr.startswith("error: unknown feature recipe 'pixels'")


def test_int8_bundle_agrees_with_float(svm_bundle, svm_run):
    from ferlite.bundle import read_bundle
    from ferlite.features import DEFAULT_RECIPE, recipe_size
    from ferlite.inputs import dataset_inputs
    from ferlite.landmarks import MODEL_FILE, file_sha256
    from ferlite.runtime import Predictor
    from ferlite.training.keras_model import keras_probs, load_keras

    bundle = read_bundle(svm_bundle)
    m = bundle.manifest
    assert m.kind == "landmark-svm" and m.input.dtype == "int8"
    assert m.input.shape == [1, recipe_size(RECIPES[DEFAULT_RECIPE])]
    assert m.preprocess["landmark_model"] == MODEL_FILE and m.preprocess["features"] == RECIPES[DEFAULT_RECIPE]
    assert m.preprocess["landmark_sha256"] == file_sha256(find_landmark_model())
    assert m.options["detector"] == "dlib" and m.preprocess["min_side"] > 0
    assert m.metrics["agreement"] >= 0.9 and m.metrics["landmark_failures"] == 0
    x = dataset_inputs(m, np.load(JAFFE)["images"])
    int8 = Predictor(bundle).predict(x).argmax(1)
    flt = keras_probs(load_keras(svm_run / "model.keras"), x).argmax(1)
    assert (int8 == flt).mean() >= 0.9


def test_failed_landmarks_give_uniform_probabilities(svm_bundle):
    """A box outside the frame has no landmarks: it keeps its place in the batch with 1/K each."""
    import cv2

    from ferlite.bundle import read_bundle
    from ferlite.inputs import Face, face_inputs
    from ferlite.runtime import Predictor

    predictor = Predictor(read_bundle(svm_bundle))
    gray = cv2.imread(str(PHOTO), cv2.IMREAD_GRAYSCALE)
    x = face_inputs(predictor.bundle.manifest, gray, [Face((170, 60, 140, 140)), Face((900, 900, 50, 50))], "dlib")
    probs = predictor.predict(x)
    assert probs.shape == (2, 7) and np.isfinite(x[0]).all() and np.isnan(x[1]).all()
    assert np.allclose(probs[1], 1 / 7) and not np.allclose(probs[0], 1 / 7)
    assert predictor.predict(face_inputs(predictor.bundle.manifest, gray, [], "dlib")).shape == (0, 7)


@pytest.mark.parametrize("which", ["trained", "shipped"])
def test_predict_photo_one_result_per_face(which, svm_bundle):
    """`ferlite predict` gives one result per box the detector finds; her smiling face reads happy."""
    import cv2

    from ferlite.bundles import DEFAULT_LANDMARK_SVM
    from ferlite.config import RunConfig
    from ferlite.device.detectors import make_detector

    defaults = RunConfig()
    boxes = make_detector("dlib", defaults.detect_width, defaults.min_face).detect(cv2.imread(str(PHOTO)))
    bundle = svm_bundle if which == "trained" else DEFAULT_LANDMARK_SVM
    result = run_cli("predict", PHOTO, "--bundle", bundle, "--detector", "dlib", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = json.loads(result.stdout)
    assert len(record["faces"]) == len(boxes) >= 1
    for face in record["faces"]:
        assert abs(sum(face["probs"].values()) - 1) < 0.02 and len(face["probs"]) == 7
    (real,) = [f for f in record["faces"] if f["box"][0] < 220 < f["box"][0] + f["box"][2] and f["box"][1] < 130]
    assert max(real["probs"], key=real["probs"].get) == "happy", real


def test_eval_landmark_bundle(svm_bundle):
    result = run_cli("eval", svm_bundle, "--data", JAFFE, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["samples"] == 24


def test_shipped_bundle_passes_the_gate():
    from ferlite.bundle import read_bundle
    from ferlite.bundles import DEFAULT_LANDMARK_SVM

    m = read_bundle(DEFAULT_LANDMARK_SVM).manifest
    assert m.kind == "landmark-svm" and m.metrics["agreement"] >= 0.97
    assert m.provenance["training_command"].startswith("ferlite train svm")


def test_run_uses_the_bundles_detector_unless_told(svm_bundle, tmp_path):
    import sqlite3
    from contextlib import closing

    for args, expected in (((), "dlib"), (("--detector", "haar"), "haar")):
        db = tmp_path / f"{expected}.db"
        result = run_cli("run", "--source", PHOTO, "--bundle", svm_bundle, "--log", db, *args)
        assert result.returncode == 0, result.stderr[-2000:]
        with closing(sqlite3.connect(db)) as con:
            assert con.execute("SELECT detector FROM runs").fetchone() == (expected,)
