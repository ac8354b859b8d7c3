"""`ferlite explain`: occlusion maps that point where the model looks, and the PNGs, index and numbers of the
photo and dataset modes, run as a user runs them, on the device path without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import VAL, run_cli

from ferlite.bundle import read_bundle
from ferlite.bundles import DEFAULT_CNN
from ferlite.config import RunConfig
from ferlite.device import explain
from ferlite.device.detectors import make_detector
from ferlite.device.faces import FaceStep
from ferlite.device.sources import read_image
from ferlite.errors import ConfigError
from ferlite.inputs import Face
from ferlite.runtime import Predictor

ASTRONAUT = Path(__file__).parent / "fixtures" / "astronaut.jpg"
CHECK = "import sys; {body}; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; " \
        "assert not bad, bad; print('clean')"


class BrightSpot:
    """A real, if simple, model: 'spot' the more certain the brighter the brightest 8 x 8 square of the face,
    wherever it is; hiding that square is what lowers it most."""

    labels = ("spot", "plain")

    def predict(self, faces: np.ndarray) -> np.ndarray:
        local = np.stack([cv2.blur(f.astype(np.float32), (8, 8)) for f in faces]).reshape(len(faces), -1).max(1)
        spot = 1 / (1 + np.exp(-(local - 140) / 10))
        return np.stack([spot, 1 - spot], axis=1)


def spot_face(y: int, x: int) -> np.ndarray:
    face = np.full((48, 48), 100, np.uint8)
    face[y:y + 8, x:x + 8] = 230
    return face


def test_the_hottest_cell_is_where_the_model_looks_and_moves_with_it():
    model = BrightSpot()
    for y, x in [(8, 8), (8, 32), (32, 20)]:
        probs, drops = explain.occlusion_grid(model, spot_face(y, x))
        assert probs.argmax() == 0 and drops.shape == (2, 11, 11)
        assert explain.hottest(drops[0]) == (y // 4, x // 4)  # the patch at the spot's corner covers it whole
        assert np.allclose(drops[0], -drops[1])  # two classes: what one loses the other gains
        heat = explain.pixel_map(drops[0], 48)
        assert heat.shape == (48, 48) and np.unravel_index(heat.argmax(), heat.shape) in [
            (r, c) for r in range(y, y + 8) for c in range(x, x + 8)]


def test_occlusion_explains_the_predicted_class_and_the_runner_up(tmp_path):
    (item,) = explain.explain_faces(BrightSpot(), spot_face(20, 12)[None], explain.Occlusion(patch=8, stride=4))
    assert item.classes == [0, 1] and [name for name, _ in item.maps] == ["occlusion: spot", "occlusion: plain"]
    png = explain.face_png(item, BrightSpot.labels, "a bright spot", tmp_path / "spot.png")
    height, width = cv2.imread(str(png)).shape[:2]
    assert (width, height) == explain.face_png_size(2)
    with pytest.raises(ConfigError, match="does not fit"):
        explain.occlusion_grid(BrightSpot(), spot_face(20, 12), explain.Occlusion(patch=60))


def test_the_int8_model_hottest_cell_follows_a_real_face_across_the_input():
    """The astronaut's face framed 16 input pixels to the left, then to the right: the part of it that
    carries the label (her smile) is found further left, then further right."""
    cfg = RunConfig()
    step = FaceStep(make_detector("yunet", cfg.detect_width, cfg.min_face), Predictor(read_bundle(DEFAULT_CNN)))
    image = read_image(ASTRONAUT)
    (face,) = step.find(image)
    x, y, w, h = face.box
    side = 1.1351 * np.sqrt(w * h)  # FER2013's YuNet framing: one input side in photo pixels
    cols = {}
    for moved in (-16, 16):  # the box moves the other way to move the face in the input
        d = -moved / 48 * side
        shifted = Face((int(round(x + d)), y, w, h), face.landmarks + [d, 0], face.score)
        probs, drops = explain.occlusion_grid(step.predictor, step.inputs(image, [shifted])[0])
        assert step.predictor.labels[int(probs.argmax())] == "happy"
        cols[moved] = explain.hottest(drops[int(probs.argmax())])[1]
    assert cols[16] - cols[-16] >= 3, cols  # 8 cells for 32 pixels at stride 4, give or take her wide smile


def test_confused_pairs_and_reliability_count_every_face():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    probs = np.eye(3)[[1, 1, 0, 2, 1, 1, 2, 2]] * 0.8 + 0.2 / 3
    confusion = np.bincount(y * 3 + probs.argmax(1), minlength=9).reshape(3, 3)
    assert explain.confused_pairs(confusion, 2) == [(0, 1), (1, 2)]
    assert explain.confused_pairs(np.eye(3, dtype=int), 4) == []
    classes = explain.reliability(y, probs)
    assert all(sum(b["faces"] for b in c["bins"]) == len(y) for c in classes)


def _no_tensorflow(args: list[str]) -> subprocess.CompletedProcess:
    """`ferlite ARGS` inside one fresh interpreter, which then says whether TensorFlow was ever imported."""
    body = f"from ferlite.cli import app; app({[str(a) for a in args]!r}, standalone_mode=False)"
    return subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True,
                          timeout=300)


def _json(stdout: str):
    assert stdout.rstrip().endswith("clean"), stdout[-500:]
    return json.loads(stdout.rstrip()[: -len("clean")])


def test_explain_photos_on_the_int8_bundle_without_tensorflow(tmp_path):
    blank, broken = tmp_path / "blank.png", tmp_path / "broken.jpg"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    broken.write_bytes(b"not a photo")
    result = _no_tensorflow(["explain", ASTRONAUT, blank, broken, "-o", tmp_path / "out", "--json"])
    assert result.returncode == 0, result.stderr[-2000:]
    astronaut, faceless, unreadable = _json(result.stdout)
    assert faceless["faces"] == [] and "error" not in faceless and unreadable["error"] == "unreadable image"
    (face,) = astronaut["faces"]
    height, width = cv2.imread(face["png"]).shape[:2]
    assert (width, height) == explain.face_png_size(2)
    probs = face["probs"]
    assert abs(sum(probs.values()) - 1) < 2e-3 and face["label"] == max(probs, key=probs.get)
    assert set(face["occlusion"]) == {face["label"], face["runner_up"]}
    assert np.array(face["occlusion"][face["label"]]["grid"]).shape == (11, 11)
    predicted = json.loads(run_cli("predict", ASTRONAUT, "--json").stdout)[0]["faces"][0]
    assert (predicted["label"], predicted["box"]) == (face["label"], face["box"])
    assert abs(predicted["confidence"] - face["confidence"]) < 1e-3
    assert "astronaut.face1.png" in (tmp_path / "out" / "index.html").read_text()


def test_explain_says_when_no_photo_has_a_face(tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    result = run_cli("explain", blank, "-o", tmp_path / "out")
    assert result.returncode != 0 and "error: no face found in any of the 1 photos" in result.stderr
    assert "no face found" in result.stdout and "Traceback" not in result.stderr


def test_explain_data_on_the_int8_bundle_without_tensorflow(tmp_path):
    out = tmp_path / "out"
    result = _no_tensorflow(["explain", "--data", VAL, "-o", out, "--json", "--pairs", "3", "--per-pair", "4"])
    assert result.returncode == 0, result.stderr[-2000:]
    report = _json(result.stdout)
    from ferlite.evaluate import evaluate_bundle

    metrics, _ = evaluate_bundle(DEFAULT_CNN, str(VAL))
    assert report["accuracy"] == round(metrics.accuracy, 4) and report["confusion"] == metrics.confusion
    assert 0 < len(report["confused_pairs"]) <= 3
    labels = report["labels"]
    for pair in report["confused_pairs"]:
        assert pair["count"] == metrics.confusion[labels.index(pair["true"])][labels.index(pair["predicted"])]
        confidences = [e["confidence"] for e in pair["examples"]]
        assert 0 < len(confidences) <= 4 and confidences == sorted(confidences, reverse=True)
    for cls in report["reliability"].values():
        assert sum(b["faces"] for b in cls["bins"]) == report["samples"] == 120
    index = (out / "index.html").read_text()
    for name in ("confusion.png", "errors.png", "reliability.png"):
        assert cv2.imread(str(out / name)) is not None and name in index


@pytest.mark.parametrize(("args", "message"), [
    ([], "give photos or --data DATA"),
    (["--data", "no-such.npz"], "no-such.npz: no such file or folder"),
    (["--data", str(VAL), "--bundle", "landmark-svm"], "give a CNN bundle"),
    (["no-such.jpg"], "no such image or folder: no-such.jpg"),
])
def test_explain_mistakes_are_one_line(tmp_path, args, message):
    result = run_cli("explain", *args, "-o", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_explain_with_a_keras_model_adds_grad_cam_and_the_first_layer(tmp_path):
    pytest.importorskip("tensorflow")
    from ferlite.training.from_bundle import keras_from_bundle

    model = tmp_path / "cnn.keras"
    keras_from_bundle(read_bundle(DEFAULT_CNN)).save(model)
    # oneDNN on, as ferlite turns it on outside the tests: its eager gradients once crashed Grad-CAM
    result = run_cli("explain", ASTRONAUT, "--bundle", model, "-o", tmp_path / "photos", "--json",
                     env={"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    (face,) = json.loads(result.stdout)[0]["faces"]
    height, width = cv2.imread(face["png"]).shape[:2]
    assert (width, height) == explain.face_png_size(4) and face["label"] == "happy"
    result = run_cli("explain", "--data", VAL, "--bundle", model, "-o", tmp_path / "data")
    assert result.returncode == 0, result.stderr[-2000:]
    assert cv2.imread(str(tmp_path / "data" / "first-layer.png")) is not None
    assert "first-layer.png" in (tmp_path / "data" / "index.html").read_text()
