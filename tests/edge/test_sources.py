"""Video sources and the capture thread on real files and a real loopback MJPEG-over-HTTP stream."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest
from namus_edge_testing.mjpeg import MjpegServer

from namus_edge.core.config import CameraConfig
from namus_edge.edge.frame_queue import Frame, FrameQueue
from namus_edge.edge.sources import (
    CaptureThread,
    FpsCap,
    MaskCache,
    RegionMask,
    SourceError,
    SourceUnsupportedError,
    backoff_delay,
    frame_queue_for,
    gstreamer_available,
    open_source,
    redact,
    resolve_kind,
)

HAMILTON_FRAMES = 275
HAMILTON_FPS = 29.97


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def cam(source: str, **kw: object) -> CameraConfig:
    return CameraConfig.model_validate({"id": kw.pop("id", "cam1"), "source": source, **kw})


def drain(q: FrameQueue, timeout: float = 20.0, delay: float = 0.0) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while (f := q.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
        frames.append(f)
        if delay:
            time.sleep(delay)
    return frames


def run_capture(c: CameraConfig, **kw: object) -> tuple[CaptureThread, FrameQueue, threading.Event]:
    q = frame_queue_for(c)
    stop = threading.Event()
    t = CaptureThread(c, q, stop, rng=random.Random(0), **kw)  # type: ignore[arg-type]
    t.start()
    return t, q, stop


BITS = 6
STRIP = 16


def bit_image(i: int) -> np.ndarray:
    """A (48, 96, 3) frame whose six vertical strips spell i in binary (white = 1): survives lossy codecs."""
    img = np.zeros((48, BITS * STRIP, 3), np.uint8)
    for b in range(BITS):
        if (i >> b) & 1:
            img[:, b * STRIP : (b + 1) * STRIP] = 255
    return img


def write_video(path: Path, n: int, fps: float, fourcc: str) -> None:
    """Frame i shows the number i as bit strips (so decoded content identifies the frame)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (BITS * STRIP, 48))
    assert w.isOpened(), f"VideoWriter cannot write {fourcc} here"
    for i in range(n):
        w.write(bit_image(i))
    w.release()


def decoded_number(frame: Frame) -> int:
    img = frame.image
    return sum(1 << b for b in range(BITS) if img[:, b * STRIP + 4 : (b + 1) * STRIP - 4].mean() > 128)


@pytest.fixture()
def hamilton(data_dir: Path) -> Path:
    p = data_dir / "video" / "hamilton_short_clip.mp4"
    assert p.is_file(), p
    return p


# --------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind", "expected"),
    [
        ("0", "auto", "usb"),
        ("/dev/video2", "auto", "usb"),
        ("rtsp://10.0.0.5:554/stream1", "auto", "stream"),
        ("RTSP://cam/x", "auto", "stream"),
        ("http://127.0.0.1:8080/video.mjpg", "auto", "stream"),
        ("https://cam.local/live", "auto", "stream"),
        ("nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink", "auto", "gstreamer"),
        ("/data/clips/door.mp4", "auto", "file"),
        ("clip.avi", "auto", "file"),
        ("/dev/video0", "file", "file"),  # explicit kind wins
        ("rtsp://x/y", "gstreamer", "gstreamer"),
    ],
)
def test_resolve_kind(source, kind, expected):
    assert resolve_kind(cam(source, kind=kind)) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("rtsp://admin:s3cret@10.0.0.5/stream", "rtsp://***@10.0.0.5/stream"),
        ("http://user@host/x", "http://***@host/x"),
        ("rtsp://10.0.0.5/stream", "rtsp://10.0.0.5/stream"),
        ("/data/a@b.mp4", "/data/a@b.mp4"),
    ],
)
def test_redact(source, expected):
    assert redact(source) == expected


def test_frame_queue_policy_follows_kind():
    assert frame_queue_for(cam("clip.mp4", queue_size=7)).live is False
    live = frame_queue_for(cam("rtsp://h/s", queue_size=7))
    assert live.live is True and live.maxsize == 7


def test_reconnect_bounds_validated():
    with pytest.raises(ValueError, match="reconnect_max_s"):
        cam("rtsp://h/s", reconnect_initial_s=5, reconnect_max_s=1)


