"""Open-set identification benchmark: NamUs-format cases from LFW + FG-NET, ``index build``, then search.

The verification numbers of ``namus-edge eval verify`` score *pairs*; a device instead searches every
face it sees against the whole gallery and raises a candidate when the best case scores at least
``matching.threshold``. This benchmark measures exactly that, on real faces, through the real ingest
and search code:

1. In a temporary directory it writes a NamUs "Prepager" case set (``tests/namus_factory.py``):
   every LFW identity of ../shared/data/verification with >= 2 photos becomes an MP case enrolled
   with its first photo (sorted by file name); every FG-NET subject becomes a "missing child" MP case
   enrolled with its youngest photo, the age at last contact being that photo's age.
2. ``index.build.build_bundle`` turns it into a signed bundle (face choice, padded retry, FAISS).
3. Probes are searched with the largest face of each photo, as ``namus-edge index search`` does:

   * **same-age**: the other photos of the enrolled LFW identities -> rank-1 / rank-5, and the
     detection-and-identification rate (DIR: right case first *and* score >= threshold);
   * **unenrolled**: LFW identities with a single photo (not in the gallery) -> fraction whose best
     case scores >= threshold (a false candidate), and >= threshold with the ``matching.margin`` lead
     (a face's vote in ``edge.decision``), over a threshold sweep;
   * **cross-age**: the other photos of each FG-NET subject (older, sometimes younger than the
     enrolled photo) -> rank-1 / rank-5 / DIR by age gap (0-4, 5-9, 10-19, 20+ years).

4. Pair-level threshold evidence from ``verification/pairs.csv`` (LFW official + extra, FG-NET
   within-subject positives and age-matched negatives), scored with the same probe embeddings:
   the FAR-1e-2 / 1e-3 thresholds (``models.evaluation``) and FAR / TAR at each swept threshold.
   Since pairs.csv has only 866 LFW negatives, the per-comparison FAR tail is also measured on every
   different-identity pair of the embedded photos (377,013 LFW pairs) and turned into the predicted
   false-candidate rate of an unknown face against galleries of 1,000-30,000 faces.

A probe in which no face is found counts as a miss (never as a success) and is reported. The age check
of ``matching.age_check`` is not applied (no age model is loaded): these are face-only numbers.
Benchmarks measure and never fail: markdown tables go to stdout, ``--json PATH`` writes every number
(``--json -`` prints the JSON instead of the tables).

Usage (from the repository root)::

    nice -n 10 python -m bench.identification
    nice -n 10 python -m bench.identification --set models.set=licence_clean --thresholds 0.30:0.55:0.01
    python -m bench.identification --quick
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, machine_markdown, markdown_table

# the NamUs-format case writer lives with the test helpers (tests/namus_edge_testing), not in the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from namus_edge_testing.namus_factory import (
    SyntheticCase,
    fgnet_identities,
    lfw_identities,
    write_prepager,
)

from namus_edge.core.config import Config, load_config
from namus_edge.core.errors import ImageReadError
from namus_edge.models.evaluation import AGE_GAP_BUCKETS, bucket_of, verification_metrics
from namus_edge.models.policy import best_candidate
from namus_edge.models.registry import match_threshold

log = logging.getLogger("bench.identification")

REPO = Path(__file__).resolve().parents[1]
TODAY = date(2026, 11, 23)  # fixed so current ages in the bundle do not depend on the day of the run
LFW_CASE_BASE = 1000
FGNET_CASE_BASE = 5000
KINDS = ("same_age", "unenrolled", "cross_age")


def default_data_dir() -> Path:
    """../shared/data next to the repository (or $NAMUS_EDGE_SHARED/data), as the tests use."""
    env = os.environ.get("NAMUS_EDGE_SHARED")
    return (Path(env) if env else REPO.parent / "shared") / "data"


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Probe:
    """One query photo and what a correct answer is.

    Attributes:
        path: the photo.
        identity: namespaced identity (``lfw:Name``, ``fgnet:001``).
        kind: ``same_age`` (LFW, enrolled), ``unenrolled`` (LFW single-photo identity) or
            ``cross_age`` (FG-NET, enrolled with the youngest photo).
        case: the enrolled case's ``id_formatted``, or ``None`` for an unenrolled identity.
        age_gap: years between the probe and the enrolled photo (FG-NET only; may be 0).
    """

    path: Path
    identity: str
    kind: str
    case: str | None
    age_gap: float | None = None


@dataclass
class CaseSet:
    """The gallery cases and the probes of one benchmark run."""

    cases: list[SyntheticCase]
    probes: list[Probe]
    enrolled: dict[str, Path]


def make_case_set(data_dir: Path, lfw_cases: int = 0, fgnet_subjects: int = 0, unenrolled: int = 0) -> CaseSet:
    """Cases and probes from ../shared/data/verification (0 = all of a kind).

    Args:
        data_dir: the shared data folder (holds ``verification/manifest.csv``).
        lfw_cases: first N LFW identities with >= 2 photos (sorted by name) to enrol.
        fgnet_subjects: first N FG-NET subjects to enrol.
        unenrolled: first N single-photo LFW identities to probe with.
    """
    lfw = lfw_identities(data_dir)
    multi = [k for k, v in lfw.items() if len(v) >= 2]
    single = [k for k, v in lfw.items() if len(v) == 1]
    multi = multi[:lfw_cases] if lfw_cases else multi
    single = single[:unenrolled] if unenrolled else single
    fg = fgnet_identities(data_dir)
    subjects = sorted(fg)[:fgnet_subjects] if fgnet_subjects else sorted(fg)
    cases: list[SyntheticCase] = []
    probes: list[Probe] = []
    enrolled: dict[str, Path] = {}
    for i, name in enumerate(multi):
        cid = LFW_CASE_BASE + i
        photos = lfw[name]
        first, _, last = name.split(":", 1)[1].partition("_")
        cases.append(SyntheticCase("MP", cid, first, last or "LFW", [photos[0]]))
        enrolled[f"MP{cid}"] = photos[0]
        probes += [Probe(p, name, "same_age", f"MP{cid}") for p in photos[1:]]
    for i, subject in enumerate(subjects):
        cid = FGNET_CASE_BASE + i
        (age0, photo0), *rest = fg[subject]  # sorted by (age, path): the youngest photo first
        cases.append(SyntheticCase("MP", cid, "FGNET", subject.split(":", 1)[1], [photo0], age_at_last=age0))
        enrolled[f"MP{cid}"] = photo0
        probes += [Probe(p, subject, "cross_age", f"MP{cid}", age - age0) for age, p in rest]
    probes += [Probe(lfw[name][0], name, "unenrolled", None) for name in single]
    return CaseSet(cases, probes, enrolled)


# ---------------------------------------------------------------------------------------- embedding


def embed_photos(analyzer: Any, paths: Sequence[Path]) -> tuple[dict[Path, np.ndarray | None], dict[str, str]]:
    """Embedding of the largest face of each photo (the ``index search`` rule), padded retry on.

    Returns:
        (path -> float32 (D,) L2-normalised embedding or None, path -> why there is none).
    """
    from tqdm import tqdm

    from namus_edge.models.imagefile import read_image

    out: dict[Path, np.ndarray | None] = {}
    problems: dict[str, str] = {}
    for path in tqdm(list(dict.fromkeys(paths)), desc="embedding", unit="img", disable=None, leave=False):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            out[path], problems[str(path)] = None, f"unreadable: {exc}"
            continue
        faces = [f for f in analyzer.analyze(image, photo=True) if f.has_embedding]
        if not faces:
            out[path], problems[str(path)] = None, "no face"
            continue
        out[path] = max(faces, key=lambda f: f.area).embedding.astype(np.float32)
    return out, problems


# ------------------------------------------------------------------------------------------ search


@dataclass(frozen=True)
class Outcome:
    """Search result of one probe.

    Attributes:
        probe: the probe.
        found_face: a face was found and searched.
        rank: 1-based rank of the right case among the returned cases (None: not returned / none).
        top_case: the best case returned (None without a face).
        top_score: its cosine similarity (-inf without a face).
        margin: lead of the best case over the second (``edge.decision.best_candidate``).
        true_score: the right case's score when it was returned.
    """

    probe: Probe
    found_face: bool
    rank: int | None
    top_case: str | None
    top_score: float
    margin: float
    true_score: float | None


def search_probes(bundle: Any, probes: Sequence[Probe], emb: dict[Path, np.ndarray | None],
                  top_k: int) -> list[Outcome]:
    """Search every probe with a face in one FAISS batch; probes without a face get an empty outcome."""
    with_face = [p for p in probes if emb.get(p.path) is not None]
    matches: list[Any] = []
    if with_face:
        queries = np.stack([v for p in with_face if (v := emb.get(p.path)) is not None]).astype(np.float32)
        matches = bundle.search(queries, top_k)
    by_probe = dict(zip(with_face, matches, strict=True))
    out = []
    for p in probes:
        hits = by_probe.get(p)
        if not hits:
            out.append(Outcome(p, False, None, None, float("-inf"), 0.0, None))
            continue
        ids = [m.id_formatted for m in hits]
        rank = ids.index(p.case) + 1 if p.case in ids else None
        cand = best_candidate(hits)
        if cand is None:  # cannot happen: hits is not empty
            continue
        out.append(Outcome(p, True, rank, cand.id_formatted, cand.score, cand.margin,
                           hits[rank - 1].score if rank else None))
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def enrolled_metrics(outs: Sequence[Outcome], threshold: float, margin: float) -> dict[str, Any]:
    """Rank-1/5 and open-set rates of probes whose identity is enrolled.

    ``dir`` (detection and identification rate): right case first and score >= threshold;
    ``vote``: the same with the margin rule (what a single face contributes to an event);
    ``true_above``: the right case scores >= threshold at whatever rank;
    ``wrong_top_above``: a *wrong* case is first with score >= threshold (a false candidate).
    """
    return {
        "probes": len(outs),
        "no_face": sum(not o.found_face for o in outs),
        "rank1": _rate([o.rank == 1 for o in outs]),
        "rank5": _rate([o.rank is not None and o.rank <= 5 for o in outs]),
        "dir": _rate([o.rank == 1 and o.top_score >= threshold for o in outs]),
        "vote": _rate([o.rank == 1 and o.top_score >= threshold and o.margin >= margin for o in outs]),
        "true_above": _rate([o.true_score is not None and o.true_score >= threshold for o in outs]),
        "wrong_top_above": _rate([o.found_face and o.rank != 1 and o.top_score >= threshold for o in outs]),
    }


def unenrolled_metrics(outs: Sequence[Outcome], threshold: float, margin: float) -> dict[str, Any]:
    """False-candidate rates of probes whose identity is not in the gallery."""
    above = [o.found_face and o.top_score >= threshold for o in outs]
    return {
        "probes": len(outs),
        "no_face": sum(not o.found_face for o in outs),
        "above": _rate(above),
        "above_count": int(sum(above)),
        "vote": _rate([a and o.margin >= margin for a, o in zip(above, outs, strict=True)]),
        "max_top_score": max((o.top_score for o in outs if o.found_face), default=None),
    }


# ------------------------------------------------------------------------------------------- pairs


def read_pairs(data_dir: Path) -> list[dict[str, str]]:
    """LFW and FG-NET rows of ``verification/pairs.csv``."""
    with (data_dir / "verification" / "pairs.csv").open(newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r["dataset"] in ("lfw", "fgnet")]


def pair_metrics(rows: Sequence[dict[str, str]], emb: dict[Path, np.ndarray | None], root: Path,
                 thresholds: Sequence[float]) -> dict[str, Any]:
    """FAR-1e-2/1e-3 thresholds and FAR/TAR over a sweep for the pair groups of the threshold choice.

    A pair with a faceless image is wrong at every threshold (as in ``models.evaluation``).
    """
    def score(r: dict[str, str]) -> tuple[float, bool]:
        a, b = emb.get(root / r["path_a"]), emb.get(root / r["path_b"])
        return (0.0, True) if a is None or b is None else (float(a @ b), False)

    groups: dict[str, list[dict[str, str]]] = {
        "lfw_official": [r for r in rows if r["protocol"] == "lfw_view2_official"],
        "lfw_extra": [r for r in rows if r["protocol"].startswith("extra_")],
        "lfw_all": [r for r in rows if r["dataset"] == "lfw"],
        "fgnet": [r for r in rows if r["dataset"] == "fgnet"],
    }
    out: dict[str, Any] = {}
    for name, grp in groups.items():
        if not grp:
            continue
        sc = [score(r) for r in grp]
        s = np.array([x for x, _ in sc])
        f = np.array([x for _, x in sc])
        y = np.array([int(r["label"]) for r in grp])
        m = verification_metrics(s.tolist(), y.tolist(), f.tolist(), cross_validate=False)
        neg = np.where(f, np.inf, s)[y == 0]
        pos = np.where(f, -np.inf, s)[y == 1]
        entry: dict[str, Any] = {
            "pairs": int(y.size), "negatives": int(neg.size), "positives": int(pos.size), "failed_pairs": int(f.sum()),
            "auc": m["auc"], "far_thresholds": m["far_thresholds"], "tar_at_far": m["tar_at_far"],
            "max_negative": float(np.max(neg)) if neg.size else None,
            "top_negatives": sorted((float(v) for v in neg), reverse=True)[:5],
            "sweep": [{"threshold": round(t, 4), "far": float(np.mean(neg >= t)),
                       "false_accepts": int((neg >= t).sum()), "tar": float(np.mean(pos >= t))} for t in thresholds],
        }
        if name == "fgnet":
            gaps = np.array([float(r["age_gap"] or 0) for r in grp])
            entry["tar_by_gap"] = {}
            for bname, _, _ in AGE_GAP_BUCKETS:
                mask = (y == 1) & np.array([bucket_of(g, AGE_GAP_BUCKETS) == bname for g in gaps])
                pb = np.where(f, -np.inf, s)[mask]
                entry["tar_by_gap"][bname] = {"positives": int(mask.sum()),
                                              "tar": {f"{t:.2f}": float(np.mean(pb >= t)) for t in thresholds}}
        out[name] = entry
    return out


def impostor_metrics(emb: dict[Path, np.ndarray | None], identity_of: dict[Path, str], thresholds: Sequence[float],
                     gallery_sizes: Sequence[int]) -> dict[str, Any]:
    """Per-comparison false-accept rate over *every* different-identity pair of the embedded photos.

    ``pairs.csv`` holds only 866 LFW negatives (FAR resolution ~1e-3); all-vs-all impostor pairs of
    the same photos reach ~1e-6, which is what a gallery of thousands of faces needs. The pairs share
    identities, so they are not independent: treat the tail as an estimate. ``open_set_predicted``
    is ``1 - (1 - FAR)^N``, the chance that an unknown face scores >= threshold against at least one
    of N gallery faces, assuming independent comparisons (checked against the measured unenrolled
    rate of the 172-case gallery).

    Args:
        emb: photo -> float32 (D,) embedding or None (photos without a face are left out).
        identity_of: photo -> namespaced identity (``lfw:...``, ``fgnet:...``).
        thresholds: cosine thresholds of the sweep.
        gallery_sizes: gallery sizes (faces) for the open-set prediction.
    """
    paths = [p for p, v in emb.items() if v is not None and p in identity_of]
    if len(paths) < 2:
        return {}
    x = np.stack([emb[p] for p in paths]).astype(np.float32)  # type: ignore[misc]
    ids = np.array([identity_of[p] for p in paths])
    dataset = np.array([i.split(":", 1)[0] for i in ids])
    sim = x @ x.T
    iu, ju = np.triu_indices(len(paths), k=1)
    diff = ids[iu] != ids[ju]
    out: dict[str, Any] = {}
    for name, mask in (("lfw", (dataset[iu] == "lfw") & (dataset[ju] == "lfw")),
                       ("fgnet", (dataset[iu] == "fgnet") & (dataset[ju] == "fgnet")),
                       ("all", np.ones(iu.size, bool))):
        neg = np.sort(sim[iu[mask & diff], ju[mask & diff]])[::-1]
        if neg.size == 0:
            continue
        entry: dict[str, Any] = {"pairs": int(neg.size), "max": float(neg[0]), "far_thresholds": {}, "sweep": []}
        for far in (1e-3, 1e-4, 1e-5):
            k = int(np.floor(far * neg.size))
            entry["far_thresholds"][f"{far:.0e}"] = float(neg[k]) if k < neg.size else None
        for t in thresholds:
            n_above = int(np.searchsorted(-neg, -t, side="right"))  # neg is descending: count of neg >= t
            far_t = n_above / neg.size
            entry["sweep"].append({"threshold": round(t, 4), "false_accepts": n_above, "far": far_t,
                                   "open_set_predicted": {str(n): 1.0 - (1.0 - far_t) ** n for n in gallery_sizes}})
        out[name] = entry
    return out


# -------------------------------------------------------------------------------------------- run


def run(config: Config, data_dir: Path, thresholds: Sequence[float], *, lfw_cases: int = 0, fgnet_subjects: int = 0,
        unenrolled: int = 0, pairs: bool = True, workdir: Path | None = None) -> dict[str, Any]:
    """Build the gallery, search every probe and compute every number (see the module docstring)."""
    from namus_edge.index.build import build_bundle
    from namus_edge.index.bundle import Bundle
    from namus_edge.index.signing import generate_keypair
    from namus_edge.models.analyzer import FaceAnalyzer

    info = machine_info()
    cs = make_case_set(data_dir, lfw_cases, fgnet_subjects, unenrolled)
    threshold, margin = match_threshold(config), config.matching.margin
    top_k = max(5, config.matching.top_k)
    analyzer = FaceAnalyzer(config, with_age=False)
    pair_rows = read_pairs(data_dir) if pairs else []
    vroot = data_dir / "verification"
    result: dict[str, Any] = {
        "machine": info,
        "models": {"detector": analyzer.detector_spec.name, "embedder": analyzer.embedder_spec.name,
                   "detector_input": list(analyzer.detector.input_size)},
        "threshold": threshold, "margin": margin, "top_k": top_k,
        "gallery": {"cases": len(cs.cases), "lfw_cases": sum(c.case_id < FGNET_CASE_BASE for c in cs.cases),
                    "fgnet_cases": sum(c.case_id >= FGNET_CASE_BASE for c in cs.cases)},
    }
    with tempfile.TemporaryDirectory(prefix="namus-ident-", dir=workdir) as tmp:
        tmpdir = Path(tmp)
        write_prepager(tmpdir / "src", cs.cases)
        key, _ = generate_keypair(tmpdir / "operator.key")
        t0 = time.perf_counter()
        summary = build_bundle(config, str(tmpdir / "src"), tmpdir / "bundle", key, analyzer=analyzer, today=TODAY,
                               progress=False)
        result["build"] = {"seconds": round(time.perf_counter() - t0, 1), "faces": summary.faces,
                           "cases_without_face": summary.cases_without_face, "ambiguous": summary.ambiguous,
                           "padded_retry": summary.padded_retry, "problems": summary.problems}
        t0 = time.perf_counter()
        paths = [p.path for p in cs.probes]
        paths += [vroot / r[k] for r in pair_rows for k in ("path_a", "path_b")]
        emb, problems = embed_photos(analyzer, paths)
        result["embed"] = {"images": len(emb), "seconds": round(time.perf_counter() - t0, 1), "no_face": problems}
        with Bundle.load(tmpdir / "bundle") as bundle:
            outs = search_probes(bundle, cs.probes, emb, top_k)
    by_kind = {k: [o for o in outs if o.probe.kind == k] for k in KINDS}
    result["same_age"] = enrolled_metrics(by_kind["same_age"], threshold, margin)
    result["cross_age"] = enrolled_metrics(by_kind["cross_age"], threshold, margin)
    result["cross_age_by_gap"] = {
        name: enrolled_metrics([o for o in by_kind["cross_age"]
                                if bucket_of(o.probe.age_gap or 0.0, AGE_GAP_BUCKETS) == name], threshold, margin)
        for name, _, _ in AGE_GAP_BUCKETS
    }
    result["unenrolled"] = unenrolled_metrics(by_kind["unenrolled"], threshold, margin)
    result["sweep"] = []
    for t in thresholds:
        un = unenrolled_metrics(by_kind["unenrolled"], t, margin)
        sa = enrolled_metrics(by_kind["same_age"], t, margin)
        ca = enrolled_metrics(by_kind["cross_age"], t, margin)
        result["sweep"].append({
            "threshold": round(t, 4), "unenrolled_above": un["above"], "unenrolled_above_count": un["above_count"],
            "unenrolled_vote": un["vote"], "same_age_dir": sa["dir"], "same_age_wrong_top_above": sa["wrong_top_above"],
            "cross_age_dir": ca["dir"], "cross_age_true_above": ca["true_above"],
            "cross_age_wrong_top_above": ca["wrong_top_above"],
        })
    result["unenrolled_top_scores"] = sorted((o.top_score for o in by_kind["unenrolled"] if o.found_face),
                                             reverse=True)[:10]
    if pairs:
        result["pairs"] = pair_metrics(pair_rows, emb, vroot, thresholds)
        sizes = [len(cs.cases), 1_000, 10_000, 30_000]
        result["impostors"] = impostor_metrics(emb, identity_map(data_dir), thresholds, sizes)
    return result


def identity_map(data_dir: Path) -> dict[Path, str]:
    """Photo path -> namespaced identity, from ``verification/manifest.csv``."""
    root = data_dir / "verification"
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return {root / r["path"]: r["identity"] for r in csv.DictReader(fh)}


# --------------------------------------------------------------------------------------- reporting


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def render(r: dict[str, Any]) -> str:
    """Markdown report of :func:`run`'s result."""
    thr = r["threshold"]
    g = r["gallery"]
    lines = [
        f"## Open-set identification: {r['models']['detector']} + {r['models']['embedder']}",
        "",
        machine_markdown(r["machine"]),
        "",
        f"Gallery: {g['cases']} MP cases ({g['lfw_cases']} LFW, {g['fgnet_cases']} FG-NET), "
        f"{r['build']['faces']} faces indexed in {r['build']['seconds']} s "
        f"(cases without a face: {r['build']['cases_without_face']}, padded retries: {r['build']['padded_retry']}, "
        f"ambiguous: {r['build']['ambiguous']}). Probes embedded: {r['embed']['images']} images in "
        f"{r['embed']['seconds']} s, {len(r['embed']['no_face'])} without a face. "
        f"Threshold {thr}, margin {r['margin']}, top-{r['top_k']}.",
        "",
    ]
    rows = []
    for name, key in (("same-age LFW (enrolled)", "same_age"), ("cross-age FG-NET (enrolled)", "cross_age")):
        m = r[key]
        rows.append({"probes": name, "n": m["probes"], "no face": m["no_face"], "rank-1": _pct(m["rank1"]),
                     "rank-5": _pct(m["rank5"]), f"DIR@{thr}": _pct(m["dir"]), f"vote@{thr}": _pct(m["vote"]),
                     f"wrong case first >= {thr}": _pct(m["wrong_top_above"])})
    u = r["unenrolled"]
    rows.append({"probes": "unenrolled LFW singles", "n": u["probes"], "no face": u["no_face"],
                 f"wrong case first >= {thr}": f"{_pct(u['above'])} ({u['above_count']})"})
    cols = ["probes", "n", "no face", "rank-1", "rank-5", f"DIR@{thr}", f"vote@{thr}", f"wrong case first >= {thr}"]
    lines += [markdown_table(rows, cols), ""]
    gap_rows = [{"age gap (y)": k, "probes": v["probes"], "rank-1": _pct(v["rank1"]), "rank-5": _pct(v["rank5"]),
                 f"DIR@{thr}": _pct(v["dir"]), f"right case >= {thr}": _pct(v["true_above"])}
                for k, v in r["cross_age_by_gap"].items()]
    lines += ["FG-NET cross-age probes by age gap to the enrolled (youngest) photo:", "",
              markdown_table(gap_rows, list(gap_rows[0])), ""]
    sweep = [{"threshold": f"{s['threshold']:.2f}",
              "unenrolled >= thr": f"{_pct(s['unenrolled_above'])} ({s['unenrolled_above_count']})",
              "unenrolled vote": _pct(s["unenrolled_vote"]), "same-age DIR": _pct(s["same_age_dir"]),
              "cross-age DIR": _pct(s["cross_age_dir"]), "cross-age right >= thr": _pct(s["cross_age_true_above"]),
              "cross-age wrong first >= thr": _pct(s["cross_age_wrong_top_above"])} for s in r["sweep"]]
    lines += ["Threshold sweep (open set):", "", markdown_table(sweep, list(sweep[0])), ""]
    if "pairs" in r:
        p = r["pairs"]
        prow = [{"pairs": k, "pos/neg": f"{v['positives']}/{v['negatives']}", "failed": v["failed_pairs"],
                 "AUC": f"{v['auc']:.4f}", "thr@FAR1e-2": f"{v['far_thresholds']['1e-2']:.3f}",
                 "thr@FAR1e-3": f"{v['far_thresholds']['1e-3']:.3f}", "TAR@FAR1e-3": _pct(v["tar_at_far"]["1e-3"]),
                 "max negative": f"{v['max_negative']:.3f}"} for k, v in p.items()]
        lines += ["Pair-level thresholds (verification/pairs.csv, same embeddings):", "",
                  markdown_table(prow, list(prow[0])), ""]
        srows = []
        for i, t in enumerate(r["sweep"]):
            row: dict[str, Any] = {"threshold": f"{t['threshold']:.2f}"}
            for k, v in p.items():
                if k not in ("lfw_all", "fgnet"):  # the JSON has every group; keep the table readable
                    continue
                s = v["sweep"][i]
                row[f"{k} FAR"] = f"{_pct(s['far'])} ({s['false_accepts']})"
                row[f"{k} TAR"] = _pct(s["tar"])
            if "fgnet" in p:
                for b, e in p["fgnet"]["tar_by_gap"].items():
                    row[f"FG-NET TAR {b}y"] = _pct(e["tar"][f"{t['threshold']:.2f}"])
            srows.append(row)
        lines += ["Pair-level FAR / TAR at each threshold:", "", markdown_table(srows, list(srows[0])), ""]
    imp = r.get("impostors") or {}
    if imp:
        base_name = "lfw" if "lfw" in imp else next(iter(imp))
        base = imp[base_name]
        sizes = list(base["sweep"][0]["open_set_predicted"])
        lines += ["All-vs-all different-identity pairs of the embedded photos: "
                  + "; ".join(f"{k} {v['pairs']} pairs, max {v['max']:.3f}, thresholds at FAR "
                              + ", ".join(f"{f}: {t:.3f}" for f, t in v["far_thresholds"].items() if t is not None)
                              for k, v in imp.items())
                  + f". Predicted chance that an unknown face gets a false candidate against N gallery faces, "
                  f"1 - (1 - FAR)^N, from the {base_name} FAR (\"<\": no pair above, 95 % upper bound 3/pairs):", ""]
        irows = []
        for i, t in enumerate(base["sweep"]):
            row = {"threshold": f"{t['threshold']:.2f}"}
            for k, v in imp.items():
                e = v["sweep"][i]
                row[f"{k} FAR"] = f"{e['far']:.1e} ({e['false_accepts']})"
            for n in sizes:
                if t["false_accepts"]:
                    row[f"N={n}"] = _pct(t["open_set_predicted"][n])
                else:  # no impostor pair above: bound the FAR by the rule of three (95 % upper limit)
                    row[f"N={n}"] = "< " + _pct(1.0 - (1.0 - 3.0 / base["pairs"]) ** int(n))
            irows.append(row)
        lines += [markdown_table(irows, list(irows[0])), ""]
    return "\n".join(lines)


