"""The evaluation embedding cache is keyed by photo content: re-staged data is not embedded again, edits are."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from namus_edge.core.config import load_config
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.embedding_cache import EmbeddingCache


def _shards(cache: EmbeddingCache) -> list[Path]:
    return sorted(cache.dir.glob("shard-*.npz"))


def test_restaged_copy_hits_and_an_edit_misses(tmp_path, data_dir, model_cache):
    src = sorted((data_dir / "verification" / "lfw").glob("*/*.jpg"))[:3]
    a = tmp_path / "a"
    a.mkdir()
    photos = [Path(shutil.copy(p, a / p.name)) for p in src]
    analyzer = FaceAnalyzer(load_config(), model_cache, with_age=True)
    root = tmp_path / "cache"

    first = EmbeddingCache(analyzer, root).get_many(photos)
    assert all(f.embedding is not None and f.embedding.shape == (analyzer.dim,) for f in first)
    shards = _shards(EmbeddingCache(analyzer, root))
    assert shards

    # the same bytes under new paths with new mtimes (a re-staged data folder): nothing is computed
    b = tmp_path / "b"
    shutil.copytree(a, b)
    moved = [b / p.name for p in photos]
    for p in moved:
        os.utime(p, ns=(1, 1))
    again = EmbeddingCache(analyzer, root)
    second = again.get_many(moved)
    assert _shards(again) == shards
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x.embedding, y.embedding)
        assert (y.age, y.p_male, y.area) == pytest.approx((x.age, x.p_male, x.area), rel=1e-6)  # stored as float32

    # an edited photo (mirrored, same name, same mtime) is embedded again and differs
    img = cv2.imread(str(moved[0]))
    stat = moved[0].stat()
    cv2.imwrite(str(moved[0]), img[:, ::-1])
    os.utime(moved[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third = EmbeddingCache(analyzer, root)
    edited = third.get_many(moved[:1])[0]
    assert len(_shards(third)) == len(shards) + 1
    assert edited.embedding is not None
    assert float(edited.embedding @ first[0].embedding) < 0.9999
