"""Tracker: IoU association, embedding re-association, stable per-camera ids, best faces per track."""

from __future__ import annotations

import numpy as np
import pytest

from namus_edge.core.config import MatchingConfig
from namus_edge.edge.reattach import reattach
from namus_edge.edge.tracker import Tracker, iou_matrix
from namus_edge.models.face import Detection


def det(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Detection:
    """A detection with plausible landmarks inside its box."""
    w, h = x2 - x1, y2 - y1
    lm = np.array(
        [
            [x1 + 0.3 * w, y1 + 0.4 * h],
            [x1 + 0.7 * w, y1 + 0.4 * h],
            [x1 + 0.5 * w, y1 + 0.6 * h],
            [x1 + 0.35 * w, y1 + 0.8 * h],
            [x1 + 0.65 * w, y1 + 0.8 * h],
        ],
        np.float32,
    )
    return Detection(np.array([x1, y1, x2, y2], np.float32), lm, score)


def unit(seed: int, dim: int = 64) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, seed: int, noise: float = 0.3) -> np.ndarray:
    """A vector close to v (cosine ~0.95 for noise 0.3 in 64-d)."""
    w = v + noise * np.random.default_rng(seed).standard_normal(v.shape).astype(np.float32) / np.sqrt(v.size)
    return (w / np.linalg.norm(w)).astype(np.float32)


def cfg(**kw: object) -> MatchingConfig:
    return MatchingConfig.model_validate(kw)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (10, 10, 20, 20), 0.0),  # touching corners
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty boxes: no division by zero
        ((0, 0, 10, 10), (2, 2, 8, 8), 36 / 100),
    ],
)
def test_iou_matrix_table(a, b, expected):
    m = iou_matrix(np.array([a], np.float32), np.array([b], np.float32))
    assert m.shape == (1, 1)
    assert m[0, 0] == pytest.approx(expected)


def test_iou_matrix_shapes():
    assert iou_matrix(np.zeros((3, 4)), np.zeros((0, 4))).shape == (3, 0)
    assert iou_matrix(np.zeros((2, 4)), np.ones((5, 4))).shape == (2, 5)


def test_ids_are_stable_while_faces_move_smoothly():
    tr = Tracker(cfg())
    ids = []
    for f in range(30):  # two faces walking right by 3 px/frame at 10 fps
        out = tr.update("cam1", [det(10 + 3 * f, 10, 60 + 3 * f, 70), det(300 - 3 * f, 20, 350 - 3 * f, 80)], f * 0.1)
        ids.append([tf.track_id for tf in out])
        assert [tf.detection_index for tf in out] == [0, 1]
    assert ids[0] == [1, 2]
    assert all(row == [1, 2] for row in ids)
    assert [t.hits for t in tr.tracks("cam1")] == [30, 30]
    assert tr.pop_closed() == []


def test_ids_increase_per_camera_and_are_not_shared():
    tr = Tracker(cfg())
    a = tr.update("a", [det(0, 0, 50, 50)], 0.0)
    b = tr.update("b", [det(0, 0, 50, 50), det(100, 0, 150, 50)], 0.0)
    assert [x.track_id for x in a] == [1]
    assert [x.track_id for x in b] == [1, 2]
    a2 = tr.update("a", [det(200, 200, 250, 250)], 0.1)  # far away: a new track
    assert [x.track_id for x in a2] == [2] and a2[0].new
    other = Tracker(cfg())  # a second tracker starts from 1: no class-level counter
    assert other.update("a", [det(0, 0, 5, 5)], 0.0)[0].track_id == 1


def test_greedy_association_prefers_highest_iou():
    tr = Tracker(cfg(track_iou=0.1))
    tr.update("c", [det(0, 0, 100, 100), det(90, 0, 190, 100)], 0.0)
    # one detection overlapping both tracks, more with track 2
    out = tr.update("c", [det(80, 0, 180, 100)], 0.1)
    assert out[0].track_id == 2 and not out[0].new


def test_track_closes_after_max_age_and_id_is_not_reused():
    tr = Tracker(cfg(track_max_age_s=1.0))
    tr.update("c", [det(0, 0, 50, 50)], 0.0)
    tr.update("c", [], 0.9)
    assert len(tr.tracks("c")) == 1
    out = tr.update("c", [det(0, 0, 50, 50)], 2.5)  # unseen 2.5 s > 1 s: closed, then a new one
    closed = tr.pop_closed()
    assert [t.track_id for t in closed] == [1]
    assert out[0].track_id == 2 and out[0].new
    assert tr.pop_closed() == []


def test_close_camera():
    tr = Tracker(cfg(track_max_age_s=1.0))
    tr.update("a", [det(0, 0, 50, 50)], 0.0)
    tr.update("b", [det(0, 0, 50, 50)], 0.8)
    assert [(t.camera_id, t.track_id) for t in tr.close_camera("b")] == [("b", 1)]
    assert [(t.camera_id, t.track_id) for t in tr.pop_closed()] == [("b", 1)]
    assert tr.tracks("b") == [] and [t.track_id for t in tr.tracks("a")] == [1]


