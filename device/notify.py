"""sd_notify in pure Python: the pipeline hooks that tell systemd READY, STATUS, WATCHDOG and STOPPING.

A no-op when NOTIFY_SOCKET is unset (not started by systemd). The watchdog is pinged only from the
per-frame hook, so it stops as soon as frames stop: a stuck camera lets WatchdogSec fire.
"""

from __future__ import annotations

import os
import socket
import time

from ferlite.device.pipeline import Stats

PING_EVERY_S = 1.0


def status_text(stats: Stats) -> str:
    """The one-line STATUS systemctl shows: fps, faces in the last frame, their labels."""
    labels = ", ".join(stats.labels) if stats.labels else "none"
    return f"{stats.fps:.1f} fps, {stats.frames} frames, {stats.faces} faces ({labels})"


class Notifier:
    """Pipeline hooks speaking to $NOTIFY_SOCKET (a path, or '@name' in the abstract namespace)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        pid = env.get("WATCHDOG_PID")
        self.watchdog = bool(env.get("WATCHDOG_USEC")) and (not pid or pid == str(os.getpid()))
        self._sock: socket.socket | None = None
        self._last_ping = 0.0

    def send(self, message: str) -> bool:
        """Send one datagram; False (never an exception) when there is no socket or it is gone."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, stats: Stats) -> None:
        """After the first processed frame: the service is up."""
        self.send(f"READY=1\nSTATUS={status_text(stats)}")

    def frame(self, stats: Stats) -> None:
        """After every processed frame: WATCHDOG and STATUS, at most once a second.

        Once a second is well inside any sensible WatchdogSec (systemd advises half of it).
        """
        now = time.monotonic()
        if now - self._last_ping >= PING_EVERY_S:
            self._last_ping = now
            self.send(("WATCHDOG=1\n" if self.watchdog else "") + f"STATUS={status_text(stats)}")

    def stopping(self, stats: Stats) -> None:
        self.send(f"STOPPING=1\nSTATUS=stopping after {stats.frames} frames")
        if self._sock is not None:
            self._sock.close()
            self._sock = None
