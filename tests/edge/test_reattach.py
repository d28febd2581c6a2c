"""Re-attachment by embedding after a short occlusion, on real faces through the real pipeline."""

from __future__ import annotations

from datetime import datetime, timezone

import cv2
import numpy as np
import pytest
from namus_edge_testing.namus_factory import lfw_identities

from namus_edge.core.config import config_from_mapping
from namus_edge.edge.frame_queue import Frame
from namus_edge.edge.pipeline import Pipeline
from namus_edge.models.analyzer import FaceAnalyzer


def _canvas(photo: np.ndarray | None, x: int) -> np.ndarray:
    img = np.full((360, 640, 3), 70, np.uint8)
    if photo is not None:
        tile = cv2.resize(photo, (160, 160))
        img[100:260, x:x + 160] = tile
    return img


@pytest.fixture(scope="module")
def people(data_dir):
    lfw = lfw_identities(data_dir)
    a, b = [k for k, v in lfw.items() if len(v) >= 2][:2]
    return cv2.imread(str(lfw[a][0])), cv2.imread(str(lfw[a][1])), cv2.imread(str(lfw[b][0]))


def test_face_hidden_then_reappearing_elsewhere_keeps_its_track(people, model_cache):
    a1, a2, b = people
    cfg = config_from_mapping({"matching": {"age_check": {"enabled": False}}}, "test")
    pipe = Pipeline(cfg, FaceAnalyzer(cfg, model_cache, with_age=False), lambda: None, lambda e, c: None)
    t = 0.0

    def show(photo, x, n):
        nonlocal t
        for _ in range(n):
            pipe.process([Frame("cam", int(t * 10), t, datetime.now(timezone.utc), _canvas(photo, x))])
            t += 0.1

    show(a1, 40, 3)                # person A on the left
    first = [tr.track_id for tr in pipe.tracker.tracks("cam")]
    show(None, 0, 4)               # hidden for 0.4 s (< track_max_age_s)
    show(a2, 440, 3)               # reappears on the right (IoU 0), another photo of A
    after = [tr.track_id for tr in pipe.tracker.tracks("cam")]
    assert first == [1] and after == [1], (first, after)  # same track: votes are kept
    assert pipe.tracker.tracks("cam")[0].hits == 6
    show(None, 0, 4)
    show(b, 40, 3)                 # someone else appears after an occlusion: new track(s), A's is untouched
    tracks = pipe.tracker.tracks("cam")
    assert tracks[0].track_id == 1 and tracks[0].hits == 6 and len(tracks) >= 2
    assert all(tr.track_id > 2 for tr in tracks[1:])
