"""The layer order is enforced: `lint-imports` passes on the tree and fails on a wrong-way import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter, in the dev extra) is required")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([exe, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture()
def scratch(tmp_path: Path) -> Path:
    """A copy of the package with the symlinked layers resolved into real folders."""
    shutil.copytree(REPO / "namus_edge", tmp_path / "namus_edge", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(scratch: Path) -> None:
    result = _lint(scratch)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "wrong_import", "contract"), [
    ("core/errors.py", "import namus_edge.edge.events", "layers"),
    ("edge/service.py", "import namus_edge.review.store", "layers"),
    ("models/face.py", "from namus_edge.index import manifest", "layers"),
    ("index/manifest.py", "from namus_edge.export import onnx_prep", "layers"),
    ("edge/decision.py", "from namus_edge.index import build", "never ingest, build or"),
])
def test_a_wrong_way_import_breaks_the_lint(scratch: Path, module: str, wrong_import: str, contract: str) -> None:
    path = scratch / "namus_edge" / module
    path.write_text(path.read_text() + f"\n{wrong_import}  # deliberately wrong-way\n")
    result = _lint(scratch)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and contract in result.stdout.replace("\n", " ")
