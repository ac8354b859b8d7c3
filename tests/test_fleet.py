"""Fleet end to end: `ferlite run --mqtt`, `publish` and `collect` with a real Mosquitto broker, SQLite and a
real PostgreSQL, on real clips; outages are real (the broker or the device killed), traffic only to 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import services
from clips import group_clip

from ferlite.device.fleet.broker import parse_broker
from ferlite.device.fleet.messages import MessageError, parse
from ferlite.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
GROUP = FIXTURES / "group.avi"  # 8 frames of six people


def ferlite(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferlite", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def spawn(*args: object, stderr: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ferlite", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=stderr.open("w"))


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(15)


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return check()


def device_run(log: Path, *args: object, device: str = "pi1") -> subprocess.CompletedProcess:
    return ferlite("run", "--source", args[0] if args else GROUP, "--no-status", "--log", log, "--device-id", device,
                   *args[1:])


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """The group clip played forth and back: 512 frames, 51 s at --max-fps 10."""
    return group_clip(tmp_path_factory.mktemp("clip") / "long.avi", 512, fps=12.0)


# What a device log holds and what a collected database holds, in the same shape.

def log_holds(log: Path) -> dict[str, list]:
    """Each run's track events and per-minute counts (from detections, or a privacy run's counts)."""
    db = sqlite3.connect(log)
    events = db.execute("SELECT run_id, track, kind, time_utc, label, shares, frames, start_utc, end_utc "
                        "FROM track_events").fetchall()
    counts = db.execute("SELECT run_id, substr(time_utc, 1, 16) || 'Z' AS m, label, COUNT(*), COUNT(DISTINCT track) "
                        "FROM detections GROUP BY run_id, m, label").fetchall()
    counts += db.execute("SELECT run_id, minute_utc, label, detections, faces FROM counts").fetchall()
    db.close()
    return {"events": sorted(events), "counts": sorted(counts)}


EVENTS_SQL = ("SELECT r.device_run, e.track, e.kind, e.time_utc, e.label, e.shares, e.frames, e.start_utc, e.end_utc "
              "FROM track_events e JOIN runs r ON r.id = e.run_id WHERE r.device = ?")
COUNTS_SQL = ("SELECT r.device_run, c.minute_utc, c.label, c.detections, c.faces FROM counts c JOIN runs r "
              "ON r.id = c.run_id WHERE r.device = ?")


def collected_holds(db: str, device: str) -> dict[str, list]:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return {"events": sorted(tuple(r) for r in conn.execute(EVENTS_SQL.replace("?", "%s"), (device,))),
                    "counts": sorted(tuple(r) for r in conn.execute(COUNTS_SQL.replace("?", "%s"), (device,)))}
    conn = sqlite3.connect(db)
    try:
        return {"events": sorted(conn.execute(EVENTS_SQL, (device,)).fetchall()),
                "counts": sorted(conn.execute(COUNTS_SQL, (device,)).fetchall())}
    except sqlite3.OperationalError:  # the collector has not made its tables yet
        return {"events": [], "counts": []}
    finally:
        conn.close()


def kinds_per_track(events: list[tuple]) -> dict[tuple[int, int], list[str]]:
    tracks: dict[tuple[int, int], list[str]] = {}
    for run, track, kind, *_ in events:
        tracks.setdefault((run, track), []).append(kind)
    return tracks


@pytest.fixture
def broker(tmp_path):
    b = services.mosquitto(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def collector(broker, tmp_path):
    """`ferlite collect` into a SQLite file, running for the test; yields (db path, stderr file)."""
    db, err = tmp_path / "collected.db", tmp_path / "collect.err"
    proc = spawn("collect", "--mqtt", broker.url, "--db", db, "--client-id", "test-collector", stderr=err)
    assert wait_for(lambda: "connected" in err.read_text(), 10), err.read_text()
    yield db, err
    if proc.poll() is None:
        stop(proc)


# Checks of the pieces, on real input.

@pytest.mark.parametrize("url, why", [
    ("http://pi.local", "expected mqtt://HOST"),
    ("mqtt://", "expected mqtt://HOST"),
    ("mqtt://pi.local:99999", "port must be a number"),
    ("mqtt://me:secret@pi.local", "credentials do not go in the URL"),
    ("mqtt://pi.local/topic", "only a host and a port"),
])
def test_bad_broker_urls_are_one_line_errors(url, why):
    with pytest.raises(ConfigError, match=why):
        parse_broker(url)


def test_broker_url_defaults_and_password_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert parse_broker("mqtt://pi.local").port == 1883
    tls = parse_broker("mqtts://pi.local", username="pi", password_file=str(secret))
    assert (tls.port, tls.tls, tls.password, tls.name) == (8883, True, "s3cret", "mqtts://pi.local:8883")


@pytest.mark.parametrize("topic, payload, why", [
    ("ferlite/pi1/events", b"{not json", "not JSON"),
    ("ferlite/pi1/events", b"[1, 2]", "not a JSON object"),
    ("ferlite/pi1/counts", b'{"id": "pi1:1:count:x", "device": "pi1", "run": 1}', "'minute_utc' missing"),
    ("ferlite/pi1/counts", json.dumps({"id": "pi1:1:count", "device": "pi1", "run": 1, "minute_utc": "yesterday",
                                       "label": "happy", "detections": 1, "faces": 1}).encode(), "wrong type"),
    ("ferlite/pi1/counts", json.dumps({"id": "pi1:1:count", "device": "pi2", "run": 1, "label": "happy",
                                       "minute_utc": "2026-01-01T00:00Z", "detections": 1, "faces": 1}).encode(),
     "differs"),
    ("ferlite/pi1/available", b"maybe", "online"),
    ("ferlite/pi1/extra/deep", b"{}", "not a topic"),
    ("ferlite/pi1/events", b"\xff\xfe", "not UTF-8"),
])
def test_malformed_messages_are_refused_with_a_reason(topic, payload, why):
    with pytest.raises(MessageError, match=why):
        parse(topic, payload)


# End to end.

def test_run_publishes_counts_and_one_new_and_end_per_track(broker, collector, tmp_path):
    db, _ = collector
    log = tmp_path / "pi1.db"
    result = device_run(log, GROUP, "--mqtt", broker.url)
    assert result.returncode == 0, result.stderr
    assert "48 faces logged" in result.stderr
    holds = log_holds(log)
    assert wait_for(lambda: collected_holds(str(db), "pi1") == holds, 10), (collected_holds(str(db), "pi1"), holds)
    assert sum(c[3] for c in collected_holds(str(db), "pi1")["counts"]) == 48
    tracks = kinds_per_track(holds["events"])
    assert len(tracks) >= 6
    assert all(kinds.count("new") == 1 and kinds.count("end") == 1 for kinds in tracks.values()), tracks
    summary = ferlite("log", "summary", db, "--device", "pi1", "--json")
    assert summary.returncode == 0, summary.stderr
    (run,) = json.loads(summary.stdout)
    assert (run["device"], run["frames"], sum(run["by_label"].values())) == ("pi1", 8, 48)
    assert run["stopped_utc"] is not None
    exported = ferlite("log", "export", db, "--device", "pi1", "--counts", "--jsonl", "-")
    assert sum(json.loads(line)["detections"] for line in exported.stdout.splitlines()) == 48
    unknown = ferlite("log", "summary", db, "--device", "nobody")
    assert unknown.returncode == 2 and unknown.stderr.strip().endswith("no device 'nobody' (it holds: pi1)")


def test_privacy_run_publishes_counts_and_no_events(broker, collector, tmp_path):
    db, _ = collector
    log = tmp_path / "private.db"
    assert device_run(log, GROUP, "--mqtt", broker.url, "--privacy", device="quiet").returncode == 0
    holds = log_holds(log)
    assert holds["events"] == [] and sum(c[3] for c in holds["counts"]) == 48
    assert wait_for(lambda: collected_holds(str(db), "quiet") == holds, 10)


def test_publish_drains_a_log_run_without_mqtt_and_resumes_at_its_cursor(broker, collector, tmp_path):
    db, _ = collector
    log = tmp_path / "offline.db"
    for _ in range(2):
        assert device_run(log, GROUP, device="offline").returncode == 0
    sent = ferlite("publish", log, "--mqtt", broker.url, "--device-id", "offline", "--json")
    assert sent.returncode == 0, sent.stderr
    figures = json.loads(sent.stdout)
    assert figures["events"] == len(log_holds(log)["events"]) and figures["runs"] == 2
    assert wait_for(lambda: collected_holds(str(db), "offline") == log_holds(log), 10)
    again = json.loads(ferlite("publish", log, "--mqtt", broker.url, "--device-id", "offline", "--json").stdout)
    assert (again["events"], again["counts"]) == (0, 0)  # the cursor was at the end


def test_three_devices_into_one_collector(broker, collector, tmp_path):
    db, _ = collector
    logs = {name: tmp_path / f"{name}.db" for name in ("kitchen", "hall", "door")}
    procs = [subprocess.Popen([sys.executable, "-m", "ferlite", "run", "--source", GROUP, "--no-status", "--log", log,
                               "--device-id", name, "--mqtt", broker.url, *(["--privacy"] if name == "door" else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, log in logs.items()]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    for name, log in logs.items():
        assert wait_for(lambda: collected_holds(str(db), name) == log_holds(log), 10), name  # noqa: B023
        (own,) = json.loads(ferlite("log", "summary", log, "--json").stdout)
        (collected,) = json.loads(ferlite("log", "summary", db, "--device", name, "--json").stdout)
        assert (collected["device"], collected["frames"], collected["by_label"], collected["privacy"]) == \
            (name, own["frames"], own["by_label"], own["privacy"])


def test_device_killed_resumes_from_its_cursor(broker, collector, tmp_path, long_clip):
    db, _ = collector
    log, err = tmp_path / "killed.db", tmp_path / "run.err"
    proc = spawn("run", "--source", long_clip, "--no-status", "--log", log, "--device-id", "killed", "--max-fps", "20",
                 "--mqtt", broker.url, stderr=err)
    assert wait_for(lambda: len(collected_holds(str(db), "killed")["events"]) >= 6, 15), err.read_text()
    time.sleep(1.5)
    stop(proc, signal.SIGKILL)
    with sqlite3.connect(log) as conn:
        cursor = dict(conn.execute("SELECT stream, last_id FROM publish_cursor").fetchall())
    assert cursor["events"] > 0  # the killed run had moved its cursor
    assert device_run(log, GROUP, "--mqtt", broker.url, device="killed").returncode == 0
    holds = log_holds(log)
    assert len({e[0] for e in holds["events"]}) == 2
    assert wait_for(lambda: collected_holds(str(db), "killed") == holds, 15), \
        (len(collected_holds(str(db), "killed")["events"]), len(holds["events"]))


def test_broker_killed_three_times_loses_and_duplicates_nothing(tmp_path, long_clip):
    """The broker SIGKILLed 3 s into the run and every 12 s after, back each time 10 s later; the run (51 s)
    goes on, and afterwards a SQLite and a PostgreSQL collector hold exactly what the device's log holds."""
    broker = services.mosquitto(tmp_path / "broker", persistent=True)
    pg = services.postgres()
    collectors = []
    try:
        sqlite_db = tmp_path / "collected.db"
        for db, name in ((sqlite_db, "sqlite"), (pg.url, "pg")):
            err = tmp_path / f"collect-{name}.err"
            collectors.append(spawn("collect", "--mqtt", broker.url, "--db", db, "--client-id", f"c-{name}",
                                    stderr=err))
            assert wait_for(lambda: "connected" in err.read_text(), 15), err.read_text()  # noqa: B023
        log, err = tmp_path / "device.db", tmp_path / "run.err"
        run = spawn("run", "--source", long_clip, "--no-status", "--log", log, "--device-id", "pi", "--max-fps", "10",
                    "--mqtt", broker.url, stderr=err)
        time.sleep(3)
        for _ in range(3):
            broker.kill()
            time.sleep(10)
            broker.start()
            time.sleep(2)
        assert run.wait(60) == 0, err.read_text()
        holds = log_holds(log)
        assert len(holds["events"]) > 12 and holds["counts"]
        for db in (str(sqlite_db), pg.url):
            assert wait_for(lambda: collected_holds(db, "pi") == holds, 20), \
                (db, len(collected_holds(db, "pi")["events"]), len(holds["events"]))  # noqa: B023
        assert err.read_text().count("connection lost") <= 3
        summary = ferlite("log", "summary", pg.url, "--device", "pi", "--json")
        assert summary.returncode == 0, summary.stderr
        assert sum(json.loads(summary.stdout)[0]["by_label"].values()) == sum(c[3] for c in holds["counts"])
    finally:
        for proc in collectors:
            if proc.poll() is None:
                stop(proc)
        broker.stop()
        pg.stop()


