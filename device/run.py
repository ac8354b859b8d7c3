"""Build the pipeline's stages from a RunConfig and run it: what `ferlite run` and the service call."""

from __future__ import annotations

from pathlib import Path

from ferlite.config import RunConfig
from ferlite.device.faces import face_step
from ferlite.device.log import ResultsLog, RunInfo, open_log
from ferlite.device.notify import Notifier
from ferlite.device.pipeline import Hooks, Pipeline, Stats
from ferlite.device.sources import FrameSource, open_camera, open_source
from ferlite.device.tracker import Tracker


def bundle_path(cfg: RunConfig) -> Path:
    from ferlite.bundles import bundle_path

    return bundle_path(cfg.bundle)


def frame_source(cfg: RunConfig) -> FrameSource:
    """The camera or source `cfg` names, opened at its resolution and frame-rate cap."""
    size = (cfg.width, cfg.height) if cfg.width and cfg.height else None
    return open_camera(size, cfg.max_fps) if cfg.camera else open_source(str(cfg.source), size, cfg.max_fps)


def build(cfg: RunConfig, hooks: Hooks) -> Pipeline:
    """Every stage constructed and opened for `cfg`: what `run` runs and `ferlite bench` times."""
    cfg.validate()
    if cfg.threads:
        import cv2

        cv2.setNumThreads(cfg.threads)  # the detector's share of the same budget
    step = face_step(cfg)
    predictor, detector = step.predictor, step.detector
    source = frame_source(cfg)
    try:
        config = {**cfg.to_dict(), "mqtt_password": "***" if cfg.mqtt_password else None}  # logged and published
        info = RunInfo(predictor.bundle.sha256, list(predictor.labels), source.name, detector.name, config)
        results = open_log(cfg.log_path(), cfg.log_format, info, privacy=cfg.privacy,
                           max_age_s=cfg.retention_days * 86400, max_bytes=int(cfg.retention_mb * 2**20))
    except BaseException:
        source.close()
        raise
    tracker = Tracker(cfg.iou, cfg.smoothing, cfg.max_missed)
    return Pipeline(source, detector, predictor, tracker, results, cfg, hooks)


def run(cfg: RunConfig, hooks: Hooks | None = None) -> tuple[Stats, ResultsLog]:
    """Run until the source ends, max_frames, or SIGTERM/SIGINT; the stats and the closed log, whose
    `stored`, `kept` and `dropped` say where every face went (stored unless a full disk or a lock
    outlasted the retries).

    Without `hooks`, systemd is told about the run through $NOTIFY_SOCKET when it is set.
    """
    fleet = None
    if cfg.mqtt:
        from ferlite.device.fleet import publish

        fleet = publish.prepare(cfg)
    pipeline = build(cfg, hooks or Notifier())
    publisher = publish.in_background(cfg, *fleet) if fleet else None
    try:
        stats = pipeline.run()
    finally:
        if publisher is not None:
            publisher.stop()
    return stats, pipeline.results
