"""`ferlite service install | uninstall | status`: the runtime as a hardened systemd unit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ferlite.errors import FerliteError

UNIT_NAME = "ferlite.service"
SERVE_UNIT = "ferlite-serve.service"  # the optional dashboard, beside the camera service
UNIT_DIR = Path("/etc/systemd/system")
CONFIG_PATH = Path("/etc/ferlite/ferlite.toml")
STATE_DB = Path("/var/lib/ferlite/results.db")


class ServiceError(FerliteError):
    """systemd is absent, we are not root, or systemctl failed."""


@dataclass(frozen=True)
class Step:
    """One action of an install or uninstall, printable for --dry-run."""

    description: str
    command: list[str] | None = None
    write: tuple[Path, str] | None = None


def ferlite_executable() -> Path:
    """The real path of the installed `ferlite` command (the unit must not depend on $PATH)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "ferlite" and argv0.exists():
        return argv0.resolve()
    beside_python = Path(sys.executable).parent / "ferlite"  # `python -m ferlite` from a venv
    if beside_python.exists():
        return beside_python.absolute()
    found = shutil.which("ferlite")
    if not found:
        raise ServiceError("cannot find the installed `ferlite` executable; install ferlite with pip first")
    return Path(found).resolve()


# What the unit's ProtectHome=yes makes inaccessible to the service (systemd.exec(5)).
HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"))
VENV = Path("/opt/ferlite-venv")  # where docs/raspberry-pi.md puts the service's venv


def check_reachable(executable: Path) -> None:
    """Fail with one line when the unit could not start `executable`: it, or the Python its first line
    names (a venv's python is a link to the real one), lies where ProtectHome=yes hides it."""
    paths = [executable]
    with executable.open("rb") as f:
        first = f.readline(4096)
    if first.startswith(b"#!"):
        paths.append(Path(first[2:].decode("utf-8", "replace").split()[0]))
    for path in paths:
        real = path.resolve()
        for hidden in HIDDEN:
            if real.is_relative_to(hidden):
                shown = str(path) if real == path else f"{path} (really {real})"
                raise ServiceError(f"{shown} is under {hidden}, which the unit hides (ProtectHome=yes): install "
                                   f"ferlite in a venv such as {VENV} with a system Python (docs/raspberry-pi.md)")


def render_unit(executable: Path, config: Path = CONFIG_PATH, unit: str = UNIT_NAME) -> str:
    """The unit file with ExecStart pointing at `executable` (and, for the camera service, `--config config`)."""
    template = resources.files("ferlite.systemd").joinpath(unit).read_text()
    return template.replace("{executable}", str(executable)).replace("{config}", str(config))


def install_steps(executable: Path, config_text: str, unit_dir: Path = UNIT_DIR,
                  config: Path = CONFIG_PATH, unit: str = UNIT_NAME) -> list[Step]:
    """Write `unit` (and, for the camera service, a default config if there is none), reload, start."""
    name = unit.removesuffix(".service")
    steps = [Step(f"write {unit_dir / unit}", write=(unit_dir / unit, render_unit(executable, config, unit)))]
    if unit == UNIT_NAME and not config.exists():
        steps.append(Step(f"write default config {config}", write=(config, config_text)))
    steps += [
        Step("reload systemd", ["systemctl", "daemon-reload"]),
        # --no-block: without its camera yet, the service keeps retrying; install need not wait for it.
        Step(f"enable and start {name}", ["systemctl", "enable", "--now", "--no-block", unit]),
    ]
    return steps


def uninstall_steps(unit_dir: Path = UNIT_DIR, unit: str = UNIT_NAME) -> list[Step]:
    """Stop and remove the unit; the config and the results database are kept."""
    return [
        Step(f"stop and disable {unit.removesuffix('.service')}", ["systemctl", "disable", "--now", unit]),
        Step(f"remove {unit_dir / unit}", ["rm", "-f", str(unit_dir / unit)]),
        Step("reload systemd", ["systemctl", "daemon-reload"]),
    ]


def describe(steps: list[Step]) -> str:
    """What --dry-run prints: each step, and the full text of each file it would write."""
    lines = []
    for n, step in enumerate(steps, 1):
        lines.append(f"{n}. {step.description}" + (f": {' '.join(step.command)}" if step.command else ""))
        if step.write:
            lines += [f"--- {step.write[0]}", step.write[1].rstrip(), "---"]
    return "\n".join(lines)


def check_can_manage() -> None:
    """Fail with one line when systemd is not running here or we are not root."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        raise ServiceError("systemd is not running on this machine; run `ferlite run --camera` directly instead")
    if os.geteuid() != 0:
        raise ServiceError("installing a system service needs root: run it with sudo")


def perform(steps: list[Step], dry_run: bool) -> str:
    """The dry-run description, or (as root, with systemd) carry the steps out and return ''."""
    if dry_run:
        return describe(steps)
    check_can_manage()
    apply(steps)
    return ""


def apply(steps: list[Step]) -> None:
    for step in steps:
        if step.write:
            path, text = step.write
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if step.command:
            result = subprocess.run(step.command, capture_output=True, text=True)
            if result.returncode != 0:
                raise ServiceError(f"{' '.join(step.command)} failed: {result.stderr.strip().splitlines()[-1:]}")


def systemctl_status() -> str:
    """`systemctl status ferlite` as text (its exit code says little: 3 just means stopped)."""
    if shutil.which("systemctl") is None:
        raise ServiceError("systemctl not found: systemd is not installed here")
    if not Path("/run/systemd/system").is_dir():
        raise ServiceError("systemd is not running on this machine (not booted with it): no service to ask about")
    result = subprocess.run(["systemctl", "status", UNIT_NAME, "--no-pager", "--lines=0"],
                            capture_output=True, text=True)
    return (result.stdout or result.stderr).strip()


def recent_results(log: Path, minutes: int) -> str:
    """Faces per label for each of the last `minutes` minutes that have results, as text lines."""
    from ferlite.device.log import open_reader
    from ferlite.device.logview import timeline

    if not log.exists():
        return f"no results yet ({log} does not exist)"
    stamps, per_label = timeline(open_reader(log))
    recent = stamps[-minutes:]
    if not recent:
        return f"no results in {log}"
    lines = [f"last {len(recent)} minute(s) with faces in {log}:"]
    for i, minute in enumerate(stamps[len(stamps) - len(recent):], len(stamps) - len(recent)):
        counts = ", ".join(f"{label} {values[i]}" for label, values in per_label.items() if values[i])
        lines.append(f"  {minute}  {counts}")
    return "\n".join(lines)
