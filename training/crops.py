"""Aligned-crop cache for training and evaluating the age/sex model (NumPy + the runtime models only).

Every labelled image of a manifest goes through the runtime's own path: ``FaceAnalyzer.detect``
(photo mode, largest face), ``FaceAnalyzer.prepare`` (ArcFace 112x112 crop and age chip), and
``age-v1`` on the chip. The result is stored once per (manifest, detector) in an ``.npz`` so
training runs never re-detect.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from namus_edge.core.config import Config
from namus_edge.core.errors import ImageReadError, NamusEdgeError
from namus_edge.core.fsutil import write_atomic
from namus_edge.models.age import calibrate, expected_age
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.imagefile import read_image

logger = logging.getLogger(__name__)

#: Bump when the cached arrays change meaning.
CACHE_VERSION = 1
GENDER_CODES = {"male": 1, "female": 0}


class TrainingDataError(NamusEdgeError):
    """A training manifest is missing a column, has a bad value, or the cache is unusable."""


@dataclass(frozen=True)
class FaceSet:
    """Aligned faces with labels.

    Attributes:
        paths: (N,) manifest paths (str).
        aligned: uint8 (N, 112, 112, 3) **BGR** ArcFace crops, exactly ``FaceAnalyzer.prepare(...).aligned``.
        age: float32 (N,) true age in years.
        male: int8 (N,) 1 male, 0 female, -1 unknown.
        race: (N,) race label (str, "" when unknown).
        dataset: (N,) dataset column (str).
        age_v1: float32 (N,) raw (uncalibrated) age-v1 estimate with the configured flip, years.
        manifest_sha256: sha256 of the manifest rows used (see :func:`manifest_digest`).
    """

    paths: np.ndarray
    aligned: np.ndarray
    age: np.ndarray
    male: np.ndarray
    race: np.ndarray
    dataset: np.ndarray
    age_v1: np.ndarray
    manifest_sha256: str

    def __len__(self) -> int:
        return int(self.age.shape[0])

    def subset(self, idx: np.ndarray) -> FaceSet:
        """Rows ``idx`` (int or bool index array) as a new set."""
        return FaceSet(self.paths[idx], self.aligned[idx], self.age[idx], self.male[idx], self.race[idx],
                       self.dataset[idx], self.age_v1[idx], self.manifest_sha256)


_ARRAYS = ("paths", "aligned", "age", "male", "race", "dataset", "age_v1")


def read_rows(manifest: Path, dataset: str | None) -> list[dict[str, str]]:
    """Labelled rows of a manifest (``path``, ``age`` [, ``gender``, ``race``, ``dataset``]).

    Rows without an age are dropped; with ``dataset`` only rows of that dataset are kept.

    Raises:
        TrainingDataError: unreadable file, missing column, or a non-numeric age (row number named).
    """
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("path", "age") if c not in (reader.fieldnames or [])]
            if missing:
                raise TrainingDataError(f"{manifest}: missing column(s) {', '.join(missing)}")
            rows = []
            for i, r in enumerate(reader):
                if dataset and r.get("dataset") != dataset:
                    continue
                if not (r.get("age") or "").strip():
                    continue
                try:
                    float(r["age"])
                except ValueError as exc:
                    raise TrainingDataError(f"{manifest}: row {i + 2}: age {r['age']!r} is not a number") from exc
                rows.append(r)
    except OSError as exc:
        raise TrainingDataError(f"cannot read {manifest}: {exc.strerror or exc}") from exc
    if not rows:
        raise TrainingDataError(f"{manifest}: no labelled rows" + (f" of dataset {dataset!r}" if dataset else ""))
    return rows


def manifest_digest(rows: list[dict[str, str]]) -> str:
    """sha256 over ``path,age,gender,race`` of every row, in manifest order (the data identity)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['path']},{r['age']},{r.get('gender', '')},{r.get('race', '')}\n".encode())
    return h.hexdigest()


def _cache_file(cache_dir: Path, digest: str, config: Config) -> Path:
    det, _, age = config.models.selected()
    key = hashlib.sha256(f"{CACHE_VERSION}|{digest}|{det}|{age}|{config.models.age_flip}".encode()).hexdigest()
    return cache_dir / f"faces-{key[:16]}.npz"


