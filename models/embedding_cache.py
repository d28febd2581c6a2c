"""On-disk cache of per-photo face embeddings for evaluations (``namus-edge eval identify``).

Embedding ~14k photos costs 10-20 CPU minutes; the cache makes every re-run take seconds. An
entry holds what the evaluation needs of the **largest** face of one photo (the ``index search``
rule, padded retry on): its embedding, estimated age, box area, quality and ``p_male``.

Two tiers, so that changing the age or sex model does not detect and embed every photo again:

* **faces**: ``<root>/<key>/shard-*.npz``, where ``key`` hashes the detector and embedder sha256
  plus the settings that change what a still photo yields (the still-photo detection settings
  and the quality settings). An entry holds the embedding, box, landmarks, detector score, area
  and quality.
* **attributes**: ``<root>/<key>/attrs-<akey>/shard-*.npz``, where ``akey`` hashes the age and
  sex models' sha256 and the ``models`` settings. An entry holds age and ``p_male``, computed
  from the photo and the cached landmarks (no detection, no embedding: a few ms per photo).

Inside, entries are keyed by the sha256 of the photo file's bytes: an edited photo is embedded
again, while a copied, moved or re-staged data folder (new paths, new mtimes, same bytes) is not.
Hashing costs about a second per 10k photos; embedding them costs tens of minutes. Shards are
written atomically every ``flush_every`` photos, so an interrupted run keeps its work.

The cache holds biometric templates of evaluation photos only (labelled research data); it is
never used for camera faces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from namus_edge.core.errors import ImageReadError
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.face import Detection
from namus_edge.models.imagefile import read_image

logger = logging.getLogger(__name__)

CACHE_ENV = "NAMUS_EDGE_EMBED_CACHE"
FORMAT = 3
#: Detection settings that change what a still photo yields (the video-only ones do not).
STILL_DETECTION_FIELDS = ("input_size", "score_threshold", "nms_threshold", "max_faces", "pad_retry",
                          "pad_retry_score")

#: ``models`` settings that do not change age or sex (left out of the attributes key).
NOT_ATTRIBUTE_SETTINGS = {"backend", "detector", "embedder", "verifier"}

_Key = str  # sha256 hex of the photo file


def default_cache_root() -> Path:
    """``$NAMUS_EDGE_EMBED_CACHE``, else ``~/.cache/namus-edge/embeddings``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/namus-edge/embeddings").expanduser()


