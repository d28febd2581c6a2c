"""Static faces: a flyer held in view over several cooldown windows gives exactly one event, marked static."""

from __future__ import annotations

from datetime import date, datetime, timezone

import cv2
import numpy as np
import pytest
from namus_edge_testing.namus_factory import SyntheticCase, lfw_identities, write_prepager

from namus_edge.core.config import StaticFaceConfig, load_config
from namus_edge.edge.events import MatchEvent
from namus_edge.edge.frame_queue import Frame
from namus_edge.edge.pipeline import Pipeline
from namus_edge.edge.static_faces import StaticFaceGuard
from namus_edge.index.build import build_bundle
from namus_edge.index.bundle import Bundle
from namus_edge.index.signing import generate_keypair
from namus_edge.models.analyzer import FaceAnalyzer

CFG = StaticFaceConfig(still_seconds=3.0, still_px=0.05, region_iou=0.5, release_s=2.0)
BOX = np.array([100.0, 100.0, 200.0, 220.0])


def test_still_track_decision_is_held_then_released_once_as_static() -> None:
    g: StaticFaceGuard[str] = StaticFaceGuard(CFG)
    assert g.update("cam", [(1, BOX)], 0.0) == []
    assert g.submit("cam", 1, "MP1", BOX, 0.5, "first") == []  # not yet known to be still: held
    assert g.held == 1
    assert g.update("cam", [(1, BOX + 1.0)], 2.0) == []  # 1 px jitter is still
    assert g.update("cam", [(1, BOX)], 3.1) == [("first", True)]
    # later decisions of the same case from the same region are suppressed while the face stays
    for t in (10.0, 20.0, 30.0):
        assert g.update("cam", [(1, BOX)], t) == []
        assert g.submit("cam", 1, "MP1", BOX, t, "again") == []
    # another case in the same region is not suppressed (held, then static itself)
    assert g.submit("cam", 1, "MP2", BOX, 30.0, "other") == [("other", True)]


def test_moving_track_is_released_at_once_as_a_normal_event() -> None:
    g: StaticFaceGuard[str] = StaticFaceGuard(CFG)
    g.update("cam", [(1, BOX)], 0.0)
    assert g.submit("cam", 1, "MP1", BOX, 0.2, "walker") == []
    assert g.update("cam", [(1, BOX + 20.0)], 0.4) == [("walker", False)]


def test_held_decision_of_a_closed_track_is_not_lost() -> None:
    g: StaticFaceGuard[str] = StaticFaceGuard(CFG)
    g.update("cam", [(1, BOX)], 0.0)
    g.submit("cam", 1, "MP1", BOX, 0.2, "brief")
    assert g.end_track("cam", 1) == [("brief", False)]
    assert g.held == 0


def test_retrigger_from_the_same_region_is_static_and_released_when_the_region_empties() -> None:
    g: StaticFaceGuard[str] = StaticFaceGuard(CFG)
    g.update("cam", [(1, BOX)], 0.0)
    g.submit("cam", 1, "MP1", BOX, 0.1, "a")
    assert g.update("cam", [(1, BOX + 15.0)], 0.3) == [("a", False)]  # moved: normal event
    # a new track re-triggers the same case from (nearly) the same spot: the poster
    g.update("cam", [(2, BOX + 14.0)], 5.0)
    assert g.submit("cam", 2, "MP1", BOX + 14.0, 5.0, "b") == [("b", True)]
    assert g.submit("cam", 2, "MP1", BOX + 14.0, 6.0, "c") == []
    # nobody in the region for release_s: suppression ends
    g.end_track("cam", 2)
    g.update("cam", [], 6.5)
    g.update("cam", [], 9.0)
    g.update("cam", [(3, BOX)], 9.1)
    assert g.submit("cam", 3, "MP1", BOX, 9.2, "d") == []  # held again (a new, not yet still, track)


def test_disabled_guard_passes_everything_through() -> None:
    g: StaticFaceGuard[str] = StaticFaceGuard(StaticFaceConfig(enabled=False))
    assert g.submit("cam", 1, "MP1", BOX, 0.0, "x") == [("x", False)]
    assert g.update("cam", [(1, BOX)], 1.0) == []


