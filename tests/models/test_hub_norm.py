"""Hub offsets and probe offsets (models.hub_norm) and their leave-one-out use in eval identify, against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from namus_edge.models.hub_norm import group_codes, hub_offsets, probe_offsets
from namus_edge.models.identify_eval import GalleryHub, Row, hub_impostor_pairs, search


def _gallery(n: int = 240, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Unit vectors in clusters of 1-4 rows per identity, plus a few hubs near the centre."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim)
    emb, ids = [], []
    i = 0
    while len(emb) < n:
        base = rng.normal(size=dim) + (2.5 * centre if i % 17 == 0 else 0)  # every 17th identity is a hub
        for _ in range(int(rng.integers(1, 5))):
            emb.append(base + 0.4 * rng.normal(size=dim))
            ids.append(f"id{i}")
        i += 1
    e = np.array(emb[:n], np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True), ids[:n]


def _brute_values(emb: np.ndarray, codes: np.ndarray, k: int, drop: int | None = None) -> np.ndarray:
    s = emb @ emb.T
    s[codes[:, None] == codes[None, :]] = -np.inf
    if drop is not None:
        s[:, codes == drop] = -np.inf
    top = -np.sort(-s, axis=1)[:, :k]
    return np.where(np.isfinite(top), top, 0).sum(1) / np.maximum(np.isfinite(top).sum(1), 1)


def test_offsets_match_brute_force_and_ignore_same_case_faces() -> None:
    emb, ids = _gallery()
    codes = group_codes(ids)
    want = _brute_values(emb, codes, 50)
    got, median = hub_offsets(emb, ids, k=50)
    assert median == pytest.approx(float(np.median(want)), abs=1e-6)
    assert np.allclose(got, want - np.median(want), atol=1e-5)
    # a second copy of a photo in its own case is not its neighbour: both copies get the same offset
    got2, _ = hub_offsets(np.vstack([emb, emb[:1]]), [*ids, ids[0]], k=50)
    assert got2[len(ids)] == pytest.approx(got2[0], abs=1e-6)
    # hubs (every 17th identity, near the common centre) get the largest offsets
    hub_rows = np.array([int(i[2:]) % 17 == 0 for i in ids])
    assert got[hub_rows].mean() > got[~hub_rows].mean() + 0.1
    one_case = hub_offsets(emb[:3], ["a", "a", "a"])
    assert np.all(one_case[0] == 0) and one_case[1] == 0.0


def test_probe_offsets_leave_out_the_judged_case_and_match_brute_force() -> None:
    emb, ids = _gallery()
    codes = group_codes(ids)
    _, median = hub_offsets(emb, ids, k=10)
    rng = np.random.default_rng(3)
    q = rng.normal(size=(6, emb.shape[1])).astype(np.float32)
    q[0] = emb[0] + 0.05 * q[0]  # close to identity 0: its faces lead the list
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s = q @ emb.T
    order = np.argsort(-s, axis=1)
    scores = np.take_along_axis(s, order, axis=1).astype(np.float32)
    groups = codes[order]
    judged = groups[:, 0].copy()
    got = probe_offsets(scores, groups, judged, median, k=10)
    for i in range(len(q)):
        others = s[i][codes != judged[i]]
        assert got[i] == pytest.approx(float(np.sort(others)[::-1][:10].mean()) - median, abs=1e-5)
    # leaving out the judged case matters for the probe that sits on identity 0
    assert probe_offsets(scores[:1], groups[:1], np.array([-1]), median, k=10)[0] > got[0] + 1e-4
    # a row with nothing but the judged case has no cohort: offset 0
    lone = probe_offsets(scores[:1, :1], groups[:1, :1], judged[:1], median, k=10)
    assert lone[0] == 0.0
    with pytest.raises(ValueError, match="judged"):
        probe_offsets(scores, groups, judged[:2], median)


def test_leave_one_out_offsets_equal_a_gallery_without_the_identity() -> None:
    emb, ids = _gallery()
    codes = group_codes(ids)
    hub = GalleryHub.build(emb, codes, np.ones(len(ids), bool), k=20)
    for drop in (0, 5, 17, int(codes[-1])):
        rows, off = hub.without(drop)
        want = _brute_values(emb, codes, 20, drop=drop) - hub.median
        changed = np.zeros(len(ids), bool)
        changed[rows] = True
        full = hub.offsets.copy()
        full[rows] = off
        keep = codes != drop
        assert np.allclose(full[keep], want[keep], atol=1e-5)
        assert changed.any()


def test_normalised_impostor_pairs_match_brute_force(tmp_path: Path) -> None:
    emb, ids = _gallery(120)
    rows = [Row(tmp_path / f"{i}.jpg", ident) for i, ident in enumerate(ids)]
    codes = group_codes(ids)
    sc, pairs, total = hub_impostor_pairs(emb, rows, set(), floor=0.1)
    med = float(np.median(_brute_values(emb, codes, 50)))
    want = []
    s = emb @ emb.T
    without = {int(c): _brute_values(emb, codes, 50, drop=int(c)) - med for c in set(codes.tolist())}
    for a in range(len(ids)):
        for b in range(len(ids)):
            if codes[a] != codes[b]:
                off_b = without[int(codes[a])][b]  # gallery face b, in a gallery without a's identity
                off_a = without[int(codes[b])][a]  # probe a's offset, leaving out the judged case b
                if s[a, b] - off_b - off_a >= 0.1:
                    want.append(s[a, b] - off_b - off_a)
    assert total == int((codes[:, None] != codes[None, :]).sum())  # ordered different-identity pairs
    assert len(sc) == len(want)
    assert np.allclose(np.sort(sc), np.sort(np.array(want, np.float32)), atol=1e-5)
    assert np.all(codes[pairs[:, 0]] != codes[pairs[:, 1]])


def test_search_with_offsets_ranks_a_hub_below_a_plain_face(tmp_path: Path) -> None:
    emb, ids = _gallery()
    codes = group_codes(ids)
    hub = GalleryHub.build(emb, codes, np.ones(len(ids), bool))
    hub_row = int(np.argmax(hub.offsets))
    plain_row = int(np.argmin(hub.offsets))
    # a probe exactly between the hub face and the plain face: raw scores tie, the hub loses after normalising
    q = emb[hub_row] + emb[plain_row]
    q = (q / np.linalg.norm(q))[None, :].astype(np.float32)
    gallery = [Row(tmp_path / f"{i}.jpg", ident) for i, ident in enumerate(ids)]
    probe = [Row(tmp_path / "probe.jpg", "stranger")]
    mask = np.ones(len(ids), bool)
    raw = search(q, probe, emb, gallery, mask, np.array([False]), {})
    norm = search(q, probe, emb, gallery, mask, np.array([False]), {}, hub)
    tied = {raw.hits[0][0].id_formatted, raw.hits[0][1].id_formatted}
    assert tied == {ids[hub_row], ids[plain_row]}
    assert norm.hits[0][0].id_formatted == ids[plain_row]
    # the probe's own offset: its 50 best similarities outside the judged case, minus the gallery median
    sims = (q @ emb.T)[0]
    probe = float(np.sort(sims[codes != codes[plain_row]])[::-1][:50].mean()) - hub.median
    want = float(q[0] @ emb[plain_row]) - hub.offsets[plain_row] - probe
    assert norm.hits[0][0].score == pytest.approx(want, abs=1e-5)
    # the probe offset is one constant per search (against the rank-1 case): the second case gets the same
    second = norm.hits[0][1]
    rows = codes == group_codes(ids)[ids.index(second.id_formatted)]
    assert second.score == pytest.approx(float((sims[rows] - hub.offsets[rows]).max()) - probe, abs=1e-5)
