"""Where the broker is and how to reach it: mqtt:// URLs, credentials from the config, one paho client.

Credentials never come from the URL or a flag (both show in `ps` and shell history): the user name,
password or password file and CA file come from the TOML config. `Link` follows the connection and
says each change of state in one line, so a broker that is away for an hour is one warning, not one
per retry.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ferlite.config import RunConfig
from ferlite.errors import ConfigError, FleetError, RuntimeMissingError

log = logging.getLogger(__name__)

PORTS = {"mqtt": 1883, "mqtts": 8883}
KEEPALIVE_S = 15
CONNECT_TIMEOUT_S = 2.0
RECONNECT_S = (1, 4)  # paho's reconnect backoff, first and longest wait: back within 4 s of the broker


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool = False
    ca: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def name(self) -> str:
        """The broker without credentials: what messages, cursors and logs call it."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(url: str, ca: str | None = None, username: str | None = None, password: str | None = None,
                 password_file: str | None = None) -> Broker:
    """A Broker from mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; a malformed URL is a one-line ConfigError."""
    parts = urlsplit(url)
    if parts.scheme not in PORTS or not parts.netloc:
        raise ConfigError(f"--mqtt {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parts.username or parts.password:
        raise ConfigError(f"--mqtt {parts.scheme}://…@{parts.hostname}: credentials do not go in the URL; set "
                          "mqtt_username and mqtt_password_file in the config")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--mqtt {url!r}: only a host and a port (topics are ferlite/<device>/...)")
    try:
        port = parts.port or PORTS[parts.scheme]
    except ValueError:
        raise ConfigError(f"--mqtt {url!r}: the port must be a number from 1 to 65535") from None
    if ca is not None and not Path(ca).is_file():
        raise ConfigError(f"mqtt_ca {ca}: no such file")
    if password_file is not None:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"mqtt_password_file {password_file}: cannot read it ({exc.strerror})") from None
    return Broker(parts.hostname or "", port, parts.scheme == "mqtts", ca, username, password)


def broker_from_config(cfg: RunConfig, url: str | None = None) -> Broker:
    """The broker of `url` (default: cfg.mqtt) with the config's CA file and credentials."""
    return parse_broker(url or cfg.mqtt or "", cfg.mqtt_ca, cfg.mqtt_username, cfg.mqtt_password,
                        cfg.mqtt_password_file)


def device_name(cfg: RunConfig) -> str:
    """The configured device id, else the hostname with anything a topic level cannot hold replaced."""
    if cfg.device_id:
        return cfg.device_id
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "device"


class Link:
    """The connection's state as paho reports it, said once per change: connected, refused, lost."""

    def __init__(self, broker: Broker, role: str) -> None:
        self.broker, self.role = broker, role
        self.connected = threading.Event()
        self.refused: str | None = None  # the broker's reason when it turned us away (credentials)
        self.closing = False  # we are disconnecting: not worth a warning
        self.connects = 0  # accepted connections so far: more than one means the link came back
        self.lost_at = 0.0  # time.monotonic() when the last accepted connection was lost
        self._said = ""

    def _say(self, text: str, level: int = logging.WARNING) -> None:
        if text != self._said:
            self._said = text
            log.log(level, "%s: %s %s", self.role, self.broker.name, text)

    def on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            self._say(f"refused the connection ({reason_code})")
            return
        self.refused = None
        self.connects += 1
        self.connected.set()
        self._say("connected", logging.INFO)

    def on_connect_fail(self, client, userdata) -> None:
        self._say("cannot be reached; retrying in the background")

    def on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was:
            self.lost_at = time.monotonic()
        if self.closing:
            return
        if was:
            self._say(f"connection lost ({reason_code}); reconnecting in the background")
        elif self.refused is None:
            self._say("closed the connection before accepting it; retrying in the background")


def paho():
    """paho's client module, or a one-line RuntimeMissingError naming the extra that brings it."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise RuntimeMissingError("MQTT needs paho-mqtt: pip install 'ferlite[fleet]'") from None
    return mqtt


def make_client(broker: Broker, client_id: str, link: Link, clean_session: bool = True):
    """A paho 2.x client for `broker`, its callbacks reporting to `link`, reconnecting with backoff."""
    mqtt = paho()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca)
    client.reconnect_delay_set(*RECONNECT_S)
    client.connect_timeout = CONNECT_TIMEOUT_S
    client.on_connect, client.on_connect_fail = link.on_connect, link.on_connect_fail
    client.on_disconnect = link.on_disconnect
    return client


def start(client, broker: Broker) -> None:
    """Connect in paho's network thread, which retries until it gets through (the first try included)."""
    try:
        client.connect_async(broker.host, broker.port, KEEPALIVE_S)
    except (OSError, ValueError) as exc:
        raise FleetError(f"{broker.name}: cannot connect ({exc})") from None
    client.loop_start()