@pytest.mark.parametrize(
    ("attempt", "initial", "maximum", "low", "high"),
    [
        (0, 1.0, 60.0, 1.0, 1.0),  # first retry: exactly the initial delay
        (1, 1.0, 60.0, 1.0, 2.0),
        (3, 1.0, 60.0, 1.0, 8.0),
        (10, 1.0, 60.0, 1.0, 60.0),  # capped
        (500, 0.5, 4.0, 0.5, 4.0),  # no overflow
        (2, 2.0, 2.0, 2.0, 2.0),
    ],
)
def test_backoff_delay_bounds(attempt, initial, maximum, low, high):
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, initial, maximum, rng) for _ in range(200)]
    assert min(delays) >= low and max(delays) <= high
    if high > low:  # full jitter: spread over the whole interval, not clustered at the top
        assert min(delays) < low + 0.2 * (high - low) and max(delays) > high - 0.2 * (high - low)


def test_backoff_delay_rejects_negative_attempt():
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1, 1.0, 2.0, random.Random(0))


@pytest.mark.parametrize(
    ("fps_cap", "source_fps", "n", "expected"),
    [
        (None, 30.0, 10, list(range(10))),
        (15.0, 30.0, 10, [0, 2, 4, 6, 8]),
        (HAMILTON_FPS / 2, HAMILTON_FPS, 7, [0, 2, 4, 6]),  # float ratio just under 0.5
        (10.0, 30.0, 10, [0, 3, 6, 9]),
        (60.0, 30.0, 5, [0, 1, 2, 3, 4]),  # a cap above the source rate keeps all
        (20.0, 30.0, 6, [0, 2, 3, 5]),  # 2 of every 3, on the floor(i * 2/3) grid
        (5.0, None, 12, [0, 6]),  # unknown rate: assume 30
    ],
)
def test_fps_cap_file_by_position(fps_cap, source_fps, n, expected):
    cap = FpsCap(fps_cap, live=False, source_fps=source_fps)
    assert [i for i in range(n) if cap.keep(i, timestamp=123.0)] == expected


def test_fps_cap_live_by_timestamp():
    cap = FpsCap(10.0, live=True)
    times = [i / 30.0 for i in range(300)]  # 10 s at 30 fps
    kept = [t for t in times if cap.keep(0, t)]
    assert len(kept) == 100
    # kept on a fixed 0.1 s grid: spacing varies by at most one source frame around the interval
    assert min(np.diff(kept)) >= 0.1 - 1 / 30 - 1e-6 and max(np.diff(kept)) <= 0.1 + 1 / 30 + 1e-6
    # after a 5 s stall, no burst to catch up
    cap2 = FpsCap(10.0, live=True)
    assert cap2.keep(0, 0.0)
    assert cap2.keep(0, 5.0)
    assert not cap2.keep(0, 5.03)
    assert cap2.keep(0, 5.1)


def test_fps_cap_rejects_non_positive():
    with pytest.raises(ValueError, match="fps_cap"):
        FpsCap(0.0, live=True)


# --------------------------------------------------------------------------------------------
# region mask
# --------------------------------------------------------------------------------------------

SQUARE = [(10, 10), (50, 10), (50, 50), (10, 50)]
TRIANGLE = [(60, 0), (99, 0), (99, 39)]


@pytest.mark.parametrize(
    ("bbox", "inside"),
    [
        ((20, 20, 40, 40), True),  # centre (30, 30) in the square
        ((0, 0, 100, 100), True),  # centre (50, 50) is the square's corner: fillPoly includes borders
        ((0, 0, 8, 8), False),
        ((90, 2, 98, 10), True),  # centre (94, 6) in the triangle
        ((60, 20, 70, 30), False),  # centre (65, 25): below the triangle's hypotenuse
        ((200, 200, 220, 220), False),  # off the frame
        ((-30, -30, -10, -10), False),
    ],
)
def test_region_mask_contains_by_centre(bbox, inside):
    mask = RegionMask([SQUARE, TRIANGLE], (80, 100, 3))
    assert mask.contains(np.array(bbox, np.float32)) is inside


