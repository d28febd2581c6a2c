"""The demo fetches every model the configuration runs into an empty cache (the wheel smoke test's path)."""

from __future__ import annotations

from pathlib import Path

from namus_edge.core.config import load_config
from namus_edge.demo import _ensure_models
from namus_edge.models.registry import check_file, get_spec


def test_demo_fetches_every_selected_model_into_an_empty_cache(tmp_path: Path, shared_dir: Path,
                                                               monkeypatch) -> None:
    cache = tmp_path / "models"
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(cache))
    config = load_config()
    names = config.models.selected_all()
    assert {"gender_v1", "agesex_utk_v2"} <= set(names)  # sex and the second age are part of the default set
    assert any(check_file(get_spec(n), cache)[0] != "present" for n in names)
    _ensure_models(config, str(shared_dir / "models"))
    assert {n: check_file(get_spec(n), cache)[0] for n in names} == {n: "present" for n in names}