def _digest(blob: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def model_key(analyzer: FaceAnalyzer) -> str:
    """Faces-tier folder name: embedder name + 24 hex digits over detector/embedder sha256 and settings."""
    ids = analyzer.model_identities()
    det = analyzer.config.detection.model_dump(mode="json")
    blob = {"format": FORMAT, "detector": ids["detector"].sha256, "embedder": ids["embedder"].sha256,
            "detection": {k: det[k] for k in STILL_DETECTION_FIELDS},
            "quality": analyzer.config.quality.model_dump(mode="json")}
    return f"{ids['embedder'].name}-{_digest(blob)}"


def attribute_key(analyzer: FaceAnalyzer) -> str:
    """Attributes-tier folder name: 24 hex digits over the age/sex model sha256 and ``models`` settings."""
    ids = analyzer.model_identities()
    blob = {"format": FORMAT, "models": {role: m.sha256 for role, m in sorted(ids.items())
                                         if role not in ("detector", "embedder")},
            "settings": analyzer.config.models.model_dump(mode="json", exclude=NOT_ATTRIBUTE_SETTINGS)}
    return f"attrs-{_digest(blob)}"


@dataclass(frozen=True)
class PhotoFace:
    """The largest face of one photo, as cached.

    Attributes:
        embedding: float32 (D,) L2-normalised, or ``None`` when no face was found / unreadable.
        age: estimated age in years, or ``None``.
        area: face box area in pixels (0 without a face).
        quality: combined quality score in [0, 1] (0 without a face).
        p_male: probability that the face is male, or ``None`` without a sex model.
        problem: why there is no embedding (``"no face"``, ``"unreadable: ..."``), else ``""``.
    """

    embedding: np.ndarray | None
    age: float | None
    area: float
    quality: float
    p_male: float | None
    problem: str = ""


@dataclass(frozen=True)
class _Found:
    """Faces-tier entry: the largest face's embedding and detection (NaN-filled without a face)."""

    embedding: np.ndarray  # (D,) float32
    bbox: np.ndarray  # (4,) float32 x1, y1, x2, y2 pixels
    landmarks: np.ndarray  # (5, 2) float32 pixels
    score: float
    area: float
    quality: float
    problem: str

    @property
    def has_face(self) -> bool:
        return bool(np.all(np.isfinite(self.embedding)))


def _content_key(path: Path) -> _Key:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _opt(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _write_shard(folder: Path, keys: Sequence[_Key], **arrays: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"shard-{uuid.uuid4().hex}.npz"
    tmp = final.with_suffix(".tmp.npz")
    named: dict[str, np.ndarray] = {"sha256": np.array(list(keys)), **arrays}
    np.savez(tmp, **named)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
    os.replace(tmp, final)


def _read_shards(folder: Path, fields: Sequence[str]) -> list[tuple[list[_Key], dict[str, np.ndarray]]]:
    out = []
    for shard in sorted(folder.glob("shard-*.npz")):
        try:
            with np.load(shard, allow_pickle=False) as z:
                keys = [str(k) for k in z["sha256"]]
                out.append((keys, {f: z[f] for f in fields}))
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("embedding cache: ignoring unreadable shard %s (%s)", shard, exc)
    return out


class EmbeddingCache:
    """Largest-face embeddings (and age, sex) of photos, computed once per model and photo version.

    Args:
        analyzer: the loaded models (their sha256s pick the cache folders).
        root: cache root (default :func:`default_cache_root`).
        flush_every: write a shard after this many newly computed photos.
    """

    def __init__(self, analyzer: FaceAnalyzer, root: Path | None = None, flush_every: int = 500) -> None:
        self.analyzer = analyzer
        self.dir = (root or default_cache_root()) / model_key(analyzer)
        self.attr_dir = self.dir / attribute_key(analyzer)
        self.flush_every = flush_every
        self._faces: dict[_Key, _Found] = {}
        self._attrs: dict[_Key, tuple[float | None, float | None]] = {}
        self._new_faces: dict[_Key, _Found] = {}
        self._new_attrs: dict[_Key, tuple[float | None, float | None]] = {}
        self._load()

    def _load(self) -> None:
        for keys, z in _read_shards(self.dir, ("embedding", "bbox", "landmarks", "score", "area", "quality",
                                               "problem")):
            for i, k in enumerate(keys):
                self._faces[k] = _Found(z["embedding"][i].astype(np.float32), z["bbox"][i], z["landmarks"][i],
                                        float(z["score"][i]), float(z["area"][i]), float(z["quality"][i]),
                                        str(z["problem"][i]))
        for keys, z in _read_shards(self.attr_dir, ("age", "p_male")):
            for i, k in enumerate(keys):
                self._attrs[k] = (_opt(z["age"][i]), _opt(z["p_male"][i]))

    def __len__(self) -> int:
        return len(self._faces) + len(self._new_faces)

    def flush(self) -> None:
        """Write the photos computed since the last flush as new shards (atomic rename)."""
        if self._new_faces:
            keys = list(self._new_faces)
            vals = [self._new_faces[k] for k in keys]
            _write_shard(self.dir, keys, embedding=np.stack([v.embedding for v in vals]),
                         bbox=np.stack([v.bbox for v in vals]), landmarks=np.stack([v.landmarks for v in vals]),
                         score=np.array([v.score for v in vals], np.float32),
                         area=np.array([v.area for v in vals], np.float32),
                         quality=np.array([v.quality for v in vals], np.float32),
                         problem=np.array([v.problem for v in vals]))
            self._faces.update(self._new_faces)
            self._new_faces.clear()
        if self._new_attrs:
            keys = list(self._new_attrs)
            ages = np.array([np.nan if a is None else a for a, _ in self._new_attrs.values()], np.float32)
            pm = np.array([np.nan if p is None else p for _, p in self._new_attrs.values()], np.float32)
            _write_shard(self.attr_dir, keys, age=ages, p_male=pm)
            self._attrs.update(self._new_attrs)
            self._new_attrs.clear()

    def _detect_embed(self, image: np.ndarray | None, problem: str) -> _Found:
        dim = self.analyzer.dim
        nan = _Found(np.full(dim, np.nan, np.float32), np.full(4, np.nan, np.float32),
                     np.full((5, 2), np.nan, np.float32), float("nan"), 0.0, 0.0, problem)
        if image is None:
            return nan
        dets = self.analyzer.detect(image, photo=True)
        if not dets:
            return _Found(nan.embedding, nan.bbox, nan.landmarks, nan.score, 0.0, 0.0, "no face")
        prepared = [self.analyzer.prepare(image, d) for d in dets]
        p = max(prepared, key=lambda x: x.detection.area)
        emb = self.analyzer.embed([p])[0].astype(np.float32)
        d = p.detection
        return _Found(emb, d.bbox.astype(np.float32), d.landmarks.astype(np.float32), float(d.score),
                      float(d.area), float(p.quality.score), "")

    def _age_sex(self, image: np.ndarray, found: _Found) -> tuple[float | None, float | None]:
        det = Detection(found.bbox.astype(np.float32), found.landmarks.astype(np.float32), found.score)
        ages, p_male = self.analyzer.estimate_age_sex([self.analyzer.prepare(image, det)], found.embedding[None, :])
        return (None if ages is None else float(ages[0]), None if p_male is None else float(p_male[0]))

    def get_many(self, paths: Sequence[Path], progress: Callable[[int, int], None] | None = None
                 ) -> list[PhotoFace]:
        """The cached or freshly computed :class:`PhotoFace` of each path, in order.

        Raises:
            FileNotFoundError: a path does not exist (named in the message).
        """
        out: list[PhotoFace] = []
        embedded = aged = 0
        for i, path in enumerate(paths):
            try:
                key = _content_key(Path(path))
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no such image") from None
            found = self._faces.get(key) or self._new_faces.get(key)
            attrs = self._attrs.get(key) or self._new_attrs.get(key)
            image: np.ndarray | None = None
            if found is None or (attrs is None and found.has_face):
                try:
                    image = read_image(Path(path))
                except ImageReadError as exc:
                    found = found or self._detect_embed(None, f"unreadable: {exc}")
            if found is None:
                found = self._detect_embed(image, "")
                self._new_faces[key] = found
                embedded += 1
            if attrs is None:
                attrs = self._age_sex(image, found) if (found.has_face and image is not None) else (None, None)
                self._new_attrs[key] = attrs
                aged += 1
            if len(self._new_faces) >= self.flush_every or len(self._new_attrs) >= self.flush_every:
                self.flush()
            out.append(PhotoFace(found.embedding if found.has_face else None, attrs[0], found.area, found.quality,
                                 attrs[1], found.problem))
            if progress is not None:
                progress(i + 1, len(paths))
        self.flush()
        if embedded or aged:
            logger.info("embedding cache %s: %d photos embedded, %d given age/sex, %d from cache", self.dir,
                        embedded, aged, len(paths) - max(embedded, aged))
        return out
