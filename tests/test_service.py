"""The systemd service: the unit verifies and is hardened, sd_notify speaks to a real socket,
and the TOML config takes precedence below flags."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pytest
from conftest import run_cli

from ferlite.config import RunConfig, build_config, default_toml, read_toml
from ferlite.device.service import render_unit
from ferlite.errors import ConfigError

TESTS = Path(__file__).parent
CLIP = TESTS / "fixtures" / "clip.avi"


def _executable() -> Path:
    """A real executable for ExecStart: the venv's `ferlite` when present."""
    ferlite = Path(sys.executable).parent / "ferlite"
    return ferlite if ferlite.exists() else Path(sys.executable)


@pytest.fixture
def unit(tmp_path) -> Path:
    path = tmp_path / "ferlite.service"
    path.write_text(render_unit(_executable(), tmp_path / "ferlite.toml"))
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies_without_warnings(unit):
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr
    assert f"ExecStart={_executable()} run --camera --config" in unit.read_text()


def test_unit_exposure_is_at_most_2(unit):
    probe = subprocess.run(["systemd-analyze", "security", "--help"], capture_output=True, text=True) \
        if shutil.which("systemd-analyze") else None
    if probe is None or "--offline" not in probe.stdout:
        pytest.skip("systemd-analyze security --offline is not available")
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                            text=True, timeout=60)
    score = re.search(r"Overall exposure level for ferlite\.service: ([0-9.]+)", result.stdout)
    assert score, result.stdout[-500:] + result.stderr
    assert float(score.group(1)) <= 2.0


