"""A persistent, bounded FIFO of MQTT messages waiting for the broker's acknowledgement.

Match events are written here first and deleted only once the broker acknowledged them
(PUBACK), so an event survives a broker outage, a network cut and a process crash. The
store is one SQLite file in WAL mode with ``synchronous=FULL``: a ``put`` that returned is on
disk. Sequence numbers are ``AUTOINCREMENT`` and therefore never reused, even after the
table empties, which is what lets the publisher remember "sent up to seq N".

Only match events (and their crops) belong here; availability and status are retained state
and are published directly.

Privacy: ``PRAGMA secure_delete`` overwrites a deleted message's bytes (its crop included) in the
database pages, and once the outbox is empty the WAL is checkpointed and truncated, so an
acknowledged crop does not linger in free pages or in the write-ahead log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from namus_edge.core.closing import Closing
from namus_edge.core.errors import NamusEdgeError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


class OutboxError(NamusEdgeError):
    """The outbox database cannot be opened or written; the message names the file."""


@dataclass(frozen=True)
class OutboxItem:
    """One queued message.

    Attributes:
        seq: Position in the outbox; strictly increasing, never reused.
        topic: MQTT topic.
        payload: Message bytes.
        qos: MQTT QoS (0, 1 or 2).
        retain: MQTT retain flag.
        created: Unix time (seconds) when it was queued.
    """

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


class Outbox(Closing):
    """SQLite-backed FIFO of messages, bounded by dropping the oldest.

    Thread-safe: one connection, every operation under one lock. One process at a time
    should own a given file (the service); reopening after a crash continues where it stopped.

    Args:
        path: The database file; parent directories are created.
        max_events: Most messages kept; a ``put`` beyond it drops the oldest and logs a WARNING.

    Raises:
        OutboxError: the file cannot be created/opened or is not an outbox database.
    """

    def __init__(self, path: str | Path, max_events: int = 10_000) -> None:
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise OutboxError(f"outbox max_events must be a positive integer, got {max_events!r}")
        self.path = Path(path)
        self.max_events = max_events
        self._lock = threading.Lock()
        self._dropped_total = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves; the lock serialises threads.
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("Outbox %s: journal_mode is %s, not WAL", self.path, mode)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute(_SCHEMA)
            self._count = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(f"outbox {self.path} is not a usable SQLite outbox: {exc}") from exc
        if self._count:
            logger.info("Outbox %s: %d message(s) pending from a previous run", self.path, self._count)

    # -- writing -----------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Append one message durably; drop the oldest beyond ``max_events``.

        Args:
            topic: MQTT topic (no wildcards).
            payload: Message bytes.
            qos: 0, 1 or 2.
            retain: MQTT retain flag.

        Returns:
            The new message's sequence number.

        Raises:
            OutboxError: invalid arguments, or the database write failed.
        """
        return self.put_many([(topic, payload, qos, retain)])[0]

    def put_many(self, messages: Iterable[tuple[str, bytes, int, bool]]) -> list[int]:
        """Append several ``(topic, payload, qos, retain)`` messages in one transaction, in order.

        Returns:
            Their sequence numbers, in order.

        Raises:
            OutboxError: invalid arguments, or the database write failed (nothing is written).
        """
        rows = [self._check(*m) for m in messages]
        if not rows:
            return []
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seqs = []
                for topic, payload, qos, retain in rows:
                    cur = self._db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                        (topic, payload, qos, int(retain), now),
                    )
                    seqs.append(int(cur.lastrowid or 0))
                excess = self._count + len(rows) - self.max_events
                dropped: list[int] = []
                if excess > 0:
                    dropped = [
                        int(r[0])
                        for r in self._db.execute("SELECT seq FROM outbox ORDER BY seq LIMIT ?", (excess,))
                    ]
                    self._db.execute("DELETE FROM outbox WHERE seq <= ?", (dropped[-1],))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"cannot write to outbox {self.path}: {exc}") from exc
            self._count += len(rows) - len(dropped)
            if dropped:
                self._dropped_total += len(dropped)
                logger.warning(
                    "Outbox %s is full (max_events=%d): dropped %d oldest undelivered message(s) "
                    "(seq %d..%d); %d dropped since start",
                    self.path, self.max_events, len(dropped), dropped[0], dropped[-1], self._dropped_total,
                )
        return seqs

    @staticmethod
    def _check(topic: object, payload: object, qos: object, retain: object) -> tuple[str, bytes, int, bool]:
        if not isinstance(topic, str) or not topic or "#" in topic or "+" in topic:
            raise OutboxError(f"outbox topic must be a non-empty MQTT topic without wildcards, got {topic!r}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise OutboxError(f"outbox payload must be bytes, got {type(payload).__name__}")
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            raise OutboxError(f"outbox qos must be 0, 1 or 2, got {qos!r}")
        return topic, bytes(payload), int(qos), bool(retain)

    # -- reading and acknowledging ----------------------------------------------------------

    def peek(self, limit: int = 100, after: int = 0) -> list[OutboxItem]:
        """Return up to ``limit`` oldest messages with ``seq > after``, in order, without removing them."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT seq, topic, payload, qos, retain, created FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, max(0, limit)),
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
        return [OutboxItem(int(s), str(t), bytes(p), int(q), bool(r), float(c)) for s, t, p, q, r, c in rows]

    def ack(self, seq: int) -> bool:
        """Delete a delivered message. Returns False when it was already gone (acked or dropped)."""
        return self.ack_many([seq]) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Delete delivered messages in one transaction; returns how many were still present."""
        keys = [(int(s),) for s in seqs]
        if not keys:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                before = self._db.total_changes
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", keys)
                removed = self._db.total_changes - before
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"cannot delete from outbox {self.path}: {exc}") from exc
            self._count -= removed
            if self._count == 0 and removed:
                self._truncate_wal()
        return removed

    def _truncate_wal(self) -> None:
        """Checkpoint and empty the WAL (which still holds the deleted messages' old page images)."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            logger.warning("Outbox %s: WAL checkpoint failed (%s); retried at the next empty outbox", self.path, exc)

    def __len__(self) -> int:
        """Number of messages waiting."""
        with self._lock:
            return self._count

    @property
    def dropped_total(self) -> int:
        """Messages dropped by the bound since this object was opened."""
        with self._lock:
            return self._dropped_total

    # -- lifecycle ---------------------------------------------------------------------------

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            logger.debug("Outbox %s: rollback after a failed write also failed", self.path)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._db.close()

