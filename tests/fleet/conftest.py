"""Fixtures for the fleet tests: operator keys, small real bundles, a publish tree on a loopback HTTP server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from namus_edge_testing.http_server import LoopbackHTTPServer
from namus_edge_testing.mosquitto import mosquitto, mosquitto_factory  # noqa: F401 - fixtures re-exported for pytest

from namus_edge.core.config import Config
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.manifest import ModelIdentity
from namus_edge.index.signing import generate_keypair
from namus_edge.index.sync import expected_model_from_config

#: Another registered embedder (SFace, 128-d): a bundle built with it must be refused by a device
#: that runs the default edgeface_xs.
OTHER_MODEL = "sface"


@pytest.fixture(scope="session")
def device_model() -> ModelIdentity:
    """The embedding model a device with the default config runs (edgeface_xs, 512-d)."""
    return expected_model_from_config(Config())


@pytest.fixture(scope="session")
def other_model() -> ModelIdentity:
    return expected_model_from_config(Config.model_validate({"models": {"set": "custom", "embedder": OTHER_MODEL}}))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two operator key pairs: "operator" (pinned on devices) and "rogue" (not pinned)."""
    d = tmp_path_factory.mktemp("keys")
    return {name: generate_keypair(d / f"{name}.key") for name in ("operator", "rogue")}


BundleFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def make_bundle(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, tuple[Path, Path]], device_model: ModelIdentity
) -> BundleFactory:
    """Build a real signed bundle with ``n_faces`` random unit vectors (one case per 2 faces).

    Bundles are cached per argument tuple for the session: callers must not modify them
    (copy first; a test that corrupts a bundle uses a seed of its own).
    """
    root = tmp_path_factory.mktemp("bundles")
    counter = iter(range(10_000))
    cache: dict[tuple[int, int, str, ModelIdentity], Path] = {}

    def build(
        n_faces: int = 20, seed: int = 0, key: str = "operator", model: ModelIdentity | None = None
    ) -> Path:
        model = model or device_model
        cached = cache.get((n_faces, seed, key, model))
        if cached is not None:
            return cached
        rng = np.random.default_rng(seed)
        out = root / f"b{next(counter)}"
        with BundleWriter(out, model, {"name": "det_500m"}) as writer:
            for i in range(0, n_faces, 2):
                writer.add_case({"id_formatted": f"MP{1000 + seed * 1000 + i}", "display_name": f"Person {i}"})
            for i in range(n_faces):
                vec = rng.standard_normal(model.dim).astype(np.float32)
                vec /= np.linalg.norm(vec)
                writer.add_face(
                    f"MP{1000 + seed * 1000 + (i // 2) * 2}",
                    f"k{seed}x{i}",
                    vec,
                    quality=0.9,
                    det_score=0.95,
                    bbox=[0, 0, 50, 60],
                    category="FacialCaseId",
                    is_rendering=False,
                    file_sha256=hashlib.sha256(f"{seed}-{i}".encode()).hexdigest(),
                )
            writer.finish(keys[key][0])
        cache[(n_faces, seed, key, model)] = out
        return out

    return build


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, LoopbackHTTPServer]]:
    """An empty publish tree served over HTTP on loopback."""
    tree = tmp_path / "www"
    tree.mkdir()
    with LoopbackHTTPServer(tree) as server:
        yield tree, server