def test_install_dry_run_shows_unit_config_and_steps(tmp_path):
    result = run_cli("service", "install", "--dry-run", "--config", tmp_path / "f.toml", "--unit-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"1. write {tmp_path / 'ferlite.service'}" in out
    assert re.search(r"ExecStart=/\S+/ferlite run --camera --config " + re.escape(str(tmp_path / "f.toml")), out)
    assert f"2. write default config {tmp_path / 'f.toml'}" in out and "# detect_every = 5" in out
    assert "3. reload systemd: systemctl daemon-reload" in out
    assert "4. enable and start ferlite: systemctl enable --now --no-block ferlite.service" in out
    assert not list(tmp_path.iterdir()), "a dry run must not write anything"
    (tmp_path / "f.toml").write_text("")
    again = run_cli("service", "install", "--dry-run", "--config", tmp_path / "f.toml", "--unit-dir", tmp_path)
    assert "default config" not in again.stdout, "an existing config is never overwritten"


def test_install_serve_writes_the_dashboards_unit_only(tmp_path):
    result = run_cli("service", "install", "--serve", "--dry-run", "--config", tmp_path / "f.toml",
                     "--unit-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"1. write {tmp_path / 'ferlite-serve.service'}" in out and "default config" not in out
    assert re.search(r"ExecStart=/\S+/ferlite serve /var/lib/ferlite/results.db --host 127.0.0.1", out)
    assert "{executable}" not in out
    assert "3. enable and start ferlite-serve: systemctl enable --now --no-block ferlite-serve.service" in out
    removal = run_cli("service", "uninstall", "--serve", "--dry-run", "--unit-dir", tmp_path).stdout
    assert f"rm -f {tmp_path / 'ferlite-serve.service'}" in removal and "ferlite.service" not in removal


def test_config_precedence_flag_over_file_over_default(tmp_path):
    path = tmp_path / "ferlite.toml"
    path.write_text('source = "clip.avi"\ndetector = "dlib"\nthreshold = 0.6\nmax_fps = 5\n')
    cfg = build_config(path, {"threshold": 0.3})
    assert cfg.threshold == 0.3  # flag beats file
    assert cfg.detector == "dlib" and cfg.max_fps == 5.0  # file beats default
    assert cfg.smoothing == RunConfig().smoothing  # default where neither says
    assert build_config(None, {"source": "x"}).detector is None  # unset: the bundle's detector, else yunet


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "ferlite.toml"
    path.write_text('source = "a"\ndetecor = "dlib"\n')
    with pytest.raises(ConfigError, match="unknown key 'detecor'"):
        read_toml(path)
    path.write_text('threshold = "high"\n')
    with pytest.raises(ConfigError, match="threshold = 'high' has the wrong type"):
        read_toml(path)
    path.write_text("threshold = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(path)
    result = run_cli("run", "--config", tmp_path / "missing.toml", "--source", CLIP)
    assert result.returncode == 2 and "config file not found" in result.stderr and "Traceback" not in result.stderr


def test_default_config_lists_every_option_and_parses(tmp_path):
    result = run_cli("config", "init", tmp_path / "ferlite.toml")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "ferlite.toml").read_text()
    assert tomllib.loads(text) == {}, "everything is commented out by default"
    live = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# ") and " = " in line
                     and "<" not in line)
    assert RunConfig(**tomllib.loads(live)) == RunConfig()
    assert "detect_every" in text and "retention_days" in text and "Interpreter and OpenCV threads." in text
    assert run_cli("config", "init", tmp_path / "ferlite.toml").returncode == 2, "no silent overwrite"
    assert default_toml({}).count(" = ") == len(RunConfig.__dataclass_fields__)


class _Listener:
    """A real AF_UNIX datagram socket standing in for systemd, recording (time, message)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ferlite-notify-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()
        shutil.rmtree(self.dir)

    def times(self, word: str) -> list[float]:
        return [t for t, m in self.messages if word in m.split("\n")[0] or f"\n{word}" in m]


BOOT = """
import sys
sys.path.insert(0, {tests!r})
import fake_picamera2
fake_picamera2.CLIP, fake_picamera2.STALL_AFTER, fake_picamera2.STALL_SECONDS = {clip!r}, 40, 6.0
sys.modules["picamera2"] = fake_picamera2
from ferlite.cli import main
sys.argv = ["ferlite", "run", "--camera", "--bundle", {bundle!r}, "--log", {log!r}, "--max-fps", "12", "--no-status"]
main()
"""


def test_sd_notify_ready_watchdog_while_frames_flow_and_stopping(tiny_bundle, tmp_path):
    """READY after the first frame; WATCHDOG about once a second while frames flow; none while the
    camera hangs; STOPPING at SIGTERM, within a second even though the camera still hangs, and exit 0."""
    listener = _Listener()
    try:
        env = {**os.environ, "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "4000000"}
        env.pop("WATCHDOG_PID", None)
        boot = BOOT.format(tests=str(TESTS), clip=str(CLIP), bundle=str(tiny_bundle), log=str(tmp_path / "r.db"))
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", boot], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 120
        while not listener.times("WATCHDOG=1") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        # 40 frames at 12 fps flow for ~3.3 s, then the camera hangs for 6 s: SIGTERM comes during the hang.
        time.sleep(7.0)
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        ended = time.monotonic()
    finally:
        listener.close()
    assert proc.returncode == 0, stderr[-2000:]
    ready, pings, stopping = listener.times("READY=1"), listener.times("WATCHDOG=1"), listener.times("STOPPING=1")
    assert len(ready) == 1 and ready[0] > started
    assert listener.messages[0][1].startswith("READY=1"), "READY comes first, after the first frame"
    assert len(pings) >= 2 and len(stopping) == 1 and stopping[0] <= ended, listener.messages
    # Gaps between consecutive signs of life: about 1 s while frames flow, one long silence while
    # the camera hangs, ended by the SIGTERM (the capture thread never holds the loop).
    gaps = [b - a for a, b in zip(pings, pings[1:] + stopping)]
    assert sum(gap > 3.0 for gap in gaps) == 1 and gaps[-1] > 3.0, gaps
    assert all(gap < 2.5 for gap in gaps[:-1]), gaps
    assert stopping[0] - asked < 1.0, stopping[0] - asked
    assert "STATUS=" in listener.messages[1][1] and "fps" in listener.messages[1][1]


def test_notifier_is_silent_without_systemd():
    from ferlite.device.notify import Notifier
    from ferlite.device.pipeline import Stats

    notifier = Notifier(env={})
    assert notifier.send("READY=1") is False
    notifier.ready(Stats())
    notifier.frame(Stats())
    notifier.stopping(Stats())


@pytest.mark.parametrize("interpreter, hidden", [("/usr/bin/python3", None),
                                                 ("/root/.pyenv/versions/3.11/bin/python", "/root"),
                                                 ("/home/pi/ferlite-venv/bin/python", "/home")])
def test_install_refuses_an_executable_the_unit_cannot_reach(tmp_path, interpreter, hidden):
    """ProtectHome=yes hides /home, /root and /run/user from the service: a ferlite there, or one whose
    Python lives there (a venv's python is a link to it), would fail with 203/EXEC at every start."""
    from ferlite.device.service import ServiceError, check_reachable

    script = tmp_path / "ferlite"
    script.write_text(f"#!{interpreter}\nimport ferlite.cli\n")
    if hidden is None:
        check_reachable(script)
        return
    with pytest.raises(ServiceError, match=f"under {hidden}, which the unit hides"):
        check_reachable(script)
