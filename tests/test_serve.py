"""`ferlite serve` over logs real runs wrote, opened in a real headless Chromium: each view shows the
figures `ferlite log summary --json` prints, Now follows a run still writing, every route of a
non-local bind answers 401 without the token, and bad parameters are 400s with a message.

FERLITE_SCREENSHOTS=docs/img makes the browser tests save docs/img/serve-{now,timeline,runs,tracks}.png."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
from clips import group_clip

TESTS = Path(__file__).parent
GROUP = TESTS / "fixtures" / "group.avi"
SHOTS = os.environ.get("FERLITE_SCREENSHOTS")
ROUTES = ["/", "/static/app.js", "/static/app.css", "/api/runs", "/api/now", "/api/timeline", "/api/tracks?run=1",
          "/api/face?run=1&track=1"]

pytest.importorskip("starlette", reason="needs ferlite[serve]")


def ferlite(*args, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferlite", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


class Server:
    """`ferlite serve` in its own process on a free port (--port 0), stopped by its pid."""

    def __init__(self, log: Path, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ferlite", "serve", str(log), "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.lines = []
        while not any("listening on" in line for line in self.lines):
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"serve exited: {''.join(self.lines)}")
            self.lines.append(line)
        self.port = int(re.search(r"listening on \S+:(\d+)", "".join(self.lines))[1])
        self.url = f"http://127.0.0.1:{self.port}/"

    def token(self) -> str:
        self.lines.append(self.proc.stderr.readline())
        return re.search(r"\?token=(\S+)", self.lines[-1])[1]

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=20)) as conn:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()


@pytest.fixture(scope="module")
def real_log(tmp_path_factory) -> Path:
    """Two real runs on the committed clip of six people: one saving its faces, one in privacy mode."""
    folder = tmp_path_factory.mktemp("serve")
    for extra in (["--save-faces", "faces"], ["--privacy"]):
        result = ferlite("run", "--source", GROUP, "--log", "results.db", "--no-status", *extra, cwd=folder)
        assert result.returncode == 0, result.stderr[-2000:]
    return folder / "results.db"


@pytest.fixture(scope="module")
def summary(real_log) -> list[dict]:
    result = ferlite("log", "summary", "--json", real_log)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def server(real_log):
    server = Server(real_log)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through its chromedriver, headless (as root: --no-sandbox)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (ferlite[dev])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1360,760"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    except Exception as exc:  # noqa: BLE001 - any failure to start the browser is a skip, said in one line
        pytest.skip(f"headless chromium does not start here: {str(exc).splitlines()[0]}")
    yield driver
    driver.quit()


def open_view(driver, url: str, view: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "view").get_attribute("data-view") == view)
    return driver.find_element(By.ID, "view")


def screenshot(driver, name: str) -> None:
    """Save docs/img/serve-NAME.png (when FERLITE_SCREENSHOTS names the folder), palette PNG to stay small."""
    if not SHOTS:
        return
    import io

    from PIL import Image

    path = Path(SHOTS) / f"serve-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB").quantize(64).save(path, optimize=True)
    assert path.stat().st_size <= 150 * 1024, f"{path}: {path.stat().st_size} bytes"


def field(node, name: str) -> str:
    from selenium.webdriver.common.by import By

    return node.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]').text


def test_runs_timeline_and_tracks_show_the_log_summary(server, browser, summary, real_log):
    from selenium.webdriver.common.by import By

    view = open_view(browser, server.url + "#runs", "runs")
    rows = view.find_elements(By.CSS_SELECTOR, "tr[data-run]")
    assert [int(r.get_attribute("data-run")) for r in rows] == [run["id"] for run in summary]
    for row, run in zip(rows, summary):
        shown = {name: field(row, name) for name in ("frames", "skipped", "faces", "tracks", "uncertain", "state")}
        assert shown == {"frames": str(run["frames"]), "skipped": str(run["skipped"]),
                         "faces": str(sum(run["by_label"].values())), "tracks": str(run["tracks"]),
                         "uncertain": str(run["uncertain"]), "state": "stopped"}
        assert f"{next(iter(run['by_label']))} {next(iter(run['by_label'].values()))}" in row.text
    screenshot(browser, "runs")

    view = open_view(browser, server.url + "#timeline", "timeline")
    per_label: dict[str, int] = {}
    for run in summary:
        for label, n in run["by_label"].items():
            per_label[label] = per_label.get(label, 0) + n
    shown = {r.get_attribute("data-label"): int(field(r, "faces"))
             for r in view.find_elements(By.CSS_SELECTOR, "tr[data-label]")}
    assert shown == per_label  # the privacy run's counts and the detections alike
    assert int(field(view, "total")) == sum(per_label.values())
    assert view.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    screenshot(browser, "timeline")
    view = open_view(browser, server.url + "#timeline?from=2026-05-02&to=2026-05-01", "timeline")
    assert view.text.startswith("empty range: 'to' (2026-05-01T00:00) must come after 'from'")

    first = summary[0]
    view = open_view(browser, server.url + f"#tracks?run={first['id']}", "tracks")
    assert int(field(view, "total")) == first["tracks"]
    tracks = view.find_elements(By.CSS_SELECTOR, "tr[data-track]")
    assert sum(int(field(t, "faces")) for t in tracks) == sum(first["by_label"].values())
    assert not view.find_elements(By.TAG_NAME, "img")  # no face pixels until asked
    screenshot(browser, "tracks")
    tracks[0].find_element(By.TAG_NAME, "button").click()
    img = view.find_element(By.CSS_SELECTOR, "img.crop")
    browser.execute_script("return arguments[0].decode()", img)
    assert browser.execute_script("return arguments[0].naturalWidth", img) > 0

    view = open_view(browser, server.url + f"#tracks?run={summary[1]['id']}", "tracks")
    assert "Privacy run" in view.text and not view.find_elements(By.TAG_NAME, "button")


def wait_for_rows(log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.with_name(log.name + "-wal").exists():
            with closing(sqlite3.connect(log.resolve().as_uri() + "?mode=ro", uri=True)) as db:
                try:
                    if db.execute("SELECT COUNT(*) FROM detections").fetchone()[0]:
                        return
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.2)
    raise AssertionError("the writer logged nothing")


# What Now shows, read in one go (the view redraws every second): latest frame, frames processed, longest seen.
NOW_JS = """
const view = document.getElementById("view");
const number = (name) => Number(view.querySelector(`[data-field="${name}"]`)?.textContent);
const seen = [...view.querySelectorAll('.face [data-field="seen"]')].map((e) => Number(e.dataset.seconds));
return seen.length ? [number("frame"), number("frames"), Math.max(...seen)] : null;
"""


def test_now_follows_a_run_still_writing(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    log = tmp_path / "live.db"
    clip = group_clip(tmp_path / "long.avi", 400)
    writer = subprocess.Popen([sys.executable, "-m", "ferlite", "run", "--source", clip, "--max-fps", "10", "--log",
                               log, "--no-status"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(log)
        server = Server(log)
        try:
            open_view(browser, server.url + "#now", "now")
            browser.execute_script("window.samePage = true")
            readings = [WebDriverWait(browser, 15).until(lambda d: d.execute_script(NOW_JS))]
            for _ in range(2):  # each figure grows while the run writes, without reloading the page
                readings.append(WebDriverWait(browser, 15).until(
                    lambda d: (now := d.execute_script(NOW_JS)) and all(a < b for a, b in zip(readings[-1], now))
                    and now))
            assert "track" in browser.find_element(By.ID, "view").text
            assert browser.execute_script("return window.samePage")  # updated in place, never reloaded
            screenshot(browser, "now")
            writer.send_signal(signal.SIGTERM)
            writer.wait(timeout=20)
            WebDriverWait(browser, 10).until(lambda d: "No run is writing" in d.find_element(By.ID, "view").text)
        finally:
            server.stop()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()


def test_every_route_needs_the_token_on_a_non_local_bind(real_log):
    server = Server(real_log, "--host", "0.0.0.0")
    try:
        token = server.token()
        for path in [*ROUTES, "/nothing-here", "/api/timeline?from=bad"]:
            assert get(server.port, path)[0] == 401, path
            assert get(server.port, path, {"Cookie": "ferlite_token=" + "x" * len(token)})[0] == 401, path
        status, headers, _ = get(server.port, "/api/runs?token=" + token)
        assert status == 303 and headers["location"] == "/api/runs"
        assert get(server.port, f"//example.com/?token={token}")[1]["location"] == "/example.com/"
        cookie = headers["set-cookie"]
        assert f"ferlite_token={token}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        for path in ROUTES:
            assert get(server.port, path, {"Cookie": f"ferlite_token={token}"})[0] == 200, path
    finally:
        server.stop()


def test_a_token_comes_from_a_file_or_the_environment(real_log, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-s3cret-s3cret\n")
    server = Server(real_log, "--token-file", str(token))
    try:
        assert get(server.port, "/api/runs")[0] == 401  # given a token, even localhost needs it
        assert get(server.port, "/api/runs", {"Cookie": "ferlite_token=s3cret-s3cret-s3cret"})[0] == 200
        assert not any("s3cret" in line for line in server.lines)
    finally:
        server.stop()
    short = tmp_path / "short"
    short.write_text("abc")
    result = ferlite("serve", real_log, "--token-file", short)
    assert result.returncode != 0 and result.stderr.strip() == "error: the serve token must be at least 16 " \
                                                                "printable ASCII characters"


@pytest.mark.parametrize("path", [
    "/api/timeline?from=yesterday", "/api/timeline?from=2026-02-30", "/api/timeline?to=2026-01-01T25:00",
    "/api/timeline?from=2026-05-02&to=2026-05-01", "/api/timeline?from=2020-01-01&to=2026-01-01",
    "/api/timeline?run=1;DROP%20TABLE%20runs", "/api/timeline?from=2026-01-01&from=2026-01-02",
    "/api/tracks", "/api/tracks?run=-1", "/api/tracks?run=1e3", "/api/face?run=1&track=../../etc/passwd",
    "/api/runs?device=x'%20OR%201=1", "/api/runs?device=pi-door", "/api/now?x=1", "/?debug=1"])
def test_a_bad_parameter_is_a_400_with_a_message(server, path):
    status, _, body = get(server.port, path)
    assert status == 400, body
    message = json.loads(body)["error"]
    assert message and "\n" not in message and not re.search(r"Traceback|SELECT|sqlite", message)


def test_no_write_routes_and_localhost_only(server):
    with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)) as conn:
        conn.request("POST", "/api/runs", body=b"{}")
        assert conn.getresponse().status == 405
    assert get(server.port, "/api/runs", {"Host": "attacker.example"})[0] == 400  # DNS rebinding
    status, headers, _ = get(server.port, "/")
    assert status == 200 and "default-src 'none'" in headers["content-security-policy"]


def test_200_concurrent_requests_page_weight_and_memory(server):
    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda i: get(server.port, ROUTES[i % len(ROUTES)]), range(200)))
    assert [status for status, _, _ in answers] == [200] * 200
    weight = sum(len(get(server.port, path)[2]) for path in ("/", "/static/app.js", "/static/app.css"))
    assert weight <= 300 * 1024
    assert server.rss_mb() <= 80
    print(f"page weight {weight / 1024:.1f} KiB, serve RSS {server.rss_mb():.1f} MiB after 200 concurrent requests")


@pytest.mark.parametrize("make", ["missing", "text", "sqlite", "jsonl"])
def test_a_log_that_cannot_be_served_is_one_line(tmp_path, make):
    path = tmp_path / "log"
    if make == "text":
        path.write_text("hello\n")
    elif make == "sqlite":
        with closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE other (x)")
    elif make == "jsonl":
        path.write_text(json.dumps({"type": "run", "run": 1}) + "\n")
    result = ferlite("serve", path, "--port", "0", timeout=30)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}: "), result.stderr


def test_serve_unit_verifies_and_is_hardened(tmp_path):
    from importlib import resources

    unit = tmp_path / "ferlite-serve.service"
    template = resources.files("ferlite.systemd").joinpath("ferlite-serve.service").read_text()
    executable = Path(sys.executable).parent / "ferlite"
    unit.write_text(template.replace("{executable}", str(executable)))
    assert f"ExecStart={executable} serve /var/lib/ferlite/results.db --host 127.0.0.1" in unit.read_text()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and unit.name not in result.stdout + result.stderr, result.stdout + result.stderr
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                            text=True, timeout=60)
    score = re.search(r"Overall exposure level for ferlite-serve\.service: ([0-9.]+)", result.stdout)
    if score is None:
        pytest.skip("systemd-analyze security --offline is not available")
    assert float(score[1]) <= 2.0


def test_now_in_privacy_shows_this_minutes_counts(tmp_path):
    log = tmp_path / "private.db"
    clip = group_clip(tmp_path / "long.avi", 200)
    writer = subprocess.Popen([sys.executable, "-m", "ferlite", "run", "--source", clip, "--max-fps", "10", "--log",
                               log, "--no-status", "--privacy"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.with_name(log.name + "-wal").exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
        server = Server(log)
        try:
            while time.monotonic() < deadline:
                runs = json.loads(get(server.port, "/api/now")[2])["runs"]
                if runs and runs[0]["minute"]:
                    break
                time.sleep(0.5)
            assert runs[0]["privacy"] and not runs[0]["faces"] and sum(runs[0]["minute"].values()) > 0
        finally:
            server.stop()
    finally:
        writer.kill()
        writer.wait()


def test_a_fleet_database_filters_and_names_devices(real_log, tmp_path, browser):
    """The collector's shape: the same tables plus runs.device; every route takes ?device=."""
    fleet = tmp_path / "fleet.db"
    shutil.copy(real_log, fleet)
    with closing(sqlite3.connect(fleet)) as db, db:
        db.execute("ALTER TABLE runs ADD COLUMN device TEXT")
        db.execute("UPDATE runs SET device = CASE id WHEN 1 THEN 'pi-door' ELSE 'pi-hall' END")
    server = Server(fleet)
    try:
        everything = json.loads(get(server.port, "/api/runs")[2])
        assert everything["devices"] == ["pi-door", "pi-hall"]
        door = json.loads(get(server.port, "/api/runs?device=pi-door")[2])["runs"]
        assert [(r["id"], r["device"]) for r in door] == [(1, "pi-door")]
        totals = json.loads(get(server.port, "/api/timeline?device=pi-hall")[2])["totals"]
        assert totals == everything["runs"][1]["by_label"]  # the privacy run's counts alone
        view = open_view(browser, server.url + "#runs", "runs")
        assert "device" in view.text and "pi-door" in view.text and "pi-hall" in view.text
    finally:
        server.stop()


