"""Alert policy: threshold from target FPIR and gallery size, verdict reasons, sex check, impostor tail."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import date

import pytest

import namus_edge.models.policy as policy_mod
from namus_edge.core.config import ConfigError, MatchingConfig
from namus_edge.models.impostor_tail import ImpostorTail, far_for_fpir, fpir_from_far, tail_from_scores
from namus_edge.models.policy import estimated_sex, judge, resolve_policy, sex_plausible
from namus_edge.models.registry import get_spec

TODAY = date(2026, 11, 30)
TAIL = ImpostorTail(((0.3, 1e-3), (0.4, 1e-5), (0.5, 1e-7)), 10_000_000, "test")


@dataclass(frozen=True)
class Hit:
    id_formatted: str
    score: float
    image_key: str = "k"


CASES = {
    "MP1": {"sex": "Female", "current_age_min": 30, "current_age_max": 32},
    "MP2": {"sex": "Male", "current_age_min": 8, "current_age_max": 8, "age_min": 5, "date_last": "2023-11-30"},
    "MP3": {"sex": None},
}


def cfg(**kw) -> MatchingConfig:
    return MatchingConfig.model_validate(kw)


def test_tail_interpolates_and_inverts() -> None:
    assert TAIL.far_at(0.4) == pytest.approx(1e-5)
    assert TAIL.far_at(0.35) == pytest.approx(1e-4, rel=1e-6)  # log-linear between points
    assert TAIL.far_at(0.6) == pytest.approx(1e-9, rel=1e-6)  # exponential extrapolation
    for far in (3e-3, 1e-4, 2e-6, 1e-8, 1e-10):
        assert TAIL.far_at(TAIL.threshold_for_far(far)) == pytest.approx(far, rel=1e-6)
    with pytest.raises(ValueError, match="rise in threshold"):
        ImpostorTail(((0.3, 1e-3), (0.3, 1e-4)), 10, "bad")


def test_fpir_far_round_trip() -> None:
    for n in (1, 1000, 55_000, 1_000_000):
        assert fpir_from_far(far_for_fpir(0.003, n), n) == pytest.approx(0.003, rel=1e-9)
    assert fpir_from_far(1e-5, 0) == 0.0
    with pytest.raises(ValueError):
        far_for_fpir(0.0, 10)


def test_tail_from_scores_counts_pairs_at_or_above() -> None:
    t = tail_from_scores([0.6, 0.5, 0.5, 0.41, 0.3], 1000, [0.3, 0.4, 0.5, 0.7], "unit")
    assert t.points == ((0.3, 5e-3), (0.4, 4e-3), (0.5, 3e-3))  # 0.7: no pair, dropped


def test_threshold_grows_with_gallery_size_and_explicit_threshold_wins(monkeypatch) -> None:
    patched = dataclasses.replace(get_spec("edgeface_xs"), impostor_tail=TAIL, child_impostor_tail=None)
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: patched)
    m = cfg(target_fpir=0.01, min_threshold=0.0)
    small, big = resolve_policy(m, "edgeface_xs", 1_000), resolve_policy(m, "edgeface_xs", 1_000_000)
    assert small.rule == big.rule == "target_fpir"
    assert big.threshold > small.threshold
    assert fpir_from_far(TAIL.far_at(big.threshold), 1_000_000) == pytest.approx(0.01, rel=1e-6)
    assert small.to_dict() == {"rule": "target_fpir", "threshold": round(small.threshold, 4), "gallery_size": 1000,
                               "target_fpir": 0.01, "child_threshold": None, "hub_norm": False}
    assert resolve_policy(cfg(target_fpir=0.01, min_threshold=0.45), "edgeface_xs", 10).threshold == 0.45
    fixed = resolve_policy(cfg(threshold=0.37, target_fpir=0.01), "edgeface_xs", 1_000_000)
    assert (fixed.rule, fixed.threshold, fixed.target_fpir) == ("fixed_threshold", 0.37, None)
    assert resolve_policy(cfg(target_fpir=None), "edgeface_xs", 10).rule == "embedder_default"


def test_embedder_without_tail_or_default_needs_a_threshold(monkeypatch) -> None:
    bare = dataclasses.replace(get_spec("edgeface_xs"), impostor_tail=None, match_threshold=None)
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: bare)
    with pytest.raises(ConfigError, match=r"matching\.threshold"):
        resolve_policy(cfg(), "edgeface_xs", 100)


@pytest.mark.parametrize(
    ("hits", "age", "p_male", "reason", "alert"),
    [
        ([], None, None, "no_candidates", None),
        ([Hit("MP1", 0.39)], None, None, "threshold", None),
        ([Hit("MP1", 0.50), Hit("MP3", 0.47)], None, None, "margin", None),
        ([Hit("MP1", 0.50), Hit("MP1", 0.48, "k2"), Hit("MP3", 0.30)], None, None, "alert", "MP1"),
        ([Hit("MP1", 0.50)], 31.0, None, "alert", "MP1"),
        ([Hit("MP1", 0.50)], 70.0, None, "age", None),
        ([Hit("MP1", 0.50)], 31.0, 0.99, "sex", None),  # a confident male estimate vs a female case
        ([Hit("MP1", 0.50)], 31.0, 0.90, "alert", "MP1"),  # not confident enough to reject
        ([Hit("MP1", 0.50)], 31.0, 0.01, "alert", "MP1"),  # agrees
        ([Hit("MP3", 0.50)], 31.0, 0.99, "alert", "MP3"),  # case sex unknown
        ([Hit("MP2", 0.50)], 8.0, 0.01, "alert", "MP2"),  # a child: sex never rejects
    ],
)
def test_verdict_reasons(hits, age, p_male, reason, alert) -> None:
    v = judge(hits, 0.40, cfg(), estimated_age=age, p_male=p_male, case_info=CASES.get, today=TODAY)
    assert v.reason == reason
    assert (v.candidate.id_formatted if v.candidate else None) == alert


def test_sex_check_is_a_no_op_without_p_male_or_when_disabled() -> None:
    on, off = cfg().sex_check, cfg(sex_check={"enabled": False}).sex_check
    assert sex_plausible(None, 30.0, CASES["MP1"], on)
    assert not sex_plausible(0.99, 30.0, CASES["MP1"], on)
    assert sex_plausible(0.99, 30.0, CASES["MP1"], off)
    assert sex_plausible(0.99, None, {"sex": "Unknown"}, on)
    assert estimated_sex(0.5) == ("male", 0.5) and estimated_sex(0.2) == ("female", 0.8)
    assert estimated_sex(None) is None and estimated_sex(math.nan) is None


def test_registry_records_how_the_tail_was_measured() -> None:
    tail = get_spec("edgeface_xs").impostor_tail
    assert tail is not None and tail.pairs > 1_000_000 and "eval identify" in tail.measured
    default = resolve_policy(cfg(), "edgeface_xs", 14_000)
    assert default.rule == "target_fpir" and default.target_fpir == MatchingConfig().target_fpir


def test_child_faces_get_the_child_tail_threshold(monkeypatch) -> None:
    child_tail = ImpostorTail(((0.3, 1e-1), (0.5, 1e-3), (0.7, 1e-5)), 1_000_000, "test child")
    patched = dataclasses.replace(get_spec("edgeface_xs"), impostor_tail=TAIL, child_impostor_tail=child_tail)
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: patched)
    pol = resolve_policy(cfg(target_fpir=0.01, min_threshold=0.0), "edgeface_xs", 10_000)
    assert pol.child_threshold is not None and pol.child_threshold > pol.threshold
    assert pol.threshold_for(30.0) == pol.threshold
    assert pol.threshold_for(5.0) == pol.child_threshold
    assert pol.threshold_for(None) == pol.child_threshold  # unknown age: the stricter threshold
    hits = [Hit("MP3", (pol.threshold + pol.child_threshold) / 2)]
    assert judge(hits, pol.threshold_for(30.0), cfg(), estimated_age=30.0, p_male=None, case_info=CASES.get,
                 today=TODAY).reason == "alert"
    assert judge(hits, pol.threshold_for(5.0), cfg(), estimated_age=5.0, p_male=None, case_info=CASES.get,
                 today=TODAY).reason == "threshold"


def test_hub_normalised_tail_used_only_for_bundles_with_offsets(monkeypatch) -> None:
    hub_tail = ImpostorTail(((0.3, 1e-4), (0.4, 1e-6), (0.5, 1e-8)), 10_000, "test")
    patched = dataclasses.replace(get_spec("edgeface_xs"), impostor_tail=TAIL, child_impostor_tail=None,
                                  hub_impostor_tail=hub_tail, hub_child_impostor_tail=None)
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: patched)
    m = cfg(target_fpir=0.01, min_threshold=0.0)
    raw, hub = resolve_policy(m, "edgeface_xs", 10_000), resolve_policy(m, "edgeface_xs", 10_000, hub_norm=True)
    assert (raw.hub_norm, hub.hub_norm) == (False, True)
    assert fpir_from_far(hub_tail.far_at(hub.threshold), 10_000) == pytest.approx(0.01, rel=1e-6)
    assert hub.threshold != raw.threshold and hub.to_dict()["hub_norm"] is True
    # an embedder without a normalised tail keeps the raw tail even for a bundle with offsets
    no_hub = dataclasses.replace(patched, hub_impostor_tail=None)
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: no_hub)
    fallback = resolve_policy(m, "edgeface_xs", 10_000, hub_norm=True)
    assert (fallback.hub_norm, fallback.threshold) == (False, raw.threshold)
