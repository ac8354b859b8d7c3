"""Every `ferlite run` option in one plain dataclass, so flags, a TOML file and the service share one schema."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ferlite.errors import ConfigError

DETECTORS = ("haar", "dlib", "blazeface")
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
    detector: str = "haar"
    blazeface_model: str | None = None
    detect_every: int = 1
    detect_width: int = 320
    min_face: int = 40
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
            (self.detector in DETECTORS, f"unknown detector {self.detector!r} (choose {', '.join(DETECTORS)})"),
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
