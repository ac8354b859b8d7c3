"""The CLI as a new user meets it: output piped to a file, shipped bundles by name, wrong inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferlite.config import CONFIG_ONLY

FIXTURES = Path(__file__).parent / "fixtures"
ASTRONAUT = FIXTURES / "astronaut.jpg"
GROUP = FIXTURES / "group.avi"


def ferlite(*args, cwd: Path) -> subprocess.CompletedProcess:
    """`ferlite ARGS` with stdout a pipe, as in `ferlite ... | cat`."""
    return subprocess.run([sys.executable, "-m", "ferlite", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, text: str) -> bool:
    return result.returncode != 0 and result.stderr.count("\n") == 1 and text in result.stderr


def test_version(tmp_path):
    from ferlite import __version__

    result = ferlite("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"ferlite {__version__}\n"


def test_piped_tables_print_every_column_whole(tmp_path):
    deep = tmp_path / "a folder with a long name" / "and another one"
    deep.mkdir(parents=True)
    shutil.copy(ASTRONAUT, deep / "astronaut.jpg")
    predicted = ferlite("predict", deep / "astronaut.jpg", cwd=tmp_path)
    assert predicted.returncode == 0 and "…" not in predicted.stdout
    assert str(deep / "astronaut.jpg") in predicted.stdout and "probability" in predicted.stdout
    run = ferlite("run", "--source", GROUP, "--log", "r.db", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = ferlite("log", "summary", "r.db", cwd=tmp_path)
    assert summary.returncode == 0 and "…" not in summary.stdout
    for column in ("started (UTC)", "detector", "uncertain", "faces per label", "group.avi", "yunet"):
        assert column in summary.stdout, column


def test_shipped_bundles_by_short_name_and_info_kept_short(tmp_path):
    info = ferlite("info", "landmark-svm", cwd=tmp_path)
    assert info.returncode == 0 and "kind landmark-svm" in info.stdout
    assert len(info.stdout.splitlines()) < 20 and "[1764 values]" in info.stdout  # not 580 lines of floats
    assert "shipped bundles" in info.stdout and "cnn" in info.stdout
    whole = json.loads(ferlite("info", "landmark-svm", "--json", cwd=tmp_path).stdout)
    assert len(whole["manifest"]["preprocess"]["standardize"]["mean"]) == 1764  # --json keeps everything
    predicted = ferlite("predict", ASTRONAUT, "--bundle", "cnn", "--json", cwd=tmp_path)
    assert predicted.returncode == 0 and len(json.loads(predicted.stdout)[0]["faces"]) == 1
    missing = ferlite("info", "no-such-bundle", cwd=tmp_path)
    assert one_line_error(missing, "no such bundle file (shipped bundles: cnn, landmark-svm)")


def test_predict_takes_a_folder(tmp_path):
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    shutil.copy(ASTRONAUT, tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not a photo")
    result = ferlite("predict", tmp_path, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [Path(r["image"]).name for r in json.loads(result.stdout)] == ["a.jpg", "b.jpg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert one_line_error(ferlite("predict", empty, cwd=tmp_path), "folder holds no images")
    assert one_line_error(ferlite("predict", tmp_path / "nope", cwd=tmp_path), "no such image or folder")


def test_wrong_files_are_one_line_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    shutil.copy(tmp_path / "notes.txt", tmp_path / "notes.jpg")
    assert one_line_error(ferlite("log", "summary", "notes.txt", cwd=tmp_path), "not a ferlite results log")
    run = ferlite("run", "--source", "notes.jpg", "--log", "r.db", cwd=tmp_path)
    assert run.returncode != 0 and run.stderr.splitlines()[-1] == "error: notes.jpg: no frame could be used"


def test_eval_output_starts_with_its_result_and_names_what_it_wrote(tmp_path):
    result = ferlite("eval", "--data", FIXTURES / "fer_mini_val.npz", "--plot", "cm.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].strip() and "ECE" in result.stdout  # no blank lines first
    assert (tmp_path / "cm.png").is_file() and "wrote cm.png" in result.stderr
    as_json = ferlite("eval", "--data", FIXTURES / "fer_mini_val.npz", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout)["samples"] == 120


def test_config_init_comments_each_key_and_lists_only_real_flags(tmp_path):
    text = ferlite("config", "init", "-", cwd=tmp_path).stdout
    lines = text.splitlines()
    comment = {lines[i + 1].split(" = ")[0][2:]: lines[i] for i in range(len(lines) - 1) if " = " in lines[i + 1]}
    assert "width" in comment["width"].lower() and "height" in comment["height"].lower()
    assert "resolution" not in comment  # not a config key
    run_help = ferlite("run", "--help", cwd=tmp_path).stdout
    for key in comment:
        if key in CONFIG_ONLY:
            assert "(config file only)" in comment[key] and f"--{key.replace('_', '-')}" not in run_help, key
        elif key not in ("width", "height"):
            assert f"--{key.replace('_', '-')}" in run_help, key
    assert "mqtt_password" in CONFIG_ONLY  # a secret is never typed on a command line


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here: its status is real")
def test_service_status_without_systemd_is_an_error(tmp_path):
    result = ferlite("service", "status", "--log", tmp_path / "r.db", cwd=tmp_path)
    assert result.returncode != 0 and "error:" in result.stderr


def test_reading_a_log_leaves_no_files_behind(tmp_path):
    folder = tmp_path / "a log? #1"  # characters a SQLite URI must escape
    folder.mkdir()
    assert ferlite("run", "--source", GROUP, "--log", folder / "r.db", cwd=tmp_path).returncode == 0
    for command in (("log", "summary"), ("log", "export", "--csv", "-")):
        result = ferlite(*command[:2], folder / "r.db", *command[2:], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["r.db"]  # no -wal, no -shm


HIDE_TENSORFLOW = ("import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; sys.argv[0] = 'ferlite'; "
                   "from ferlite.cli import main; main()")


def test_train_without_tensorflow_is_one_line_and_leaves_no_run_folder(tmp_path):
    result = subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW, "train", "cnn", "--data",
                             str(FIXTURES / "fer_mini_train.npz"), "--val", str(FIXTURES / "fer_mini_val.npz"),
                             "-o", "runs/x"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert one_line_error(result, "needs TensorFlow: pip install 'ferlite[train]'")
    assert not (tmp_path / "runs").exists()


def test_train_help_explains_every_option(tmp_path):
    for command in ("cnn", "svm"):
        lines = ferlite("train", command, "--help", cwd=tmp_path).stdout.splitlines()
        assert not any("list[" in line for line in lines), command
        bare = []
        for i, line in enumerate(lines):
            if not line.lstrip().startswith("-"):
                continue
            parts = re.split(r"\s{2,}", line.strip())
            text = parts[1] if len(parts) > 1 else lines[i + 1].strip() if i + 1 < len(lines) else ""
            if not text or text.startswith(("[default", "[required", "-")):
                bare.append(line.strip())
        assert bare == [], (command, bare)


def test_training_speaks_in_epochs_not_tensorflow_logs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    result = subprocess.run([sys.executable, "-m", "ferlite", "train", "cnn", "--data",
                             str(FIXTURES / "fer_mini_train.npz"), "--val", str(FIXTURES / "fer_mini_val.npz"),
                             "-o", "run", "--epochs", "1", "--width", "0.25", "--batch-size", "16"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if not line.startswith("epoch")] == []


def test_predict_bench_and_eval_read_the_device_config(tmp_path):
    """The service's TOML (camera on, Haar, a larger smallest face) steers predict, bench and eval
    --detector too; its camera is the service's, not theirs."""
    config = tmp_path / "ferlite.toml"
    config.write_text('camera = true\ndetector = "haar"\nmin_face = 200\n')
    predicted = ferlite("predict", ASTRONAUT, "--config", config, "--json", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)[0]["faces"] == []  # her face is about 100 px, under min_face
    flag_wins = ferlite("predict", ASTRONAUT, "--config", config, "--min-face", "40", "--json", cwd=tmp_path)
    assert len(json.loads(flag_wins.stdout)[0]["faces"]) == 1
    bench = ferlite("bench", "--config", config, "--min-face", "40", "--frames", "5", "--warmup", "1", "--json",
                    cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["detector"] == "haar"
    evaluated = ferlite("eval", "--data", FIXTURES / "jaffe_mini.npz", "--detector", "yunet", "--config", config,
                        "--json", cwd=tmp_path)
    assert one_line_error(evaluated, "finds no face in any image")  # min_face 200 from the file


def png_claiming(width: int, height: int, path: Path) -> Path:
    """A tiny PNG whose header claims width x height pixels (one row of data): what an attacker sends."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))
    return path


def test_an_image_claiming_too_many_pixels_is_refused_before_decoding(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    png_claiming(100_000, 100_000, folder / "a_huge.png")  # 177 bytes claiming 10^10 pixels
    png_claiming(9_000, 9_000, folder / "b_big.png")  # 81 M pixels: 243 MB decoded
    shutil.copy(ASTRONAUT, folder / "c.jpg")
    predicted = ferlite("predict", folder, "--json", cwd=tmp_path)
    assert predicted.returncode == 1  # some photos could not be used
    huge, big, ok = json.loads(predicted.stdout)
    assert huge["error"] == big["error"] == "image too large (over 40,000,000 pixels)" and len(ok["faces"]) == 1
    run = ferlite("run", "--source", folder, "--log", "r.db", cwd=tmp_path)
    assert run.returncode == 0 and "run 1: 1 frames, 2 skipped" in run.stderr and "Traceback" not in run.stderr


def test_a_full_disk_is_reported_not_hidden(small_disk, tmp_path):
    from clips import group_clip

    group_clip(tmp_path / "long.avi", 160)  # the pan forth and back, six faces in each frame
    result = ferlite("run", "--source", tmp_path / "long.avi", "--log", small_disk / "r.db", "--no-status",
                     cwd=tmp_path)
    stored = int(re.search(r"(\d+) faces logged", result.stderr).group(1))
    assert result.returncode != 0 and stored < 960
    assert result.stderr.splitlines()[-1].endswith(f"{960 - stored} of 960 faces were lost (the disk was full or "
                                                   "the database locked past the retries; see the warnings above)")
