"""resolve_policy with hub normalisation: the normalised tails only when the bundle has offsets AND tails exist.

(``matching.hub_norm`` is applied by the callers, which pass ``hub_norm=bundle.has_hub_offsets and
matching.hub_norm``: tests/index/test_hub_norm.py checks it through ``index search --alert``.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from namus_edge.core.config import MatchingConfig
from namus_edge.models.impostor_tail import ImpostorTail, far_for_fpir
from namus_edge.models.policy import best_candidate, resolve_policy, uses_hub_tails
from namus_edge.models.registry import REGISTRY, ModelSpec, get_spec

RAW = ImpostorTail(((0.30, 1e-3), (0.40, 1e-5), (0.50, 1e-7)), 10_000_000, "test raw")
RAW_CHILD = ImpostorTail(((0.40, 1e-3), (0.55, 1e-5), (0.70, 1e-7)), 1_000_000, "test raw child")
HUB = ImpostorTail(((0.20, 1e-3), (0.30, 1e-5), (0.40, 1e-7)), 10_000_000, "test normalised")
HUB_CHILD = ImpostorTail(((0.25, 1e-3), (0.40, 1e-5), (0.55, 1e-7)), 1_000_000, "test normalised child")


def spec(**tails: ImpostorTail | None) -> ModelSpec:
    """An embedder spec built in the test (the registry's edgeface_xs with the given tails)."""
    base = {"impostor_tail": RAW, "child_impostor_tail": RAW_CHILD, "hub_impostor_tail": HUB,
            "hub_child_impostor_tail": HUB_CHILD}
    base.update(tails)
    return dataclasses.replace(get_spec("edgeface_xs"), **base)


def cfg(**kw) -> MatchingConfig:
    return MatchingConfig.model_validate({"target_fpir": 0.01, "min_threshold": 0.0, **kw})


def test_hub_tails_only_with_offsets_and_switch_and_tails() -> None:
    n = 20_000
    far = far_for_fpir(0.01, n)
    hub = resolve_policy(cfg(), spec(), n, hub_norm=True)
    assert hub.hub_norm and hub.rule == "target_fpir"
    assert hub.threshold == pytest.approx(HUB.threshold_for_far(far))
    assert hub.child_threshold == pytest.approx(HUB_CHILD.threshold_for_far(far))
    assert hub.to_dict()["hub_norm"] is True

    raw = resolve_policy(cfg(), spec(), n)  # the bundle has no offsets (the default)
    assert not raw.hub_norm and raw.to_dict()["hub_norm"] is False
    assert raw.threshold == pytest.approx(RAW.threshold_for_far(far))
    assert raw.child_threshold == pytest.approx(RAW_CHILD.threshold_for_far(far))
    assert raw == dataclasses.replace(hub, threshold=raw.threshold, child_threshold=raw.child_threshold,
                                      hub_norm=False)
    assert resolve_policy(cfg(), spec(), n, hub_norm=False) == raw
    # offsets present but no normalised tail measured: exactly the raw policy
    assert resolve_policy(cfg(), spec(hub_impostor_tail=None), n, hub_norm=True) == raw
    # a normalised adult tail without a child one: children share the normalised adult threshold
    shared = resolve_policy(cfg(), spec(hub_child_impostor_tail=None), n, hub_norm=True)
    assert shared.hub_norm and shared.child_threshold is None and shared.threshold == hub.threshold
    # no child tail at all: the normalised adult tail alone is enough
    no_child = resolve_policy(cfg(), spec(child_impostor_tail=None, hub_child_impostor_tail=None), n, hub_norm=True)
    assert no_child.hub_norm and no_child.child_threshold is None
    assert no_child.threshold == pytest.approx(HUB.threshold_for_far(far))


def test_fixed_and_default_thresholds_stay_raw() -> None:
    fixed = resolve_policy(cfg(threshold=0.42), spec(), 20_000, hub_norm=True)
    assert (fixed.rule, fixed.threshold, fixed.hub_norm) == ("fixed_threshold", 0.42, False)
    default = resolve_policy(cfg(target_fpir=None), spec(), 20_000, hub_norm=True)
    assert (default.rule, default.threshold, default.hub_norm) == ("embedder_default", 0.40, False)


def test_min_threshold_floors_the_normalised_threshold_too() -> None:
    pol = resolve_policy(cfg(min_threshold=0.45), spec(), 1_000, hub_norm=True)
    assert pol.hub_norm and pol.threshold == 0.45


def test_registry_names_resolve_the_same_way() -> None:
    """By name, the registry's spec decides (normalised once the measured tails are recorded)."""
    for name, s in REGISTRY.items():
        if s.role != "embedder" or s.impostor_tail is None:
            continue
        assert resolve_policy(cfg(), name, 20_000, hub_norm=True) == resolve_policy(cfg(), s, 20_000, hub_norm=True)
        assert resolve_policy(cfg(), name, 20_000, hub_norm=True).hub_norm is uses_hub_tails(s)
        assert resolve_policy(cfg(), name, 20_000).hub_norm is False


@dataclass(frozen=True)
class NormHit:
    id_formatted: str
    score: float
    image_key: str
    similarity: float


def test_candidate_keeps_raw_similarity_and_ranks_by_score() -> None:
    # the hub photo of MP1 has the higher cosine, but MP2's photo wins on the normalised score
    hits = [NormHit("MP1", 0.41, "hub", 0.50), NormHit("MP2", 0.46, "plain", 0.47)]
    cand = best_candidate(hits)
    assert cand is not None
    assert (cand.id_formatted, cand.score, cand.similarity, cand.cosine) == ("MP2", 0.46, 0.47, 0.47)
    assert cand.margin == pytest.approx(0.05)
