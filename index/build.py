"""``index build``: NamUs data -> faces -> a signed bundle, optionally incremental on a base.

Stages, each timed for ``bench/ingest.py``: *decode* (read, hash and decode the photo, in a
thread pool), *detect* (detector with the padded retry for tight portraits, face choice,
alignment), *embed* (batched embeddings) and *write* (FAISS index, SQLite, manifest,
signature). A corrupt, truncated or unsupported photo is reported (case, storageKey, reason)
and skipped; the build goes on. Resolved cases and cases that disappeared from the source are
left out, so the next sync removes them from every device.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from namus_edge.core.config import Config
from namus_edge.core.errors import BundleError, NamusEdgeError
from namus_edge.index.bundle import Bundle
from namus_edge.index.bundle_diff import case_diff
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.faces import choose_face, face_thumbnail
from namus_edge.index.layouts import scan_source
from namus_edge.index.manifest import ModelIdentity
from namus_edge.index.namus_api import fetch_all
from namus_edge.index.records import CaseRecord, ImageRef
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.imagefile import check_image_file

logger = logging.getLogger(__name__)

EMBED_BATCH = 32


class BuildError(NamusEdgeError):
    """The build cannot run (bad source, no cases, model mismatch with the base)."""


@dataclass
class BuildSummary:
    """What a build did; printed at the end of ``index build``."""

    bundle: Path
    version: str = ""
    cases_in_source: int = 0
    cases_in_bundle: dict[str, int] = field(default_factory=dict)
    cases_without_face: int = 0
    resolved_excluded: int = 0
    other_case_sets_excluded: int = 0
    images: int = 0
    images_reused: int = 0
    faces: int = 0
    ambiguous: int = 0
    padded_retry: int = 0
    no_face: Counter[str] = field(default_factory=Counter)
    problems: list[dict[str, str]] = field(default_factory=list)
    record_problems: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("decode", "detect", "embed",
                                                                                    "write"), 0.0))
    elapsed_s: float = 0.0
    diff: dict[str, Any] | None = None

    @property
    def images_per_s(self) -> float:
        """Face-worthy images processed per second of wall time."""
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "bundle": str(self.bundle),
            "version": self.version,
            "cases_in_source": self.cases_in_source,
            "cases_in_bundle": self.cases_in_bundle,
            "cases_without_face": self.cases_without_face,
            "resolved_excluded": self.resolved_excluded,
            "other_case_sets_excluded": self.other_case_sets_excluded,
            "images": self.images,
            "images_reused": self.images_reused,
            "faces": self.faces,
            "ambiguous": self.ambiguous,
            "padded_retry": self.padded_retry,
            "no_face": dict(self.no_face),
            "problems": self.problems,
            "record_problems": self.record_problems,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.images_per_s, 3),
            "diff": None if self.diff is None else {k: self.diff.get(k, []) for k in ("added", "removed", "changed")},
        }


def case_row(case: CaseRecord) -> dict[str, Any]:
    """The device-safe bundle row of a case (only :data:`index.bundle.CASE_KEYS`)."""
    return {
        "id_formatted": case.id_formatted,
        "case_set": case.case_set,
        "case_id": case.id,
        "display_name": case.display_name,
        "sex": case.sex,
        "race": list(case.race),
        "age_min": case.age_min,
        "age_max": case.age_max,
        "age_kind": case.age_kind,
        "date_last": case.date_last.isoformat() if case.date_last else None,
        "current_age_min": case.current_age_min,
        "current_age_max": case.current_age_max,
        "city": case.city,
        "county": case.county,
        "state": case.state,
        "link": case.link,
        "modified": case.modified,
        "agency": case.agency,
        "agency_case_number": case.agency_case_number,
    }


@dataclass
class _Photo:
    case: CaseRecord
    image: ImageRef
    path: Path | None
    sha256: str = ""
    pixels: np.ndarray | None = None
    problem: str | None = None
    seconds: float = 0.0


def _load_photo(item: _Photo, max_pixels: int) -> _Photo:
    t0 = time.perf_counter()
    if item.path is None:
        item.problem = "photo file not in the source (not downloaded)"
    else:
        try:
            item.sha256 = hashlib.sha256(item.path.read_bytes()).hexdigest()
        except OSError as exc:
            item.problem = f"unreadable: {exc.strerror or exc}"
        else:
            check = check_image_file(item.path, max_pixels=max_pixels)
            if check.ok:
                item.pixels = check.image
            else:
                item.problem = check.reason or "cannot decode"
    item.seconds = time.perf_counter() - t0
    return item


def _reusable(base: Path | None, model: ModelIdentity) -> tuple[dict[str, tuple[str, np.ndarray, dict]], Bundle | None]:
    """image_key -> (file_sha256, vector, face row) from a base bundle built with the same model."""
    if base is None:
        return {}, None
    try:
        old = Bundle.load(base, verify=True)
    except BundleError as exc:
        raise BuildError(f"--base {base}: {exc}") from exc
    emb = old.manifest.get("embedding_model", {})
    if (emb.get("name"), emb.get("sha256"), emb.get("dim")) != (model.name, model.sha256, model.dim):
        logger.warning("base bundle %s was built with %s; nothing is reused", base, emb.get("name"))
        return {}, old
    vectors, rows = old.embeddings()
    return {r["image_key"]: (r["file_sha256"], vectors[i], r) for i, r in enumerate(rows)}, old


def build_bundle(
    config: Config,
    source: str,
    out: Path,
    key: Path,
    *,
    base: Path | None = None,
    case_sets: Sequence[str] | None = None,
    workers: int | None = None,
    today: date | None = None,
    progress: bool | None = None,
    analyzer: Any = None,
) -> BuildSummary:
    """Build a signed bundle from a NamUs source.

    Args:
        config: the validated config (models, detection, quality, index sections).
        source: a scraper output / store directory, or ``"api"`` to fetch from the NamUs API
            into ``index.api.store_dir`` first.
        out: bundle directory to create (must not exist).
        key: operator Ed25519 private key.
        base: a previous (operator) bundle: unchanged photos (same storageKey and file sha256)
            reuse its embeddings and thumbnails, and a diff is recorded.
        case_sets: subset of MP/UP/UCP (default ``index.case_sets``).
        workers: threads that read and decode photos (default ``index.workers``).
        today: date current ages are computed for (default: today).
        progress: show a progress bar (default: when stderr is a terminal).
        analyzer: a ready :class:`models.analyzer.FaceAnalyzer` (tests and benchmarks reuse one).

    Returns:
        The build summary (also written to the bundle's manifest counts).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    today = today or date.today()
    sets = list(case_sets or config.index.case_sets)
    summary = BuildSummary(bundle=out)
    src_path = _resolve_source(config, source, sets)
    scan = scan_source(src_path)
    records, bad = scan.case_records(today)
    summary.record_problems = [f"{p.path}: {p.reason}" for p in (*scan.problems, *bad)]
    for p in scan.problems:
        logger.warning("source problem: %s: %s", p.path, p.reason)
    summary.cases_in_source = len(records)

    cases: list[CaseRecord] = []
    for c in records:
        if c.case_set not in sets:
            summary.other_case_sets_excluded += 1
        elif c.resolved:
            summary.resolved_excluded += 1
        else:
            cases.append(c)
    if not cases:
        raise BuildError(f"{src_path}: no open cases of {', '.join(sets)} found")

    if analyzer is None:

        analyzer = FaceAnalyzer(config, with_age=False)
    emb_spec, det_spec = analyzer.embedder_spec, analyzer.detector_spec
    model = ModelIdentity(emb_spec.name, emb_spec.sha256, analyzer.dim)
    reuse, old = _reusable(base, model)
    old_thumbs = (old.path / "thumbs") if old is not None else None

    photos = [
        _Photo(c, img, scan.image_files.get(img.storage_key))
        for c in cases
        for img in c.face_images(config.index.categories)
    ]
    summary.images = len(photos)
    detector_info = {"name": det_spec.name, "sha256": det_spec.sha256,
                     "input_size": list(analyzer.detector.input_size), "pad_retry": config.detection.pad_retry}
    writer = BundleWriter(out, model, detector_info, flat_max=config.index.flat_max, flat_fp16=config.index.flat_fp16,
                          source_snapshot=scan.snapshot_time.isoformat() if scan.snapshot_time else None,
                          base_version=old.version if old is not None else None,
                          valid_days=config.index.valid_days)
    new_faces: dict[str, tuple[str, str]] = {}
    cases_with_face: set[str] = set()
    pending: list[tuple[_Photo, Any, Any]] = []

    def flush() -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        vectors = analyzer.embed([p for _, p, _ in pending])
        summary.stage_seconds["embed"] += time.perf_counter() - t0
        for (photo, prepared, choice), vec in zip(pending, vectors, strict=True):
            _add(photo, vec, prepared.detection.bbox, prepared.quality.score, prepared.detection.score,
                 choice.ambiguous, _thumb(photo, prepared.detection.bbox))
            photo.pixels = None  # decoded photos are not kept once embedded
        pending.clear()

    def _thumb(photo: _Photo, bbox: np.ndarray) -> bytes | None:
        if not config.index.thumbnails or photo.pixels is None:
            return None
        return face_thumbnail(photo.pixels, bbox, config.index.thumbnail_px)

    def _add(photo: _Photo, vec: np.ndarray, bbox: Sequence[float], quality: float, det_score: float,
             ambiguous: bool, thumb: bytes | None) -> None:
        writer.add_face(photo.case.id_formatted, photo.image.storage_key, vec, quality=float(quality),
                        det_score=float(det_score), bbox=[float(v) for v in bbox], category=photo.image.category,
                        is_rendering=photo.image.is_rendering, file_sha256=photo.sha256, ambiguous=ambiguous,
                        thumbnail_jpeg=thumb)
        new_faces[photo.image.storage_key] = (photo.case.id_formatted, photo.sha256)
        cases_with_face.add(photo.case.id_formatted)
        summary.faces += 1
        summary.ambiguous += int(ambiguous)

    def problem(photo: _Photo, reason: str, kind: str) -> None:
        summary.no_face[kind] += 1
        entry = {"case": photo.case.id_formatted, "storage_key": photo.image.storage_key, "reason": reason}
        summary.problems.append(entry)
        writer.add_problem(photo.case.id_formatted, photo.image.storage_key, reason)
        logger.warning("skipped %s photo %s: %s", photo.case.id_formatted, photo.image.storage_key, reason)

    n_workers = workers or config.index.workers
    bar = tqdm(total=len(photos), desc="index build", unit="img", disable=None if progress is None else not progress)
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for photo in _ordered(pool, photos, window=4 * n_workers):
                bar.update(1)
                summary.stage_seconds["decode"] += photo.seconds
                if photo.problem:
                    problem(photo, photo.problem, "corrupt_or_missing" if photo.path else "file_missing")
                    continue
                hit = reuse.get(photo.image.storage_key)
                if hit is not None and hit[0] == photo.sha256:
                    _, vec, row = hit
                    thumb_path = old_thumbs / f"{photo.image.storage_key}.jpg" if old_thumbs else None
                    thumb = thumb_path.read_bytes() if thumb_path and thumb_path.is_file() else None
                    _add(photo, vec, row["bbox"], row["quality"], row["det_score"], bool(row["ambiguous"]), thumb)
                    summary.images_reused += 1
                    photo.pixels = None
                    continue
                t0 = time.perf_counter()
                assert photo.pixels is not None
                dets, padded = analyzer.detector.detect_photo(photo.pixels)
                choice = choose_face(dets, photo.pixels.shape, center_margin=config.index.center_margin,
                                     min_face_px=config.index.min_face_px)
                if choice is None:
                    summary.stage_seconds["detect"] += time.perf_counter() - t0
                    problem(photo, "no face found" if not dets else "face too small", "no_face" if not dets
                            else "face_too_small")
                    photo.pixels = None
                    continue
                summary.padded_retry += int(padded)
                prepared = analyzer.prepare(photo.pixels, dets[choice.index])
                summary.stage_seconds["detect"] += time.perf_counter() - t0
                pending.append((photo, prepared, choice))
                if len(pending) >= EMBED_BATCH:
                    flush()
            flush()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()

    for c in cases:
        if c.id_formatted in cases_with_face:
            writer.add_case(case_row(c))
            summary.cases_in_bundle[c.case_set] = summary.cases_in_bundle.get(c.case_set, 0) + 1
        else:
            summary.cases_without_face += 1
    diff = None
    if old is not None:
        diff = case_diff({c["id_formatted"]: c for c in old.cases()}, old.face_keys(),
                         {c.id_formatted: case_row(c) for c in cases if c.id_formatted in cases_with_face},
                         new_faces)
        old.close()
    t0 = time.perf_counter()
    if summary.faces == 0:
        writer.abort()
        raise BuildError(f"{src_path}: no usable face in {summary.images} face-worthy photos; nothing to index")
    manifest = writer.finish(key, diff)
    summary.stage_seconds["write"] += time.perf_counter() - t0
    summary.version = manifest["bundle_version"]
    summary.diff = diff
    summary.elapsed_s = time.perf_counter() - t_start
    return summary


def _ordered(pool: ThreadPoolExecutor, photos: list[_Photo], window: int) -> Iterator[_Photo]:
    """Decode photos in the pool, at most ``window`` ahead, yielding them in order."""
    window = max(4, window)
    futures = []
    it = iter(photos)
    for item in it:
        futures.append(pool.submit(_load_photo, item, 40_000_000))
        if len(futures) >= window:
            break
    while futures:
        done = futures.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            futures.append(pool.submit(_load_photo, nxt, 40_000_000))
        yield done.result()


def _resolve_source(config: Config, source: str, case_sets: Sequence[str]) -> Path:
    if source != "api":
        path = Path(source)
        if not path.exists():
            raise BuildError(f"--source {source}: no such directory")
        return path

    store = Path(config.index.api.store_dir or Path(config.service.state_dir) / "namus-api")
    report = fetch_all(config.index.api, store, case_sets, categories=config.index.categories)
    logger.info("NamUs API fetch: %s", report)
    return store
