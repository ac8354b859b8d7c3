"""Query parameters, checked before any query runs: a bad one is a 400 with a one-line message."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from ferlite.device.serve.data import Range

MAX_RANGE = timedelta(days=400)
_INTEGER = re.compile(r"[0-9]{1,12}")
_MOMENT = re.compile(r"(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}))?Z?")
_DEVICE = re.compile(r"[\w.:@-]{1,64}")


class ParamError(ValueError):
    """A query parameter the dashboard cannot use; its message says which and why."""


def check(items: Iterable[tuple[str, str]], allowed: tuple[str, ...]) -> dict[str, str]:
    """The parameters as a dict, refusing unknown and repeated ones."""
    params: dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "no parameters"
            raise ParamError(f"unknown parameter {name!r} (this route takes {takes})")
        if name in params:
            raise ParamError(f"parameter {name!r} given twice")
        params[name] = value
    return params


def integer(params: dict[str, str], name: str, required: bool = False) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise ParamError(f"parameter {name!r} is required")
        return None
    if not _INTEGER.fullmatch(value):
        raise ParamError(f"{name}={value[:40]!r}: expected a whole number")
    return int(value)


def device(params: dict[str, str], has_devices: bool) -> str | None:
    value = params.get("device")
    if value is None:
        return None
    if not _DEVICE.fullmatch(value):
        raise ParamError(f"device={value[:40]!r}: expected a device name (letters, digits, . _ : @ -)")
    if not has_devices:
        raise ParamError("this log is one device's own: it has no devices to choose from")
    return value


def moment(params: dict[str, str], name: str) -> datetime | None:
    """A UTC date (YYYY-MM-DD) or minute (YYYY-MM-DDTHH:MM, optional Z)."""
    value = params.get(name)
    if value is None:
        return None
    match = _MOMENT.fullmatch(value)
    try:
        if not match:
            raise ValueError
        return datetime.strptime(f"{match[1]}T{match[2] or '00:00'}", "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
    except ValueError:
        raise ParamError(f"{name}={value[:40]!r}: expected a UTC date YYYY-MM-DD or minute YYYY-MM-DDTHH:MM") from None


def time_range(params: dict[str, str], whole: Range | None) -> Range | None:
    """[from, to) from the parameters, by default the log's own span (None: neither given, an empty log).

    A bound left out extends to the log's data, or an hour from the other bound; at most MAX_RANGE long."""
    start, end = moment(params, "from"), moment(params, "to")
    if start is None and end is None:
        return whole
    hour = timedelta(hours=1)
    start = start or (whole.start if whole and whole.start < end else end - hour)
    end = end or (whole.end if whole and whole.end > start else start + hour)
    if end <= start:
        raise ParamError(f"empty range: 'to' ({end:%Y-%m-%dT%H:%M}) must come after 'from' ({start:%Y-%m-%dT%H:%M})")
    if end - start > MAX_RANGE:
        raise ParamError(f"a range of {(end - start).days} days: at most {MAX_RANGE.days}")
    return Range(start, end)
