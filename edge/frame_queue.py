"""Bounded frame queue between a camera's capture thread and the inference loop.

Two policies, chosen per camera:

* ``live=True`` (RTSP/HTTP streams, USB and CSI cameras): ``put`` never blocks; when the queue
  is full the *oldest* frame is dropped and counted, so inference always works on the freshest
  frames and latency stays bounded by ``maxsize`` frames.
* ``live=False`` (a video file being scanned): ``put`` blocks until there is room, so every
  frame of the file reaches inference, in order.

``close()`` is the end-of-stream sentinel: frames already queued can still be taken, after
which ``get`` returns ``None`` instead of blocking. Blocked producers and consumers wake up on
close.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured video frame.

    Attributes:
        camera_id: the ``CameraConfig.id`` it came from.
        index: position of the frame in the source's read order, counting every frame read
            (including those skipped by the fps cap), from 0; keeps increasing across
            reconnects and file loops.
        timestamp: ``time.monotonic()`` at capture, in seconds (for tracking and cooldowns).
        wall_time: UTC wall-clock time at capture (timezone-aware), for events.
        image: uint8 array of shape (H, W, 3), BGR colour order.
    """

    camera_id: str
    index: int
    timestamp: float
    wall_time: datetime
    image: np.ndarray

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"camera {self.camera_id}: Frame.image must be uint8 (H, W, 3) BGR, got {got}")
        if self.wall_time.tzinfo is None:
            raise ValueError(f"camera {self.camera_id}: Frame.wall_time must be timezone-aware (UTC)")
        if self.index < 0:
            raise ValueError(f"camera {self.camera_id}: Frame.index must be >= 0, got {self.index}")


class FrameQueue:
    """A thread-safe bounded FIFO of :class:`Frame` with a drop-oldest (live) or blocking (file) policy.

    Args:
        maxsize: capacity in frames (>= 1).
        live: ``True`` drops the oldest frame when full; ``False`` makes ``put`` wait for room.
    """

    def __init__(self, maxsize: int, live: bool) -> None:
        if maxsize < 1:
            raise ValueError(f"FrameQueue maxsize must be >= 1, got {maxsize}")
        self._maxsize = int(maxsize)
        self._live = bool(live)
        self._items: deque[Frame] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._dropped = 0
        self._put_count = 0

    @property
    def maxsize(self) -> int:
        """Capacity in frames."""
        return self._maxsize

    @property
    def live(self) -> bool:
        """Whether ``put`` drops the oldest frame instead of blocking."""
        return self._live

    @property
    def dropped(self) -> int:
        """Frames dropped so far because the queue was full (live mode only)."""
        with self._lock:
            return self._dropped

    @property
    def put_count(self) -> int:
        """Frames accepted by ``put`` so far (including those later dropped)."""
        with self._lock:
            return self._put_count

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        with self._lock:
            return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        """Add a frame.

        Live: never blocks; when full, the oldest queued frame is discarded (``dropped`` + 1).
        File: waits until there is room, the queue is closed, or ``timeout`` seconds pass.

        Args:
            frame: the frame to enqueue.
            timeout: file mode only: the longest wait in seconds (``None``: no limit).

        Returns:
            ``True`` when the frame was queued; ``False`` when the queue is closed or the wait
            timed out (the frame was not queued).
        """
        with self._not_full:
            if self._closed:
                return False
            if len(self._items) >= self._maxsize:
                if self._live:
                    self._items.popleft()
                    self._dropped += 1
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self._maxsize and not self._closed:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._not_full.wait(remaining)
                    if self._closed:
                        return False
            self._items.append(frame)
            self._put_count += 1
            self._not_empty.notify()
            return True

    def get(self, timeout: float | None = None) -> Frame | None:
        """Take the oldest queued frame.

        Args:
            timeout: the longest wait in seconds; ``None`` waits until a frame arrives or the
                queue is closed; ``0`` does not wait.

        Returns:
            The frame, or ``None`` (the end-of-stream sentinel) once the queue is closed and empty.

        Raises:
            queue.Empty: no frame arrived within ``timeout`` and the queue is still open.
        """
        with self._not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise queue.Empty
                self._not_empty.wait(remaining)
            frame = self._items.popleft()
            self._not_full.notify()
            return frame

    def close(self) -> None:
        """Mark the end of the stream: no more puts; ``get`` drains what is queued, then returns ``None``."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