def test_embedding_reattaches_after_occlusion_when_iou_fails():
    tr = Tracker(cfg(track_embed_sim=0.5, track_max_age_s=2.0))
    person, stranger = unit(1), unit(2)
    first = tr.update("c", [det(0, 0, 50, 50)], 0.0)[0]
    assert first.track.add_face(0.8, first.detection.bbox, 0.0, person)
    tr.update("c", [], 0.5)  # occluded
    # reappears far away (IoU 0) together with a stranger: IoU opens two tracks
    out = tr.update("c", [det(400, 0, 450, 50), det(200, 200, 250, 250)], 1.0)
    assert [o.track_id for o in out] == [2, 3] and all(o.new for o in out)
    # once embedded, the reappearing face is folded back into track 1; the stranger is not
    back = reattach(tr, out[0].track, near(person, 5), 0.5)
    assert back is first.track and back.track_id == 1 and back.hits == 2 and back.last_seen == 1.0
    assert list(back.bbox) == [400, 0, 450, 50]
    assert reattach(tr, out[1].track, stranger, 0.5) is out[1].track
    assert [t.track_id for t in tr.tracks("c")] == [1, 3]
    assert tr.pop_closed() == []  # folded, not closed: it never voted
    # the next frame continues track 1 by IoU at its new place
    assert tr.update("c", [det(402, 0, 452, 50)], 1.1)[0].track_id == 1


def test_embedding_below_threshold_or_a_track_still_visible_is_not_reattached():
    tr = Tracker(cfg(track_embed_sim=0.5))
    first = tr.update("c", [det(0, 0, 50, 50)], 0.0)[0]
    first.track.add_face(0.8, first.detection.bbox, 0.0, unit(1))
    out = tr.update("c", [det(400, 0, 450, 50)], 0.5)[0]
    assert reattach(tr, out.track, unit(2), 0.5) is out.track  # a different person
    both = tr.update("c", [det(0, 0, 50, 50), det(200, 0, 250, 50)], 0.6)
    assert [b.track_id for b in both] == [1, 3]
    # the same person twice in one frame (a photo on a wall): track 1 is visible now, no folding
    assert reattach(tr, both[1].track, unit(1), 0.5) is both[1].track


def test_without_embeddings_a_jump_opens_a_new_track():
    tr = Tracker(cfg())
    first = tr.update("c", [det(0, 0, 50, 50)], 0.0)[0]
    first.track.add_face(0.8, first.detection.bbox, 0.0, unit(1))
    assert tr.update("c", [det(400, 0, 450, 50)], 0.5)[0].track_id == 2


def test_best_faces_per_track_and_needs_embedding():
    tr = Tracker(cfg(faces_per_track=3))
    track = tr.update("c", [det(0, 0, 50, 50)], 0.0)[0].track
    box = np.array([0, 0, 50, 50], np.float32)
    for q in (0.5, 0.4, 0.6):
        assert track.needs_embedding(q)
        assert track.add_face(q, box, 0.0, unit(int(q * 10)))
    assert [f.quality for f in track.faces] == [0.6, 0.5, 0.4]
    assert not track.needs_embedding(0.3)  # full and not better than the worst kept face
    assert not track.needs_embedding(0.4)
    assert not track.add_face(0.3, box, 1.0, unit(9))
    assert track.needs_embedding(0.45)
    assert track.add_face(0.9, box, 2.0, unit(7), age=31.0)
    assert [f.quality for f in track.faces] == [0.9, 0.6, 0.5]
    assert track.best_face is not None and track.best_face.age == 31.0
    emb = track.embedding
    assert emb is not None and emb.shape == (64,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        (np.zeros(64, np.float32), "non-zero"),
        (np.full(64, np.nan, np.float32), "finite"),
        (np.ones(32, np.float32), "dimension"),
    ],
)
def test_add_face_rejects_bad_embeddings(embedding, message):
    track = Tracker(cfg()).update("c", [det(0, 0, 50, 50)], 0.0)[0].track
    track.add_face(0.5, np.array([0, 0, 50, 50], np.float32), 0.0, unit(1))
    with pytest.raises(ValueError, match=message):
        track.add_face(0.9, np.array([0, 0, 50, 50], np.float32), 0.0, embedding)


def test_identity_switch_in_crossing_is_resolved_by_iou_order():
    """Two faces approach; each keeps its id while their boxes still overlap their own track most."""
    tr = Tracker(cfg(track_iou=0.2))
    for f in range(8):
        out = tr.update("c", [det(0 + 10 * f, 0, 60 + 10 * f, 60), det(200 - 10 * f, 0, 260 - 10 * f, 60)], f * 0.1)
        assert [x.track_id for x in out] == [1, 2]