# -- a real clip through the real pipeline ----------------------------------------------------------


def _printed(photo: np.ndarray) -> np.ndarray:
    """A photo as printed on a flyer: white border, slightly washed-out colours."""
    washed = cv2.addWeighted(photo, 0.85, np.full_like(photo, 255), 0.15, 0)
    flyer = cv2.copyMakeBorder(washed, 24, 60, 24, 24, cv2.BORDER_CONSTANT, value=(250, 250, 250))
    return cv2.resize(flyer, (flyer.shape[1] * 280 // flyer.shape[0], 280), interpolation=cv2.INTER_AREA)


def _frames(flyer: np.ndarray, n: int, dt: float, *, move: bool, seed: int) -> list[Frame]:
    rng = np.random.default_rng(seed)
    wall = rng.integers(90, 140, (360, 640, 3)).astype(np.uint8)
    wall = cv2.GaussianBlur(wall, (0, 0), 3)
    fh, fw = flyer.shape[:2]
    out = []
    for i in range(n):
        img = wall.copy()
        x = 60 + (int(30 * i) % 300 if move else 150)
        img[30:30 + fh, x:x + fw] = flyer
        img = np.clip(img.astype(np.int16) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        out.append(Frame("lobby", i, i * dt, datetime.now(timezone.utc), img))
    return out


@pytest.fixture(scope="module")
def flyer_world(tmp_path_factory, data_dir, model_cache):
    root = tmp_path_factory.mktemp("static")
    lfw = lfw_identities(data_dir)
    people = [k for k, v in lfw.items() if len(v) >= 2][:6]
    cases = [SyntheticCase("MP", 8000 + i, n.split(":")[1], "Test", [lfw[n][0]], age_at_last=None)
             for i, n in enumerate(people)]
    write_prepager(root / "src", cases)
    key, _ = generate_keypair(root / "op.key")
    config = load_config(None, ["matching.cooldown_s=4", "matching.age_check.enabled=false",
                                "matching.static_faces.still_seconds=3", "matching.static_faces.release_s=3"])
    analyzer = FaceAnalyzer(config, model_cache, with_age=False)
    build_bundle(config, str(root / "src"), root / "bundle", key, analyzer=analyzer, today=date(2026, 11, 23))
    photo = cv2.imread(str(lfw[people[2]][0]))  # the case photo itself, as printed on its flyer
    return config, analyzer, root / "bundle", _printed(photo)


def _run(config, analyzer, bundle_path, frames) -> list[MatchEvent]:
    events: list[MatchEvent] = []
    with Bundle.load(bundle_path, verify=False) as bundle:
        pipe = Pipeline(config, analyzer, lambda: bundle, lambda e, crop: events.append(e))
        for f in frames:
            pipe.process([f])
        pipe.finish_camera("lobby")
    return events


@pytest.mark.slow
def test_flyer_held_in_view_over_several_cooldown_windows_gives_exactly_one_static_event(flyer_world):
    config, analyzer, bundle_path, flyer = flyer_world
    # 24 s of a still flyer at 2 fps: six 4-second cooldown windows
    events = _run(config, analyzer, bundle_path, _frames(flyer, 48, 0.5, move=False, seed=1))
    assert len(events) == 1, [(e.case.id_formatted, e.static_suspect) for e in events]
    e = events[0]
    assert e.case.id_formatted == "MP8002" and e.static_suspect is True
    assert e.candidates[0].id_formatted == "MP8002" and e.candidates[0].category == "FacialCaseId"
    assert e.policy is not None and e.policy.gallery_size == 6


@pytest.mark.slow
def test_the_same_photo_moving_through_view_is_a_normal_event(flyer_world):
    config, analyzer, bundle_path, flyer = flyer_world
    events = _run(config, analyzer, bundle_path, _frames(flyer, 8, 0.5, move=True, seed=2))
    assert [(e.case.id_formatted, e.static_suspect) for e in events] == [("MP8002", False)]
