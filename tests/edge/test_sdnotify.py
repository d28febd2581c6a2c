"""sd_notify over a real AF_UNIX datagram socket, and the progress-gated watchdog."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from namus_edge.edge.sdnotify import Notifier, ProgressWatchdog, watchdog_interval


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    try:
        yield sock, path
    finally:
        sock.close()


def drain(sock: socket.socket, wait: float) -> list[bytes]:
    """Everything already queued, plus whatever arrives within ``wait`` seconds."""
    out: list[bytes] = []
    deadline = time.monotonic() + wait
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            out.append(sock.recv(4096))
        except TimeoutError:
            return out


def test_messages_arrive(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready() and n.status("indexing\nstill") and n.watchdog() and n.stopping()
    got = [sock.recv(4096) for _ in range(4)]
    assert got == [b"READY=1", b"STATUS=indexing still", b"WATCHDOG=1", b"STOPPING=1"]
    n.close()


def test_abstract_namespace() -> None:
    name = f"namus-edge-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(100) == b"READY=1"
        n.close()
    finally:
        sock.close()


def test_noop_without_socket_and_no_raise_on_dead_socket(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({})
    assert not n.enabled and n.ready() is False and n.watchdog() is False
    dead = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert dead.ready() is False and dead.watchdog() is False
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_progress_watchdog_stops_pinging_when_stalled(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    dog = ProgressWatchdog(notifier, interval_s=0.05, stall_s=0.3)
    with dog:
        # A working pipeline: progress every 20 ms for 0.6 s.
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            dog.progress()
            time.sleep(0.02)
        during = drain(sock, 0.0)
        # Stalled: pings continue at most stall_s after the last progress, then stop.
        time.sleep(0.6)
        drain(sock, 0.0)
        after_stall = drain(sock, 0.5)
        # Progress again: pings resume.
        for _ in range(10):
            dog.progress()
            time.sleep(0.03)
        resumed = drain(sock, 0.1)
    assert len(during) >= 5 and set(during) == {b"WATCHDOG=1"}
    assert after_stall == []
    assert len(resumed) >= 2
    notifier.close()


def test_progress_watchdog_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        ProgressWatchdog(Notifier({}), interval_s=0, stall_s=1)
