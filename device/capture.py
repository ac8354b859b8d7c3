"""`ferlite capture`: a user's own labelled faces, saved exactly as the model will see them.

Each tracked face is found, aligned and framed by the same face step as `ferlite run`, and its model
input (48x48 grayscale for the shipped CNN) is written to OUT/LABEL/ every `every` frames, so a
fine-tune (`ferlite train cnn --init default --data OUT`) learns from what the device will meet.
Besides `run --save-faces`, this is the only command that writes face pixels.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferlite.config import RunConfig
from ferlite.datasets import SUBJECT_SEP
from ferlite.errors import ConfigError
from ferlite.inputs import KINDS

SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class Captured:
    folder: Path
    frames: int
    faces: int
    saved: int


def _name(text: str, what: str) -> str:
    if not text or not set(text) <= SAFE or text.startswith(".") or SUBJECT_SEP in text:
        raise ConfigError(f"--{what} {text!r}: use letters, digits, '-', '_' and '.' (not '{SUBJECT_SEP}')")
    return text


def capture(cfg: RunConfig, label: str, out: Path, every: int = 5, subject: str | None = None,
            max_faces: int = 0) -> Captured:
    """Save the model inputs of the faces `cfg`'s camera or source shows into out/label/: each tracked face
    every `every` frames (every face of every photo for a folder of photos), at most `max_faces` (0: no limit)."""
    import cv2

    from ferlite.device.faces import face_step
    from ferlite.device.run import frame_source
    from ferlite.device.sources import BadFrameError, CameraReadError, CaptureThread
    from ferlite.device.tracker import Tracker

    cfg.validate()
    if every < 1 or max_faces < 0:
        raise ConfigError("--every must be >= 1 and --max-faces >= 0")
    folder = out / _name(label, "label")
    prefix = f"{_name(subject, 'subject')}{SUBJECT_SEP}" if subject else ""
    step = face_step(cfg)
    kind = step.predictor.bundle.manifest.kind
    if not KINDS[kind].images:
        raise ConfigError(f"a {kind} bundle takes no face images; capture for a CNN bundle")
    source = frame_source(cfg)
    reader = CaptureThread(source)
    tracker = Tracker(cfg.iou, 1.0, cfg.max_missed)
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(source.name).stem if not cfg.camera else "camera"
    done = Captured(folder, 0, 0, 0)
    print(f"capture: writing face pixels to {folder} (Ctrl-C to stop)", file=sys.stderr)
    try:
        while not (cfg.max_frames and done.frames >= cfg.max_frames) and not (max_faces and done.saved >= max_faces):
            try:
                frame = reader.read()
            except (CameraReadError, BadFrameError):
                continue
            if frame is None:
                break
            faces = step.find(frame.image)
            crops = step.inputs(frame.image, faces) if faces else np.zeros((0,))
            tracks = tracker.update([f.box for f in faces], np.zeros((len(faces), 1), np.float32))
            done.frames += 1
            done.faces += len(faces)
            for track, crop in zip(tracks, crops):
                if not source.stills and (track.frames - 1) % every:
                    continue
                name = f"{prefix}{stem}-f{frame.number:06d}-t{track.id}.png"
                cv2.imwrite(str(folder / name), np.asarray(crop).reshape(crop.shape[0], crop.shape[1]))
                done.saved += 1
                if max_faces and done.saved >= max_faces:
                    break
            if sys.stderr.isatty():
                print(f"\r{done.saved} faces saved, {done.frames} frames", end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
        if sys.stderr.isatty():
            print(file=sys.stderr)
    return done
