"""Video sources and the per-camera capture thread.

A camera's ``source`` is opened through OpenCV according to its kind:

========== ===================================================== ==========================
kind       source                                                OpenCV backend
========== ===================================================== ==========================
file       a video file path                                     any (FFmpeg here)
stream     ``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://`` ``CAP_FFMPEG``
usb        ``/dev/videoN`` or an integer device index            ``CAP_V4L2``
gstreamer  a pipeline string ending in ``appsink``               ``CAP_GSTREAMER``
========== ===================================================== ==========================

``kind: auto`` picks from the string: an integer or ``/dev/video*`` is usb, one of the URL
schemes above is stream, a string containing ``!`` is a GStreamer pipeline (Jetson CSI cameras:
``nvarguscamerasrc ! ... ! appsink``; hardware decoding: ``... nvv4l2decoder ! ... ! appsink``),
anything else is a file.

:class:`CaptureThread` reads one camera into a :class:`~edge.frame_queue.FrameQueue`: live
sources drop the oldest frame when inference falls behind, files block so that every frame is
scanned. Lost streams are reopened with exponential back-off and full jitter. Frames are never
logged or written here; URLs are logged with their credentials masked.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from namus_edge.core.config import CameraConfig
from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.redaction import redact
from namus_edge.edge.frame_queue import Frame, FrameQueue

logger = logging.getLogger(__name__)

SourceKind = Literal["file", "stream", "usb", "gstreamer"]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")

#: Consecutive failed reads of a live source before it is treated as lost and reopened.
LIVE_READ_FAILURES = 3

#: Window (s) over which ``CaptureStats.fps`` is measured.
FPS_WINDOW_S = 2.0

#: Files: assumed frame rate when the container reports none (used by the fps cap only).
DEFAULT_FILE_FPS = 30.0


class SourceError(NamusEdgeError):
    """A video source cannot be opened or read (missing file, unsupported backend, refused stream)."""


class SourceUnsupportedError(SourceError):
    """The source can never open in this installation (e.g. no GStreamer in OpenCV); retrying is pointless."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def resolve_kind(cam: CameraConfig) -> SourceKind:
    """Return the source kind of a camera, resolving ``kind: auto`` from the source string.

    Args:
        cam: the camera configuration.

    Returns:
        One of ``file``, ``stream``, ``usb``, ``gstreamer``.
    """
    if cam.kind != "auto":
        return cam.kind
    src = cam.source.strip()
    if src.isdigit() or src.startswith("/dev/video"):
        return "usb"
    if src.lower().startswith(STREAM_SCHEMES):
        return "stream"
    if "!" in src:
        return "gstreamer"
    return "file"


def is_live(kind: SourceKind) -> bool:
    """Whether frames of this kind arrive in real time (every kind but ``file``)."""
    return kind != "file"


def frame_queue_for(cam: CameraConfig) -> FrameQueue:
    """A queue of ``cam.queue_size`` frames, dropping the oldest for live sources, blocking for files."""
    return FrameQueue(cam.queue_size, live=is_live(resolve_kind(cam)))


