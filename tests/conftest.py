"""Shared fixtures: the ../shared data beside the checkout and a verified model cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    env = os.environ.get("NAMUS_EDGE_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (or $NAMUS_EDGE_SHARED): real models, photos and NamUs samples. Required, never skipped."""
    d = _shared_dir()
    if not (d / "models" / "MODELS.md").is_file():
        pytest.fail(f"shared data not found at {d}; set NAMUS_EDGE_SHARED")
    return d


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def test_images(shared_dir: Path) -> Path:
    return shared_dir / "models" / "testimages"


@pytest.fixture(scope="session")
def model_cache(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache holding every registry model, verified by sha256.

    Uses $NAMUS_EDGE_MODELS / ~/.cache/namus-edge/models when `models fetch` already filled it
    (as .ci/run does), else fetches from ../shared/models into a temporary cache.
    """
    from namus_edge.core.config import ModelsConfig
    from namus_edge.models.fetch import fetch_models
    from namus_edge.models.registry import REGISTRY, check_file

    cache = ModelsConfig().resolved_cache_dir()
    if all(check_file(s, cache)[0] == "present" for s in REGISTRY.values()):
        return cache
    tmp = tmp_path_factory.mktemp("models")
    report = fetch_models(str(shared_dir / "models"), tmp, list(REGISTRY))
    assert not report.failed, report.failed
    return tmp


@pytest.fixture()
def have_tool():
    """Return a function that fails (not skips) when a required executable is missing."""

    def check(name: str) -> str:
        path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
        if path is None:
            pytest.fail(f"{name} is required for this test (.ci/run installs it)")
        return path

    return check
