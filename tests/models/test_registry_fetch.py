"""Model registry and `models fetch`: hashes verified, wrong files refused and named."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import threading
import zipfile
from functools import partial

import pytest

from namus_edge.cli import main
from namus_edge.core.errors import ModelError
from namus_edge.models.fetch import fetch_model, fetch_models
from namus_edge.models.registry import REGISTRY, check_file, get_spec, resolve


@pytest.fixture()
def mirror(tmp_path, shared_dir):
    """A small mirror directory: the two smallest real models."""
    d = tmp_path / "mirror"
    d.mkdir()
    for name in ("yunet_2023mar", "yunet_dynamic"):
        f = get_spec(name).filename
        (d / f).write_bytes((shared_dir / "models" / f).read_bytes())
    return d


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_registry_matches_shared_models_md(shared_dir):
    text = (shared_dir / "models" / "MODELS.md").read_text(encoding="utf-8")
    for spec in REGISTRY.values():
        if spec.bundled:  # trained here; its identity is checked in tests/models/test_sex.py
            continue
        assert spec.sha256 in text, spec.name
        assert spec.filename in text, spec.name
        assert f"{spec.size:,}" in text, spec.name


def test_unknown_model_lists_known():
    with pytest.raises(ModelError, match=r"known models: .*det_500m"):
        get_spec("w600k_r50")


def test_fetch_from_directory_and_idempotent(mirror, tmp_path):
    cache = tmp_path / "cache"
    rep = fetch_models(str(mirror), cache, ["yunet_2023mar", "yunet_dynamic"])
    assert rep.fetched == ["yunet_2023mar", "yunet_dynamic"] and not rep.failed
    assert resolve("yunet_2023mar", cache) == cache / "face_detection_yunet_2023mar.onnx"
    again = fetch_models(str(mirror), cache, ["yunet_2023mar"])
    assert again.present == ["yunet_2023mar"] and again.fetched == []
    assert not list(cache.glob("*.part"))


def test_wrong_hash_is_refused_and_named(mirror, tmp_path):
    bad = mirror / get_spec("yunet_dynamic").filename
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    rep = fetch_models(str(mirror), cache, ["yunet_dynamic"])
    assert "yunet_dynamic" in rep.failed
    assert "does not match" in rep.failed["yunet_dynamic"] and bad.name in rep.failed["yunet_dynamic"]
    assert not (cache / bad.name).exists()


def test_missing_in_mirror_reported(tmp_path):
    rep = fetch_models(str(tmp_path), tmp_path / "cache", ["age_v1"])
    assert "not found" in rep.failed["age_v1"]


def test_fetch_over_http_mirror(mirror, http_root, tmp_path):
    root, url = http_root
    for f in mirror.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    rep = fetch_models(url, tmp_path / "cache", ["yunet_dynamic"])
    assert rep.fetched == ["yunet_dynamic"]


def test_fetch_zip_member_from_official_style_url(mirror, http_root, tmp_path):
    root, url = http_root
    spec = get_spec("yunet_2023mar")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pack/" + spec.filename, (mirror / spec.filename).read_bytes())
        zf.writestr("pack/other.onnx", b"x")
    (root / "release.zip").write_bytes(buf.getvalue())
    local_spec = dataclasses.replace(spec, urls=(f"{url}/release.zip#{spec.filename}",))
    path = fetch_model(local_spec, "official", tmp_path / "cache")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_official_refuses_models_without_official_url(tmp_path):
    with pytest.raises(ModelError, match=r"no official download"):
        fetch_model(get_spec("edgeface_xs"), "official", tmp_path)


def test_check_file_states(mirror, tmp_path):
    spec = get_spec("yunet_dynamic")
    assert check_file(spec, tmp_path)[0] == "missing"
    (tmp_path / spec.filename).write_bytes(b"short")
    state, detail = check_file(spec, tmp_path)
    assert state == "corrupt" and "size 5 bytes" in detail
    with pytest.raises(ModelError, match="corrupt"):
        resolve("yunet_dynamic", tmp_path)
    with pytest.raises(ModelError, match="models fetch"):
        resolve("yunet_2023mar", tmp_path)


def test_cli_fetch_and_list(mirror, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "c"
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(cache))
    assert main(["models", "fetch", "--from", str(mirror), "--only", "yunet_dynamic"]) == 0
    assert "fetched  yunet_dynamic" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 1  # the selected default models are missing
    rows = {r["name"]: r["state"] for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["yunet_dynamic"] == "present" and rows["det_500m"] == "missing"
    (cache / get_spec("yunet_dynamic").filename).write_bytes(b"tampered")
    main(["models", "list", "--json"])
    rows = {r["name"]: r["state"] for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["yunet_dynamic"] == "corrupt"
    assert main(["models", "fetch", "--from", str(tmp_path / "empty"), "--only", "age_v1"]) == 1


def test_analyzer_with_empty_cache_refuses_instead_of_downloading(tmp_path, monkeypatch):
    import urllib.request

    from namus_edge.core.config import load_config
    from namus_edge.models.analyzer import FaceAnalyzer

    def no_network(*a, **k):
        raise AssertionError("constructor tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(ModelError, match="models fetch"):
        FaceAnalyzer(load_config(), tmp_path)
