"""The `.ferlite` bundle: one zip holding manifest.json, model.tflite and SHA256SUMS, checked on every read.

The manifest says everything the device needs to use the model: label names, the input tensor's
quantization, the preprocessing recipe, the accuracy measured at conversion, and where the model
came from. SHA256SUMS (the format `sha256sum -c` reads) covers both members, so a manifest altered
after conversion is refused like an altered model. The one reader and the one writer live here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ferlite.errors import BundleError

FORMAT = 2  # 2: SHA256SUMS covers the manifest too; format 1 bundles (model checksum only) are still read
MAX_MANIFEST_BYTES = 4 * 2**20  # a landmark model's manifest holds a few thousand floats
MAX_MODEL_BYTES = 64 * 2**20  # the shipped models are under 200 KB; a Pi has little memory
MAX_SUMS_BYTES = 4096
DTYPES = ("int8", "uint8", "int16", "float32")
MANIFEST = "manifest.json"
MODEL = "model.tflite"
SUMS = "SHA256SUMS"


@dataclass
class TensorSpec:
    """A model input or output: shape (batch first), dtype name and affine quantization."""

    shape: list[int]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0


@dataclass
class Manifest:
    kind: str
    labels: list[str]
    input: TensorSpec
    output: TensorSpec
    preprocess: dict
    model_sha256: str = ""
    model_bytes: int = 0
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Parse and validate a manifest; every problem is a BundleError naming `where`."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{where}: manifest.json is not valid JSON ({exc.args[0]})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{where}: manifest.json is not a JSON object")
        fmt = data.get("format")
        if not isinstance(fmt, int):
            raise BundleError(f"{where}: manifest has no integer 'format'")
        if fmt > FORMAT:
            raise BundleError(f"{where}: bundle format {fmt} is newer than this ferlite reads ({FORMAT}); "
                              "upgrade ferlite")
        if fmt < 1:
            raise BundleError(f"{where}: unknown bundle format {fmt}")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in data and n in ("kind", "labels", "input", "output",
                                                                     "preprocess", "model_sha256"))
        if missing:
            raise BundleError(f"{where}: manifest lacks {', '.join(missing)}")
        try:
            manifest = cls(**{k: v for k, v in data.items() if k in names})
            manifest.input = TensorSpec(**manifest.input)
            manifest.output = TensorSpec(**manifest.output)
        except TypeError as exc:
            raise BundleError(f"{where}: malformed manifest ({exc})") from None
        manifest.validate(where)
        return manifest

    def validate(self, where: str) -> None:
        """Every field the device uses, checked now rather than at the first face; one line per problem."""
        from ferlite.inputs import KINDS

        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise BundleError(f"{where}: unknown model kind {self.kind!r} (known: {', '.join(KINDS)})")
        if not isinstance(self.labels, list) or not self.labels or not all(isinstance(n, str) for n in self.labels):
            raise BundleError(f"{where}: manifest labels must be a non-empty list of names")
        for name in ("preprocess", "options", "metrics", "provenance"):
            if not isinstance(getattr(self, name), dict):
                raise BundleError(f"{where}: manifest {name} must be a JSON object")
        for name, spec in (("input", self.input), ("output", self.output)):
            if not (isinstance(spec.shape, list) and spec.shape and all(type(d) is int and d > 0 for d in spec.shape)
                    and spec.dtype in DTYPES and isinstance(spec.scale, int | float) and math.isfinite(spec.scale)
                    and type(spec.zero_point) is int):
                raise BundleError(f"{where}: manifest {name} tensor is malformed (shape of positive integers, "
                                  f"dtype one of {', '.join(DTYPES)}, a finite scale, an integer zero point)")
        if self.output.shape[-1] != len(self.labels):
            raise BundleError(f"{where}: {len(self.labels)} labels but the model outputs "
                              f"{self.output.shape[-1]} classes")
        self._validate_input(where, KINDS[self.kind].images)

    def _validate_input(self, where: str, images: bool) -> None:
        """A face-image model needs a sane square input of its recipe's size; a feature model feature rows."""
        if not images:
            if len(self.input.shape) != 2:
                raise BundleError(f"{where}: a {self.kind} model takes feature rows, but its input is "
                                  f"{self.input.shape}")
            return
        from ferlite.preprocess import PreprocessSpec

        try:
            spec = PreprocessSpec.from_dict(self.preprocess)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{where}: manifest preprocess is malformed ({exc!r})") from None
        if not (8 <= spec.size <= 512 and math.isfinite(spec.margin) and 0 <= spec.margin <= 2):
            raise BundleError(f"{where}: manifest preprocess size must be 8..512 and margin 0..2")
        if self.input.shape[1:] != [spec.size, spec.size, 1]:
            raise BundleError(f"{where}: a {self.kind} model takes {spec.size}x{spec.size} faces, but its input "
                              f"is {self.input.shape}")


