"""Face tracks across frames: greedy IoU matching, stable ids, smoothed probabilities.

Smoothing is what keeps a label from flickering between two close classes frame to frame; a
track survives a few missed detections (a blink, a turned head) and then ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferlite.device.detectors.base import iou
from ferlite.inputs import Box


@dataclass
class Track:
    id: int
    box: Box
    probs: np.ndarray
    frames: int = 1
    missed: int = 0


class Tracker:
    """IoU tracker: `update` matches this frame's boxes to live tracks and returns them in box order.

    alpha is the weight of the newest probabilities in the exponential moving average (1: none).
    """

    def __init__(self, iou_threshold: float = 0.3, alpha: float = 0.5, max_missed: int = 5) -> None:
        self.iou_threshold, self.alpha, self.max_missed = iou_threshold, alpha, max_missed
        self.tracks: list[Track] = []
        self.started = 0
        self.ended: list[int] = []  # ids of the tracks the last update dropped: the results log ends them

    def boxes(self) -> list[Box]:
        """Where each live track was last seen: where to look for its face between full detections."""
        return [t.box for t in self.tracks]

    def update(self, boxes: list[Box], probs: np.ndarray) -> list[Track]:
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        track_of: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.iou_threshold:
                break
            if ti in used or bi in track_of:
                continue
            used.add(ti)
            track = self.tracks[ti]
            track.box, track.missed, track.frames = boxes[bi], 0, track.frames + 1
            track.probs = self.alpha * probs[bi] + (1.0 - self.alpha) * track.probs
            track_of[bi] = track
        for ti, track in enumerate(self.tracks):
            if ti not in used:
                track.missed += 1
        self.ended = [t.id for t in self.tracks if t.missed > self.max_missed]
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for bi, box in enumerate(boxes):
            if bi not in track_of:
                self.started += 1
                track_of[bi] = Track(self.started, box, np.asarray(probs[bi], np.float32).copy())
                self.tracks.append(track_of[bi])
        return [track_of[bi] for bi in range(len(boxes))]
