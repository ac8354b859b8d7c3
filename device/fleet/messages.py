"""The fleet's MQTT messages: topics, ids, JSON shapes, and the check every incoming message passes.

Topics are `ferlite/<device>/<kind>`. Every stored kind (runs, events, counts) carries an `id` that
names what it describes, not when it was sent, so a message published twice (at-least-once) is
stored once. The shapes are the contract between a device and a collector: `parse` refuses
anything else with a one-line reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ferlite.config import DEVICE_ID
from ferlite.errors import FerliteError

PREFIX = "ferlite"
KINDS = ("available", "runs", "events", "counts", "state")
EVENT_TYPES = ("new", "update", "end")
_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d\.\d{3})?Z")
_NULL = type(None)

# Each kind's fields and the types they may hold ("utc": a ferlite UTC time stamp).
FIELDS: dict[str, dict[str, tuple]] = {
    "runs": {"id": (str,), "device": (str,), "run": (int,), "started_utc": ("utc", _NULL),
             "stopped_utc": ("utc", _NULL), "bundle_sha256": (str, _NULL), "labels": (list,), "source": (str, _NULL),
             "detector": (str, _NULL), "config": (dict,), "privacy": (bool,), "frames": (int,), "skipped": (int,),
             "detections": (int,)},
    "events": {"id": (str,), "device": (str,), "run": (int,), "type": (str,), "track": (int,), "time_utc": ("utc",),
               "label": (str,), "shares": (dict,), "frames": (int,), "start_utc": ("utc",),
               "end_utc": ("utc", _NULL)},
    "counts": {"id": (str,), "device": (str,), "run": (int,), "minute_utc": ("utc",), "label": (str,),
               "detections": (int,), "faces": (int,)},
    "state": {"device": (str,), "run": (int,), "time_utc": ("utc",), "faces": (int,), "labels": (dict,)},
}


class MessageError(FerliteError):
    """An incoming message that is not a ferlite fleet message; `collect` says why and stores nothing."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    retain: bool = False
    qos: int = 1


@dataclass(frozen=True)
class Incoming:
    kind: str
    device: str
    data: dict | str  # the JSON object, or "online"/"offline" for `available`


def topic(device: str, kind: str) -> str:
    return f"{PREFIX}/{device}/{kind}"


def _json(device: str, kind: str, data: dict, retain: bool = False, qos: int = 1) -> Message:
    return Message(topic(device, kind), json.dumps(data, separators=(",", ":")), retain, qos)


def available(device: str, online: bool) -> Message:
    return Message(topic(device, "available"), "online" if online else "offline", retain=True)


def run_message(device: str, run: dict) -> Message:
    """A run's description and counters: the same id each time, so the newest figures replace older ones."""
    fields = ("started_utc", "stopped_utc", "bundle_sha256", "source", "detector", "frames", "skipped", "detections")
    return _json(device, "runs", {"id": f"{device}:{run['id']}:run", "device": device, "run": run["id"],
                                  **{k: run[k] for k in fields}, "labels": json.loads(run["labels"] or "[]"),
                                  "config": json.loads(run["config"] or "{}"), "privacy": bool(run["privacy"])})


def event_message(device: str, row: dict) -> Message:
    """One track event (Frigate-like: new, update, end), its id the log's row."""
    return _json(device, "events", {"id": f"{device}:{row['run_id']}:event:{row['id']}", "device": device,
                                    "run": row["run_id"], "type": row["kind"], "track": row["track"],
                                    "time_utc": row["time_utc"], "label": row["label"],
                                    "shares": json.loads(row["shares"]), "frames": row["frames"],
                                    "start_utc": row["start_utc"], "end_utc": row["end_utc"]})


def count_message(device: str, run: int, minute: str, label: str, detections: int, faces: int) -> Message:
    """One label's faces in one complete minute (the rows privacy mode stores)."""
    return _json(device, "counts", {"id": f"{device}:{run}:count:{minute}:{label}", "device": device, "run": run,
                                    "minute_utc": minute, "label": label, "detections": detections, "faces": faces})


def state_message(device: str, run: int, time_utc: str, labels: dict[str, int]) -> Message:
    """The faces in view now, per label: retained and at most once a second, so QoS 0."""
    return _json(device, "state", {"device": device, "run": run, "time_utc": time_utc, "faces": sum(labels.values()),
                                   "labels": labels}, retain=True, qos=0)


def discovery_messages(device: str, labels: list[str]) -> list[Message]:
    """Home Assistant MQTT discovery: one device per Pi, one sensor per label (faces with it in view now)."""
    node = f"ferlite_{device.replace('.', '_').replace('-', '_')}"
    about = {"identifiers": [node], "name": f"ferlite {device}", "manufacturer": "ferlite"}
    return [Message(f"homeassistant/sensor/{node}/{label}/config", json.dumps({
        "name": f"{label} faces", "unique_id": f"{node}_{label}", "state_topic": topic(device, "state"),
        "value_template": f"{{{{ value_json.labels.get('{label}', 0) }}}}", "unit_of_measurement": "faces",
        "state_class": "measurement", "availability_topic": topic(device, "available"), "device": about}),
        retain=True) for label in labels]


def _fits(value: object, kinds: tuple) -> bool:
    for kind in kinds:
        if kind == "utc" and isinstance(value, str) and _UTC.fullmatch(value):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return True
        if isinstance(kind, type) and kind is not int and isinstance(value, kind):
            return True
    return False


def parse(topic_name: str, payload: bytes) -> Incoming:
    """The message on `topic_name`, checked field by field; MessageError says what is wrong with it."""
    parts = topic_name.split("/")
    if len(parts) != 3 or parts[0] != PREFIX or parts[2] not in KINDS or not re.fullmatch(DEVICE_ID, parts[1]):
        raise MessageError(f"not a topic ferlite/<device>/<{'|'.join(KINDS)}>")
    _, device, kind = parts
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("payload is not UTF-8") from None
    if kind == "available":
        if text not in ("online", "offline"):
            raise MessageError("available must be 'online' or 'offline'")
        return Incoming(kind, device, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageError(f"payload is not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise MessageError("payload is not a JSON object")
    for name, kinds in FIELDS[kind].items():
        if name not in data:
            raise MessageError(f"field {name!r} missing")
        if not _fits(data[name], kinds):
            raise MessageError(f"field {name!r} = {str(data[name])[:40]!r} has the wrong type or format")
    if data["device"] != device:
        raise MessageError(f"device {data['device']!r} differs from the topic's {device!r}")
    if "id" in data and not data["id"].startswith(f"{device}:{data['run']}:"):
        raise MessageError(f"id {data['id'][:60]!r} is not {device}:{data['run']}:...")
    if kind == "events" and data["type"] not in EVENT_TYPES:
        raise MessageError(f"event type {data['type'][:20]!r} is not one of {', '.join(EVENT_TYPES)}")
    return Incoming(kind, device, data)