@dataclass
class Bundle:
    manifest: Manifest
    model: bytes
    path: Path

    @property
    def sha256(self) -> str:
        return self.manifest.model_sha256


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle: zip integrity, member sizes before inflating, both checksums, then
    every manifest field."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        from ferlite.bundles import SHIPPED

        raise BundleError(f"{where}: no such bundle file (shipped bundles: {', '.join(SHIPPED)})")
    try:
        with zipfile.ZipFile(path) as zf:
            raw = {name: _member(zf, name, most, where) for name, most in
                   ((MANIFEST, MAX_MANIFEST_BYTES), (MODEL, MAX_MODEL_BYTES), (SUMS, MAX_SUMS_BYTES))
                   if name != SUMS or SUMS in zf.namelist()}
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{where}: not a ferlite bundle or truncated ({exc})") from None
    except (EOFError, OSError, zlib.error, zipfile.LargeZipFile, RuntimeError, NotImplementedError) as exc:
        raise BundleError(f"{where}: unreadable bundle ({exc})") from None
    sums = _check_sums(raw, where)
    manifest = Manifest.from_json(raw[MANIFEST].decode("utf-8", "replace"), where)
    if manifest.format >= 2 and not sums:
        raise BundleError(f"{where}: bundle is missing {SUMS}")
    if sha256(raw[MODEL]) != manifest.model_sha256:
        raise BundleError(f"{where}: model.tflite checksum mismatch (corrupted or altered bundle)")
    return Bundle(manifest, raw[MODEL], path)


def _member(zf: zipfile.ZipFile, name: str, most: int, where: str) -> bytes:
    """A member's bytes, refused before inflating when it claims more than `most` (a small zip can claim
    gigabytes) or is stored in a way bundles never are."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise BundleError(f"{where}: bundle is missing {name}") from None
    if info.file_size > most:
        raise BundleError(f"{where}: {name} would be {info.file_size:,} bytes, over the {most:,} a bundle may hold")
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleError(f"{where}: {name} is encrypted or compressed in a way bundles never are")
    with zf.open(info) as f:
        data = f.read(most + 1)
    if len(data) > most:  # a header that lied about the size
        raise BundleError(f"{where}: {name} inflates past the {most:,} bytes a bundle may hold")
    return data


def _check_sums(raw: dict[str, bytes], where: str) -> dict[str, str]:
    """Verify SHA256SUMS (when present) against the members; the sums by member name."""
    if SUMS not in raw:
        return {}
    sums = {}
    for line in raw[SUMS].decode("ascii", "replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    for name in (MANIFEST, MODEL):
        if sums.get(name) != sha256(raw[name]):
            raise BundleError(f"{where}: {name} checksum mismatch against {SUMS} (corrupted or altered bundle)")
    return sums


def sums_text(members: dict[str, bytes]) -> str:
    """SHA256SUMS for the members, as `sha256sum` writes it."""
    return "".join(f"{sha256(data)}  {name}\n" for name, data in members.items())


def write_bundle(path: str | Path, manifest: Manifest, model: bytes) -> Path:
    """Write atomically (temp file in the same folder, then rename): a crash never leaves half a bundle."""
    path = Path(path)
    manifest.model_sha256 = sha256(model)
    manifest.model_bytes = len(model)
    manifest.format = FORMAT
    manifest.validate(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
                text = manifest.to_json().encode()
                zf.writestr(MANIFEST, text)
                zf.writestr(MODEL, model)
                zf.writestr(SUMS, sums_text({MANIFEST: text, MODEL: model}))
            raw.flush()
            os.fsync(raw.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
