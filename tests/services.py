"""Real services for tests: Mosquitto and PostgreSQL, each on a free 127.0.0.1 port in a temporary
folder, started by the test and stopped after. One that cannot start skips its test with one line."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


@dataclass
class Mosquitto:
    """A broker on 127.0.0.1:port; `kill` is an outage (SIGKILL), `start` brings it back on the same port."""

    folder: Path
    port: int = field(default_factory=free_port)
    extra: str = ""  # more mosquitto.conf lines: password_file, TLS
    persistent: bool = False  # sessions and queued messages saved every `autosave_s` and at a stop
    autosave_s: int = 1  # Mosquitto's own default (Debian's mosquitto.conf keeps it) is 1800
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        conf = self.folder / "mosquitto.conf"
        persistence = (f"persistence true\npersistence_location {self.folder}/\nautosave_interval {self.autosave_s}\n"
                       if self.persistent else "persistence false\n")
        anonymous = "" if "allow_anonymous" in self.extra else "allow_anonymous true\n"
        user = "user root\n" if os.geteuid() == 0 else ""  # as root it would switch to `mosquitto`, who cannot
        # enter pytest's root-only folders to read a password file or save its sessions
        conf.write_text(f"listener {self.port} 127.0.0.1\n{user}{anonymous}{persistence}{self.extra}")
        log = (self.folder / "mosquitto.log").open("a")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        if not _wait_for_port(self.port, self.proc):
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {(self.folder / 'mosquitto.log').read_text()[-300:]}")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def mosquitto(folder: Path, extra: str = "", persistent: bool = False, autosave_s: int = 1) -> Mosquitto:
    """A started broker, or the test skipped saying why."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return Mosquitto(folder, extra=extra, persistent=persistent, autosave_s=autosave_s).start()
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"mosquitto cannot start here: {str(exc).splitlines()[0]}")


@dataclass
class Postgres:
    """A PostgreSQL 15 cluster made with initdb (as the postgres user when we are root), trust auth on 127.0.0.1."""

    folder: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://ferlite@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        data = self.folder / "data"
        made = self._as_owner(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "ferlite")
        if made.returncode:
            raise RuntimeError(f"initdb failed: {(made.stderr or made.stdout).strip().splitlines()[-1]}")
        started = self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "log"), "-w",
                                 "start", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1")
        if started.returncode:
            raise RuntimeError(f"pg_ctl start failed: {(started.stderr or started.stdout).strip()[-200:]}")
        return self

    def stop(self) -> None:
        self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-w", "-m", "fast", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


def postgres() -> Postgres:
    """A started PostgreSQL, or the test skipped saying why. Its folder is a fresh one directly under the
    temporary directory: the postgres user cannot enter pytest's root-only folders."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql)")
    try:
        return Postgres(Path(tempfile.mkdtemp(prefix="ferlite-pg-"))).start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired, LookupError) as exc:
        pytest.skip(f"PostgreSQL cannot start here: {str(exc).splitlines()[0]}")