def test_tracks_of_a_collected_database_come_from_its_track_events(real_log, server, tmp_path):
    """A fleet collector stores track events, not detections: Tracks shows the same tracks from them."""
    from_detections = json.loads(get(server.port, "/api/tracks?run=1")[2])
    fleet = tmp_path / "collected.db"
    shutil.copy(real_log, fleet)
    with closing(sqlite3.connect(fleet)) as db, db:
        assert db.execute("SELECT COUNT(*) FROM track_events WHERE run_id = 1 AND kind = 'end'").fetchone()[0] == 6
        db.execute("DELETE FROM detections")
    collected = Server(fleet)
    try:
        from_events = json.loads(get(collected.port, "/api/tracks?run=1")[2])
    finally:
        collected.stop()
    keys = ("track", "first_utc", "last_utc", "faces", "by_label")
    assert [{k: t[k] for k in keys} for t in from_events["tracks"]] == [
        {k: t[k] for k in keys} for t in from_detections["tracks"]]
    assert from_events["total"] == 6


def test_now_of_a_collected_database_shows_what_each_device_reports(tmp_path, browser):
    """A collector stores each device's retained `state` (the faces in view per label), not its faces:
    Now shows that report for a device's running run. Stored by the collector's own code."""
    import time as clock

    from ferlite.device.fleet.messages import parse, run_message, state_message
    from ferlite.device.fleet.store import CollectedDb
    from ferlite.device.log import utc

    fleet = CollectedDb(str(tmp_path / "fleet.db"))
    run = {"id": 7, "started_utc": utc(clock.time() - 60), "stopped_utc": None, "bundle_sha256": "ab",  # a log row
           "labels": '["happy", "neutral"]', "source": "picamera2", "detector": "yunet", "config": "{}", "privacy": 0,
           "frames": 600, "skipped": 0, "detections": 1800}
    for message in (run_message("pi-door", run), state_message("pi-door", 7, utc(clock.time()), {"happy": 2,
                                                                                                  "neutral": 1})):
        assert fleet.put(parse(message.topic, message.payload.encode()))
    fleet.close()
    server = Server(tmp_path / "fleet.db")
    try:
        (entry,) = json.loads(get(server.port, "/api/now")[2])["runs"]
        assert entry["device"] == "pi-door" and entry["reported"]["faces"] == 3
        assert entry["reported"]["labels"] == {"happy": 2, "neutral": 1}
        view = open_view(browser, server.url + "#now", "now")
        assert "As pi-door reported" in view.text and "happy 2" in view.text
    finally:
        server.stop()
