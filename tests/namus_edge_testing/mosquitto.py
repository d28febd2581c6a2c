"""A real mosquitto broker for tests, plus a real paho subscriber that collects messages.

Usage from any test folder (the fixtures are registered in tests/edge/conftest.py; another
folder re-exports them with ``from namus_edge_testing.mosquitto import mosquitto, mosquitto_factory  # noqa: F401``
in its conftest.py)::

    def test_x(mosquitto_factory):
        broker = mosquitto_factory(users={"dev": "pw"}, tls=True)   # started, port accepts connections
        cfg = broker.mqtt_config(username="dev")                   # an edge.config.MqttConfig for it
        with Collector(broker, ["namus-edge/#"], username="dev", password="pw") as sub:
            ...
            sub.wait_for(lambda msgs: len(msgs) >= 3)
        broker.stop(); broker.start()                              # same port

Every broker started by a fixture is terminated in ``finally`` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_password_line(user: str, password: str, iterations: int = 101) -> str:
    """The ``user:$7$iter$salt$hash`` line mosquitto 2 accepts (PBKDF2-HMAC-SHA512, 12-byte salt)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """Write a mosquitto password file, with ``mosquitto_passwd -b`` when installed."""
    path.unlink(missing_ok=True)
    tool = shutil.which("mosquitto_passwd")
    if tool:
        path.touch(mode=0o600)
        for user, pw in users.items():
            subprocess.run([tool, "-b", str(path), user, pw], check=True, capture_output=True, timeout=10)
    else:
        path.write_text("".join(mosquitto_password_line(u, p) + "\n" for u, p in users.items()))
        path.chmod(0o600)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA and a server certificate for localhost / 127.0.0.1."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a CA and a CA-signed server certificate (ECDSA P-256, valid 1 day) in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "namus-edge test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files.server_key.chmod(0o600)
    return files


class MosquittoBroker:
    """One real ``mosquitto -c <generated conf>`` process on 127.0.0.1.

    Args:
        workdir: Where the config, password file, certificates and log go.
        users: ``{user: password}``; when given, ``password_file`` is used and anonymous
            clients are refused (unless ``allow_anonymous`` says otherwise).
        tls: Serve TLS with a CA + server certificate generated here (``require_certificate false``).
        allow_anonymous: Override; default is True without users, False with users.
        port: Fixed port; default a free one, kept across restarts.
        persistence: Keep sessions, subscriptions and queued QoS 1 messages across a stop/start
            (saved at SIGTERM), so a ``Collector(clean_session=False)`` misses nothing.
        exe: The mosquitto binary.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        tls: bool = False,
        allow_anonymous: bool | None = None,
        port: int | None = None,
        persistence: bool = False,
        exe: str = MOSQUITTO,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.exe = exe
        self.persistence = persistence
        self.port = port or free_port()
        self.users = dict(users) if users else None
        self.allow_anonymous = (self.users is None) if allow_anonymous is None else allow_anonymous
        self.tls = make_tls_files(self.workdir / "tls") if tls else None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.password_path = self.workdir / "passwd"
        self.log_path = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate clients must trust (TLS brokers only)."""
        return self.tls.ca_cert if self.tls else None

    def set_users(self, users: dict[str, str] | None) -> None:
        """Replace the password file's users; takes effect at the next :meth:`start`/:meth:`restart`."""
        self.users = dict(users) if users else None

    def write_config(self) -> None:
        """(Re)write mosquitto.conf and the password file."""
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"user {getpass.getuser()}",
        ]
        if self.users is not None:
            write_password_file(self.password_path, self.users)
            lines.append(f"password_file {self.password_path}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate false",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start the broker and wait until its port accepts TCP connections."""
        if self.running:
            return self
        self.write_config()
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
        finally:
            if proc.stderr:
                proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL the broker (a crash: nothing saved since the last 1 s autosave) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def wait_saved(self, since: float, timeout: float = 5.0) -> bool:
        """Wait until an autosave written after wall-clock time ``since`` (``time.time()``) is on disk.

        mosquitto saves every ``autosave_interval`` whole seconds of its own clock, so a fixed sleep
        of about one interval is not enough; a :meth:`kill` after this returns keeps every session
        and subscription that existed at ``since``.
        """
        db = self.workdir / "mosquitto.db"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if db.stat().st_mtime > since:
                    return True
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        return False

    def freeze(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing is answered (no PUBACK)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen broker."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> MosquittoBroker:
        """Stop and start again on the same port (config and password file rewritten)."""
        self.stop()
        return self.start(timeout)

    def log_text(self) -> str:
        """The broker's log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def mqtt_config(self, **overrides: Any) -> Any:
        """An ``edge.config.MqttConfig`` for this broker with short test timings (overridable)."""
        from namus_edge.core.config import MqttConfig

        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "keepalive_s": 5,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "password_env": None,
        }
        if self.tls is not None:
            values["tls"] = {"enabled": True, "ca_file": str(self.tls.ca_cert)}
        values.update(overrides)
        return MqttConfig(**values)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Collector:
    """A real paho subscriber that records every message it receives.

    Args:
        broker: The broker to connect to (TLS and CA taken from it).
        topics: Topic filters to subscribe to at QoS 1.
        username: Optional user.
        password: Optional password.
        client_id: Fixed client id (default: unique per collector).
        clean_session: False keeps the subscription and queued messages across a broker restart
            (with ``MosquittoBroker(persistence=True)``) and across this client's reconnects.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        clean_session: bool = True,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = topics
        self._broker = broker
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{os.getpid()}-{id(self)}",
            clean_session=clean_session,
        )
        self.client.reconnect_delay_set(0.2, 0.5)  # type: ignore[arg-type]
        if username:
            self.client.username_pw_set(username, password)
        if broker.ca_file is not None:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def start(self, timeout: float = 5.0) -> Collector:
        """Connect, subscribe, and wait for the SUBACK."""
        self.client.connect(self._broker.host, self._broker.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"collector did not get a SUBACK within {timeout} s")
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on exactly ``topic``, in arrival order."""
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(messages)`` is true; returns whether it became true in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture()
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Return ``make(**kwargs) -> MosquittoBroker`` (started); every broker is stopped at teardown.

    Keyword arguments are those of :class:`MosquittoBroker` (``users``, ``tls``,
    ``allow_anonymous``, ``port``). Fails (never skips) when mosquitto is missing.
    """
    exe = MOSQUITTO if Path(MOSQUITTO).exists() else shutil.which("mosquitto")
    if exe is None:
        pytest.fail("mosquitto is required for this test (.ci/run installs it)")
    brokers: list[MosquittoBroker] = []

    def make(**kwargs: Any) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"mosquitto-{len(brokers)}", exe=exe, **kwargs)
        brokers.append(broker)
        return broker.start()

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()


@pytest.fixture()
def mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A started plain (no TLS, anonymous) broker on a free loopback port."""
    return mosquitto_factory()
