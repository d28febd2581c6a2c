"""On-disk cache of per-photo face embeddings for evaluations (``namus-edge eval identify``).

Embedding ~14k photos costs 10-20 CPU minutes; the cache makes every re-run take seconds. An
entry holds what the evaluation needs of the **largest** face of one photo (the ``index search``
rule, padded retry on): its embedding, estimated age, box area, quality and ``p_male``.

Layout: ``<root>/<key>/shard-*.npz``, where ``key`` is a hash of the detector and embedder sha256
(and the age model's, when one runs) plus the detection settings, so a different model never
reads another model's vectors. Inside, entries are keyed by the photo's absolute path, its
``mtime_ns`` and size: an edited photo is embedded again. Shards are written atomically every
``flush_every`` photos, so an interrupted run keeps its work.

The cache holds biometric templates of evaluation photos only (labelled research data); it is
never used for camera faces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from namus_edge.core.errors import ImageReadError
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.imagefile import read_image

logger = logging.getLogger(__name__)

CACHE_ENV = "NAMUS_EDGE_EMBED_CACHE"
FORMAT = 1


def default_cache_root() -> Path:
    """``$NAMUS_EDGE_EMBED_CACHE``, else ``~/.cache/namus-edge/embeddings``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/namus-edge/embeddings").expanduser()


def model_key(analyzer: FaceAnalyzer) -> str:
    """Cache folder name: 24 hex digits over the model sha256s and the detection settings."""
    ids = analyzer.model_identities()
    parts = {role: m.sha256 for role, m in sorted(ids.items())}
    det = analyzer.config.detection.model_dump(mode="json")
    blob = json.dumps({"format": FORMAT, "models": parts, "detection": det}, sort_keys=True)
    return f"{ids['embedder'].name}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


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


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), int(st.st_mtime_ns), int(st.st_size)


def _opt(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


class EmbeddingCache:
    """Largest-face embeddings of photos, computed once per model and photo version.

    Args:
        analyzer: the loaded models (their sha256s pick the cache folder).
        root: cache root (default :func:`default_cache_root`).
        flush_every: write a shard after this many newly embedded photos.
    """

    def __init__(self, analyzer: FaceAnalyzer, root: Path | None = None, flush_every: int = 500) -> None:
        self.analyzer = analyzer
        self.dir = (root or default_cache_root()) / model_key(analyzer)
        self.flush_every = flush_every
        self._entries: dict[tuple[str, int, int], PhotoFace] = {}
        self._pending: dict[tuple[str, int, int], PhotoFace] = {}
        self._load()

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    paths, mt, sz = z["paths"], z["mtime_ns"], z["size"]
                    emb, age, area, qual, pm, prob = (z["embedding"], z["age"], z["area"], z["quality"],
                                                      z["p_male"], z["problem"])
            except (OSError, KeyError, ValueError) as exc:
                logger.warning("embedding cache: ignoring unreadable shard %s (%s)", shard, exc)
                continue
            for i in range(len(paths)):
                vec = emb[i]
                has = bool(np.all(np.isfinite(vec)))
                self._entries[(str(paths[i]), int(mt[i]), int(sz[i]))] = PhotoFace(
                    vec.astype(np.float32) if has else None, _opt(age[i]), float(area[i]), float(qual[i]),
                    _opt(pm[i]), str(prob[i]))

    def __len__(self) -> int:
        return len(self._entries) + len(self._pending)

    def flush(self) -> None:
        """Write the photos embedded since the last flush as one new shard (atomic rename)."""
        if not self._pending:
            return
        dim = self.analyzer.dim
        keys = list(self._pending)
        vals = [self._pending[k] for k in keys]
        emb = np.full((len(vals), dim), np.nan, np.float32)
        for i, v in enumerate(vals):
            if v.embedding is not None:
                emb[i] = v.embedding

        def arr(xs: Sequence[float | None]) -> np.ndarray:
            return np.array([np.nan if x is None else x for x in xs], np.float32)

        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        tmp = final.with_suffix(".tmp.npz")
        np.savez(tmp, paths=np.array([k[0] for k in keys]), mtime_ns=np.array([k[1] for k in keys], np.int64),
                 size=np.array([k[2] for k in keys], np.int64), embedding=emb,
                 age=arr([v.age for v in vals]), area=arr([v.area for v in vals]),
                 quality=arr([v.quality for v in vals]), p_male=arr([v.p_male for v in vals]),
                 problem=np.array([v.problem for v in vals]))
        os.replace(tmp, final)
        self._entries.update(self._pending)
        self._pending.clear()

    def _compute(self, path: Path) -> PhotoFace:
        try:
            image = read_image(path)
        except ImageReadError as exc:
            return PhotoFace(None, None, 0.0, 0.0, None, f"unreadable: {exc}")
        faces = [f for f in self.analyzer.analyze(image, photo=True) if f.has_embedding]
        if not faces:
            return PhotoFace(None, None, 0.0, 0.0, None, "no face")
        f = max(faces, key=lambda x: x.area)
        return PhotoFace(f.embedding.astype(np.float32), f.age, f.area, float(f.quality), f.p_male)

    def get_many(self, paths: Sequence[Path], progress: Callable[[int, int], None] | None = None
                 ) -> list[PhotoFace]:
        """The cached or freshly computed :class:`PhotoFace` of each path, in order.

        Raises:
            FileNotFoundError: a path does not exist (named in the message).
        """
        out: list[PhotoFace] = []
        done = 0
        for i, path in enumerate(paths):
            try:
                key = _stat_key(Path(path))
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no such image") from None
            hit = self._entries.get(key) or self._pending.get(key)
            if hit is None:
                hit = self._compute(Path(path))
                self._pending[key] = hit
                done += 1
                if len(self._pending) >= self.flush_every:
                    self.flush()
            out.append(hit)
            if progress is not None:
                progress(i + 1, len(paths))
        self.flush()
        if done:
            logger.info("embedding cache %s: %d photos embedded, %d from cache", self.dir, done, len(paths) - done)
        return out
