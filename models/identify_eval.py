"""``namus-edge eval identify``: open-set 1:N identification in the terms of NIST FRTE 1:N.

Inputs are two CSVs (``path, identity`` plus optional ``age, sex, race, age_gap``), paths relative
to ``--root``:

* the **gallery**: every face a bundle would hold (enrolled cases and distractor faces); an
  identity is one case, scored by its best photo, as ``Bundle.search`` does;
* the **probes**: a probe whose identity is in the gallery is a *mated* search (the right answer
  is its identity); a probe whose *path is itself a gallery row* is a *non-mated* search
  (leave-one-identity-out: every gallery face of its identity is removed from its search). This
  lets thousands of distractor faces serve as unknown faces against a gallery of all the others.
  Other probes are non-mated.

Every photo is reduced to its largest face (padded retry on), embedded once and cached on disk by
model sha256 and the sha256 of the photo's bytes (:mod:`namus_edge.models.embedding_cache`).

**Fit / report split.** Identities are split in two halves by a keyed hash (``--seed``). The
per-pair impostor tail (the curve the alert policy's threshold comes from, see
:mod:`namus_edge.models.impostor_tail`) is measured on the *fit* half: all-vs-all pairs of its
faces. Non-mated searches are reported on the *report* half, so no reported comparison was used
to fit. Mated probes are all reported (nothing is fitted on them).

**Metrics** (NIST terms): FPIR = share of non-mated searches that raise an alert (the policy's
verdict, :func:`namus_edge.models.policy.judge`, including margin, age and sex checks where the
data carries ages and sexes); FNIR = share of mated searches that do not alert for the right
identity. Face-only FNIR at FPIR 1e-2 / 1e-3 uses the top score alone (no margin, no age).
Measured at gallery sizes 1k, 3k, 10k and all (random distractor subsets, enrolled identities
always in); predicted at 55k and 1M from the report-half impostor tail,
``1 - (1 - FAR(t)) ** N``, with a 95 % interval from a bootstrap over faces.

``--exclude CSV`` (``path_a, path_b[, reason]``) lists known label noise (aliases, two people in
one photo, the same celebrity in two datasets): those image pairs are left out of every search
(mated ones too: a distractor photo of an enrolled person is that person, not a stranger) and of
the tail. A mated probe whose pairs with every gallery photo of its own identity are listed (two
people under one name) is left out of the metrics and named in ``data.mislabelled_probes``.
``mated_lookalikes`` in the JSON lists the distractor photos that resemble an enrolled person's
photos, for review by eye (``bench.identify_review``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from namus_edge.core.config import Config
from namus_edge.core.errors import NamusEdgeError
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.embedding_cache import EmbeddingCache, PhotoFace
from namus_edge.models.evaluation import AGE_GAP_BUCKETS, AGE_GROUPS, bucket_of
from namus_edge.models.hub_norm import HUB_K, HubNeighbours, best_first, group_codes, hub_neighbours, probe_offsets
from namus_edge.models.impostor_tail import ImpostorTail, fpir_from_far, tail_from_scores
from namus_edge.models.policy import CHILD_FACE_AGE, ResolvedPolicy, judge, resolve_policy

logger = logging.getLogger(__name__)

GALLERY_SIZES = (1_000, 3_000, 10_000)
PREDICT_SIZES = (55_000, 1_000_000)
FPIR_POINTS = (1e-2, 1e-3)
TAIL_THRESHOLDS = tuple(round(0.20 + 0.01 * i, 2) for i in range(51))
TOP_FACES = 64
TOP_CASES = 5
CHUNK = 512
#: Lowest hub-normalised score kept for the normalised tail (the policy never goes below 0.36).
HUB_TAIL_FLOOR = 0.30
#: Highest-scoring impostor pairs listed per tail (for review of label noise by eye).
TOP_PAIRS = 400
BOOTSTRAP = 200
TODAY = date(2026, 11, 30)


class IdentifyInputError(NamusEdgeError):
    """A gallery, probe or exclusion CSV is missing a column or has a bad value."""


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Row:
    """One photo of a gallery or probe CSV.

    Attributes:
        path: absolute image path.
        identity: identity label (one case per identity).
        age: true age in years at the photo, or ``None``.
        sex: ``male`` / ``female`` or ``None``.
        race: free label (UTKFace: white, black, asian, indian, other) or ``None``.
        age_gap: years between this probe and its identity's gallery photo, or ``None``.
        group: free label of the probe's subset (e.g. ``same_age``, ``cross_age``), reported
            separately under ``by_group``; ``None`` when the CSV has no ``group`` column.
    """

    path: Path
    identity: str
    age: float | None = None
    sex: str | None = None
    race: str | None = None
    age_gap: float | None = None
    group: str | None = None


_SEX = {"m": "male", "male": "male", "0": "male", "f": "female", "female": "female", "1": "female"}


def _opt_float(path: Path, line: int, col: str, v: str | None) -> float | None:
    if v is None or not v.strip():
        return None
    try:
        f = float(v)
    except ValueError:
        raise IdentifyInputError(f"{path}:{line}: column {col}: {v!r} is not a number") from None
    if not math.isfinite(f):
        raise IdentifyInputError(f"{path}:{line}: column {col}: {v!r} is not finite")
    return f


def read_rows(path: Path, root: Path) -> list[Row]:
    """Rows of a gallery/probe CSV (``path, identity`` + optional ``age, sex|gender, race, age_gap, group``).

    Raises:
        IdentifyInputError: unreadable file, missing column, bad number, or a listed image that
            does not exist (the message names file, line and value).
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            missing = [c for c in ("path", "identity") if c not in cols]
            if missing:
                raise IdentifyInputError(f"{path}: missing column(s) {', '.join(missing)}; has {cols}")
            out = []
            for line, r in enumerate(reader, start=2):
                if not (r.get("path") or "").strip() or not (r.get("identity") or "").strip():
                    raise IdentifyInputError(f"{path}:{line}: empty path or identity")
                img = root / r["path"]
                if not img.is_file():
                    raise IdentifyInputError(f"{path}:{line}: image {img} does not exist")
                sex_raw = (r.get("sex") or r.get("gender") or "").strip().lower()
                if sex_raw and sex_raw not in _SEX:
                    raise IdentifyInputError(f"{path}:{line}: column sex: {sex_raw!r} is not male/female/m/f/0/1")
                out.append(Row(img, r["identity"].strip(), _opt_float(path, line, "age", r.get("age")),
                               _SEX.get(sex_raw) if sex_raw else None, (r.get("race") or "").strip() or None,
                               _opt_float(path, line, "age_gap", r.get("age_gap")),
                               (r.get("group") or "").strip() or None))
            return out
    except OSError as exc:
        raise IdentifyInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def parse_sizes(text: str) -> tuple[int, ...]:
    """The ``--sizes`` option: a comma list of gallery sizes (empty = none).

    Raises:
        IdentifyInputError: an item is not an integer (the message quotes the option).
    """
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise IdentifyInputError(f"--sizes: {text!r} is not a comma list of integers") from None


