"""Every `ferlite run` option in one plain dataclass, so flags, a TOML file and the service share one schema."""

from __future__ import annotations

import tomllib
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ferlite.errors import ConfigError

LOG_FORMATS = ("sqlite", "jsonl")


@dataclass
class RunConfig:
    """Options of `ferlite run`; see `ferlite run --help` for each one's meaning.

    Only simple types (str, int, float, bool, None), so a TOML table maps onto it field by field.
    """

    camera: bool = False
    source: str | None = None
    bundle: str | None = None
    width: int | None = None
    height: int | None = None
    max_fps: float = 0.0
    detector: str | None = None
    detect_every: int = 5
    detect_width: int = 480
    min_face: int = 24
    threads: int | None = None
    threshold: float = 0.4
    smoothing: float = 0.5
    iou: float = 0.3
    max_missed: int = 5
    log: str | None = None
    log_format: str = "sqlite"
    privacy: bool = False
    retention_days: float = 30.0
    retention_mb: float = 512.0
    save_faces: str | None = None
    preview: bool = False
    bars: bool = False
    status: bool = True
    max_frames: int = 0

    def log_path(self) -> str:
        """The results log, `results.db` or `results.jsonl` by format unless given."""
        if self.log:
            return self.log
        return "results.jsonl" if self.log_format == "jsonl" else "results.db"

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> RunConfig:
        """Raise ConfigError for the first option out of range; returns self for chaining."""
        if self.camera == (self.source is not None):
            raise ConfigError("give exactly one of --camera or --source")
        checks = [
            (self.log_format in LOG_FORMATS, f"unknown log format {self.log_format!r} "
                                             f"(choose {', '.join(LOG_FORMATS)})"),
            ((self.width is None) == (self.height is None), "give both width and height of the resolution"),
            (self.width is None or (self.width > 0 and self.height > 0), "resolution must be positive"),
            (self.max_fps >= 0, "--max-fps must be >= 0 (0: no cap)"),
            (self.detect_every >= 1, "--detect-every must be >= 1"),
            (self.detect_width >= 32, "--detect-width must be >= 32"),
            (self.min_face >= 8, "--min-face must be >= 8 pixels"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
            (0.0 <= self.threshold <= 1.0, "--threshold must be within 0..1"),
            (0.0 < self.smoothing <= 1.0, "--smoothing must be within (0, 1] (1: no smoothing)"),
            (0.0 < self.iou < 1.0, "--iou must be within (0, 1)"),
            (self.max_missed >= 0, "--max-missed must be >= 0"),
            (self.retention_days > 0, "--retention-days must be > 0"),
            (self.retention_mb > 0, "--retention-mb must be > 0"),
            (self.max_frames >= 0, "--max-frames must be >= 0 (0: no limit)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def _accepts(hint: object, value: object) -> bool:
    """Whether a TOML value fits a RunConfig field type (int is fine for float; bool is not an int)."""
    kinds = typing.get_args(hint) or (hint,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and (int in kinds or float in kinds):
        return True
    return any(isinstance(value, k) for k in kinds if isinstance(k, type) and k is not type(None))


def read_toml(path: str | Path) -> dict:
    """`ferlite run` options from a TOML file: top-level keys named like RunConfig's fields.

    Unknown keys and values of the wrong type are errors naming the key, so a typo never goes unnoticed.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (create one with `ferlite config init {path}`)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    hints = typing.get_type_hints(RunConfig)
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"{path}: unknown key {key!r}")
        if not _accepts(hints[key], value):
            raise ConfigError(f"{path}: {key} = {value!r} has the wrong type")
    return data


def build_config(file: str | Path | None, flags: dict) -> RunConfig:
    """Defaults, overridden by the TOML file, overridden by the flags given on the command line."""
    values = read_toml(file) if file else {}
    return RunConfig(**{**values, **flags}).validate()


def default_toml(helps: dict[str, str]) -> str:
    """A commented TOML file listing every option at its default; `helps` maps field names to help text."""
    lines = ["# ferlite run options. Flags given on the command line override these.",
             "# Keys are `ferlite run --help` options with '_' for '-'; uncomment a line to change it.", ""]
    for f in fields(RunConfig):
        if f.name in helps:
            lines.append(f"# {helps[f.name]}")
        value = getattr(RunConfig(), f.name)
        if value is None:
            hint = typing.get_type_hints(RunConfig)[f.name]
            kind = next(k.__name__ for k in typing.get_args(hint) if k is not type(None))
            lines.append(f"# {f.name} = <{kind}>    (unset by default)")
        else:
            rendered = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
            lines.append(f"# {f.name} = {rendered}")
        lines.append("")
    return "\n".join(lines)