def _finite(x: Any) -> Any:
    """JSON-safe copy: non-finite floats (failed comparisons) become None."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float | np.floating) and not np.isfinite(x):
        return None
    return x


def parse_thresholds(text: str) -> list[float]:
    """``START:STOP:STEP`` (STOP inclusive) or a comma list -> thresholds."""
    if ":" in text:
        start, stop, step = (float(x) for x in text.split(":"))
        n = round((stop - start) / step) + 1
        return [round(start + i * step, 6) for i in range(max(n, 1))]
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="shared data folder (default ../shared/data)")
    ap.add_argument("--config", type=Path, default=None, help="config.yaml (default: built-in defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--thresholds", default="0.25:0.45:0.01", help="sweep, START:STOP:STEP or a comma list")
    ap.add_argument("--lfw-cases", type=int, default=0, help="enrol only the first N LFW identities (0 = all)")
    ap.add_argument("--fgnet-subjects", type=int, default=0, help="enrol only the first N FG-NET subjects (0 = all)")
    ap.add_argument("--unenrolled", type=int, default=0, help="probe with only N single-photo identities (0 = all)")
    ap.add_argument("--no-pairs", action="store_true", help="skip the pair-level threshold tables")
    ap.add_argument("--quick", action="store_true", help="40 LFW cases, 5 FG-NET subjects, 60 unenrolled, no pairs")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temporary case set and bundle")
    ap.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON ('-' = stdout only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.lfw_cases, args.fgnet_subjects, args.unenrolled, args.no_pairs = 40, 5, 60, True
    config = load_config(args.config, args.set)
    result = run(config, args.data, parse_thresholds(args.thresholds), lfw_cases=args.lfw_cases,
                 fgnet_subjects=args.fgnet_subjects, unenrolled=args.unenrolled, pairs=not args.no_pairs,
                 workdir=args.workdir)
    result["command"] = " ".join(["python -m bench.identification", *(argv if argv is not None else sys.argv[1:])])
    text = json.dumps(_finite(result), indent=1, default=float)
    if args.json == "-":
        print(text)
        return 0
    print(render(result))
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