@pytest.mark.parametrize(
    ("polygons", "shape", "message"),
    [
        ([], (10, 10), "at least one polygon"),
        ([[(0, 0), (5, 5)]], (10, 10), "polygon 0"),
        ([SQUARE], (0, 10), "frame_shape"),
        ([SQUARE], (10,), "frame_shape"),
    ],
)
def test_region_mask_validates(polygons, shape, message):
    with pytest.raises(ValueError, match=message):
        RegionMask(polygons, shape)


def test_mask_cache_rasterises_once_per_size():
    cache = MaskCache([SQUARE])
    a = cache.get((80, 100, 3))
    assert cache.get((80, 100)) is a
    b = cache.get((160, 200, 3))
    assert b is not a and b.mask.shape == (160, 200)
    assert int(a.mask.sum() // 255) == 41 * 41  # the square incl. its border pixels


# --------------------------------------------------------------------------------------------
# opening sources
# --------------------------------------------------------------------------------------------


def test_open_real_clip_reports_its_fps(hamilton):
    src = open_source(cam(str(hamilton)))
    try:
        assert src.kind == "file" and not src.is_live
        assert src.fps == pytest.approx(HAMILTON_FPS, abs=0.01)
        img = src.read()
        assert img is not None and img.shape == (360, 640, 3) and img.dtype == np.uint8
    finally:
        src.release()


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=r"cam1.*nope\.mp4.*not found"):
        open_source(cam(str(missing)))


def test_capture_of_missing_file_stops_with_error_and_closes_queue(tmp_path):
    t, q, _ = run_capture(cam(str(tmp_path / "gone.mp4")))
    t.join(5)
    assert not t.is_alive()
    assert q.get(timeout=1) is None
    st = t.stats()
    assert st.error is not None and "gone.mp4" in st.error and st.frames_read == 0


def test_undecodable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 50)
    t, q, _ = run_capture(cam(str(bad)))
    t.join(5)
    assert q.get(timeout=1) is None
    assert t.stats().error is not None and "notes.mp4" in (t.stats().error or "")


def test_gstreamer_needs_support_in_this_opencv():
    pipeline = "videotestsrc num-buffers=5 ! videoconvert ! video/x-raw,format=BGR ! appsink"
    if gstreamer_available():
        src = open_source(cam(pipeline))
        try:
            img = src.read()
            assert img is not None and img.ndim == 3
        finally:
            src.release()
    else:
        with pytest.raises(SourceUnsupportedError, match="no GStreamer support"):
            open_source(cam(pipeline))
        # the capture thread does not retry a permanent error forever: it stops with the reason
        t, q, _ = run_capture(cam(pipeline, reconnect_initial_s=0.05))
        t.join(5)
        assert not t.is_alive() and q.get(timeout=1) is None
        assert "GStreamer" in (t.stats().error or "") and t.stats().reconnect_attempts == 0


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ("  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   NO\n", False),
        ("  Video I/O:\n    GStreamer:                   YES (1.16.3)\n", True),
        ("", False),
    ],
)
def test_gstreamer_available_parses_build_information(info, expected):
    assert gstreamer_available(info) is expected


# --------------------------------------------------------------------------------------------
# capture from real files
# --------------------------------------------------------------------------------------------


def test_file_scan_is_lossless_and_ordered(hamilton):
    c = cam(str(hamilton), queue_size=2)
    t, q, stop = run_capture(c)
    try:
        frames = drain(q, delay=0.001)  # consumer slower than decoding: the producer must wait
    finally:
        stop.set()
        t.join(5)
    assert [f.index for f in frames] == list(range(HAMILTON_FRAMES))
    assert all(f.camera_id == "cam1" and f.image.shape == (360, 640, 3) for f in frames)
    assert all(b.timestamp >= a.timestamp for a, b in pairwise(frames))
    st = t.stats()
    assert st.frames_read == HAMILTON_FRAMES and st.frames_queued == HAMILTON_FRAMES
    assert st.dropped == 0 and st.error is None and not st.running


def test_fps_cap_halves_the_real_clip(hamilton):
    t, q, stop = run_capture(cam(str(hamilton), fps_cap=HAMILTON_FPS / 2))
    try:
        frames = drain(q)
    finally:
        stop.set()
        t.join(5)
    assert [f.index for f in frames] == list(range(0, HAMILTON_FRAMES, 2))
    st = t.stats()
    assert st.frames_queued == 138 and st.frames_skipped == HAMILTON_FRAMES - 138


