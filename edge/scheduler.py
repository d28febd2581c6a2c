"""Fair batching of frames across any number of cameras.

The inference loop takes frames in batches of ``batch_frames``. :class:`FairScheduler` fills a
batch round-robin: it visits the cameras in turn, takes at most ``per_camera`` frames from
each per visit, and starts the next batch at the camera after the last one it served. With six
busy cameras and batches of four, batch 1 takes cameras 0-3, batch 2 cameras 4, 5, 0, 1, and
so on: every camera gets the same share of the pipeline however many there are. A camera
whose queue is empty is skipped at no cost; a closed and drained queue is an ended camera.

Not thread-safe: one inference loop owns a scheduler.
"""

from __future__ import annotations

import queue
import time

from namus_edge.edge.frame_queue import Frame, FrameQueue

#: Seconds between polls of the queues while every one of them is empty.
IDLE_POLL_S = 0.01


class FairScheduler:
    """Round-robin batches over camera queues with a per-camera budget per visit.

    Args:
        queues: camera id -> its frame queue (iteration order is the round-robin order).
        batch_frames: most frames in one batch (>= 1).
        per_camera: most frames taken from one camera per visit (>= 1).

    Raises:
        ValueError: a budget below 1.
    """

    def __init__(self, queues: dict[str, FrameQueue], batch_frames: int, per_camera: int = 1) -> None:
        if batch_frames < 1 or per_camera < 1:
            raise ValueError(f"batch_frames and per_camera must be >= 1, got {batch_frames} and {per_camera}")
        self._queues = dict(queues)
        self._order = list(self._queues)
        self._next = 0
        self.batch_frames = batch_frames
        self.per_camera = per_camera

    @property
    def open_cameras(self) -> list[str]:
        """Cameras whose stream has not ended, in round-robin order."""
        return list(self._order)

    def collect(self, timeout: float) -> tuple[list[Frame], list[str]]:
        """Take the next batch, waiting up to ``timeout`` seconds for the first frame.

        Returns:
            ``(frames, ended)``: frames in the order taken (several cameras mixed, each camera's
            frames in capture order), and the cameras whose stream ended since the last call
            (removed from the rotation).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            frames, ended = self._one_pass()
            if frames or ended or not self._order or time.monotonic() >= deadline:
                return frames, ended
            time.sleep(IDLE_POLL_S)

    def _one_pass(self) -> tuple[list[Frame], list[str]]:
        """Visit each open camera once (or until the batch is full), starting where the last batch stopped."""
        frames: list[Frame] = []
        ended: list[str] = []
        n = len(self._order)
        start = self._next % n if n else 0
        last_served: int | None = None
        for step in range(n):
            i = (start + step) % n
            cam = self._order[i]
            q = self._queues[cam]
            taken = 0
            while taken < self.per_camera and len(frames) < self.batch_frames:
                if not len(q) and not q.closed:
                    break
                try:
                    frame = q.get(timeout=0)
                except queue.Empty:
                    break
                if frame is None:  # closed and drained: end of stream
                    ended.append(cam)
                    break
                frames.append(frame)
                taken += 1
            if taken:
                last_served = i
            if len(frames) >= self.batch_frames:
                break
        if last_served is not None:
            self._next = last_served + 1
        for cam in ended:
            idx = self._order.index(cam)
            self._order.remove(cam)
            del self._queues[cam]
            if idx < self._next:
                self._next -= 1
        return frames, ended
