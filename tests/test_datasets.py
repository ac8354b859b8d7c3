"""Datasets: FER2013 CSV, .npz and folders load into the same arrays; bad input names the file and row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FIXTURES, VAL, run_cli

from ferlite.bundle import read_bundle
from ferlite.datasets import load_dataset
from ferlite.errors import DatasetError
from ferlite.labels import FER6, FER7, canonical, ferplus_targets
from ferlite.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def val():
    return load_dataset(VAL)


def _write_csv(path, val, rows=None, usage=("Training", "PublicTest")):
    lines = ["emotion,pixels,Usage"]
    for i, (img, label) in enumerate(zip(val.images, val.labels)):
        lines.append(f"{label},{' '.join(map(str, img.ravel()))},{usage[i % 2]}")
    for line_no, text in (rows or {}).items():
        lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def test_npz_csv_and_folder_agree(val, tmp_path):
    import cv2

    csv_path = _write_csv(tmp_path / "fer2013.csv", val)
    whole = load_dataset(csv_path)
    assert np.array_equal(whole.images, val.images) and np.array_equal(whole.labels, val.labels)
    public = load_dataset(f"{csv_path}:PublicTest")
    assert len(public) == len(val) // 2 and np.array_equal(public.images, val.images[1::2])
    assert list(public.index) == list(range(1, len(val), 2))

    for i, (img, label) in enumerate(zip(val.images, val.labels)):
        folder = tmp_path / "faces" / ("Happiness" if FER7[label] == "happy" else FER7[label])
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    tree = load_dataset(tmp_path / "faces")
    assert tree.label_names == ("happy", "neutral", "surprise")
    assert sorted(tree.relabel(FER7).labels.tolist()) == sorted(val.labels.tolist())
    resized = load_dataset(tmp_path / "faces", PreprocessSpec(size=64))
    assert resized.images.shape == (len(val), 64, 64) and resized.images.dtype == np.uint8


def test_csv_errors_name_file_and_row(val, tmp_path):
    bad_pixels = _write_csv(tmp_path / "a.csv", val, {5: "3,1 2 3,Training"})
    with pytest.raises(DatasetError, match=r"a\.csv:5: expected 2304 pixel values"):
        load_dataset(bad_pixels)
    bad_label = _write_csv(tmp_path / "b.csv", val, {3: f"9,{' '.join(['0'] * 2304)},Training"})
    with pytest.raises(DatasetError, match=r"b\.csv:3: emotion 9 outside"):
        load_dataset(bad_label)
    (tmp_path / "c.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(DatasetError, match="expected FER2013 columns"):
        load_dataset(tmp_path / "c.csv")


def test_folder_errors(tmp_path, val):
    import cv2

    (tmp_path / "x" / "happy").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty class folder"):
        load_dataset(tmp_path / "x")
    (tmp_path / "y" / "smirk").mkdir(parents=True)
    with pytest.raises(DatasetError, match="unknown emotion label 'smirk'"):
        load_dataset(tmp_path / "y")
    sizes = tmp_path / "z" / "happy"
    sizes.mkdir(parents=True)
    cv2.imwrite(str(sizes / "a.png"), val.images[0])
    cv2.imwrite(str(sizes / "b.png"), cv2.resize(val.images[1], (60, 60)))
    with pytest.raises(DatasetError, match=r"b\.png: size 60x60 differs"):
        load_dataset(tmp_path / "z")
    (sizes / "c.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"c\.png: unreadable image"):
        load_dataset(tmp_path / "z", PreprocessSpec())


def test_cli_reports_dataset_errors_in_one_line(tiny_bundle, tmp_path):
    result = run_cli("eval", tiny_bundle, "--data", tmp_path / "missing.npz")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.npz'}: no such file or folder"


def test_label_sets():
    assert canonical("Anger") == "angry" and canonical("SADNESS") == "sad"
    fer6 = load_dataset(VAL).relabel(FER6)
    assert fer6.label_names == FER6 and len(fer6) == 120
    votes = np.array([[6, 0, 0, 0, 4, 0, 0, 0, 0, 0],   # neutral by majority
                      [0, 0, 0, 0, 0, 0, 0, 0, 8, 2],   # unknown: dropped
                      [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]])  # tie: dropped
    labels, keep = ferplus_targets(votes)
    assert keep.tolist() == [True, False, False] and labels[0] == 0
    soft, _ = ferplus_targets(votes, soft=True)
    assert np.allclose(soft[0, [0, 4]], [0.6, 0.4])


def test_eval_against_ferplus_majority(tmp_path):
    """`ferlite eval --ferplus` scores the same faces against FER+'s ten-annotator majority instead of
    FER2013's single label: some faces change class, unknown and tied ones drop out."""
    from ferlite.bundles import DEFAULT_CNN
    from ferlite.inputs import dataset_inputs
    from ferlite.runtime import Predictor

    votes_csv = FIXTURES / "ferplus_mini_val.csv"  # the FER+ rows of VAL's faces, in VAL's order
    faces = tmp_path / "val.npz"
    with np.load(VAL) as npz:
        np.savez(faces, **{k: npz[k] for k in ("images", "labels", "label_names")}, index=np.arange(120))
    result = run_cli("eval", "--data", faces, "--ferplus", "--ferplus-csv", votes_csv, "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)

    relabelled, shares = load_dataset(faces).with_ferplus_labels(votes_csv)
    assert got["truth"] == "FER+ majority" and got["samples"] == len(relabelled) == 112
    assert shares.shape == (112, 8) and np.allclose(shares.sum(axis=1), 1)
    original = load_dataset(faces).subset(relabelled.index)  # index = position here
    assert 0 < sum(a != b for a, b in zip(original.relabel(FER7).labels, relabelled.relabel(FER7).labels)) < 20
    bundle = read_bundle(DEFAULT_CNN)
    predicted = Predictor(bundle).predict(dataset_inputs(bundle.manifest, relabelled.images)).argmax(axis=1)
    assert got["accuracy"] == pytest.approx(np.mean(predicted == relabelled.relabel(FER7).labels))

    no_rows = run_cli("eval", "--data", FIXTURES / "jaffe_mini.npz", "--ferplus")
    assert no_rows.returncode == 2 and no_rows.stderr.count("\n") == 1 and "row numbers" in no_rows.stderr


def test_eval_on_photos_finds_each_face_first(tmp_path):
    """`ferlite eval --detector` scores photos as the device sees them: JAFFE faces placed off-centre
    in larger frames are found and cropped, and score as well as the crops themselves; without it
    the whole frame is taken for the face."""
    with np.load(FIXTURES / "jaffe_mini.npz") as npz:
        faces = {k: npz[k] for k in ("images", "labels", "label_names")}
    frames = np.full((len(faces["images"]), 240, 320), 128, np.uint8)
    frames[:, 40:140, 170:270] = faces["images"]
    photos = tmp_path / "photos.npz"
    np.savez(photos, **{**faces, "images": frames})

    def accuracy(data, *args):
        result = run_cli("eval", "--data", data, "--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    crops, found = accuracy(FIXTURES / "jaffe_mini.npz"), accuracy(photos, "--detector", "haar")
    assert found["images"] == 24 and found["no_face"] == 0 and found["samples"] == 24
    assert found["accuracy"] >= 0.75 and abs(found["accuracy"] - crops["accuracy"]) <= 0.125
    assert accuracy(photos)["accuracy"] < found["accuracy"] - 0.2

    blank = tmp_path / "blank.npz"
    np.savez(blank, **{**faces, "images": np.full_like(frames, 128)})
    result = run_cli("eval", "--data", blank, "--detector", "haar")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {blank}: the haar detector finds no face in any image"