def test_broker_crash_loses_nothing_it_queued_for_an_away_collector(tmp_path):
    """The broker acknowledges the device's messages, queues them for a collector that is away, and is
    SIGKILLed before it saves them (Mosquitto's default autosave is 30 min): the device sends its last
    RESEND_S again once the broker is back, so the collector, back after the run, gets everything."""
    broker = services.mosquitto(tmp_path / "broker", persistent=True, autosave_s=3600)
    db, collect_err = tmp_path / "collected.db", tmp_path / "collect.err"
    try:
        collector = spawn("collect", "--mqtt", broker.url, "--db", db, "--client-id", "away", stderr=collect_err)
        assert wait_for(lambda: "connected" in collect_err.read_text(), 15), collect_err.read_text()
        assert stop(collector) == 0
        broker.stop()  # a clean stop saves the collector's session; nothing is saved after this
        broker.start()
        log, err = tmp_path / "device.db", tmp_path / "run.err"
        run = spawn("run", "--source", group_clip(tmp_path / "clip.avi", 150, fps=12.0), "--no-status", "--log", log,
                    "--device-id", "pi", "--max-fps", "10", "--mqtt", broker.url, stderr=err)
        assert wait_for(lambda: acknowledged_events(log) >= 6, 20), err.read_text()
        broker.kill()
        broker.start()
        assert run.wait(60) == 0, err.read_text()
        assert "sending again" in err.read_text()
        collector = spawn("collect", "--mqtt", broker.url, "--db", db, "--client-id", "away", stderr=collect_err)
        holds = log_holds(log)
        assert wait_for(lambda: collected_holds(str(db), "pi") == holds, 20), \
            (len(collected_holds(str(db), "pi")["events"]), len(holds["events"]))
        stop(collector)
    finally:
        broker.stop()


