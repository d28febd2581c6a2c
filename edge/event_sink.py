"""Match events from the pipeline to the outbox, without losing one while the outbox cannot be written.

:meth:`EventSink.emit` writes the event (and its crop) to the outbox through ``publish``. When
that raises :class:`~edge.outbox.OutboxError` (disk full, read-only or vanished storage) the
event is kept in memory, in order, the service is marked degraded (``outbox``) with a WARNING,
and detection goes on. :meth:`retry` (called by the inference loop) writes the held events as
soon as the outbox accepts them again, oldest first, and clears the degraded state. At most
``max_pending`` events are held; beyond that the oldest is dropped with an ERROR (a device
cannot hold matches forever in RAM). Held events are matches only, so nothing about a face that
matched no case is ever kept here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from namus_edge.edge.events import MatchEvent
from namus_edge.edge.health import ServiceHealth
from namus_edge.edge.outbox import OutboxError

logger = logging.getLogger(__name__)

PublishFn = Callable[[MatchEvent, bytes | None], object]


class EventSink:
    """Outbox writer with an in-memory fallback.

    Args:
        publish: writes one event durably (``MqttPublisher.publish_event``); raises OutboxError.
        health: where the degraded state goes.
        max_pending: most events held in memory while the outbox fails.
        retry_s: least time between two retries of a failing outbox.
    """

    def __init__(self, publish: PublishFn, health: ServiceHealth, max_pending: int = 1000,
                 retry_s: float = 1.0) -> None:
        self._publish = publish
        self._health = health
        self._pending: deque[tuple[MatchEvent, bytes | None]] = deque()
        self._lock = threading.Lock()
        self.max_pending = max_pending
        self.retry_s = retry_s
        self._next_retry = 0.0
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Events held in memory, waiting for the outbox."""
        with self._lock:
            return len(self._pending)

    def emit(self, event: MatchEvent, crop: bytes | None) -> None:
        """Write one event, behind any still held (order is kept)."""
        with self._lock:
            self._pending.append((event, crop))
            while len(self._pending) > self.max_pending:
                old, _ = self._pending.popleft()
                self.dropped += 1
                logger.error("outbox unwritable and %d events held: dropped match event %s (%d dropped)",
                             self.max_pending, old.event_id, self.dropped)
            self._drain()
            if self._pending and self._pending[-1][0] is event:
                logger.warning("match event %s held in memory (%d held): the outbox cannot be written",
                               event.event_id, len(self._pending))

    def retry(self, force: bool = False) -> None:
        """Write held events if the retry delay has passed (or ``force``)."""
        with self._lock:
            if self._pending and (force or time.monotonic() >= self._next_retry):
                self._drain()

    def _drain(self) -> None:
        while self._pending:
            event, crop = self._pending[0]
            try:
                self._publish(event, crop)
            except OutboxError as exc:
                self._next_retry = time.monotonic() + self.retry_s
                self._health.degrade("outbox", f"{exc}; match events held in memory until it is writable")
                return
            self._pending.popleft()
        self._health.recover("outbox")