def load_faces(manifest: Path, root: Path, cache_dir: Path, config: Config, *,
               dataset: str | None = None, limit: int | None = None, workers: int = 1) -> FaceSet:
    """Aligned faces of a manifest, from the cache or computed (and cached) now.

    Args:
        manifest: CSV with ``path`` (relative to ``root``) and ``age``; ``gender`` (male/female) and
            ``race`` are used when present.
        root: folder the paths are relative to.
        cache_dir: where ``faces-<key>.npz`` lives; key = manifest rows + detector + age model.
        config: selects the detector and age model (the runtime's).
        dataset: keep only rows whose ``dataset`` column equals this.
        limit: keep only the first ``limit`` labelled rows (small reproducibility runs).
        workers: processes that detect and align in parallel (contiguous chunks; same result as 1).

    Returns:
        The faces that had a detection (images without a face are logged and left out).
    """
    rows = read_rows(manifest, dataset)
    if limit is not None:
        rows = rows[:limit]
    digest = manifest_digest(rows)
    path = _cache_file(cache_dir, digest, config)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return FaceSet(z["paths"], z["aligned"], z["age"], z["male"], z["race"], z["dataset"], z["age_v1"],
                           str(z["manifest_sha256"]))
    if workers > 1 and len(rows) > workers:
        bounds = np.linspace(0, len(rows), workers + 1).astype(int)
        chunks = [rows[a:b] for a, b in itertools.pairwise(bounds)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_compute, chunks, [root] * workers, [config] * workers, [digest] * workers))
        arrays = {f: np.concatenate([getattr(p, f) for p in parts]) for f in _ARRAYS}
        faces = FaceSet(**arrays, manifest_sha256=digest)
    else:
        faces = _compute(rows, root, config, digest)
    cache_dir.mkdir(parents=True, exist_ok=True)

    buf = io.BytesIO()
    np.savez(buf, paths=faces.paths, aligned=faces.aligned, age=faces.age, male=faces.male, race=faces.race,
             dataset=faces.dataset, age_v1=faces.age_v1, manifest_sha256=np.asarray(faces.manifest_sha256))
    write_atomic(path, buf.getvalue())
    logger.info("cached %d aligned faces of %s in %s", len(faces), manifest, path)
    return faces


def _compute(rows: list[dict[str, str]], root: Path, config: Config, digest: str) -> FaceSet:
    analyzer = FaceAnalyzer(config, with_age=True)
    if analyzer.age is None:
        raise TrainingDataError("no age model configured (models.age is null); the cache records age-v1 estimates")
    age_model = analyzer.age
    paths, aligned, ages, male, race, dataset, chips = [], [], [], [], [], [], []
    skipped = 0
    for r in rows:
        try:
            image = read_image(root / r["path"])
        except ImageReadError as exc:
            logger.warning("skipping %s: %s", r["path"], exc)
            skipped += 1
            continue
        dets = analyzer.detect(image, photo=True)
        if not dets:
            skipped += 1
            continue
        p = analyzer.prepare(image, dets[0])
        paths.append(r["path"])
        aligned.append(p.aligned)
        chips.append(p.age_chip)
        ages.append(float(r["age"]))
        male.append(GENDER_CODES.get((r.get("gender") or "").strip().lower(), -1))
        race.append((r.get("race") or "").strip())
        dataset.append((r.get("dataset") or "").strip())
    if skipped:
        logger.warning("%d of %d images had no face or could not be read", skipped, len(rows))
    chip_arr = np.stack(chips) if chips else np.zeros((0, 64, 64, 3), np.uint8)
    raw = expected_age(age_model.probabilities(chip_arr)) if chips else np.zeros(0, np.float32)
    return FaceSet(np.asarray(paths, dtype=str), np.stack(aligned) if aligned else np.zeros((0, 112, 112, 3), np.uint8),
                   np.asarray(ages, np.float32), np.asarray(male, np.int8), np.asarray(race, dtype=str),
                   np.asarray(dataset, dtype=str), raw.astype(np.float32), digest)


def calibrated_age_v1(faces: FaceSet, config: Config) -> np.ndarray:
    """age-v1 estimates of ``faces`` after the configured calibration; float32 (N,) years."""
    points = config.models.age_calibration
    if not points:
        return faces.age_v1
    pts = np.asarray(points, np.float64)
    return calibrate(faces.age_v1, pts[np.argsort(pts[:, 0])])
