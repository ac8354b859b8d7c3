"""Untrusted input, as an attacker or an unlucky user would give it: images and bundles that claim
gigabytes, config mistakes, and a bounded fuzz over the bundle reader, the TOML reader and image
decoding. Everything is a real file; nothing may escape as a traceback or take the memory."""

from __future__ import annotations

import json
import random
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from conftest import run_cli

from ferlite.bundle import MANIFEST, MODEL, SUMS, read_bundle, sums_text
from ferlite.bundles import DEFAULT_CNN
from ferlite.config import RunConfig, build_config, default_toml
from ferlite.device.sources import BadFrameError, read_image
from ferlite.errors import FerliteError

FIXTURES = Path(__file__).parent / "fixtures"
ASTRONAUT = FIXTURES / "astronaut.jpg"
GROUP = FIXTURES / "group.avi"
MAX_RSS_MB = 200


def _png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A grayscale PNG of zeros claiming width x height; `rows` of them actually written (all by default),
    streamed through zlib so the test itself never holds the image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = bytes(1 + width)
    body = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _peak_rss_mb(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `ferlite ARGS` in a child and return it (its stdout and stderr both in stderr) with the child's
    peak RSS (the wrapper's only child)."""
    code = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); " \
           "sys.stderr.write(r.stdout + r.stderr); sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN)" \
           ".ru_maxrss)); sys.exit(r.returncode)"
    result = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "ferlite", *args],
                            capture_output=True, text=True, timeout=300)
    return result, int(result.stdout.strip() or 0) / 1024


