"""`ferlite train cnn` learns on real faces and writes its reports."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_train_cnn_learns_and_reports(trained_run):
    report = json.loads((trained_run / "report.json").read_text())
    accuracy = report["metrics"]["accuracy"]
    # Three balanced classes: the majority-class rate is 1/3.
    assert accuracy > 0.5, accuracy
    assert report["epochs_run"] == 25
    assert report["command"].startswith("ferlite train cnn")
    support = {c["name"]: c["support"] for c in report["metrics"]["per_class"] if c["support"]}
    assert support == {"happy": 40, "surprise": 40, "neutral": 40}
    assert np.array(report["metrics"]["confusion"]).sum() == 120
    for name in ("model.keras", "report.md", "curves.png", "confusion.png", "history.csv"):
        assert (trained_run / name).stat().st_size > 0, name
    assert (trained_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_training_resumes_where_it_stopped(tmp_path):
    """Killed after its second epoch, `--resume` goes on from the backup with the saved options (only -o
    is needed): every epoch runs exactly once, and best.keras is only replaced by a better epoch; one
    killed after its epochs but before its reports only writes those.
    Starting over the same folder is refused, and so is a new run without --data."""
    import csv
    import signal
    import subprocess
    import sys
    import time

    from conftest import TRAIN, VAL, run_cli

    out = tmp_path / "run"
    args = ["train", "cnn", "--data", TRAIN, "--val", VAL, "-o", out, "--width", "0.25", "--epochs", "6",
            "--batch-size", "32", "--augment", "light"]
    proc = subprocess.Popen([sys.executable, "-m", "ferlite", *map(str, args)], stderr=subprocess.DEVNULL)
    history = out / "history.csv"
    deadline = time.monotonic() + 300
    while (not history.is_file() or len(history.read_text().splitlines()) < 3) and proc.poll() is None:
        assert time.monotonic() < deadline, "no epoch finished in 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with history.open(newline="") as f:
        before = list(csv.DictReader(f))
    assert 2 <= len(before) < 6 and (out / "backup").is_dir()

    refused = run_cli(*args)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    unnamed = run_cli("train", "cnn", "-o", tmp_path / "other")
    assert unnamed.returncode == 2 and "--data" in unnamed.stderr and not (tmp_path / "other").exists()
    resumed = run_cli("train", "cnn", "-o", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with history.open(newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    assert sorted(set(epochs)) == list(range(6)) and epochs[-1] == 5
    assert not (out / "backup").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["augment"] == "light"
    assert abs(report["metrics"]["accuracy"] - max(float(r["val_accuracy"]) for r in rows)) < 1e-3

    (out / "report.json").unlink()  # killed after its last epoch, before its reports: no epoch runs again
    (out / "model.keras").unlink()
    again = run_cli("train", "cnn", "-o", out, "--resume")
    assert again.returncode == 0 and (out / "report.json").is_file() and (out / "model.keras").is_file()
    assert len(history.read_text().splitlines()) == len(rows) + 1


def test_fine_tuning_and_distillation_start_from_the_given_model(trained_run, tmp_path):
    """--init continues from trained weights: two epochs at a small learning rate, distilling from the
    same model, already score like the 25-epoch model, where a fresh model is near chance. A model
    with other classes, or an unknown --augment, is a one-line error."""
    from conftest import TRAIN, VAL, run_cli

    args = ["train", "cnn", "--data", TRAIN, "--val", VAL, "--init", trained_run / "model.keras",
            "--teacher", trained_run / "model.keras", "--epochs", "2", "--batch-size", "16",
            "--learning-rate", "2e-4"]
    tuned = run_cli(*args, "-o", tmp_path / "tuned")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    before = json.loads((trained_run / "report.json").read_text())["metrics"]["accuracy"]
    after = json.loads((tmp_path / "tuned" / "report.json").read_text())["metrics"]["accuracy"]
    assert after > 0.5 and after >= before - 0.1, (before, after)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["teachers"] == [str(trained_run / "model.keras")] and config["distill"] == 0.5

    wrong = run_cli(*args, "--labels", "fer6", "-o", tmp_path / "wrong")
    assert wrong.returncode == 2 and "6 classes (fer6)" in wrong.stderr and "Traceback" not in wrong.stderr
    unknown = run_cli(*args, "--augment", "heavy", "-o", tmp_path / "unknown")
    assert unknown.returncode == 2 and "unknown augmentation 'heavy'" in unknown.stderr


def test_a_bundle_teaches_with_its_int8_probabilities(tmp_path):
    """--teacher takes a .ferlite bundle: the shipped default, run on the device runtime with flip-TTA,
    gives soft targets that name the labelled class for most committed faces, mixed half and half with
    the labels. A bundle with other classes than the run's is a one-line error."""
    from conftest import TRAIN, VAL, run_cli

    from ferlite.bundles import DEFAULT_CNN
    from ferlite.datasets import load_dataset
    from ferlite.training.cnn import CnnConfig, _distilled, _targets

    cfg = CnnConfig(data=str(TRAIN), val=str(VAL), out=str(tmp_path / "unused"), teachers=[str(DEFAULT_CNN)])
    train, onehot = _targets(load_dataset(cfg.data), cfg)
    targets = _distilled(train, onehot, cfg)
    np.testing.assert_allclose(targets.sum(axis=1), 1, atol=1e-3)
    teacher = 2 * targets - onehot
    assert (teacher >= -1e-3).all() and 0 < teacher.max(axis=1).min() < 1
    assert (teacher.argmax(axis=1) == train.labels).mean() > 0.7

    wrong = run_cli("train", "cnn", "--data", TRAIN, "--val", VAL, "-o", tmp_path / "wrong", "--labels", "fer6",
                    "--teacher", DEFAULT_CNN)
    assert wrong.returncode == 2 and "must give the 6 classes of fer6" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_random_erasing_and_mixup_vary_real_faces_and_their_targets():
    """Training batches are full and reshuffled each epoch; random erasing replaces one patch of every
    face with --erase 1 and leaves the rest of it as the other augmentations made it; mixup blends
    each target with one other of its batch, so targets stay distributions over two classes at most. A batch
    is the same whichever batch the worker threads make before it, so a run can be repeated."""
    from conftest import TRAIN

    from ferlite.datasets import load_dataset
    from ferlite.quiet import import_keras
    from ferlite.training.augment import Augment, batches

    import_keras()
    faces = load_dataset(str(TRAIN))
    onehot = np.eye(7, dtype=np.float32)[faces.labels]
    ones = np.ones(len(faces), np.float32)

    def first(augment):
        return [np.asarray(a) for a in batches(faces.images, onehot, ones, 32, augment, seed=3)[0]]

    plain, erased = first(Augment()), first(Augment(erase=1.0))
    changed = (np.abs(erased[0] - plain[0]) > 1e-3).reshape(32, -1).mean(axis=1)
    assert (changed > 0.005).all() and (changed < 0.5).all(), changed
    np.testing.assert_array_equal(erased[1], plain[1])

    mixed = batches(faces.images, onehot, ones, 32, Augment(mixup=0.4), seed=3)
    targets = np.asarray(mixed[0][1])
    np.testing.assert_allclose(targets.sum(axis=1), 1, atol=1e-5)
    assert ((targets > 1e-6).sum(axis=1) <= 2).all() and (targets.max(axis=1) < 0.95).mean() > 0.2

    assert len(mixed) == len(faces) // 32
    again = batches(faces.images, onehot, ones, 32, Augment(mixup=0.4), seed=3)
    np.testing.assert_array_equal(np.asarray(again[1][0]), np.asarray(mixed[1][0]))  # whichever batch comes first
    order = mixed.order.copy()
    mixed.on_epoch_end()
    assert sorted(mixed.order) == list(range(len(faces))) and (mixed.order != order).any()
    val = batches(faces.images, onehot, ones, 32, None)
    assert len(val) == -(-len(faces) // 32) and np.asarray(val[0][0])[0, ..., 0].tolist() == faces.images[0].tolist()


def test_sgd_erasing_and_mixup_train_and_are_recorded(tmp_path):
    """The literature's recipe (SGD with Nesterov momentum, random erasing, mixup) trains on the committed
    faces, and the run records it; an unknown optimizer or an erase share above 1 is a one-line error."""
    from conftest import TRAIN, VAL, run_cli

    args = ["train", "cnn", "--data", TRAIN, "--val", VAL, "--width", "0.5", "--epochs", "12", "--batch-size", "16",
            "--optimizer", "sgd", "--learning-rate", "0.05", "--erase", "0.5", "--mixup", "0.2"]
    run = run_cli(*args, "-o", tmp_path / "sgd")
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "sgd" / "report.json").read_text())
    assert {k: report["config"][k] for k in ("optimizer", "erase", "mixup")} == {"optimizer": "sgd", "erase": 0.5,
                                                                                 "mixup": 0.2}
    assert report["metrics"]["accuracy"] > 0.45, report["metrics"]["accuracy"]

    for bad, message in ((["--optimizer", "adam"], "unknown optimizer 'adam'"),
                         (["--erase", "1.5"], "--erase must be between 0 and 1")):
        refused = run_cli(*args, *bad, "-o", tmp_path / "bad")
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "bad").exists()


