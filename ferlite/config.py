"""Every `ferlite run` option in one plain dataclass, so flags, a TOML file and the service share one schema."""

from __future__ import annotations

import re
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ferlite.errors import ConfigError

LOG_FORMATS = ("sqlite", "jsonl")
DEVICE_ID = r"[A-Za-z0-9._-]{1,64}"


def _option(default: object, text: str, flag: bool = True):
    """A RunConfig field with its help; `flag` False: a key of the config file only (credentials, rare
    settings), never a command-line flag."""
    shown = text if flag else f"{text.rstrip('.')} (config file only)."
    return field(default=default, metadata={"help": shown, "flag": flag})


@dataclass
class RunConfig:
    """Every device option, with its default and its help: `ferlite run`, `predict`, `bench` and `eval
    --detector` take their flags from here, `config init` its comments, the service its TOML keys.

    Only simple types (str, int, float, bool, None), so a TOML table maps onto it field by field.
    """

    camera: bool = _option(False, "The Pi camera (picamera2) if installed, else the first V4L2/USB camera.")
    source: str | None = _option(None, "Camera index, /dev/videoN, video file, image or folder of images.")
    bundle: str | None = _option(None, "Bundle file, or a shipped bundle's name: cnn (the default), landmark-svm.")
    width: int | None = _option(None, "Camera width in pixels, with height (on the command line: --resolution "
                                      "WIDTHxHEIGHT).")
    height: int | None = _option(None, "Camera height in pixels, with width (on the command line: --resolution "
                                       "WIDTHxHEIGHT).")
    max_fps: float = _option(0.0, "Frame-rate cap (0: as fast as frames come).")
    detector: str | None = _option(None, "Face detector (`ferlite run --help` lists them; default: the bundle's).")
    detect_every: int = _option(5, "Search whole frames every N frames; in between only near tracked faces.")
    detect_width: int = _option(480, "Width frames are shrunk to before face detection (never enlarged), for "
                                     "every detector.")
    min_face: int = _option(24, "Smallest face reported, in frame pixels (box width), for every detector.")
    threads: int | None = _option(None, "Interpreter and OpenCV threads.")
    threshold: float = _option(0.4, "Below this top probability a face is flagged uncertain (its label is kept).")
    smoothing: float = _option(0.5, "Weight of the newest frame in each face's smoothed probabilities (1: none).")
    iou: float = _option(0.3, "Smallest box overlap (IoU) with a track's last box that continues it.")
    max_missed: int = _option(5, "Frames a face may go undetected before its track ends.")
    log: str | None = _option(None, "Results log (default: results.db, or results.jsonl with --log-format jsonl).")
    log_format: str = _option("sqlite", "sqlite or jsonl.")
    privacy: bool = _option(False, "Log only per-minute counts per label: no boxes, no per-face rows.")
    retention_days: float = _option(30.0, "Delete results older than this.")
    retention_mb: float = _option(512.0, "Keep the log under this size, oldest results deleted first.")
    save_faces: str | None = _option(None, "Write each logged face crop as PNG here (the only way face pixels "
                                           "reach the disk).")
    preview: bool = _option(False, "Show a window with boxes and labels (needs a display).")
    bars: bool = _option(False, "Preview and annotations: draw each face's probabilities as bars.")
    status: bool = _option(True, "Live status line on a terminal.")
    max_frames: int = _option(0, "Stop after this many frames (0: no limit).")
    mqtt: str | None = _option(None, "Also publish the results log to this MQTT broker: mqtt://HOST[:PORT] or "
                                     "mqtts://HOST[:PORT] (needs ferlite[fleet] and the SQLite log).")
    device_id: str | None = _option(None, "This device's name in the fleet's MQTT topics (default: the hostname).")
    mqtt_ca: str | None = _option(None, "mqtts: CA certificate file the broker's certificate is checked against "
                                        "(default: the system's).", flag=False)
    mqtt_username: str | None = _option(None, "MQTT user name.", flag=False)
    mqtt_password: str | None = _option(None, "MQTT password; better, mqtt_password_file", flag=False)
    mqtt_password_file: str | None = _option(None, "File holding the MQTT password.", flag=False)
    mqtt_discovery: bool = _option(False, "Announce this device to Home Assistant (MQTT discovery under "
                                          "homeassistant/): a sensor per label.", flag=False)

    def log_path(self) -> str:
        """The results log, `results.db` or `results.jsonl` by format unless given."""
        if self.log:
            return self.log
        return "results.jsonl" if self.log_format == "jsonl" else "results.db"

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, needs_source: bool = True) -> RunConfig:
        """Raise ConfigError for the first option out of range; returns self for chaining. `needs_source`
        False: a command that brings its own images (predict, eval) takes no camera or source."""
        if needs_source and self.camera == (self.source is not None):
            raise ConfigError("give exactly one of --camera or --source")
        checks = [
            (self.log_format in LOG_FORMATS, f"unknown log format {self.log_format!r} "
                                             f"(choose {', '.join(LOG_FORMATS)})"),
            ((self.width is None) == (self.height is None), "give both width and height of the resolution"),
            (self.width is None or self.height is None or (self.width > 0 and self.height > 0),
             "resolution must be positive"),
            (self.max_fps >= 0, "--max-fps must be >= 0 (0: no cap)"),
            (self.detect_every >= 1, "--detect-every must be >= 1"),
            (self.detect_width >= 32, "--detect-width must be >= 32"),
            (self.min_face >= 8, "--min-face must be >= 8 pixels"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
            (0.0 <= self.threshold <= 1.0, "--threshold must be within 0..1"),
            (0.0 < self.smoothing <= 1.0, "--smoothing must be within (0, 1] (1: no smoothing)"),
            (0.0 < self.iou < 1.0, "--iou must be within (0, 1)"),
            (self.max_missed >= 0, "--max-missed must be >= 0"),
            (0 < self.retention_days < 100 * 365, "--retention-days must be > 0 and under a century"),
            (0 < self.retention_mb < 2**30, "--retention-mb must be > 0 and finite"),
            (not (self.privacy and self.save_faces), "--save-faces writes face pixels, which --privacy promises "
                                                     "never to store; give one of them"),
            (self.max_frames >= 0, "--max-frames must be >= 0 (0: no limit)"),
            (self.mqtt is None or self.mqtt.startswith(("mqtt://", "mqtts://")),
             f"--mqtt {self.mqtt!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
            (self.mqtt is None or self.log_format == "sqlite", "--mqtt publishes from the SQLite log; it cannot "
                                                               "with --log-format jsonl"),
            (self.device_id is None or re.fullmatch(DEVICE_ID, self.device_id) is not None,
             f"device id {self.device_id!r}: use letters, digits, '.', '_' and '-' (it is an MQTT topic level)"),
            (not (self.mqtt_password and self.mqtt_password_file), "give mqtt_password or mqtt_password_file, "
                                                                   "not both"),
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
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    hints = typing.get_type_hints(RunConfig)
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"{path}: unknown key {key!r}")
        if not _accepts(hints[key], value):
            raise ConfigError(f"{path}: {key} = {value!r} has the wrong type")
    return data


HELP = {f.name: f.metadata["help"] for f in fields(RunConfig)}
CONFIG_ONLY = frozenset(f.name for f in fields(RunConfig) if not f.metadata["flag"])


def build_config(file: str | Path | None, flags: dict, needs_source: bool = True) -> RunConfig:
    """Defaults, overridden by the TOML file, overridden by the flags given on the command line."""
    values = read_toml(file) if file else {}
    return RunConfig(**{**values, **flags}).validate(needs_source)


def default_toml(helps: dict[str, str] | None = None) -> str:
    """A commented TOML file listing every option at its default, each under its help (`helps`
    overrides some, e.g. with the names of the installed detectors)."""
    helps = {**HELP, **(helps or {})}
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
