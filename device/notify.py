"""sd_notify in pure Python: READY, STATUS, WATCHDOG and STOPPING datagrams to systemd.

A no-op when NOTIFY_SOCKET is unset (not started by systemd). The watchdog is pinged only while
frames actually flow, so a stuck camera lets systemd's WatchdogSec fire and restart the service.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Talks to the socket named by $NOTIFY_SOCKET (a path, or '@name' in the abstract namespace)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        pid = env.get("WATCHDOG_PID")
        self.watchdog = bool(env.get("WATCHDOG_USEC")) and (not pid or pid == str(os.getpid()))
        self._sock: socket.socket | None = None
        self._last_ping = 0.0
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> bool:
        """Send one datagram; False (never an exception) when there is no socket or it is gone."""
        if not self.enabled:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self) -> None:
        if not self.ready_sent:
            self.ready_sent = self.send("READY=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def frame_processed(self, status: str) -> None:
        """After every processed frame: READY once, then WATCHDOG and STATUS at most once a second.

        Once a second is well inside any sensible WatchdogSec (systemd advises pinging at half of it).
        """
        self.ready()
        now = time.monotonic()
        if now - self._last_ping >= 1.0:
            self._last_ping = now
            self.send(("WATCHDOG=1\n" if self.watchdog else "") + f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