def gstreamer_available(build_information: str | None = None) -> bool:
    """Whether this OpenCV build has the GStreamer video I/O backend.

    Args:
        build_information: the text of ``cv2.getBuildInformation()`` (read when ``None``).
    """
    info = cv2.getBuildInformation() if build_information is None else build_information
    return re.search(r"^\s*GStreamer:\s*YES", info, flags=re.MULTILINE) is not None


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Reconnect delay for the ``attempt``-th consecutive failure (0-based), with full jitter.

    The ceiling doubles per attempt, ``min(max_s, initial_s * 2**attempt)``, and the delay is
    drawn uniformly between ``initial_s`` and that ceiling (never below ``initial_s``, so a dead
    source is not hammered; the first retry waits exactly ``initial_s``). Jitter spreads the
    reconnects of many cameras behind one recovering recorder.

    Args:
        attempt: consecutive failures so far (>= 0).
        initial_s: smallest delay in seconds (> 0).
        max_s: largest delay in seconds (>= initial_s).
        rng: the random generator (injected for reproducible tests).

    Returns:
        The delay in seconds, in ``[initial_s, max_s]``.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    ceiling = max(initial_s, min(max_s, initial_s * 2.0 ** min(attempt, 62)))
    return rng.uniform(initial_s, ceiling)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """Return a contiguous uint8 (H, W, 3) BGR view/copy of what a capture backend returned."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.dtype != np.uint8:
        raise SourceError(f"capture returned {image.dtype} frames; expected uint8")
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------------------------
# region mask
# --------------------------------------------------------------------------------------------


class RegionMask:
    """Region(s) of interest of one frame size; faces whose box centre lies outside are ignored.

    The polygons are rasterised once into a (H, W) uint8 mask, so each test is a pixel lookup.

    Args:
        polygons: one or more polygons, each a sequence of at least 3 ``(x, y)`` pixel points
            (x right, y down, origin top-left). Points outside the frame are clipped.
        frame_shape: the frame's ``(H, W)`` or ``(H, W, C)``.
    """

    def __init__(self, polygons: Sequence[Sequence[tuple[int, int]]], frame_shape: tuple[int, ...]) -> None:
        if len(frame_shape) < 2 or frame_shape[0] <= 0 or frame_shape[1] <= 0:
            raise ValueError(f"frame_shape must be (H, W[, C]) with positive sides, got {frame_shape}")
        if not polygons:
            raise ValueError("a region mask needs at least one polygon")
        pts = []
        for i, poly in enumerate(polygons):
            arr = np.asarray(poly, dtype=np.int32)
            if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 3:
                raise ValueError(f"mask polygon {i} must be >= 3 (x, y) points, got shape {arr.shape}")
            pts.append(arr.reshape(-1, 1, 2))
        self.shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.mask = np.zeros(self.shape, dtype=np.uint8)
        cv2.fillPoly(self.mask, pts, 255)

    def contains(self, bbox: np.ndarray | Sequence[float]) -> bool:
        """Whether the centre of a box lies inside any polygon.

        Args:
            bbox: ``(x1, y1, x2, y2)`` in pixels of a frame of this mask's size.

        Returns:
            ``True`` when the centre pixel is inside; ``False`` when outside or off the frame.
        """
        x1, y1, x2, y2 = (float(v) for v in bbox)
        cx, cy = int(np.floor((x1 + x2) / 2.0)), int(np.floor((y1 + y2) / 2.0))
        h, w = self.shape
        if not (0 <= cx < w and 0 <= cy < h):
            return False
        return bool(self.mask[cy, cx])


class MaskCache:
    """The :class:`RegionMask` of one camera, rasterised once per frame size.

    Args:
        polygons: the camera's ``mask`` polygons (``CameraConfig.mask``).
    """

    def __init__(self, polygons: Sequence[Sequence[tuple[int, int]]]) -> None:
        self._polygons = [list(p) for p in polygons]
        self._by_shape: dict[tuple[int, int], RegionMask] = {}

    def get(self, frame_shape: tuple[int, ...]) -> RegionMask:
        """The mask for frames of ``frame_shape`` ``(H, W[, C])``, built on first use."""
        key = (int(frame_shape[0]), int(frame_shape[1]))
        mask = self._by_shape.get(key)
        if mask is None:
            mask = RegionMask(self._polygons, key)
            self._by_shape[key] = mask
        return mask


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


class VideoSource:
    """One OpenCV capture of a camera source; :meth:`open` may be called again to reconnect.

    Args:
        camera_id: the camera id (for messages).
        source: the configured source string.
        kind: the resolved kind (see :func:`resolve_kind`).
        read_timeout_s: streams only: open/read timeout handed to FFmpeg.
    """

    def __init__(self, camera_id: str, source: str, kind: SourceKind, read_timeout_s: float = 10.0) -> None:
        self.camera_id = camera_id
        self.source = source
        self.kind: SourceKind = kind
        self.read_timeout_s = read_timeout_s
        self._cap: cv2.VideoCapture | None = None
        self._fps: float | None = None

    @property
    def is_live(self) -> bool:
        """Whether frames arrive in real time (everything except files)."""
        return is_live(self.kind)

    @property
    def description(self) -> str:
        """``kind:source`` with URL credentials masked, safe to log."""
        return f"{self.kind}:{redact(self.source)}"

    @property
    def is_open(self) -> bool:
        """Whether the capture is open."""
        return self._cap is not None and bool(self._cap.isOpened())

    @property
    def fps(self) -> float | None:
        """The frame rate the source reports (files: the container's), or ``None`` if unknown."""
        return self._fps

    def open(self) -> None:
        """Open (or reopen) the capture.

        Raises:
            SourceUnsupportedError: this OpenCV lacks the needed backend, or the pipeline cannot
                work (no ``appsink``); retrying cannot help.
            SourceError: the file is missing or the backend refuses the source (live sources are
                retried by :class:`CaptureThread`); the message names the camera and the source.
        """
        self.release()
        where = f"camera {self.camera_id}: {self.description}"
        ms = int(self.read_timeout_s * 1000)
        if self.kind == "file":
            path = Path(self.source).expanduser()
            if not path.is_file():
                raise SourceError(f"{where}: video file not found")
            cap = cv2.VideoCapture(str(path), cv2.CAP_ANY)
        elif self.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, params)
        elif self.kind == "usb":
            src = self.source.strip()
            cap = cv2.VideoCapture(int(src), cv2.CAP_V4L2) if src.isdigit() else cv2.VideoCapture(src, cv2.CAP_V4L2)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # freshest frame; not every driver honours it
        elif self.kind == "gstreamer":
            if not gstreamer_available():
                raise SourceUnsupportedError(
                    f"{where}: this OpenCV build has no GStreamer support (cv2.getBuildInformation() does not "
                    "report 'GStreamer: YES'); install an OpenCV built with GStreamer (on Jetson: JetPack's "
                    "python3-opencv) or use a file/rtsp/usb source"
                )
            if "appsink" not in self.source:
                raise SourceUnsupportedError(f"{where}: a GStreamer pipeline for OpenCV must end in 'appsink'")
            cap = cv2.VideoCapture(self.source, cv2.CAP_GSTREAMER)
        else:  # pragma: no cover - Literal exhausts the kinds
            raise SourceError(f"{where}: unknown source kind {self.kind!r}")
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{where}: OpenCV could not open the source")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if 0.0 < fps < 1000.0 else None
        self._cap = cap

    def read(self) -> np.ndarray | None:
        """Read the next frame.

        Returns:
            uint8 (H, W, 3) BGR, or ``None`` at the end of a file or when a live read fails.
        """
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok or image is None or image.size == 0:
            return None
        return _as_bgr(image)

    def release(self) -> None:
        """Close the capture (idempotent)."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_source(cam: CameraConfig) -> VideoSource:
    """Open a camera's source, choosing the backend from ``cam.kind`` (see the module docstring).

    Args:
        cam: the camera configuration.

    Returns:
        An open :class:`VideoSource`.

    Raises:
        SourceError: the source cannot be opened (the message names the camera and source).
    """
    src = VideoSource(cam.id, cam.source, resolve_kind(cam), read_timeout_s=cam.read_timeout_s)
    src.open()
    return src


# --------------------------------------------------------------------------------------------
# fps cap
# --------------------------------------------------------------------------------------------


class FpsCap:
    """Decides which frames to keep so that at most ``fps_cap`` frames per second are processed.

    Live sources are thinned by capture time (a frame is kept once its slot, ``1 / fps_cap``
    after the previous one, is due). Files are thinned by frame position and the container's
    frame rate, so a file scan is deterministic whatever the processing speed: frame ``i`` is
    kept when ``floor(i * fps_cap / fps)`` moves to a new integer (29.97 fps capped at
    14.985 keeps frames 0, 2, 4, ...).

    Args:
        fps_cap: frames per second to keep, or ``None`` to keep every frame.
        live: whether to thin by time (live) or by position (file).
        source_fps: files: the container's frame rate (``None``: assume 30).
    """

    def __init__(self, fps_cap: float | None, live: bool, source_fps: float | None = None) -> None:
        if fps_cap is not None and fps_cap <= 0:
            raise ValueError(f"fps_cap must be > 0, got {fps_cap}")
        self.fps_cap = fps_cap
        self.live = live
        self.source_fps = source_fps if source_fps and source_fps > 0 else DEFAULT_FILE_FPS
        self._next_due: float | None = None

    def keep(self, position: int, timestamp: float) -> bool:
        """Whether to keep a frame.

        Args:
            position: files: 0-based frame number within the file; ignored for live sources.
            timestamp: live: monotonic capture time in seconds; ignored for files.
        """
        if self.fps_cap is None:
            return True
        if not self.live:
            ratio = self.fps_cap / self.source_fps
            if ratio >= 1.0 or position == 0:
                return True
            eps = 1e-9  # 14.985 / 29.97 is not exactly 0.5 in floating point
            return int(np.floor(position * ratio + eps)) != int(np.floor((position - 1) * ratio + eps))
        interval = 1.0 / self.fps_cap
        # the epsilon absorbs float error of timestamps that fall exactly on the schedule
        if self._next_due is None or timestamp >= self._next_due - 1e-6:
            due = timestamp + interval if self._next_due is None else self._next_due + interval
            # after a stall, restart the schedule instead of bursting to catch up
            self._next_due = due if due > timestamp else timestamp + interval
            return True
        return False

    def reset(self) -> None:
        """Forget the live schedule (after a reconnect)."""
        self._next_due = None


# --------------------------------------------------------------------------------------------
# capture thread
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureStats:
    """A snapshot of a capture thread's counters.

    Attributes:
        camera_id: the camera.
        frames_read: frames decoded from the source.
        frames_queued: frames handed to the queue (after the fps cap).
        frames_skipped: frames left out by the fps cap.
        dropped: frames the live queue dropped because inference fell behind.
        reconnects: successful reopenings after the source was lost.
        reconnect_attempts: failed open attempts (each followed by a back-off wait).
        fps: frames read per second over the last ~2 s (0 when idle).
        connected: whether the source is open now.
        running: whether the thread is alive.
        error: the reason the thread stopped on an error, else ``None``.
    """

    camera_id: str
    frames_read: int
    frames_queued: int
    frames_skipped: int
    dropped: int
    reconnects: int
    reconnect_attempts: int
    fps: float
    connected: bool
    running: bool
    error: str | None


class CaptureThread(threading.Thread):
    """Reads one camera into a :class:`FrameQueue` until stopped, end of file, or a fatal error.

    Live sources (stream, usb, gstreamer) are reopened after a loss, waiting
    :func:`backoff_delay` between attempts (a WARNING names the delay); files stop at the end
    (or restart when ``cam.loop``). A file that cannot be opened, or a source this installation
    can never open (:class:`SourceUnsupportedError`), stops the thread with ``stats().error``
    set and an ERROR log. The queue is closed when the thread ends, which is
    the consumer's end-of-stream signal.

    Args:
        cam: the camera configuration.
        queue: the camera's queue (see :func:`frame_queue_for`).
        stop_event: set it to stop the thread (it then exits within about ``read_timeout_s``).
        rng: random generator for back-off jitter (default: a fresh ``random.Random()``).
    """

    def __init__(
        self,
        cam: CameraConfig,
        queue: FrameQueue,
        stop_event: threading.Event,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name=f"capture-{cam.id}", daemon=True)
        self.cam = cam
        self.queue = queue
        self.stop_event = stop_event
        self.kind = resolve_kind(cam)
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._frames_read = 0
        self._frames_queued = 0
        self._frames_skipped = 0
        self._reconnects = 0
        self._reconnect_attempts = 0
        self._connected = False
        self._error: str | None = None
        self._read_times: deque[float] = deque()

    def stats(self) -> CaptureStats:
        """A consistent snapshot of the counters (safe from any thread)."""
        with self._lock:
            times = list(self._read_times)
            now = time.monotonic()
            recent = [t for t in times if now - t <= FPS_WINDOW_S]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else 0.0
            return CaptureStats(
                camera_id=self.cam.id,
                frames_read=self._frames_read,
                frames_queued=self._frames_queued,
                frames_skipped=self._frames_skipped,
                dropped=self.queue.dropped,
                reconnects=self._reconnects,
                reconnect_attempts=self._reconnect_attempts,
                fps=fps,
                connected=self._connected,
                running=self.is_alive(),
                error=self._error,
            )

    # -- internals --------------------------------------------------------------------------

    def _note_read(self, t: float) -> None:
        with self._lock:
            self._frames_read += 1
            self._read_times.append(t)
            while self._read_times and t - self._read_times[0] > FPS_WINDOW_S:
                self._read_times.popleft()

    def _set(self, **values: object) -> None:
        with self._lock:
            for k, v in values.items():
                setattr(self, f"_{k}", v)

    def _wait_backoff(self, attempt: int, reason: str) -> bool:
        """Log ``reason`` with the back-off delay and wait; return ``True`` when asked to stop meanwhile."""
        delay = backoff_delay(attempt, self.cam.reconnect_initial_s, self.cam.reconnect_max_s, self._rng)
        logger.warning("%s; reconnecting in %.2f s (attempt %d)", reason, delay, attempt + 1)
        return self.stop_event.wait(delay)

    def _enqueue(self, frame: Frame) -> bool:
        """Queue a frame; files wait for room. Returns ``False`` when the queue closed or we stop."""
        if self.queue.live:
            return self.queue.put(frame)
        while not self.stop_event.is_set():
            if self.queue.put(frame, timeout=0.2):
                return True
            if self.queue.closed:
                return False
        return False

    def run(self) -> None:
        """Thread body: open, read, cap, enqueue, reconnect; always releases and closes the queue."""
        source = VideoSource(self.cam.id, self.cam.source, self.kind, read_timeout_s=self.cam.read_timeout_s)
        live = source.is_live
        cap: FpsCap | None = None
        index = 0  # frames read over the thread's life
        position = 0  # frame number within the current file pass
        attempt = 0  # consecutive failures since the last good frame
        failures = 0  # consecutive failed reads
        ever_opened = False
        try:
            while not self.stop_event.is_set():
                if not source.is_open:
                    try:
                        source.open()
                    except SourceError as exc:
                        if not live or isinstance(exc, SourceUnsupportedError):
                            raise
                        self._set(reconnect_attempts=self._reconnect_attempts + 1)
                        if self._wait_backoff(attempt, str(exc)):
                            break
                        attempt += 1
                        continue
                    if ever_opened:
                        self._set(reconnects=self._reconnects + 1)
                        logger.info("camera %s: source reopened (%s)", self.cam.id, source.description)
                    ever_opened = True
                    self._set(connected=True)
                    cap = FpsCap(self.cam.fps_cap, live, source.fps)
                    position = 0
                    failures = 0
                image = source.read()
                if image is None:
                    failures += 1
                    if live and failures < LIVE_READ_FAILURES:
                        continue
                    source.release()
                    self._set(connected=False)
                    if not live:
                        if position == 0:
                            raise SourceError(f"camera {self.cam.id}: {source.description}: no frame could be decoded")
                        if self.cam.loop:
                            continue
                        logger.info("camera %s: end of file after %d frames", self.cam.id, index)
                        break
                    if self._wait_backoff(attempt, f"camera {self.cam.id}: {source.description}: source lost"):
                        break
                    attempt += 1
                    continue
                failures = 0
                attempt = 0
                t = time.monotonic()
                self._note_read(t)
                frame_index, frame_pos = index, position
                index += 1
                position += 1
                if cap is not None and not cap.keep(frame_pos, t):
                    self._set(frames_skipped=self._frames_skipped + 1)
                    continue
                frame = Frame(self.cam.id, frame_index, t, datetime.now(timezone.utc), image)
                if not self._enqueue(frame):
                    break
                self._set(frames_queued=self._frames_queued + 1)
        except SourceError as exc:
            self._set(error=str(exc))
            logger.error("camera %s: capture stopped: %s", self.cam.id, exc)
        except Exception as exc:
            self._set(error=f"{type(exc).__name__}: {exc}")
            logger.exception("camera %s: capture crashed", self.cam.id)
        finally:
            source.release()
            self._set(connected=False)
            self.queue.close()
