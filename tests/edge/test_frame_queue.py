"""FrameQueue: drop-oldest when live, blocking and lossless for files, close sentinel."""

from __future__ import annotations

import queue
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from namus_edge.edge.frame_queue import Frame, FrameQueue

UTC = timezone.utc


def make_frame(i: int, cam: str = "cam1") -> Frame:
    return Frame(cam, i, float(i), datetime.now(UTC), np.full((4, 6, 3), i % 256, np.uint8))


@pytest.mark.parametrize(
    ("image", "wall", "index", "message"),
    [
        (np.zeros((4, 6, 3), np.float32), datetime.now(UTC), 0, "uint8"),
        (np.zeros((4, 6), np.uint8), datetime.now(UTC), 0, r"\(4, 6\)"),
        (np.zeros((4, 6, 4), np.uint8), datetime.now(UTC), 0, r"\(4, 6, 4\)"),
        ("not an array", datetime.now(UTC), 0, "str"),
        (np.zeros((4, 6, 3), np.uint8), datetime.now(), 0, "timezone-aware"),  # naive: the point of the test
        (np.zeros((4, 6, 3), np.uint8), datetime.now(UTC), -1, "index"),
    ],
)
def test_frame_validates(image, wall, index, message):
    with pytest.raises(ValueError, match=message):
        Frame("cam1", index, 0.0, wall, image)


def test_frame_accepts_bgr_uint8():
    f = make_frame(3)
    assert f.image.shape == (4, 6, 3) and f.index == 3


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError, match="maxsize"):
        FrameQueue(0, live=True)


def test_live_drops_oldest_and_counts():
    q = FrameQueue(3, live=True)
    for i in range(10):
        assert q.put(make_frame(i)) is True  # never blocks
    assert q.dropped == 7
    assert q.put_count == 10
    assert len(q) == 3
    assert [q.get(timeout=0).index for _ in range(3)] == [7, 8, 9]  # the newest survive, in order


def test_file_mode_blocks_when_full_and_never_drops():
    q = FrameQueue(2, live=False)
    assert q.put(make_frame(0)) and q.put(make_frame(1))
    t0 = time.monotonic()
    assert q.put(make_frame(2), timeout=0.2) is False  # full: waits, then gives up without queuing
    assert time.monotonic() - t0 >= 0.18
    assert q.dropped == 0
    assert [q.get(timeout=0).index for _ in range(2)] == [0, 1]


def test_file_mode_slow_consumer_receives_every_frame_in_order():
    q = FrameQueue(2, live=False)
    n = 40

    def produce() -> None:
        for i in range(n):
            q.put(make_frame(i))
        q.close()

    t = threading.Thread(target=produce)
    t.start()
    got = []
    try:
        while (f := q.get(timeout=5)) is not None:
            got.append(f.index)
            time.sleep(0.002)  # slower than the producer
    finally:
        t.join(5)
    assert got == list(range(n))
    assert q.dropped == 0


def test_close_is_a_sentinel_after_draining():
    q = FrameQueue(4, live=True)
    q.put(make_frame(0))
    q.put(make_frame(1))
    q.close()
    assert q.closed
    assert q.put(make_frame(2)) is False
    assert q.get().index == 0
    assert q.get().index == 1
    assert q.get() is None
    assert q.get(timeout=0) is None  # stays at the sentinel


def test_get_timeout_raises_empty_while_open():
    q = FrameQueue(1, live=True)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)


@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_close_wakes_blocked_threads(side):
    q = FrameQueue(1, live=False)
    result: list[object] = []
    if side == "producer":
        q.put(make_frame(0))
        t = threading.Thread(target=lambda: result.append(q.put(make_frame(1))))
    else:
        t = threading.Thread(target=lambda: result.append(q.get()))
    t.start()
    time.sleep(0.1)
    assert t.is_alive()  # really blocked
    q.close()
    t.join(2)
    assert not t.is_alive()
    expected = [False] if side == "producer" else [None]
    assert result == expected