def test_a_74_byte_png_claiming_10_gigapixels_is_one_warning_and_the_folder_run_goes_on(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _png(folder / "a-liar.png", 100_000, 100_000, rows=0)
    (folder / "b-astronaut.jpg").write_bytes(ASTRONAUT.read_bytes())
    assert (folder / "a-liar.png").stat().st_size < 100
    result = run_cli("run", "--source", folder, "--log", tmp_path / "r.db", "--no-status")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.count("a-liar.png: image too large") == 1
    assert "2 frames" not in result.stderr and "1 frames, 1 skipped" in result.stderr


def test_a_20000_square_png_is_refused_before_decoding_in_bounded_memory(tmp_path):
    big = _png(tmp_path / "big.png", 20_000, 20_000)
    assert big.stat().st_size < 1_000_000  # a few hundred KB that would decode to 400 MB
    result, rss = _peak_rss_mb("predict", str(big), "--json")
    assert result.returncode != 0 and "image too large" in result.stderr and "Traceback" not in result.stderr
    assert rss < MAX_RSS_MB, rss


def test_a_bundle_inflating_to_1_5_gb_is_refused_unread_in_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.ferlite"
    with zipfile.ZipFile(DEFAULT_CNN) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        zout.writestr(MANIFEST, zin.read(MANIFEST))
        with zout.open(MODEL, "w", force_zip64=True) as f:
            zeros = bytes(2**24)
            for _ in range(96):  # 1.5 GiB of zeros, about 1.5 MB deflated
                f.write(zeros)
    assert bomb.stat().st_size < 3_000_000
    result, rss = _peak_rss_mb("info", str(bomb))
    assert result.returncode == 2 and "model.tflite would be 1,610,612,736 bytes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert rss < MAX_RSS_MB, rss


@pytest.mark.parametrize(("args", "message"), [
    (["--config", "{folder}"], "is a folder, not a config file"),
    (["--config", "{latin1}"], "not valid TOML (not UTF-8 text)"),
    (["--config", "{width_only}"], "give both width and height"),
    (["--retention-days", "inf"], "--retention-days must be > 0"),
    (["--retention-mb", "nan"], "--retention-mb must be > 0"),
    (["--privacy", "--save-faces", "{folder}"], "--privacy promises never to store"),
    (["--log-format", "jsonl", "--log", "{sqlite}"], "is a SQLite results database"),
    (["--log", "{jsonl}"], "cannot open the results database"),
])
def test_run_mistakes_are_one_line_and_write_nothing(tmp_path, args, message):
    folder = tmp_path / "dir"
    folder.mkdir()
    (tmp_path / "latin1.toml").write_bytes("detector = \"h\xe4ar\"\n".encode("latin-1"))
    (tmp_path / "width.toml").write_text("width = 640\n")
    sqlite = tmp_path / "results.db"
    assert run_cli("run", "--source", GROUP, "--log", sqlite, "--no-status", "--max-frames", "1").returncode == 0
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text('{"type": "run", "run": 1}\n')
    before = {p: p.read_bytes() for p in (sqlite, jsonl)}
    names = {"folder": folder, "latin1": tmp_path / "latin1.toml", "width_only": tmp_path / "width.toml",
             "sqlite": sqlite, "jsonl": jsonl}
    result = run_cli("run", "--source", GROUP, "--no-status", *[a.format(**names) for a in args])
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert {p: p.read_bytes() for p in before} == before and not list(folder.iterdir())


# The fuzz: seeded, bounded (a few seconds), over the three readers that take files from outside.

JSON_VALUES = [None, True, 0, -1, 2**70, 1e308, float("nan"), "", "x" * 300, [], [1, [2]], {}, {"a": {"b": None}},
               [48, 48, 1], {"shape": "1x7"}, "landmark-svm", -0.0]


def _mutate_json(value: object, rng: random.Random, depth: int = 0) -> object:
    """A random change somewhere in a JSON document: a value replaced, a key dropped or added."""
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        roll = rng.random()
        if roll < 0.15:
            return {k: v for k, v in value.items() if k != key}
        if roll < 0.25:
            return {**value, rng.choice(["extra", "format", "kind"]): rng.choice(JSON_VALUES)}
        return {**value, key: _mutate_json(value[key], rng, depth + 1)}
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.5:
        i = rng.randrange(len(value))
        return [*value[:i], _mutate_json(value[i], rng, depth + 1), *value[i + 1:]]
    return rng.choice(JSON_VALUES)


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    roll = rng.random()
    if roll < 0.3:
        return bytes(out[: rng.randrange(len(out))])
    if roll < 0.5:
        at = rng.randrange(len(out))
        return bytes(out[:at] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + out[at:])
    for _ in range(rng.randrange(1, 16)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_fuzz_bundle_reader_raises_only_bundle_errors(tmp_path):
    rng = random.Random(27)
    raw, members = DEFAULT_CNN.read_bytes(), _members(DEFAULT_CNN)
    manifest = json.loads(members[MANIFEST])
    outcomes = {"refused": 0, "read": 0}
    for n in range(300):
        path = tmp_path / f"{n}.ferlite"
        if n % 3 == 0:  # the file's bytes damaged
            path.write_bytes(_mutate_bytes(raw, rng))
        else:  # a well-formed zip whose manifest a hostile tool changed, checksums made to match
            text = json.dumps(_mutate_json(manifest, rng)).encode() if n % 3 == 1 else _mutate_bytes(
                members[MANIFEST], rng)
            _write_zip(path, {MANIFEST: text, MODEL: members[MODEL],
                              SUMS: sums_text({MANIFEST: text, MODEL: members[MODEL]}).encode()})
        try:
            read_bundle(path)
            outcomes["read"] += 1
        except FerliteError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        path.unlink()
    assert outcomes["refused"] > 250, outcomes


def test_fuzz_toml_reader_raises_only_config_errors(tmp_path):
    rng = random.Random(28)
    text = default_toml().replace("# ", "", 1)
    live = "\n".join(line[2:] for line in default_toml().splitlines() if " = " in line and "<" not in line)
    keys = list(RunConfig.__dataclass_fields__)
    toml_values = ["1", "-1", "0", "1e999", "nan", "inf", "-inf", "true", '"x"', '""', "[]", "[1, 2]", "{}",
                   '"/dev/video0"', "2026-12-03", "9999999999999999999999", '"\\u0000"']
    path = tmp_path / "f.toml"
    refused = 0
    for n in range(400):
        if n % 4 == 0:
            path.write_bytes(_mutate_bytes(live.encode(), rng))
        elif n % 4 == 1:
            path.write_bytes(_mutate_bytes(text.encode(), rng))
        else:
            lines = [f"{rng.choice(keys)} = {rng.choice(toml_values)}" for _ in range(rng.randrange(1, 5))]
            path.write_text("\n".join(lines) + "\n")
        try:
            build_config(path, {}, needs_source=False)
        except FerliteError as exc:
            assert "\n" not in str(exc).strip()
            refused += 1
    assert refused > 150


def test_fuzz_image_decoding_raises_only_bad_frame_errors(tmp_path):
    import cv2

    rng = random.Random(29)
    jpeg = ASTRONAUT.read_bytes()
    small = cv2.resize(cv2.imread(str(ASTRONAUT)), (64, 64))
    png = cv2.imencode(".png", small)[1].tobytes()
    decoded = 0
    for n in range(300):
        data = _mutate_bytes(jpeg if n % 2 else png, rng)
        if n % 10 == 0 and data[:8] == png[:8] and len(data) > 24:  # the PNG's claimed size made enormous
            data = data[:16] + struct.pack(">II", rng.randrange(1, 2**31), rng.randrange(1, 2**31)) + data[24:]
        path = tmp_path / f"{n}{'.jpg' if n % 2 else '.png'}"
        path.write_bytes(data)
        try:
            image = read_image(path)
            assert image.dtype.name == "uint8" and image.ndim == 3
            decoded += 1
        except BadFrameError as exc:
            assert "\n" not in str(exc)
        path.unlink()
    assert decoded > 0  # many damaged JPEGs still decode: the point is that nothing else escapes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 < 2000
