"""What `ferlite log` and `ferlite predict` compute and print, from a results log or from photos."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

from ferlite.device.log import LogReader, Result


def summarize(reader: LogReader) -> list[dict]:
    """Per run: when, what, frames, faces logged, distinct tracks and faces per label.

    Labels come from the detections, or from the per-minute counts of a privacy run.
    """
    runs = {r["id"]: {**{k: r.get(k) for k in ("id", "started_utc", "stopped_utc", "source", "detector", "frames",
                                               "skipped", "read_failures", "detections", "privacy")},
                      **{k: r[k] for k in ("device", "device_run") if k in r},  # a collected database's
                      "tracks": 0, "uncertain": 0, "by_label": Counter()} for r in reader.runs()}
    tracks: dict[int, set[int]] = defaultdict(set)
    for d in reader.detections():
        if d["run"] in runs:
            runs[d["run"]]["by_label"][d["label"]] += 1
            runs[d["run"]]["uncertain"] += bool(d.get("uncertain"))
            tracks[d["run"]].add(d["track"])
    for c in reader.counts():
        if c["run"] in runs:
            runs[c["run"]]["by_label"][c["label"]] += c["detections"]
            runs[c["run"]]["tracks"] += c["faces"]
    for run_id, ids in tracks.items():
        runs[run_id]["tracks"] = len(ids)
    return [{**r, "by_label": dict(r["by_label"].most_common())} for r in runs.values()]


def timeline(reader: LogReader, run: int | None = None) -> tuple[list[str], dict[str, list[int]]]:
    """Faces per label per UTC minute (YYYY-MM-DDTHH:MMZ), minutes in order, zero where none."""
    per: dict[str, Counter] = defaultdict(Counter)
    for d in reader.detections():
        if run is None or d["run"] == run:
            per[d["time_utc"][:16] + "Z"][d["label"]] += 1
    for c in reader.counts():
        if run is None or c["run"] == run:
            per[c["minute_utc"]][c["label"]] += c["detections"]
    minutes = sorted(per)
    labels = sorted({label for counts in per.values() for label in counts})
    return minutes, {label: [per[m][label] for m in minutes] for label in labels}


@contextmanager
def _output(path: str):
    if path == "-":
        yield sys.stdout
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            yield f


def export(reader: LogReader, path: str, fmt: str, counts: bool = False) -> int:
    """Write detections (or per-minute counts) as CSV or JSON lines to `path` ('-': stdout); rows written."""
    rows = reader.counts() if counts else reader.detections()
    n = 0
    with _output(path) as out:
        writer = None
        for row in rows:
            n += 1
            if fmt == "jsonl":
                out.write(json.dumps(row) + "\n")
                continue
            flat = {k: v for k, v in row.items() if k != "probs"}
            flat.update({f"p_{k}": v for k, v in row.get("probs", {}).items()})
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(flat), extrasaction="ignore", restval="")
                writer.writeheader()
            writer.writerow(flat)
    return n


def print_summary(runs: list[dict], as_json: bool) -> None:
    from ferlite.console import emit_json

    if as_json:
        emit_json(runs)
        return
    from ferlite.console import console, table

    fleet = any("device" in r for r in runs)
    rows = table(*["device (its run)"] * fleet, "run", "started (UTC)", "stopped", "source", "detector", "frames",
                 "skipped", "faces", "tracks", "uncertain", "faces per label")
    for r in runs:
        labels = ", ".join(f"{k} {v}" for k, v in r["by_label"].items()) or "-"
        device = [f"{r.get('device')} ({r.get('device_run')})"] * fleet
        rows.add_row(*device, str(r["id"]), str(r["started_utc"])[:19].replace("T", " "),
                      str(r["stopped_utc"])[11:19] if r["stopped_utc"] else "not cleanly", Path(str(r["source"])).name,
                      str(r["detector"]), str(r["frames"]), str(r["skipped"]), str(sum(r["by_label"].values())),
                      str(r["tracks"]), str(r["uncertain"]),
                      labels + (" (privacy: counts only)" if r["privacy"] else ""))
    console().print(rows)


def predict_photo(image, step, threshold: float) -> list[Result]:
    """Every face in one BGR photo, classified by the face step (face numbers stand in for track ids)."""
    from ferlite.device.pipeline import classify

    faces, probs = step(image)
    labels = step.predictor.labels
    return [classify(i, face.box, p, labels, threshold) for i, (face, p) in enumerate(zip(faces, probs), 1)]


def print_predictions(records: list[dict], as_json: bool) -> None:
    from ferlite.console import emit_json

    if as_json:
        emit_json(records)
        return
    from ferlite.console import console, table

    rows = table("image", "face", "box (x, y, w, h)", "label", "probability", "uncertain")
    for rec in records:
        if rec.get("error"):
            rows.add_row(rec["image"], "-", "-", rec["error"], "-", "-")
        elif not rec["faces"]:
            rows.add_row(rec["image"], "-", "-", "no face found", "-", "-")
        for face in rec["faces"]:
            rows.add_row(rec["image"], str(face["face"]), ", ".join(map(str, face["box"])), face["label"],
                         f"{face['confidence']:.2f}", "yes" if face["uncertain"] else "")
    console().print(rows)
