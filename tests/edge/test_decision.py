"""DecisionEngine: threshold, margin, age plausibility, track voting, confirmation and cooldown."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pytest

from namus_edge.core.config import AgeCheckConfig, MatchingConfig
from namus_edge.edge.decision import DecisionEngine, MatchDecision
from namus_edge.models.policy import age_plausible, age_tolerance, age_window, best_candidate, parse_date

TODAY = date(2025, 6, 1)


@dataclass(frozen=True)
class Hit:
    id_formatted: str
    score: float
    image_key: str = ""

    def __post_init__(self) -> None:
        if not self.image_key:
            object.__setattr__(self, "image_key", f"{self.id_formatted}/img-{self.score:.2f}")


CASES: dict[str, dict[str, Any]] = {
    # adult, missing since 2015 at 30, now 40
    "MP100": {"age_min": 30, "age_max": 30, "current_age_min": 40, "current_age_max": 40, "date_last": "2015-06-01"},
    # child: 8 at last contact 15 years ago, now 23
    "MP200": {"age_min": 8, "age_max": 8, "current_age_min": 23, "current_age_max": 23, "date_last": "2010-06-01"},
    # no ages at all
    "MP300": {"date_last": "2001-01-01"},
    # only age at last contact and date: current range derived (25 + 10 = 35)
    "MP400": {"age_min": 25, "date_last": "2015-06-01"},
    "MP500": {"age_min": 50, "age_max": 55, "current_age_min": 60, "current_age_max": 65, "date_last": "2015-06-01"},
}


def engine(**kw: Any) -> DecisionEngine:
    age = kw.pop("age_check", {})
    cfg = MatchingConfig.model_validate({"threshold": 0.4, "margin": 0.05, "confirm_frames": 3, **kw, "age_check": age})
    return DecisionEngine(cfg, CASES.get, today=lambda: TODAY)


def feed(
    eng: DecisionEngine,
    hits: list[Hit],
    n: int,
    *,
    cam: str = "cam1",
    track: int = 1,
    t0: float = 0.0,
    dt: float = 0.1,
    quality: float = 0.8,
    area: float = 80 * 80,
    age: float | None = None,
) -> list[MatchDecision]:
    out = []
    for i in range(n):
        d = eng.observe(
            cam, track, t0 + i * dt, quality, area, age, hits, bbox=np.array([i, 0, i + 80, 80], np.float32)
        )
        if d is not None:
            out.append(d)
    return out


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hits", "expected"),
    [
        ([], None),
        ([Hit("MP1", 0.6)], ("MP1", 0.6, 0.6)),  # no second case: lead over 0
        ([Hit("MP1", 0.6), Hit("MP2", 0.5)], ("MP1", 0.6, 0.1)),
        ([Hit("MP2", 0.5), Hit("MP1", 0.6)], ("MP1", 0.6, 0.1)),  # order does not matter
        # several photos of one case: the case's best counts, and its own photos are not "second best"
        ([Hit("MP1", 0.6), Hit("MP1", 0.58), Hit("MP2", 0.3)], ("MP1", 0.6, 0.3)),
        ([Hit("MP1", 0.5, "a"), Hit("MP1", 0.7, "b"), Hit("MP2", 0.66)], ("MP1", 0.7, 0.04)),
    ],
)
def test_best_candidate(hits, expected):
    cand = best_candidate(hits)
    if expected is None:
        assert cand is None
    else:
        assert cand is not None
        assert (cand.id_formatted, cand.score, cand.margin) == pytest.approx(expected)


def test_best_candidate_reports_best_photo_key():
    cand = best_candidate([Hit("MP1", 0.5, "a"), Hit("MP1", 0.7, "b")])
    assert cand is not None and cand.image_key == "b"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2010-06-01", date(2010, 6, 1)),
        ("2010-06-01T00:00:00", date(2010, 6, 1)),
        (date(2011, 1, 2), date(2011, 1, 2)),
        ("", None),
        ("unknown", None),
        ("2010-13-45", None),
        (None, None),
        (20100601, None),
    ],
)
def test_parse_date(value, expected):
    assert parse_date(value) == expected


@pytest.mark.parametrize(
    ("age_last", "years", "expected"),
    [
        (30.0, 0.0, 8.0),  # base
        (30.0, 10.0, 11.0),  # + 0.3 / year
        (8.0, 15.0, 8.0 + 6.0 + 4.5),  # child + gap
        (17.9, 0.0, 14.0),
        (18.0, 0.0, 8.0),  # 18 is not a child
        (None, None, 8.0),  # unknowns add nothing
        (5.0, 100.0, 25.0),  # capped
    ],
)
def test_age_tolerance(age_last, years, expected):
    assert age_tolerance(age_last, years, AgeCheckConfig()) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("case_id", "estimate", "enabled", "expected"),
    [
        ("MP200", 19.0, True, True),  # child case, current 23, tol 18.5: [4.5, 41.5]
        ("MP200", 60.0, True, False),
        ("MP200", 60.0, False, True),  # check switched off
        ("MP200", 41.0, True, True),
        ("MP200", 42.0, True, False),
        ("MP100", 40.0, True, True),  # adult, current 40, tol 8 + 3 = 11: [29, 51]
        ("MP100", 28.0, True, False),
        ("MP100", 52.0, True, False),
        ("MP100", None, True, True),  # no estimate: pass
        ("MP300", 90.0, True, True),  # no ages on the case: pass
        ("MP400", 46.0, True, True),  # derived current 35, tol 11: [24, 46]
        ("MP400", 47.0, True, False),
        ("MP500", 52.0, True, True),  # range 60-65, tol 11: [49, 76]
        ("MP500", 77.0, True, False),
        ("MP999", 5.0, True, True),  # unknown case: pass
    ],
)
def test_age_plausible(case_id, estimate, enabled, expected):
    cfg = AgeCheckConfig(enabled=enabled)
    assert age_plausible(estimate, CASES.get(case_id), cfg, TODAY) is expected


def test_age_window_handles_strings_and_garbage():
    w = age_window(
        {"current_age_min": "40", "current_age_max": "bad", "date_last": "2025-06-01"}, AgeCheckConfig(), TODAY
    )
    assert w is not None and (w.low, w.high) == (32.0, 48.0)
    assert age_window({"age_min": 30}, AgeCheckConfig(), TODAY) is None  # no date: current age unknown


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hits", "age", "engine_kw", "fires"),
    [
        ([Hit("MP100", 0.55), Hit("MP500", 0.30)], 40.0, {}, True),
        ([Hit("MP100", 0.39), Hit("MP500", 0.10)], 40.0, {}, False),  # below threshold
        ([Hit("MP100", 0.40), Hit("MP500", 0.10)], 40.0, {}, True),  # threshold is inclusive
        ([Hit("MP100", 0.55), Hit("MP500", 0.52)], 40.0, {}, False),  # margin 0.03 < 0.05
        ([Hit("MP100", 0.55), Hit("MP500", 0.52)], 40.0, {"margin": 0.02}, True),
        ([Hit("MP100", 0.55), Hit("MP100", 0.54), Hit("MP500", 0.2)], 40.0, {}, True),  # same-case photos
        ([Hit("MP100", 0.55)], 70.0, {}, False),  # implausible age
        ([Hit("MP100", 0.55)], 70.0, {"age_check": {"enabled": False}}, True),
        ([Hit("MP100", 0.55)], None, {}, True),  # no age estimate
        ([Hit("MP200", 0.55)], 19.0, {}, True),  # child case, aged 15 years
        ([Hit("MP200", 0.55)], 60.0, {}, False),
        ([Hit("MP200", 0.55)], 60.0, {"age_check": {"enabled": False}}, True),
        ([], 40.0, {}, False),
    ],
)
def test_rules_table(hits, age, engine_kw, fires):
    eng = engine(**engine_kw)
    out = feed(eng, hits, 5, age=age)
    assert len(out) == (1 if fires else 0)
    if fires:
        d = out[0]
        assert d.id_formatted == hits[0].id_formatted and d.frames == 3  # fires on the 3rd vote


@pytest.mark.parametrize(("confirm", "n", "fires"), [(3, 2, False), (3, 3, True), (1, 1, True), (5, 4, False)])
def test_confirm_frames(confirm, n, fires):
    out = feed(engine(confirm_frames=confirm), [Hit("MP100", 0.6)], n, age=40.0)
    assert bool(out) is fires


def test_single_lucky_frame_in_a_non_matching_track_gives_nothing():
    eng = engine()
    miss = [Hit("MP100", 0.2), Hit("MP500", 0.15)]
    out = feed(eng, miss, 50, age=40.0)
    out += feed(eng, [Hit("MP100", 0.95), Hit("MP500", 0.1)], 1, t0=5.0, age=40.0)
    out += feed(eng, miss, 50, t0=5.1, age=40.0)
    assert out == []


def test_majority_of_weighted_votes_is_required():
    eng = engine(confirm_frames=3)
    # four big sharp faces vote for MP500, then three small blurry faces for MP100
    assert feed(eng, [Hit("MP500", 0.6)], 2, quality=0.9, area=120 * 120, age=62.0, track=7) == []
    assert feed(eng, [Hit("MP100", 0.6)], 3, t0=1.0, quality=0.3, area=30 * 30, age=40.0, track=7) == []
    # MP500 reaches 3 votes while holding the weight majority
    out = feed(eng, [Hit("MP500", 0.6)], 1, t0=2.0, quality=0.9, area=120 * 120, age=62.0, track=7)
    assert [d.id_formatted for d in out] == ["MP500"]
    assert out[0].vote_share > 0.5


def test_person_standing_in_view_gives_one_event_per_cooldown():
    eng = engine(cooldown_s=30.0)
    hits = [Hit("MP100", 0.6), Hit("MP500", 0.3)]
    # 1000 frames at 10 fps = 100 s; events at 0.2 s (3rd frame), then every 30 s
    out = feed(eng, hits, 1000, dt=0.1, age=41.0)
    assert [round(d.timestamp, 1) for d in out] == [0.2, 30.2, 60.2, 90.2]
    assert all(d.camera_id == "cam1" and d.track_id == 1 for d in out)


def test_exactly_one_event_within_a_long_cooldown():
    eng = engine(cooldown_s=300.0)
    out = feed(eng, [Hit("MP100", 0.6)], 1000, dt=0.1, age=41.0)
    assert len(out) == 1


def test_cooldown_is_per_camera_and_case_not_per_track():
    eng = engine(cooldown_s=60.0)
    hits = [Hit("MP100", 0.6)]
    assert len(feed(eng, hits, 3, track=1)) == 1
    eng.end_track("cam1", 1)
    assert feed(eng, hits, 5, track=2, t0=10.0) == []  # same person re-enters: new track, still cooling down
    assert len(feed(eng, hits, 3, cam="cam2", track=1, t0=10.0)) == 1  # another camera alerts on its own
    assert len(feed(eng, [Hit("MP500", 0.6)], 3, track=3, t0=11.0, age=None)) == 1  # another case too
    assert len(feed(eng, hits, 3, track=4, t0=70.1)) == 1  # after the window


@pytest.mark.parametrize(("cooldown", "gap", "second"), [(0.0, 0.1, True), (10.0, 9.9, False), (10.0, 10.0, True)])
def test_cooldown_boundaries(cooldown, gap, second):
    eng = engine(cooldown_s=cooldown, confirm_frames=1)
    assert feed(eng, [Hit("MP100", 0.6)], 1, t0=0.0)
    assert bool(feed(eng, [Hit("MP100", 0.6)], 1, t0=gap)) is second


def test_decision_summarises_the_track():
    eng = engine()
    hits_a = [Hit("MP100", 0.50, "MP100/a"), Hit("MP500", 0.30)]
    hits_b = [Hit("MP100", 0.70, "MP100/b"), Hit("MP500", 0.30)]
    assert eng.observe("cam1", 3, 1.0, 0.5, 100.0, 38.0, hits_a, bbox=np.array([1, 2, 11, 12])) is None
    assert eng.observe("cam1", 3, 1.1, 0.9, 100.0, 42.0, hits_b, bbox=np.array([5, 6, 15, 16])) is None
    d = eng.observe("cam1", 3, 1.2, 0.7, 100.0, 44.0, hits_a, bbox=np.array([9, 9, 19, 19]))
    assert d is not None
    # weights 0.5*10, 0.9*10, 0.7*10 -> weighted mean similarity
    assert d.similarity == pytest.approx((5 * 0.5 + 9 * 0.7 + 7 * 0.5) / 21)
    assert d.best_similarity == pytest.approx(0.7)
    assert d.margin == pytest.approx((5 * 0.2 + 9 * 0.4 + 7 * 0.2) / 21)
    assert d.estimated_age == 42.0  # median of 38, 42, 44
    assert d.quality == 0.9 and d.best_timestamp == 1.1
    assert d.bbox is not None and d.bbox.tolist() == [5, 6, 15, 16]  # best-quality face
    assert d.image_key == "MP100/b"  # the best-matching case photo
    assert d.frames == 3 and d.vote_share == 1.0 and d.timestamp == 1.2


def test_state_only_for_voting_tracks_and_freed_on_end():
    eng = engine()
    feed(eng, [Hit("MP100", 0.1)], 100, track=1)  # never a candidate
    assert eng.open_tracks == 0
    feed(eng, [Hit("MP100", 0.6)], 2, track=2)
    feed(eng, [Hit("MP100", 0.6)], 2, cam="cam2", track=2)
    assert eng.open_tracks == 2
    eng.end_track("cam1", 2)
    eng.end_track("cam1", 1)  # never voted: no-op
    assert eng.open_tracks == 1
    eng.end_camera("cam2")
    assert eng.open_tracks == 0


def test_votes_restart_after_end_track():
    eng = engine(cooldown_s=0.0)
    feed(eng, [Hit("MP100", 0.6)], 2, track=1)
    eng.end_track("cam1", 1)
    assert feed(eng, [Hit("MP100", 0.6)], 1, track=1, t0=5.0) == []  # 1 vote, not 3


def test_non_matching_faces_leave_no_log(caplog):
    caplog.set_level(logging.DEBUG, logger="namus_edge.edge.decision")
    eng = engine()
    feed(eng, [Hit("MP100", 0.35), Hit("MP500", 0.2)], 20, age=40.0)
    feed(eng, [Hit("MP100", 0.9)], 20, age=90.0, track=2)  # rejected by age
    assert caplog.records == []
    out = feed(eng, [Hit("MP100", 0.6)], 3, track=3, age=40.0)
    assert len(out) == 1
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "MP100" in caplog.records[0].getMessage()


def test_case_info_only_consulted_for_candidates():
    calls: list[str] = []

    def info(case_id: str) -> dict[str, Any] | None:
        calls.append(case_id)
        return CASES.get(case_id)

    eng = DecisionEngine(MatchingConfig(threshold=0.4), info, today=lambda: TODAY)
    eng.observe("c", 1, 0.0, 0.8, 100.0, 40.0, [Hit("MP100", 0.2)])
    eng.observe("c", 1, 0.1, 0.8, 100.0, None, [Hit("MP100", 0.6)])
    assert calls == []
    eng.observe("c", 1, 0.2, 0.8, 100.0, 40.0, [Hit("MP100", 0.6)])
    assert calls == ["MP100"]