@pytest.mark.parametrize(("fourcc", "ext"), [("mp4v", "mp4"), ("MJPG", "avi")])
def test_written_file_content_arrives_in_order_with_cap(tmp_path, fourcc, ext):
    path = tmp_path / f"clip.{ext}"
    write_video(path, 40, 20.0, fourcc)
    t, q, stop = run_capture(cam(str(path), fps_cap=10.0, queue_size=1))
    try:
        frames = drain(q, delay=0.002)
    finally:
        stop.set()
        t.join(5)
    assert [f.index for f in frames] == list(range(0, 40, 2))
    assert [decoded_number(f) for f in frames] == list(range(0, 40, 2))  # the decoded pixels, not just counters


def test_loop_restarts_the_file(tmp_path):
    path = tmp_path / "short.avi"
    write_video(path, 8, 10.0, "MJPG")
    t, q, stop = run_capture(cam(str(path), loop=True))
    frames: list[Frame] = []
    try:
        while len(frames) < 20:
            f = q.get(timeout=10)
            assert f is not None
            frames.append(f)
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()
    assert [f.index for f in frames] == list(range(20))  # index keeps counting across loops
    assert [decoded_number(f) for f in frames] == [i % 8 for i in range(20)]


def test_stop_event_ends_a_blocked_file_scan(hamilton):
    t, q, stop = run_capture(cam(str(hamilton), queue_size=1))
    time.sleep(0.3)  # producer now blocked on the full queue
    stop.set()
    t.join(3)
    assert not t.is_alive()
    assert q.closed


# --------------------------------------------------------------------------------------------
# a live MJPEG stream over HTTP on loopback (multipart/x-mixed-replace), read by OpenCV's FFmpeg
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def mjpeg() -> Iterator[MjpegServer]:
    server = MjpegServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_stream_is_live_and_slow_consumer_drops_oldest(mjpeg):
    c = cam(mjpeg.url, queue_size=2, read_timeout_s=5)
    t, q, stop = run_capture(c)
    got: list[Frame] = []
    try:
        first = q.get(timeout=10)
        assert first is not None
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            f = q.get(timeout=5)
            assert f is not None
            got.append(f)
            time.sleep(0.1)  # ~10 fps consumer behind a ~50 fps stream
        st = t.stats()
    finally:
        stop.set()
        t.join(10)
    assert q.live
    assert st.dropped > 0
    idx = [f.index for f in got]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert max(np.diff(idx)) > 1  # older frames were skipped over
    # freshness: what we got last was among the newest read
    assert st.frames_read - got[-1].index <= q.maxsize + 5
    assert st.fps > 10
    assert st.connected and st.reconnects == 0


def test_stream_loss_is_reconnected_with_backoff(mjpeg, caplog):
    caplog.set_level(logging.INFO, logger="namus_edge.edge.sources")
    url = mjpeg.url.replace("http://", "http://viewer:s3cret@")  # credentials must never be logged
    c = cam(url, reconnect_initial_s=0.2, reconnect_max_s=0.8, read_timeout_s=3, queue_size=4)
    t, q, stop = run_capture(c)
    try:
        before = q.get(timeout=10)
        assert before is not None
        mjpeg.stop()  # the camera disappears
        down_until = time.monotonic() + 1.5
        while time.monotonic() < down_until:  # keep draining what was buffered
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        mid = t.stats()
        mjpeg.start()  # and comes back on the same port
        after: Frame | None = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                f = q.get(timeout=0.5)
            except queue.Empty:
                continue
            assert f is not None
            if t.stats().reconnects >= 1:
                after = f
                break
        st = t.stats()
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert not mid.connected
    assert mid.reconnect_attempts >= 1  # refused while the server was down
    assert st.reconnects == 1
    assert after is not None and after.index > before.index
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reopened" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert any("cam1" in m and "reconnecting in" in m for m in warnings), warnings
    delays = [float(m.split("reconnecting in ")[1].split(" s")[0]) for m in warnings if "reconnecting in" in m]
    assert all(0.2 <= d <= 0.8 for d in delays) and delays[0] == pytest.approx(0.2)
    assert "source lost" in warnings[0] and "could not open" in warnings[1]
    assert "http://***@127.0.0.1" in warnings[0]
    assert not any("s3cret" in r.getMessage() for r in caplog.records)
