"""FaceAnalyzer: detection, alignment, quality, embedding, age and sex behind one object.

``FaceAnalyzer(config).analyze(image_bgr)`` is the simple API. The video pipeline uses the
steps separately (:meth:`detect`, :meth:`prepare`, :meth:`embed`, :meth:`estimate_age_sex`) so it
can track faces first and embed only new or better ones, batched across faces and cameras.

Loading verifies each model file's sha256 against the registry and warms the models up; it
never downloads (run ``namus-edge models fetch`` first).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from namus_edge.core.config import Config
from namus_edge.core.errors import ModelError
from namus_edge.models.age import AgeEstimator
from namus_edge.models.aligner import align_age_chip, align_arcface
from namus_edge.models.backends.factory import create_backend
from namus_edge.models.detector import FaceDetector
from namus_edge.models.embedder import FaceEmbedder
from namus_edge.models.face import Detection, Face, QualityReport
from namus_edge.models.quality import assess
from namus_edge.models.registry import ModelSpec, get_spec, resolve
from namus_edge.models.sex import SexEstimator, mix_ages

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedFace:
    """A detected face with its crops, ready for batched embedding and age.

    Attributes:
        detection: box and landmarks in image pixels.
        aligned: uint8 (112, 112, 3) BGR ArcFace-aligned crop.
        quality: quality terms and gate result.
        image: the uint8 (H, W, 3) BGR frame the face was found in (kept for :attr:`age_chip`).
    """

    detection: Detection
    aligned: np.ndarray
    quality: QualityReport
    image: np.ndarray = field(repr=False, compare=False)

    @cached_property
    def age_chip(self) -> np.ndarray:
        """uint8 (64, 64, 3) BGR chip for the age model, cut on first use (only faces that get an age pay for it)."""
        return align_age_chip(self.image, self.detection.landmarks)


@dataclass(frozen=True)
class LoadedModel:
    """Identity of a loaded model (for manifests and events)."""

    name: str
    sha256: str
    engine: str


class FaceAnalyzer:
    """Detector + embedder + age model, configured by a :class:`Config`.

    Args:
        config: the validated configuration (models, detection, quality sections).
        cache_dir: model cache; default ``config.models.resolved_cache_dir()``.
        with_age: load the age and sex models (when configured; ``models.age``, ``models.sex``, ``models.age2``).
    """

    def __init__(self, config: Config, cache_dir: Path | None = None, *, with_age: bool = True) -> None:
        self.config = config
        cache = cache_dir or config.models.resolved_cache_dir()
        det_name, emb_name, age_name = config.models.selected()
        bcfg = config.models.backend
        self.detector_spec: ModelSpec = get_spec(det_name)
        self.embedder_spec: ModelSpec = get_spec(emb_name)
        self.detector = FaceDetector(create_backend(resolve(det_name, cache), bcfg), self.detector_spec,
                                     config.detection)
        self._cache = cache
        self._verifier: FaceDetector | None = None
        if config.detection.verify_low is not None:
            self.verifier()
        self.embedder = FaceEmbedder(create_backend(resolve(emb_name, cache), bcfg), self.embedder_spec,
                                     max_batch=config.service.batch_max_faces)
        self.age: AgeEstimator | None = None
        self.age_spec: ModelSpec | None = None
        if with_age and age_name is not None:
            self.age_spec = get_spec(age_name)
            self.age = AgeEstimator(create_backend(resolve(age_name, cache), bcfg), self.age_spec,
                                    flip=config.models.age_flip,
                                    calibration=_calibration(config.models.age_calibration))
        self.sex: SexEstimator | None = None
        self.age2: SexEstimator | None = None
        sex_name, age2_name = config.models.selected_sex(), config.models.selected_age2()
        if with_age and sex_name is not None:
            self.sex = SexEstimator(create_backend(resolve(sex_name, cache), bcfg), get_spec(sex_name),
                                    max_batch=config.service.batch_max_faces)
        if with_age and age2_name is not None:
            age2_spec = get_spec(age2_name)
            if age2_spec.role != "age_sex":
                raise ModelError(f"models.age2={age2_name} is a {age2_spec.role} model; "
                                 "models.age2 needs an age_sex model (e.g. agesex_utk_v1)")
            needs = age2_spec.extra.get("embedder")
            if needs and needs != emb_name:
                raise ModelError(f"models.age2={age2_name} reads {needs} embeddings, but the embedder is {emb_name}; "
                                 f"use {needs} or another models.age2")
            if self.sex is not None and age2_name == sex_name:
                self.age2 = self.sex  # one model fills both: run it once
            else:
                self.age2 = SexEstimator(create_backend(resolve(age2_name, cache), bcfg), age2_spec,
                                         max_batch=config.service.batch_max_faces)
        runs = bcfg.warmup_runs
        if runs:
            self.detector.warmup(runs)
            self.embedder.warmup(runs)
            if self.age is not None:
                self.age.warmup(runs)
            if self.sex is not None:
                self.sex.warmup(runs)
            if self.age2 is not None and self.age2 is not self.sex:
                self.age2.warmup(runs)

    # -- identity ----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.embedder.dim

    def model_identities(self) -> dict[str, LoadedModel]:
        """Name, sha256 and execution engine of each loaded model, keyed by role."""
        out = {
            "detector": LoadedModel(self.detector_spec.name, self.detector_spec.sha256, self.detector.backend.engine),
            "embedder": LoadedModel(self.embedder_spec.name, self.embedder_spec.sha256, self.embedder.backend.engine),
        }
        if self._verifier is not None and self._verifier is not self.detector:
            out["verifier"] = LoadedModel(self._verifier.spec.name, self._verifier.spec.sha256,
                                          self._verifier.backend.engine)
        if self.age is not None and self.age_spec is not None:
            out["age"] = LoadedModel(self.age_spec.name, self.age_spec.sha256, self.age.backend.engine)
        if self.sex is not None:
            out["sex"] = LoadedModel(self.sex.spec.name, self.sex.spec.sha256, self.sex.backend.engine)
        if self.age2 is not None:
            out["age2"] = LoadedModel(self.age2.spec.name, self.age2.spec.sha256, self.age2.backend.engine)
        return out

    def verifier(self) -> FaceDetector:
        """The detector scoring small-face verification crops (``models.verifier``).

        The full-frame detector itself when ``models.verifier`` names none. Loaded with the analyzer when
        ``detection.verify_low`` is set, else on first call.
        """
        if self._verifier is None:
            name = self.config.models.selected_verifier()
            if name in (None, self.detector_spec.name):
                self._verifier = self.detector
            else:
                self._verifier = FaceDetector(create_backend(resolve(name, self._cache), self.config.models.backend),
                                              get_spec(name), self.config.detection)
        return self._verifier

    # -- steps -------------------------------------------------------------------------------

    def detect(self, image_bgr: np.ndarray, *, photo: bool = False) -> list[Detection]:
        """Detect faces in a uint8 (H, W, 3) BGR image; largest first.

        With ``photo=True`` (still photos: ingest, evaluation) a padded retry runs when nothing
        is found (see :meth:`FaceDetector.detect_photo`).
        """
        _check_image(image_bgr)
        if photo:
            return self.detector.detect_photo(image_bgr)[0]
        return self.detector.detect(image_bgr)

    def prepare(self, image_bgr: np.ndarray, det: Detection) -> PreparedFace:
        """Align one detected face and assess its quality (no model runs; the age chip is cut lazily)."""
        aligned = align_arcface(image_bgr, det.landmarks)
        return PreparedFace(det, aligned, assess(det, aligned, self.config.quality), image_bgr)

    def embed(self, faces: Sequence[PreparedFace]) -> np.ndarray:
        """Embeddings of prepared faces in one batch: float32 (N, D), L2-normalised."""
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        return self.embedder.embed(np.stack([f.aligned for f in faces]))

    def estimate_ages(self, faces: Sequence[PreparedFace]) -> np.ndarray | None:
        """Ages in years of prepared faces in one batch: float32 (N,), or None without an age model."""
        return self.estimate_age_sex(faces)[0]

    def estimate_age_sex(self, faces: Sequence[PreparedFace], embeddings: np.ndarray | None = None,
                         ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(ages float32 (N,) years, p_male float32 (N,)) of prepared faces; each None without its model.

        ``p_male`` comes from ``models.sex``. With a second age model (``models.age2``) the age is
        ``models.age_sex_mix`` of its estimate plus the rest from the age model, except below
        ``models.age_sex_mix_min_age`` (age model alone; the age model is skipped when the mix is 1).

        Args:
            faces: N prepared faces.
            embeddings: float32 (N, D) their embeddings (:meth:`embed`), when already computed; a
                model that reads embeddings gets them computed here otherwise.
        """
        if not faces:
            empty = np.zeros((0,), np.float32)
            return (empty if self.age or self.age2 else None), (empty if self.sex else None)
        aligned = np.stack([f.aligned for f in faces])
        chips = np.stack([f.age_chip for f in faces])
        if embeddings is None and any(m is not None and m.needs_embedding for m in (self.sex, self.age2)):
            embeddings = self.embed(faces)
        sex = None if self.sex is None else self.sex.estimate(aligned, chips, embeddings)
        age2 = None
        if self.age2 is not None:
            age2 = (sex if self.age2 is self.sex and sex is not None
                    else self.age2.estimate(aligned, chips, embeddings)).age
        mix = self.config.models.age_sex_mix
        skip_age = age2 is not None and mix >= 1.0
        ages = None if self.age is None or skip_age else self.age.estimate(chips)
        return (mix_ages(ages, age2, mix, self.config.models.age_sex_mix_min_age),
                None if sex is None else sex.p_male)

    # -- one-call API --------------------------------------------------------------------------

    def analyze(self, image_bgr: np.ndarray, *, photo: bool = False, gate: bool = False) -> list[Face]:
        """Detect, align, embed and age every face of one image.

        Args:
            image_bgr: uint8 (H, W, 3) BGR.
            photo: still photo: retry on a padded canvas when no face is found.
            gate: skip embedding (empty embedding, age and p_male None) for faces failing the quality gates.

        Returns:
            Faces, largest first.
        """
        return self.analyze_batch([image_bgr], photo=photo, gate=gate)[0]

    def analyze_batch(self, images_bgr: Sequence[np.ndarray], *, photo: bool = False,
                      gate: bool = False) -> list[list[Face]]:
        """:meth:`analyze` for several images, embedding all their faces in shared batches."""
        prepared: list[list[PreparedFace]] = [
            [self.prepare(img, d) for d in self.detect(img, photo=photo)] for img in images_bgr
        ]
        flat = [(i, p) for i, faces in enumerate(prepared) for p in faces if p.quality.passed or not gate]
        emb = self.embed([p for _, p in flat])
        ages, p_male = self.estimate_age_sex([p for _, p in flat], emb)
        results: dict[int, tuple[np.ndarray, float | None, float | None]] = {}
        for k, (_, p) in enumerate(flat):
            results[id(p)] = (emb[k], None if ages is None else float(ages[k]),
                              None if p_male is None else float(p_male[k]))
        empty = np.zeros((0,), np.float32)
        out: list[list[Face]] = []
        for faces in prepared:
            row = []
            for p in faces:
                vec, age, pm = results.get(id(p), (empty, None, None))
                d = p.detection
                row.append(Face(bbox=d.bbox, landmarks=d.landmarks, det_score=d.score, quality=p.quality.score,
                                embedding=vec, age=age, quality_report=p.quality, p_male=pm))
            out.append(row)
        return out


def _calibration(points: Sequence[Sequence[float]] | None) -> np.ndarray | None:
    if not points:
        return None
    arr = np.asarray(points, dtype=np.float64)
    return arr[np.argsort(arr[:, 0])]


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise ValueError(f"expected a uint8 (H, W, 3) BGR image, got shape {shape} dtype {dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image too small: {image.shape[1]}x{image.shape[0]} pixels")