def test_ferplus_votes_soften_fer2013_labels(tmp_path):
    """--ferplus-share mixes the ten FER+ annotators' votes into each FER2013 label where FER+ has a clear
    majority: a face voted 3 surprise / 7 anger keeps half its label and gets 0.15 / 0.35 of the rest;
    contempt votes drop out, fer6 puts disgust votes on angry, unknown or tied faces keep their label.
    A dataset without FER2013 row numbers, or a share above 1, is a one-line error."""
    from conftest import FIXTURES, VAL, run_cli

    from ferlite.datasets import load_dataset
    from ferlite.labels import FER6, FER7, ferplus_targets
    from ferlite.training.cnn import CnnConfig, _targets, _with_votes

    votes_csv = FIXTURES / "ferplus_mini_val.csv"  # the FER+ rows of VAL's faces, in VAL's order
    faces = tmp_path / "val.npz"
    with np.load(VAL) as npz:
        np.savez(faces, **{k: npz[k] for k in ("images", "labels", "label_names")}, index=np.arange(120))
    votes = np.loadtxt(votes_csv, delimiter=",", skiprows=1, usecols=range(2, 12))
    assert votes[1, [2, 4]].tolist() == [3, 7] and votes[1].sum() == 10

    cfg = CnnConfig(data=str(faces), val="", out=str(tmp_path / "unused"), ferplus_csv=str(votes_csv),
                    ferplus_share=0.5)
    train, onehot = _targets(load_dataset(cfg.data), cfg)
    targets = _with_votes(train, onehot, cfg)
    np.testing.assert_allclose(targets.sum(axis=1), 1, atol=1e-6)
    assert targets[1, FER7.index("angry")] == pytest.approx(0.5 * onehot[1, 0] + 0.35)
    assert targets[1, FER7.index("surprise")] == pytest.approx(0.5 * onehot[1, 5] + 0.15)
    unchanged = (targets == onehot).all(axis=1)
    keep = ferplus_targets(votes.astype(int))[1]  # the 112 faces `eval --ferplus` keeps
    assert keep.sum() == 112 and unchanged[~keep].all() and 40 < (~unchanged).sum() < 112

    fer6 = CnnConfig(**{**cfg.__dict__, "labels": "fer6"})
    train6, onehot6 = _targets(load_dataset(cfg.data), fer6)
    targets6 = _with_votes(train6, onehot6, fer6)
    disgusted = np.flatnonzero((votes[:, 5] > 0) & ~unchanged)[0]
    assert targets6.shape[1] == len(FER6) and disgusted in train6.index
    row = list(train6.index).index(disgusted)
    share = votes[disgusted, [4, 5]].sum() / votes[disgusted, :7].sum()
    assert targets6[row, FER6.index("angry")] == pytest.approx(0.5 * onehot6[row, 0] + 0.5 * share)

    args = ["train", "cnn", "--val", VAL, "-o", tmp_path / "bad"]
    for data, share, message in ((FIXTURES / "jaffe_mini.npz", "0.5", "row numbers"),
                                 (faces, "1.5", "--ferplus-share must be between 0 and 1")):
        refused = run_cli(*args, "--data", data, "--ferplus-share", share)
        assert refused.returncode == 2 and message in refused.stderr and refused.stderr.count("\n") == 1
        assert not (tmp_path / "bad").exists()