def acknowledged_events(log: Path) -> int:
    """The last track event the broker acknowledged, from the publisher's cursor in the device's log."""
    if not log.exists():
        return 0
    try:
        with closing(sqlite3.connect(log)) as db:
            row = db.execute("SELECT last_id FROM publish_cursor WHERE stream = 'events'").fetchone()
    except sqlite3.OperationalError:
        return 0
    return row[0] if row else 0


# Bad input: one line each, nothing stored from it, the device's own log unaffected.

def test_wrong_url_is_one_line(tmp_path):
    result = device_run(tmp_path / "r.db", GROUP, "--mqtt", "mqtt://pi.local:notaport")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --mqtt 'mqtt://pi.local:notaport': the port must be a "
                                                  "number from 1 to 65535"]
    jsonl = device_run(tmp_path / "r.jsonl", GROUP, "--mqtt", "mqtt://127.0.0.1", "--log-format", "jsonl")
    assert jsonl.returncode == 2 and "cannot with --log-format jsonl" in jsonl.stderr


def test_refused_credentials(tmp_path):
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "pi", "right"], check=True, capture_output=True)
    passwords.chmod(0o644)
    broker = services.mosquitto(tmp_path / "broker", extra=f"allow_anonymous false\npassword_file {passwords}\n")
    try:
        wrong = tmp_path / "wrong"
        wrong.write_text("wrong\n")
        config = tmp_path / "fleet.toml"
        config.write_text(f'mqtt_username = "pi"\nmqtt_password_file = "{wrong}"\n')
        log = tmp_path / "r.db"
        result = device_run(log, GROUP, "--mqtt", broker.url, "--config", config)
        assert result.returncode == 0 and "48 faces logged" in result.stderr
        warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
        assert len(warnings) == 1 and "refused the connection (Not authorized)" in warnings[0], result.stderr
        published = ferlite("publish", log, "--mqtt", broker.url, "--config", config, "--wait", "5")
        assert published.returncode == 2
        assert published.stderr.strip().splitlines()[-1].startswith("error: mqtt://127.0.0.1:") and \
            "refused the connection (Not authorized)" in published.stderr
        wrong.write_text("right\n")
        assert ferlite("publish", log, "--mqtt", broker.url, "--config", config).returncode == 0
    finally:
        broker.stop()


