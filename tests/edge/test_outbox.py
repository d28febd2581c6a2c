"""Outbox: FIFO order, durability across reopen and SIGKILL, the bound, thread safety."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from namus_edge.edge.outbox import Outbox, OutboxError

REPO = Path(__file__).resolve().parents[2]


def test_put_peek_ack_in_order(tmp_path: Path) -> None:
    with Outbox(tmp_path / "state" / "outbox.sqlite3") as box:
        seqs = [box.put(f"t/{i}", f"p{i}".encode()) for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert len(box) == 5
        items = box.peek(3)
        assert [i.seq for i in items] == seqs[:3]
        expected = [(f"t/{i}", f"p{i}".encode(), 1, False) for i in range(3)]
        assert [(i.topic, i.payload, i.qos, i.retain) for i in items] == expected
        assert [i.seq for i in box.peek(10, after=seqs[2])] == seqs[3:]
        assert box.ack(seqs[1]) is True
        assert box.ack(seqs[1]) is False
        assert [i.seq for i in box.peek(10)] == [seqs[0], *seqs[2:]]
        assert box.ack_many(seqs) == 4
        assert len(box) == 0 and box.peek(10) == []
        # Sequence numbers are never reused, even after the table emptied.
        assert box.put("t/x", b"x", qos=0, retain=True) > seqs[-1]
        item = box.peek(1)[0]
        assert (item.qos, item.retain) == (0, True)


def test_survives_reopen_and_uses_wal_full(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path) as box:
        first = [box.put("a/b", bytes([i])) for i in range(3)]
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Outbox(path) as box:
        assert len(box) == 3
        assert [i.payload for i in box.peek(10)] == [b"\x00", b"\x01", b"\x02"]
        assert box.put("a/b", b"next") > first[-1]


def test_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    code = (
        "import os, signal, sys\n"
        "from edge.outbox import Outbox\n"
        f"box = Outbox({str(path)!r})\n"
        "for i in range(20): box.put('k/t', str(i).encode())\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with Outbox(path) as box:
        assert [i.payload for i in box.peek(100)] == [str(i).encode() for i in range(20)]


def test_bound_drops_oldest_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(tmp_path / "o.sqlite3", max_events=3) as box:
        seqs = [box.put("t", bytes([i])) for i in range(3)]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        with caplog.at_level(logging.WARNING, logger="namus_edge.edge.outbox"):
            box.put("t", b"\x03")
            box.put_many([("t", b"\x04", 1, False), ("t", b"\x05", 1, False)])
        assert len(box) == 3
        assert [i.payload for i in box.peek(10)] == [b"\x03", b"\x04", b"\x05"]
        assert box.dropped_total == 3
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2
        assert "dropped 1 oldest" in warnings[0] and f"seq {seqs[0]}..{seqs[0]}" in warnings[0]
        assert "dropped 2 oldest" in warnings[1] and "3 dropped since start" in warnings[1]
    with Outbox(tmp_path / "o.sqlite3", max_events=3) as box:  # the count is right after a reopen
        box.put("t", b"\x06")
        assert [i.payload for i in box.peek(10)] == [b"\x04", b"\x05", b"\x06"]


def test_thread_safe(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as box:
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(25):
                    box.put(f"w/{n}", str(i).encode())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def acker() -> None:
            try:
                for _ in range(50):
                    items = box.peek(5)
                    box.ack_many(i.seq for i in items[:2])
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [threading.Thread(target=acker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        remaining = box.peek(1000)
        assert len(box) == len(remaining)
        acked = 100 - len(remaining)
        assert 0 < acked <= 100
        # Each writer's messages stay in its own order.
        for n in range(4):
            mine = [int(i.payload) for i in remaining if i.topic == f"w/{n}"]
            assert mine == sorted(mine)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", b"x"), "topic"),
        (("a/#", b"x"), "wildcards"),
        (("a/+/b", b"x"), "wildcards"),
        (("a", "text"), "payload must be bytes"),
        (("a", b"x", 3), "qos"),
        (("a", b"x", True), "qos"),
    ],
)
def test_put_rejects_bad_arguments(tmp_path: Path, args: tuple, message: str) -> None:
    with Outbox(tmp_path / "o.sqlite3") as box:
        with pytest.raises(OutboxError, match=message):
            box.put(*args)
        assert len(box) == 0


def test_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=str(bad)):
        Outbox(bad)
    with pytest.raises(OutboxError, match="max_events"):
        Outbox(tmp_path / "x.sqlite3", max_events=0)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(blocker / "sub" / "o.sqlite3")