def read_exclusions(path: Path, root: Path) -> set[frozenset[Path]]:
    """Image pairs to leave out of non-mated comparisons (``path_a, path_b[, reason, evidence]``)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "path_a" not in cols or "path_b" not in cols:
                raise IdentifyInputError(f"{path}: missing column(s) path_a, path_b; has {cols}")
            return {frozenset((root / r["path_a"], root / r["path_b"])) for r in reader}
    except OSError as exc:
        raise IdentifyInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def half_of(identity: str, seed: int) -> str:
    """``fit`` or ``report``: the split half of an identity (keyed hash, stable across runs)."""
    h = hashlib.sha256(f"{seed}:{identity}".encode()).digest()[0]
    return "fit" if h & 1 == 0 else "report"


# --------------------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Hit:
    """One case of a search result (the :class:`~namus_edge.models.policy.CaseMatchLike` protocol)."""

    id_formatted: str
    score: float
    image_key: str


@dataclass
class Searches:
    """Top cases per probe for one gallery (subset).

    Attributes:
        hits: per probe, up to :data:`TOP_CASES` hits, best first (empty without a face).
    """

    hits: list[list[Hit]] = field(default_factory=list)


def _exclusion_index(excl: set[frozenset[Path]], gallery: Sequence[Row]) -> dict[Path, list[int]]:
    pos: dict[Path, list[int]] = defaultdict(list)
    for j, g in enumerate(gallery):
        pos[g.path].append(j)
    out: dict[Path, list[int]] = defaultdict(list)
    for pair in excl:
        a, b = tuple(pair) if len(pair) == 2 else (next(iter(pair)),) * 2
        for x, y in ((a, b), (b, a)):
            out[x].extend(pos.get(y, []))
    return out


@dataclass(frozen=True)
class GalleryHub:
    """Hub offsets of one gallery (subset), as a bundle build computes them, plus leave-one-out.

    A non-mated search of a gallery row removes its identity from the gallery; the offsets must
    then be the ones a gallery *without* that identity would have, or the probe's own similarity
    would have raised the offset of the face it matches (a leak in the probe's favour).

    Attributes:
        offsets: float32 (G,) offset of every gallery row (0 outside the subset).
        median: the subset's median hub value.
        neighbours: the subset rows' neighbour lists (row order = ``rows``).
        rows: int64 indices of the subset rows in the gallery.
        by_group: identity code -> positions (in ``rows``) whose first ``k`` neighbours include it.
    """

    offsets: np.ndarray
    median: float
    neighbours: HubNeighbours
    rows: np.ndarray
    by_group: dict[int, np.ndarray]

    @classmethod
    def build(cls, gal_emb: np.ndarray, ids: np.ndarray, mask: np.ndarray, k: int = HUB_K) -> GalleryHub:
        """Offsets of the rows selected by ``mask`` among themselves (``ids``: identity code per row)."""
        rows = np.nonzero(mask)[0]
        extra = min(64, int(np.bincount(ids[rows]).max()))
        nb = hub_neighbours(gal_emb[rows], ids[rows], k, extra)
        values = nb.values()
        med = float(np.median(values))
        offsets = np.zeros(len(gal_emb), np.float32)
        offsets[rows] = values - med
        by: dict[int, list[int]] = defaultdict(list)
        for pos, groups in enumerate(nb.groups[:, :k]):
            for g in set(groups.tolist()):
                if g >= 0:
                    by[g].append(pos)
        return cls(offsets, med, nb, rows, {g: np.array(v, np.int64) for g, v in by.items()})

    def without(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """``(gallery rows, offsets)`` that change when identity ``group`` leaves the gallery."""
        pos = self.by_group.get(group)
        if pos is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        sub = HubNeighbours(self.neighbours.scores[pos], self.neighbours.groups[pos], self.neighbours.k)
        return self.rows[pos], sub.values(drop_group=group) - np.float32(self.median)


def search(probe_emb: np.ndarray, probe_rows: Sequence[Row], gal_emb: np.ndarray, gallery: Sequence[Row],
           gal_mask: np.ndarray, loo: np.ndarray, excl: dict[Path, list[int]],
           hub: GalleryHub | None = None) -> Searches:
    """Top cases of every probe against the gallery faces selected by ``gal_mask``.

    Args:
        probe_emb: float32 (P, D) L2-normalised; rows of NaN for probes without a face.
        probe_rows: the P probes.
        gal_emb: float32 (G, D) L2-normalised (faceless gallery rows already dropped).
        gallery: the G gallery rows.
        gal_mask: bool (G,) the faces of this gallery size.
        loo: bool (P,) leave the probe's own identity out (non-mated searches of gallery rows).
        excl: probe path -> gallery indices whose comparison is label noise (left out).
        hub: when given, scores are similarity minus each gallery face's hub offset (leave-one-out
            offsets for ``loo`` probes) minus the probe's own offset against the rank-1 case
            (:func:`namus_edge.models.hub_norm.probe_offsets`, as ``Bundle.search`` does), and
            cases are ranked by that score.
    """
    codes = {ident: k for k, ident in enumerate(dict.fromkeys(g.identity for g in gallery))}
    ids = np.array([codes[g.identity] for g in gallery])
    extra = int(np.bincount(ids[gal_mask]).max()) if gal_mask.any() else 0
    out = Searches()
    for s in range(0, len(probe_rows), CHUNK):
        e = min(len(probe_rows), s + CHUNK)
        q = probe_emb[s:e]
        has = np.all(np.isfinite(q), axis=1)
        raw = np.where(has[:, None], np.nan_to_num(q) @ gal_emb.T, -np.inf).astype(np.float32)
        raw[:, ~gal_mask] = -np.inf
        for i in range(e - s):
            p = probe_rows[s + i]
            if loo[s + i] and p.identity in codes:
                raw[i, ids == codes[p.identity]] = -np.inf
            for j in excl.get(p.path, ()):
                raw[i, j] = -np.inf
        sims = raw.copy()
        if hub is not None:
            sims -= hub.offsets[None, :]
            for i in range(e - s):
                p = probe_rows[s + i]
                if loo[s + i] and p.identity in codes:
                    js, off = hub.without(codes[p.identity])
                    sims[i, js] += hub.offsets[js] - off
        k = min(TOP_FACES, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        chunk: list[list[Hit]] = []
        for i in range(e - s):
            if not has[i]:
                chunk.append([])
                continue
            order = top[i][np.argsort(-sims[i, top[i]])]
            seen: dict[str, Hit] = {}
            for j in order:
                sc = float(sims[i, j])
                if not math.isfinite(sc):
                    break
                g = gallery[j]
                if g.identity not in seen:
                    seen[g.identity] = Hit(g.identity, sc, str(g.path))
                    if len(seen) == TOP_CASES:
                        break
            chunk.append(list(seen.values()))
        if hub is not None:
            judged = np.array([codes[h[0].id_formatted] if h else -1 for h in chunk], np.int64)
            po = _probe_offsets(raw, ids, judged, hub, extra)
            chunk = [[Hit(h.id_formatted, h.score - float(po[i]), h.image_key) for h in hits]
                     for i, hits in enumerate(chunk)]
        out.hits.extend(chunk)
    return out


def _probe_offsets(raw: np.ndarray, ids: np.ndarray, judged: np.ndarray, hub: GalleryHub, extra: int) -> np.ndarray:
    """Probe offsets of rows of raw similarities (``-inf`` = not in this search) against their judged case."""
    sc, grp = best_first(raw, ids, hub.neighbours.k + extra)
    return probe_offsets(sc, grp, judged, hub.median, hub.neighbours.k)


# --------------------------------------------------------------------------------------------- tail


def impostor_scores(emb: np.ndarray, rows: Sequence[Row], excl: set[frozenset[Path]],
                    floor: float) -> tuple[np.ndarray, np.ndarray, int]:
    """All-vs-all different-identity pair scores >= ``floor`` and per-face counts.

    Returns:
        ``(scores, face_pairs, pairs)``: float32 scores >= floor (descending), int32 (M, 2) the
        two face indices of each, and the total number of different-identity pairs compared.
    """
    ids = np.array([r.identity for r in rows])
    n = len(rows)
    paths = [r.path for r in rows]
    pos = {p: i for i, p in enumerate(paths)}
    excl_idx = {(pos[a], pos[b]) for pair in excl if len(pair) == 2
                for a, b in [tuple(pair)] if a in pos and b in pos}
    excl_idx |= {(b, a) for a, b in excl_idx}
    same_id_pairs = sum(c * (c - 1) // 2 for c in Counter(ids.tolist()).values())
    total = n * (n - 1) // 2 - same_id_pairs
    scores: list[np.ndarray] = []
    idx: list[np.ndarray] = []
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        sims = emb[s:e] @ emb[s:].T  # upper triangle: j >= s
        ii, jj = np.nonzero(sims >= floor)
        gi, gj = ii + s, jj + s
        keep = (gj > gi) & (ids[gi] != ids[gj])
        gi, gj = gi[keep], gj[keep]
        vals = sims[ii[keep], jj[keep]]
        if excl_idx:
            k2 = np.array([(a, b) not in excl_idx for a, b in zip(gi.tolist(), gj.tolist(), strict=True)], bool)
            gi, gj, vals = gi[k2], gj[k2], vals[k2]
            total -= int((~k2).sum())
        scores.append(vals.astype(np.float32))
        idx.append(np.stack([gi, gj], 1).astype(np.int32))
    allv = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    alli = np.concatenate(idx) if idx else np.zeros((0, 2), np.int32)
    order = np.argsort(-allv)
    return allv[order], alli[order], total


def hub_impostor_pairs(emb: np.ndarray, rows: Sequence[Row], excl: set[frozenset[Path]],
                       floor: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Ordered different-identity pairs ``(probe a, gallery b)`` whose hub-normalised score >= ``floor``.

    Offsets are those of a gallery made of ``rows``, left-one-out: the offset of ``b`` is computed
    without ``a``'s identity (as :class:`GalleryHub` does for searches), and ``a``'s probe offset
    (its own hub value, the gallery being the rest of ``rows``) without ``b``'s identity, the case
    judged (as :func:`search` does). The score is symmetric in ``a`` and ``b``.

    Returns:
        ``(scores, face_pairs, pairs)`` as :func:`impostor_scores`, but ordered pairs (each
        unordered pair gives two) and ``pairs`` counting ordered pairs.
    """
    codes = {ident: c for c, ident in enumerate(dict.fromkeys(r.identity for r in rows))}
    ids = np.array([codes[r.identity] for r in rows], np.int64)
    hub = GalleryHub.build(emb, ids, np.ones(len(rows), bool))
    # both offsets are at least the smallest one (left-one-out values can dip a little below it:
    # pairs that close to the floor lie below every threshold the policy uses)
    raw_floor = floor + 2 * float(hub.offsets.min())
    sc, fp, total = impostor_scores(emb, rows, excl, raw_floor)
    a = np.concatenate([fp[:, 0], fp[:, 1]]).astype(np.int64)
    b = np.concatenate([fp[:, 1], fp[:, 0]]).astype(np.int64)
    raw = np.concatenate([sc, sc]).astype(np.float32)
    # leave-one-out offset of b without a's identity: only b whose first k neighbours include it change
    pos_of = np.full(len(rows), -1, np.int64)
    pos_of[hub.rows] = np.arange(len(hub.rows))
    nb = hub.neighbours

    def offsets_without(rows_: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Offset of each face ``rows_[i]`` with identity ``ids[others[i]]`` left out of its neighbours."""
        off = hub.offsets[rows_].copy()
        for s0 in range(0, len(rows_), 65536):
            rr, oo = rows_[s0:s0 + 65536], others[s0:s0 + 65536]
            grp = nb.groups[pos_of[rr]]
            hit = np.nonzero(np.any(grp[:, : nb.k] == ids[oo][:, None], axis=1))[0]
            if hit.size:
                sub = HubNeighbours(nb.scores[pos_of[rr[hit]]], grp[hit], nb.k)
                off[s0 + hit] = sub.values(drop_group=ids[oo[hit]]) - np.float32(hub.median)
        return off

    norm = raw - offsets_without(b, a) - offsets_without(a, b)
    keep = norm >= floor
    order = np.argsort(-norm[keep])
    pairs = np.stack([a[keep], b[keep]], 1)[order].astype(np.int32)
    return norm[keep][order].astype(np.float32), pairs, 2 * total


BANDS = ("adult", "child")


def band_of(estimated_age: float | None) -> str:
    """``child`` for a face estimated younger than :data:`CHILD_FACE_AGE`, else ``adult`` (unknown: adult)."""
    return "child" if estimated_age is not None and estimated_age < CHILD_FACE_AGE else "adult"


@dataclass(frozen=True)
class BandTail:
    """Impostor pairs of one probe band: a pair counts once for each of its faces in the band.

    Attributes:
        scores: impostor scores >= the floor, descending.
        weight: float (M,) 0, 1 or 2: how many of the pair's two faces are in the band.
        pairs_idx: int (M, 2) face indices of each pair.
        total: ordered impostor pairs with the first face in the band (the FAR denominator).
        members: bool (F,) faces in the band.
    """

    scores: np.ndarray
    weight: np.ndarray
    pairs_idx: np.ndarray
    total: int
    members: np.ndarray

    def far_at(self, t: float) -> float:
        """Share of this band's (ordered) impostor pairs scoring >= t."""
        return float(self.weight[self.scores >= t].sum()) / self.total if self.total else 0.0

    def tail(self, measured: str, floor: float = TAIL_THRESHOLDS[0]) -> ImpostorTail | None:
        """The curve at :data:`TAIL_THRESHOLDS` >= ``floor`` (the lowest score the pairs were kept from).

        ``None`` with fewer than two usable points.
        """
        pts: list[tuple[float, float]] = []
        for t in (x for x in TAIL_THRESHOLDS if x >= floor):
            far = self.far_at(t)
            if far <= 0:
                break
            if not pts or far < pts[-1][1]:
                pts.append((t, far))
        return ImpostorTail(tuple(pts), self.total, measured) if len(pts) >= 2 else None


def band_tail(scores: np.ndarray, face_pairs: np.ndarray, rows: Sequence[Row], ages: Sequence[float | None],
              band: str, ordered: bool = False) -> BandTail:
    """Split an all-vs-all impostor list by the probe band of each face.

    ``ordered=False``: unordered pairs (:func:`impostor_scores`), a pair counts once per face in the
    band; ``ordered=True``: ``(probe, gallery)`` pairs (:func:`hub_impostor_pairs`), counted when the
    probe is in the band.
    """
    members = np.array([band_of(a) == band for a in ages], bool)
    ids = [r.identity for r in rows]
    size = Counter(ids)
    n = len(rows)
    total = int(sum(n - size[ids[i]] for i in np.nonzero(members)[0]))
    if not len(face_pairs):
        weight = np.zeros(0)
    elif ordered:
        weight = members[face_pairs[:, 0]].astype(np.float64)
    else:
        weight = members[face_pairs[:, 0]].astype(np.float64) + members[face_pairs[:, 1]]
    keep = weight > 0
    return BandTail(scores[keep], weight[keep], face_pairs[keep], total, members)


def predict(bt: BandTail, threshold: float, size: int, rng: np.random.Generator) -> dict[str, Any]:
    """Predicted FPIR at a gallery size from a band's tail at ``threshold``, with a 95 % bootstrap interval.

    The bootstrap resamples faces (a face's impostor pairs move together: hubs) and recounts the
    weighted pairs >= threshold among them.
    """
    above = bt.scores >= threshold
    idx, wt = bt.pairs_idx[above], bt.weight[above]
    n_above = float(wt.sum())
    far = n_above / bt.total if bt.total else 0.0
    n_faces = len(bt.members)
    sims = []
    for _ in range(BOOTSTRAP):
        # a resampled face appears w times; a pair (a, b) then appears w_a * w_b times
        w = np.bincount(rng.integers(0, n_faces, n_faces), minlength=n_faces).astype(np.float64)
        sims.append(float((w[idx[:, 0]] * w[idx[:, 1]] * wt).sum()) / bt.total if bt.total else 0.0)
    lo, hi = (float(x) for x in np.percentile(sims, [2.5, 97.5]))
    if n_above == 0 and bt.total:
        hi = max(hi, 3.0 / bt.total)  # rule of three: 95 % upper bound with no pair above
    return {"threshold": round(float(threshold), 4), "pairs_above": n_above, "far": far, "far_ci95": [lo, hi],
            "fpir": fpir_from_far(far, size), "fpir_ci95": [fpir_from_far(lo, size), fpir_from_far(hi, size)]}


# --------------------------------------------------------------------------------------------- metrics


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _fnir_at_fpir(nm_top: np.ndarray, mated_ok_scores: np.ndarray, fpir: float) -> dict[str, Any]:
    """Face-only: threshold where ``fpir`` of non-mated top scores reach it; FNIR of mated at it."""
    if nm_top.size == 0:
        return {"threshold": None, "fnir": None, "fpir": None}
    srt = np.sort(nm_top)[::-1]
    k = math.floor(fpir * srt.size)
    thr = float(np.nextafter(srt[k], np.float32(np.inf))) if k < srt.size else float(srt[-1])
    return {"threshold": round(thr, 4), "fpir": float(np.mean(nm_top >= thr)),
            "fnir": float(np.mean(~(mated_ok_scores >= thr))) if mated_ok_scores.size else None}


@dataclass
class Outcome:
    """Per-probe results of one gallery size."""

    alert: list[str | None]
    reason: list[str]
    top: np.ndarray  # top score (-inf without face)
    rank: list[int | None]  # rank of the mate among the returned cases (mated only)
    best_key: list[str | None]  # image key (gallery path) of the best case's best photo


def evaluate(searches: Searches, probes: Sequence[Row], mated: np.ndarray, policy: ResolvedPolicy, config: Config,
             case_facts: Mapping[str, Mapping[str, Any]], probe_age: Sequence[float | None],
             probe_p_male: Sequence[float | None]) -> Outcome:
    """Apply the alert policy to every probe's hits."""
    alerts: list[str | None] = []
    reasons: list[str] = []
    ranks: list[int | None] = []
    top = np.full(len(probes), -np.inf)
    keys: list[str | None] = []
    for i, hits in enumerate(searches.hits):
        keys.append(hits[0].image_key if hits else None)
        v = judge(hits, policy.threshold_for(probe_age[i]), config.matching, estimated_age=probe_age[i],
                  p_male=probe_p_male[i],
                  case_info=case_facts.get, today=TODAY)
        alerts.append(v.candidate.id_formatted if v.candidate else None)
        reasons.append(v.reason)
        if hits:
            top[i] = hits[0].score
        ids = [h.id_formatted for h in hits]
        ranks.append(ids.index(probes[i].identity) + 1 if mated[i] and probes[i].identity in ids else None)
    return Outcome(alerts, reasons, top, ranks, keys)


#: Resamples of the identity bootstrap behind ``fpir_ci95`` / ``fnir_ci95``.
CLUSTER_BOOTSTRAP = 2000


def identity_ci95(errors: Sequence[bool], identities: Sequence[str], seed: int = 0) -> list[float] | None:
    """95 % interval of an error rate, resampling identities (not searches) with replacement.

    Searches of one person are not independent (LFW holds 22 photos of Tiger Woods; 7 miss), so a
    binomial interval over searches is too narrow; this percentile bootstrap draws whole
    identities. With no error at all (or only errors) every resample agrees, so the open side is
    the exact binomial bound over identities instead (``1 - 0.025 ** (1 / identities)``, Clopper-
    Pearson). ``None`` without searches. Seeded: the same input gives the same interval.
    """
    if not len(errors):
        return None
    n_err = int(np.count_nonzero(errors))
    if n_err in (0, len(errors)):
        bound = 1.0 - 0.025 ** (1.0 / len(set(identities)))
        return [0.0, round(bound, 5)] if n_err == 0 else [round(1.0 - bound, 5), 1.0]
    ids = group_codes(identities)
    n_id = int(ids.max()) + 1
    tot = np.bincount(ids, minlength=n_id).astype(np.float64)
    err = np.bincount(ids, weights=np.asarray(errors, np.float64), minlength=n_id)
    rng = np.random.default_rng(seed)
    rates = np.empty(CLUSTER_BOOTSTRAP)
    for b in range(CLUSTER_BOOTSTRAP):
        k = np.bincount(rng.integers(0, n_id, n_id), minlength=n_id)
        rates[b] = float(k @ err) / float(k @ tot)
    lo, hi = np.percentile(rates, [2.5, 97.5])
    return [round(float(lo), 5), round(float(hi), 5)]


def summarize(o: Outcome, probes: Sequence[Row], mated: np.ndarray, nonmated: np.ndarray,
              idx: np.ndarray | None = None) -> dict[str, Any]:
    """FPIR, FNIR (each with an identity-bootstrap 95 % interval), rank-1/5 and rejection counts over ``idx``."""
    sel = range(len(probes)) if idx is None else [int(x) for x in idx]
    m = [i for i in sel if mated[i]]
    nm = [i for i in sel if nonmated[i]]
    fp = sum(o.alert[i] is not None for i in nm)
    hit = sum(o.alert[i] == probes[i].identity for i in m)
    wrong = sum(o.alert[i] is not None and o.alert[i] != probes[i].identity for i in m)
    return {
        "nonmated": len(nm), "false_alerts": fp, "fpir": _rate(fp, len(nm)),
        "fpir_ci95": identity_ci95([o.alert[i] is not None for i in nm], [probes[i].identity for i in nm]),
        "mated": len(m), "fnir": _rate(len(m) - hit, len(m)),
        "fnir_ci95": identity_ci95([o.alert[i] != probes[i].identity for i in m], [probes[i].identity for i in m]),
        "mated_wrong_alert": _rate(wrong, len(m)),
        "rank1": _rate(sum(o.rank[i] == 1 for i in m), len(m)),
        "rank5": _rate(sum(o.rank[i] is not None and o.rank[i] <= 5 for i in m), len(m)),  # type: ignore[operator]
        "nonmated_rejections": dict(Counter(o.reason[i] for i in nm)),
        "mated_rejections": dict(Counter(o.reason[i] for i in m)),
    }


def _mate_scores(o: Outcome, mated: np.ndarray) -> np.ndarray:
    """Top score of mated probes whose mate is rank 1, -inf otherwise (face-only DIR input)."""
    return np.array([o.top[i] if o.rank[i] == 1 else -np.inf for i in range(len(o.rank)) if mated[i]])


# --------------------------------------------------------------------------------------------- run


#: A distractor photo is listed as a possible look-alike of an enrolled person when one of the
#: person's photos scores at least LOOKALIKE_ONE against it, or two score at least LOOKALIKE_TWO.
LOOKALIKE_ONE = 0.40
LOOKALIKE_TWO = 0.33


def mated_lookalikes(photos: Mapping[str, Sequence[Path]], emb: Mapping[Path, np.ndarray],
                     distractors: Sequence[Row], distractor_emb: np.ndarray,
                     excl: set[frozenset[Path]]) -> list[dict[str, Any]]:
    """Distractor photos that score like a true match against an enrolled person's photos.

    The same public figure can appear among the distractors under another identity (UTKFace has
    no identity labels); such a photo is then counted as a stranger who out-scores the person's
    own enrolment photo. This lists candidates for review by eye, not verdicts.

    Args:
        photos: enrolled identity -> its photos (enrolment and mated probes) that have a face
            (the caller passes adult faces only).
        emb: photo -> float32 (D,) L2-normalised embedding.
        distractors: gallery rows of identities with no mated probe.
        distractor_emb: float32 (len(distractors), D) L2-normalised.
        excl: pairs already listed as label noise; a candidate whose every pair is listed is skipped.

    Returns:
        One dict per candidate, ordered by identity then score: ``identity``, ``probe`` (the
        person's photo that scores highest), ``gallery`` (the distractor photo), ``score`` (raw
        cosine), ``photos`` (all the person's photos, each pair of which the candidate concerns)
        and ``above`` (how many of them score >= ``LOOKALIKE_TWO``).
    """
    out: list[dict[str, Any]] = []
    if not len(distractors):
        return out
    for ident in sorted(photos):
        ps = list(photos[ident])
        if not ps:
            continue
        sims = np.stack([emb[q] for q in ps]) @ distractor_emb.T  # (len(ps), len(distractors))
        cand = np.nonzero((sims.max(0) >= LOOKALIKE_ONE) | ((sims >= LOOKALIKE_TWO).sum(0) >= 2))[0]
        for j in cand[np.argsort(-sims.max(0)[cand])]:
            x = distractors[int(j)].path
            if all(frozenset((q, x)) in excl for q in ps):
                continue
            best = int(np.argmax(sims[:, j]))
            out.append({"identity": ident, "probe": str(ps[best]), "gallery": str(x),
                        "score": round(float(sims[best, j]), 4), "photos": [str(q) for q in ps],
                        "above": int((sims[:, j] >= LOOKALIKE_TWO).sum())})
    return out


def _or(x: Any, default: Any) -> Any:
    return default if x is None else x


def run_identify(config: Config, gallery: Sequence[Row], probes: Sequence[Row], *, seed: int = 0,
                 exclusions: set[frozenset[Path]] | None = None, cache_root: Path | None = None,
                 sizes: Sequence[int] = GALLERY_SIZES, hub_norm: bool = False,
                 gallery_faces: Mapping[Path, PhotoFace] | None = None,
                 case_facts: Mapping[str, Mapping[str, Any]] | None = None,
                 nonmated_half: str | None = "report", tails_from_all: bool = False) -> dict[str, Any]:
    """Compute every metric of the module docstring; returns the JSON-ready result.

    A built bundle is evaluated by passing its faces (:mod:`namus_edge.index.evaluate`):
    ``gallery_faces`` gives the embedding of every gallery row (keyed by the row's ``path``, which
    then need not be a file), ``case_facts`` the case record per identity (ages, sex: what the
    device's age and sex checks read), ``nonmated_half=None`` counts every non-mated probe
    (nothing is fitted on probes that are not gallery rows), and ``tails_from_all`` measures the
    tails on every gallery face, the enrolled cases' too (by default only distractor faces count,
    so that a case searched by mated probes does not also shape the tail).

    With ``hub_norm`` every search scores similarity minus the gallery face's hub offset
    (:class:`GalleryHub`, as a bundle build stores them) minus the probe's offset, the policy's thresholds come from the
    embedder's normalised tail, and the tails and predictions are of normalised scores.

    Raises:
        IdentifyInputError: an empty gallery or no probe.
    """
    if not gallery or not probes:
        raise IdentifyInputError("eval identify needs a non-empty gallery and probe list")
    excl = exclusions or set()
    analyzer = FaceAnalyzer(config, with_age=True)
    cache = EmbeddingCache(analyzer, cache_root)
    given = dict(gallery_faces or {})
    paths = [p for p in dict.fromkeys([r.path for r in gallery] + [r.path for r in probes]) if p not in given]
    faces = {**given, **dict(zip(paths, cache.get_many(paths), strict=True))}
    dim = analyzer.dim
    no_face = {str(p): f.problem for p, f in faces.items() if f.embedding is None}

    gal = [g for g in gallery if faces[g.path].embedding is not None]
    gal_emb = np.stack([faces[g.path].embedding for g in gal]).astype(np.float32)  # type: ignore[misc]
    gal_paths = {g.path for g in gallery}
    gal_ids = {g.identity for g in gallery}
    nan = np.full(dim, np.nan, np.float32)
    probe_emb = np.stack([_or(faces[p.path].embedding, nan) for p in probes]).astype(np.float32)
    loo = np.array([p.path in gal_paths for p in probes])
    by_id: dict[str, list[Row]] = defaultdict(list)
    for g in gal:
        by_id[g.identity].append(g)
    # a probe whose every comparison with its own identity's gallery photos is listed as label noise
    # (two people under one name) has no mate to find: it is left out, and counted
    no_mate = {p.path for i, p in enumerate(probes) if not loo[i] and p.identity in by_id
               and all(frozenset((p.path, g.path)) in excl for g in by_id[p.identity])}
    mated_all = np.array([(p.identity in gal_ids) and not loo[i] and p.path not in no_mate
                          for i, p in enumerate(probes)])
    halves = np.array([half_of(p.identity, seed) for p in probes])
    dropped = np.array([p.path in no_mate for p in probes])
    nonmated = (~mated_all) & (~dropped) & ((halves == nonmated_half) if nonmated_half is not None else True)
    mated = mated_all
    use = mated | nonmated
    probes_u = [p for p, u in zip(probes, use, strict=True) if u]
    probe_emb = probe_emb[use]
    loo, mated, nonmated = loo[use], mated[use], nonmated[use]
    probe_age = [faces[p.path].age for p in probes_u]
    probe_pm = [faces[p.path].p_male for p in probes_u]

    # case facts per identity, as a bundle would carry them (true ages of the photos, recorded sex)
    facts: dict[str, dict[str, Any]] = {}
    for ident, rows in by_id.items():
        if case_facts is not None:
            facts[ident] = dict(case_facts.get(ident) or {})
            continue
        ages = [r.age for r in rows if r.age is not None]
        sexes = {r.sex for r in rows if r.sex}
        f: dict[str, Any] = {}
        if ages and len(ages) == len(rows):
            f["current_age_min"], f["current_age_max"] = min(ages), max(ages)
        if len(sexes) == 1:
            f["sex"] = sexes.pop().capitalize()
        facts[ident] = f

    # gallery subsets: enrolled identities (those with mated probes) always in, distractors sampled
    rng = np.random.default_rng(seed)
    enrolled_ids = {p.identity for p, m in zip(probes_u, mated, strict=True) if m}
    is_enrolled = np.array([g.identity in enrolled_ids for g in gal])
    distractor_idx = np.nonzero(~is_enrolled)[0]
    perm = rng.permutation(distractor_idx)
    gallery_sizes = [s for s in sizes if s < len(gal)] + [len(gal)]
    excl_map = _exclusion_index(excl, gal)

    embedder = analyzer.embedder_spec.name
    result: dict[str, Any] = {
        "models": {"detector": analyzer.detector_spec.name, "embedder": embedder,
                   "embedder_sha256": analyzer.embedder_spec.sha256,
                   "age": analyzer.age_spec.name if analyzer.age_spec else None},
        "policy_config": {"threshold": config.matching.threshold, "target_fpir": config.matching.target_fpir,
                          "margin": config.matching.margin, "age_check": config.matching.age_check.enabled,
                          "sex_check": config.matching.sex_check.enabled, "hub_norm": hub_norm},
        "split": {"seed": seed, "nonmated_half": nonmated_half or "all", "tail_half": "fit"},
        "data": {"gallery_rows": len(gallery), "gallery_faces": len(gal), "gallery_identities": len(by_id),
                 "enrolled_identities": len(enrolled_ids), "mated_probes": int(mated.sum()),
                 "nonmated_probes": int(nonmated.sum()), "mislabelled_probes": sorted(str(x) for x in no_mate),
                 "no_face": len(no_face),
                 "no_face_paths": sorted(no_face)[:50], "excluded_pairs": len(excl),
                 "embedding_cache": str(cache.dir)},
    }

    # ---- impostor tails: fit half (what the registry records) and report half (what predicts), per band;
    # with hub normalisation the tail of normalised scores ("hub") is the one the policy and predictions use
    tails: dict[str, Any] = {}
    band_tails: dict[str, dict[str, BandTail]] = {}
    hub_band_tails: dict[str, dict[str, BandTail]] = {}
    for half in ("fit", "report"):
        hrows_idx = [j for j, g in enumerate(gal) if (tails_from_all or not is_enrolled[j])
                     and half_of(g.identity, seed) == half]
        rows_h = [gal[j] for j in hrows_idx]
        ages_h = [faces[g.path].age for g in rows_h]
        sc, fp, total = impostor_scores(gal_emb[hrows_idx], rows_h, excl, TAIL_THRESHOLDS[0])
        try:
            points = [list(p) for p in tail_from_scores(sc.tolist(), total, TAIL_THRESHOLDS,
                                                        f"eval identify {half} half, seed {seed}, "
                                                        f"{len(rows_h)} faces").points]
        except ValueError:  # too few impostor pairs above the lowest threshold for a curve (a tiny gallery)
            points = []
        band_tails[half] = {b: band_tail(sc, fp, rows_h, ages_h, b) for b in BANDS}
        tails[half] = {"faces": len(rows_h), "pairs": total, "points": points,
                       "max": float(sc[0]) if sc.size else None,
                       "top_pairs": [{"score": round(float(sc[k]), 4), "a": str(rows_h[fp[k][0]].path),
                                      "b": str(rows_h[fp[k][1]].path)} for k in range(min(TOP_PAIRS, sc.size))]}
        for b, bt in band_tails[half].items():
            bt_tail = bt.tail(f"eval identify --seed {seed}, {half} half, {b} probe faces "
                              f"(estimated age {'<' if b == 'child' else '>='} {CHILD_FACE_AGE:g}), "
                              f"{int(bt.members.sum())} faces")
            tails[half][b] = {"faces": int(bt.members.sum()), "pairs": bt.total,
                              "points": [list(p) for p in bt_tail.points] if bt_tail else []}
        if hub_norm:
            hsc, hfp, htotal = hub_impostor_pairs(gal_emb[hrows_idx], rows_h, excl, HUB_TAIL_FLOOR)
            hub_band_tails[half] = {b: band_tail(hsc, hfp, rows_h, ages_h, b, ordered=True) for b in BANDS}
            tails[half]["hub"] = {"pairs": htotal, "floor": HUB_TAIL_FLOOR, "k": HUB_K,
                                  "top_pairs": [{"score": round(float(hsc[k]), 4), "probe": str(rows_h[hfp[k][0]].path),
                                                 "gallery": str(rows_h[hfp[k][1]].path)}
                                                for k in range(min(TOP_PAIRS, hsc.size))]}
            for b, bt in hub_band_tails[half].items():
                ht = bt.tail(f"eval identify --hub-norm --seed {seed}, {half} half, {b} probe faces "
                             f"(estimated age {'<' if b == 'child' else '>='} {CHILD_FACE_AGE:g}), "
                             f"{int(bt.members.sum())} faces, hub offsets k={HUB_K} left-one-out",
                             HUB_TAIL_FLOOR)
                tails[half]["hub"][b] = {"faces": int(bt.members.sum()), "pairs": bt.total,
                                         "points": [list(p) for p in ht.points] if ht else []}
    result["tail"] = tails
    pred_tails = hub_band_tails["report"] if hub_norm else band_tails["report"]
    gal_codes = {ident: c for c, ident in enumerate(dict.fromkeys(g.identity for g in gal))}
    gal_id_codes = np.array([gal_codes[g.identity] for g in gal], np.int64)

    # ---- per gallery size
    by_size = []
    outcomes: dict[int, Outcome] = {}
    outcomes_by_n: dict[int, Outcome] = {}
    for size in gallery_sizes:
        mask = is_enrolled.copy()
        n_distr = max(0, size - int(is_enrolled.sum()))
        mask[perm[:n_distr]] = True
        n_g = int(mask.sum())
        pol = resolve_policy(config.matching, embedder, n_g, hub_norm=hub_norm)
        hub = GalleryHub.build(gal_emb, gal_id_codes, mask) if hub_norm else None
        srch = search(probe_emb, probes_u, gal_emb, gal, mask, loo, excl_map, hub)
        o = evaluate(srch, probes_u, mated, pol, config, facts, probe_age, probe_pm)
        outcomes[size] = o
        outcomes_by_n[n_g] = o
        entry = {"gallery_size": n_g, "measured": True, "rule": pol.rule, "threshold": round(pol.threshold, 4),
                 "child_threshold": None if pol.child_threshold is None else round(pol.child_threshold, 4),
                 **summarize(o, probes_u, mated, nonmated)}
        nm_top = o.top[nonmated]
        nm_top = nm_top[np.isfinite(nm_top)] if nm_top.size else nm_top
        mate_sc = _mate_scores(o, mated)
        entry["face_only"] = {f"{x:.0e}": _fnir_at_fpir(nm_top, mate_sc, x) for x in FPIR_POINTS}
        thr_nm = np.array([pol.threshold_for(probe_age[i]) for i in range(len(probes_u)) if nonmated[i]])
        entry["face_only"]["fpir_at_threshold"] = _rate(int((o.top[nonmated] >= thr_nm).sum()), int(nonmated.sum()))
        by_size.append(entry)
    result["by_gallery_size"] = by_size
    last = outcomes[gallery_sizes[-1]]
    nm_idx = [i for i in range(len(probes_u)) if nonmated[i] and np.isfinite(last.top[i])]
    nm_idx.sort(key=lambda i: -last.top[i])
    result["top_nonmated"] = [{"score": round(float(last.top[i]), 4), "probe": str(probes_u[i].path),
                               "gallery": last.best_key[i], "alert": last.alert[i] is not None}
                              for i in nm_idx[:60]]
    # every false alert and every mated search whose rank-1 case is wrong, for review by eye
    result["false_alerts"] = [{"score": round(float(last.top[i]), 4), "probe": str(probes_u[i].path),
                               "gallery": last.best_key[i]} for i in nm_idx if last.alert[i] is not None]
    result["mated_rank1_errors"] = [{"score": round(float(last.top[i]), 4), "probe": str(probes_u[i].path),
                                     "gallery": last.best_key[i], "mate_rank": last.rank[i]}
                                    for i in range(len(probes_u)) if mated[i] and last.rank[i] != 1
                                    and np.isfinite(last.top[i])]
    # adult faces only: at these scores a child's face resembles many children (docs/accuracy.md)
    adult = {q for q, f in faces.items() if f.embedding is not None and band_of(f.age) == "adult"}
    person_photos: dict[str, list[Path]] = defaultdict(list)
    for j, g in enumerate(gal):
        if is_enrolled[j] and g.path in adult:
            person_photos[g.identity].append(g.path)
    for m, pr in zip(mated, probes_u, strict=True):
        if m and pr.path in adult:
            person_photos[pr.identity].append(pr.path)
    adult_distr = [int(j) for j in distractor_idx if gal[j].path in adult]
    result["mated_lookalikes"] = mated_lookalikes(
        person_photos, {q: faces[q].embedding for v in person_photos.values() for q in v},  # type: ignore[misc]
        [gal[j] for j in adult_distr], gal_emb[adult_distr], excl)

    # ---- predicted sizes: the policy's thresholds at N, FPIR from the report-half tails, FNIR measured
    full = outcomes[gallery_sizes[-1]]
    mate_sc = _mate_scores(full, mated)
    mate_thr_age = [probe_age[i] for i in range(len(probes_u)) if mated[i]]
    nm_bands = Counter(band_of(probe_age[i]) for i in range(len(probes_u)) if nonmated[i])
    preds = []
    for n in PREDICT_SIZES:
        pol = resolve_policy(config.matching, embedder, n, hub_norm=hub_norm)
        pe: dict[str, Any] = {"gallery_size": n, "measured": False, "rule": pol.rule,
                              "threshold": round(pol.threshold, 4),
                              "child_threshold": None if pol.child_threshold is None else round(pol.child_threshold, 4)}
        mix = 0.0
        for b in BANDS:
            t = pol.threshold_for(1.0 if b == "child" else 30.0)
            pe[b] = predict(pred_tails[b], t, n, rng)
            mix += pe[b]["fpir"] * nm_bands.get(b, 0) / max(1, sum(nm_bands.values()))
        pe["fpir"] = pe["adult"]["fpir"]
        pe["fpir_ci95"] = pe["adult"]["fpir_ci95"]
        pe["fpir_probe_mix"] = mix
        thr = np.array([pol.threshold_for(a) for a in mate_thr_age])
        pe["fnir_face_only"] = float(np.mean(~(mate_sc >= thr))) if mate_sc.size else None
        preds.append(pe)
    result["predicted"] = preds
    # prediction check: the same model at the measured sizes, next to the measured face-only FPIR (adults)
    checks = []
    for e in by_size:
        pol = resolve_policy(config.matching, embedder, e["gallery_size"], hub_norm=hub_norm)
        adults = [i for i in range(len(probes_u)) if nonmated[i] and band_of(probe_age[i]) == "adult"]
        top = outcomes_by_n[e["gallery_size"]].top
        checks.append({"gallery_size": e["gallery_size"], "threshold": round(pol.threshold, 4),
                       "measured_face_only_fpir_adult": _rate(int(sum(top[i] >= pol.threshold for i in adults)),
                                                              len(adults)),
                       "predicted_fpir_adult": fpir_from_far(pred_tails["adult"].far_at(pol.threshold),
                                                             e["gallery_size"])})
    result["prediction_check"] = checks

    # ---- per age gap, per group (at the full gallery)
    idx_all = np.arange(len(probes_u))
    gaps: dict[str, Any] = {}
    for name, _, _ in AGE_GAP_BUCKETS:
        sel = np.array([i for i in idx_all if mated[i] and bucket_of(_or(probes_u[i].age_gap, -1.0),
                                                                      AGE_GAP_BUCKETS) == name], np.int64)
        if sel.size:
            s = summarize(full, probes_u, mated, nonmated, sel)
            gaps[name] = {k: s[k] for k in ("mated", "fnir", "fnir_ci95", "rank1", "rank5", "mated_wrong_alert")}
    result["by_age_gap"] = gaps
    groups_g: dict[str, list[int]] = defaultdict(list)
    for i in idx_all:
        if probes_u[i].group:
            groups_g[str(probes_u[i].group)].append(int(i))
    result["by_group"] = {g: summarize(full, probes_u, mated, nonmated, np.array(ix, np.int64))
                          for g, ix in sorted(groups_g.items())}
    bias: dict[str, Any] = {}
    for key in ("sex", "race", "age_band"):
        groups: dict[str, list[int]] = defaultdict(list)
        for i in idx_all:
            p = probes_u[i]
            if key == "age_band":
                label = bucket_of(p.age, AGE_GROUPS) if p.age is not None else None
            else:
                label = getattr(p, key)
            if label:
                groups[str(label)].append(int(i))
        if groups:
            bias[key] = {g: {k: v for k, v in summarize(full, probes_u, mated, nonmated, np.array(ix, np.int64)).items()
                             if k in ("nonmated", "false_alerts", "fpir", "fpir_ci95", "mated", "fnir", "fnir_ci95",
                                      "rank1")}
                         for g, ix in sorted(groups.items())}
    result["bias"] = bias
    return result