def test_a_broker_that_drops_the_connection_and_one_that_is_away(tmp_path):
    """A listener that accepts and hangs up at once; then a port nobody listens on, the run stopped by
    SIGTERM within 2 s although its publisher cannot get through."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def hang_up() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        log = tmp_path / "r.db"
        result = device_run(log, GROUP, "--mqtt", f"mqtt://127.0.0.1:{port}")
    finally:
        server.close()
    assert result.returncode == 0 and "48 faces logged" in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "closed the connection" in warnings[0], result.stderr
    away, err = services.free_port(), tmp_path / "away.err"
    proc = spawn("run", "--source", GROUP, "--no-status", "--log", tmp_path / "away.db", "--max-fps", "2",
                 "--mqtt", f"mqtt://127.0.0.1:{away}", stderr=err)
    time.sleep(3)
    asked = time.monotonic()
    assert stop(proc) == 0
    assert time.monotonic() - asked < 2.0, err.read_text()
    assert err.read_text().count("cannot be reached") == 1


def test_malformed_messages_reaching_collect_store_nothing(broker, collector, tmp_path):
    db, err = collector
    bad = [("ferlite/pi1/events", "{not json"), ("ferlite/pi1/counts", '{"id": "pi1:1:count", "device": "pi1"}'),
           ("ferlite/pi1/deep/er", "{}"), ("ferlite/pi1/available", "maybe")]
    for topic, payload in bad:
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-m",
                        payload], check=True, timeout=10)
    assert wait_for(lambda: err.read_text().count("ignored a message") == len(bad), 10), err.read_text()
    conn = sqlite3.connect(db)
    assert [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "counts", "track_events")] == \
        [0, 0, 0]
    conn.close()
    log = tmp_path / "after.db"
    assert device_run(log, GROUP, "--mqtt", broker.url).returncode == 0  # the collector goes on
    assert wait_for(lambda: collected_holds(str(db), "pi1") == log_holds(log), 10)


def test_home_assistant_discovery_is_opt_in(broker, tmp_path):
    config = tmp_path / "ha.toml"
    config.write_text("mqtt_discovery = true\n")
    assert device_run(tmp_path / "r.db", GROUP, "--mqtt", broker.url, "--config", config, device="den").returncode == 0
    seen = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "homeassistant/#",
                           "-t", "ferlite/den/available", "-v", "-C", "8", "-W", "5"], capture_output=True, text=True,
                          timeout=10).stdout.splitlines()
    sensors = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in seen if "homeassistant" in line}
    assert len(sensors) == 7 and "homeassistant/sensor/ferlite_den/happy/config" in sensors
    happy = sensors["homeassistant/sensor/ferlite_den/happy/config"]
    assert (happy["state_topic"], happy["availability_topic"]) == ("ferlite/den/state", "ferlite/den/available")
    assert "ferlite/den/available offline" in seen


def test_tls_with_a_ca_file_from_the_config(tmp_path):
    """mqtts:// to a broker whose certificate a CA of the test's own signed: accepted with mqtt_ca, refused
    without it (the system's CAs do not know it)."""
    certs = tmp_path / "certs"
    certs.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True, timeout=60)

    try:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
                "-subj", "/CN=ferlite test CA")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj",
                "/CN=127.0.0.1")
        (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
                "broker.crt", "-days", "1", "-extfile", "san.cnf")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate here: {exc}")
    tls = "".join(f"{key} {certs / name}\n" for key, name in (("cafile", "ca.crt"), ("certfile", "broker.crt"),
                                                             ("keyfile", "broker.key")))
    broker = services.mosquitto(tmp_path / "broker", extra=tls)
    try:
        log = tmp_path / "r.db"
        assert device_run(log, GROUP).returncode == 0
        url = f"mqtts://127.0.0.1:{broker.port}"
        unknown = ferlite("publish", log, "--mqtt", url, "--device-id", "tls", "--wait", "3")
        assert unknown.returncode == 2
        assert unknown.stderr.strip().splitlines()[-1].startswith(f"error: {url}: no progress")
        config = tmp_path / "tls.toml"
        config.write_text(f'mqtt_ca = "{certs / "ca.crt"}"\n')
        sent = ferlite("publish", log, "--mqtt", url, "--device-id", "tls", "--config", config, "--json")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["events"] == len(log_holds(log)["events"])
    finally:
        broker.stop()
