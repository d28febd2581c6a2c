"""``namus-edge index keygen|verify|info|diff|search`` through the real root CLI."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from namus_edge.cli import main
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.manifest import ModelIdentity
from namus_edge.index.signing import generate_keypair
from namus_edge.models.registry import get_spec

MODEL = ModelIdentity("edgeface_xs", get_spec("edgeface_xs").sha256, 512)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def write_bundle(
    out: Path,
    key: Path,
    cases: dict[str, list[np.ndarray]],
    model: ModelIdentity = MODEL,
    fields: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    with BundleWriter(out, model, {"name": "det_500m"}) as w:
        for cid, vectors in cases.items():
            w.add_case({"id_formatted": cid, "display_name": f"Person {cid}", **(fields or {}).get(cid, {})})
            for j, v in enumerate(vectors):
                w.add_face(
                    cid,
                    f"{cid.lower()}x{j}",
                    v,
                    quality=0.9,
                    det_score=0.9,
                    bbox=[0, 0, 10, 10],
                    category="FacialCaseId",
                    is_rendering=False,
                    file_sha256=hashlib.sha256(f"{cid}/{j}".encode()).hexdigest(),
                    thumbnail_jpeg=b"\xff\xd8thumb\xff\xd9",
                )
        return w.finish(key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "op.key")


@pytest.fixture(scope="module")
def synthetic_cases() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(11)
    ids = ["MP1", "MP2", "UP3", "UCP4", "MP5"]
    return {cid: [unit(rng.normal(size=512)) for _ in range(1 + i % 3)] for i, cid in enumerate(ids)}


@pytest.fixture()
def bundle(tmp_path: Path, keys: tuple[Path, Path], synthetic_cases: dict[str, list[np.ndarray]]) -> Path:
    out = tmp_path / "bundle"
    write_bundle(out, keys[0], synthetic_cases)
    return out


def version_of(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["bundle_version"])


def test_keygen_creates_0600_key_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "operator.key"
    assert main(["index", "keygen", "--out", str(key)]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "operator.key.pub").is_file()
    assert re.search(r"key id:\s+[0-9a-f]{16}", out)
    before = key.read_bytes()
    assert main(["index", "keygen", "--out", str(key)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert key.read_bytes() == before


def test_verify_ok_with_key_and_fails_naming_the_file(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", "verify", str(bundle), "--pubkey", str(keys[1])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {version_of(bundle)}") and "signature checked" in out

    _, other = generate_keypair(tmp_path / "other.key")
    assert main(["index", "verify", str(bundle), "--pubkey", str(other)]) == 1
    assert "signature does not verify" in capsys.readouterr().err

    index = bundle / "index.faiss"
    raw = bytearray(index.read_bytes())
    raw[100] ^= 0xFF
    index.write_bytes(bytes(raw))
    assert main(["index", "verify", str(bundle), "--pubkey", str(keys[1])]) == 1
    err = capsys.readouterr().err
    assert "index.faiss: sha256" in err


def test_verify_uses_sync_pubkeys_and_warns_without_keys(
    bundle: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", "verify", str(bundle), "--set", f"sync.pubkeys=[{keys[1]}]"]) == 0
    assert "signature checked" in capsys.readouterr().out
    assert main(["index", "verify", str(bundle)]) == 0
    captured = capsys.readouterr()
    assert "hashes only" in captured.out and "signature NOT checked" in captured.err


def test_verify_device_only_after_removing_operator_files(
    bundle: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (bundle / "embeddings.npy").unlink()
    shutil.rmtree(bundle / "thumbs")
    assert main(["index", "verify", str(bundle), "--pubkey", str(keys[1])]) == 1
    assert "embeddings.npy: missing" in capsys.readouterr().err
    assert main(["index", "verify", str(bundle), "--pubkey", str(keys[1]), "--device-only"]) == 0
    assert "device files" in capsys.readouterr().out


def test_info_text_and_json(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "info", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert version_of(bundle) in text
    assert "cases    5 (MP 3, UP 1, UCP 1)" in text
    assert "edgeface_xs" in text and "flat" in text
    assert main(["index", "info", str(bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == version_of(bundle)
    assert info["counts"]["faces"] == 1 + 2 + 3 + 1 + 2
    assert info["index"]["type"] == "flat"
    assert (
        info["sizes"]["device_bytes"]
        == (bundle / "index.faiss").stat().st_size + (bundle / "meta.sqlite3").stat().st_size
    )
    assert info["operator_files_present"] == info["operator_files_listed"] == 2 + 9


def test_info_of_a_non_bundle_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "info", str(tmp_path)]) == 1
    assert "manifest.json: missing" in capsys.readouterr().err


def test_diff_two_bundles(
    tmp_path: Path,
    bundle: Path,
    keys: tuple[Path, Path],
    synthetic_cases: dict[str, list[np.ndarray]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = np.random.default_rng(5)
    cases = {k: v for k, v in synthetic_cases.items() if k != "UP3"}
    cases["MP2"] = [*cases["MP2"], unit(rng.normal(size=512))]
    cases["UCP9"] = [unit(rng.normal(size=512))]
    new = tmp_path / "new"
    write_bundle(new, keys[0], cases, fields={"MP5": {"city": "Reno"}})
    assert main(["index", "diff", str(bundle), str(new), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert (diff["old"], diff["new"]) == (version_of(bundle), version_of(new))
    assert diff["added"] == ["UCP9"] and diff["removed"] == ["UP3"] and diff["changed"] == ["MP2", "MP5"]
    assert diff["details"]["MP5"]["fields"] == ["city"]
    assert main(["index", "diff", str(bundle), str(new)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "+ UCP9" in lines and "- UP3" in lines
    assert "~ MP2 (faces +1 -0)" in lines and "~ MP5 (fields city)" in lines
    assert lines[-1] == "added 1, removed 1, changed 2"


# -- search with the real models on real photos ----------------------------------------------------


@pytest.fixture(scope="module")
def real_bundle(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, test_images: Path, keys: tuple[Path, Path]
) -> Path:
    from namus_edge.core.config import load_config
    from namus_edge.models.analyzer import FaceAnalyzer
    from namus_edge.models.imagefile import read_image

    analyzer = FaceAnalyzer(load_config(None, [f"models.cache_dir={model_cache}"]), with_age=False)
    cases = {}
    for cid, name in (("MP1", "obama_2009.jpg"), ("MP2", "biden_2010.jpg"), ("UP3", "astronaut.jpg")):
        faces = analyzer.analyze(read_image(test_images / name), photo=True)
        cases[cid] = [max(faces, key=lambda f: f.area).embedding]
    out = tmp_path_factory.mktemp("real") / "bundle"
    write_bundle(out, keys[0], cases)
    return out


def test_search_finds_the_person_in_a_new_photo(
    real_bundle: Path,
    model_cache: Path,
    test_images: Path,
    keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listing = tmp_path / "queries.txt"
    listing.write_text(f"# photos to check\n{test_images / 'obama_2012.jpg'}\n\n{test_images / 'solvay_1927.jpg'}\n")
    argv = [
        "index",
        "search",
        str(real_bundle),
        "--list",
        str(listing),
        "--top",
        "2",
        "--json",
        "--pubkey",
        str(keys[1]),
        "--set",
        f"models.cache_dir={model_cache}",
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"threshold", "results"} and doc["threshold"] == 0.40  # the EdgeFace default
    obama, solvay = doc["results"]
    assert obama["image"] == str(test_images / "obama_2012.jpg") and obama["faces"] >= 1
    assert [set(m) for m in obama["matches"]] == [{"case", "score", "image_key"}] * 2
    assert obama["matches"][0]["case"] == "MP1" and obama["matches"][0]["image_key"] == "mp1x0"
    assert obama["matches"][0]["score"] > doc["threshold"] > obama["matches"][1]["score"]
    assert solvay["faces"] > 10  # a group photo: only its largest face is searched
    assert len(solvay["matches"]) == 2 and all(m["score"] < doc["threshold"] for m in solvay["matches"])

    assert (
        main(
            [
                "index",
                "search",
                str(real_bundle),
                "--image",
                str(test_images / "obama_2010.jpg"),
                "--set",
                f"models.cache_dir={model_cache}",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert re.search(r"\* MP1\s+0\.\d{4}\s+mp1x0", text)


def test_search_refuses_a_bundle_of_another_model(
    tmp_path: Path, keys: tuple[Path, Path], test_images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sface = get_spec("sface")
    other = ModelIdentity("sface", sface.sha256, 128)
    rng = np.random.default_rng(1)
    write_bundle(tmp_path / "sface", keys[0], {"MP1": [unit(rng.normal(size=128))]}, model=other)
    # The model check comes before any model is loaded (the cache here is empty).
    argv = [
        "index",
        "search",
        str(tmp_path / "sface"),
        "--image",
        str(test_images / "obama_2012.jpg"),
        "--set",
        f"models.cache_dir={tmp_path / 'empty-cache'}",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "bundle built for sface" in err and "device runs edgeface_xs" in err


def test_search_bad_inputs(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert main(["index", "search", str(bundle), "--list", str(empty)]) == 1
    assert "names no files" in capsys.readouterr().err
    assert main(["index", "search", str(bundle), "--list", str(tmp_path / "nope.txt")]) == 1
    assert "nope.txt" in capsys.readouterr().err
    assert main(["index", "search", str(bundle), "--image", str(tmp_path / "ghost.jpg")]) == 1
    assert "ghost.jpg does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --image and --list are exclusive, one is required
        main(["index", "search", str(bundle)])


def test_extra_index_commands_register_and_only_their_absence_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import namus_edge.index.cli

    pkg = tmp_path / "extra_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good_cli.py").write_text(
        "def _hello(args, config):\n"
        "    print('hello from', args.index_command)\n"
        "    return 0\n\n"
        "def register(sub, parent):\n"
        "    sub.add_parser('hello', parents=[parent]).set_defaults(func=_hello)\n"
    )
    (pkg / "broken_cli.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(namus_edge.index.cli, "EXTRA_COMMAND_MODULES", ("extra_pkg.missing_cli", "extra_pkg.good_cli"))
    assert main(["index", "hello"]) == 0
    assert capsys.readouterr().out == "hello from hello\n"
    monkeypatch.setattr(namus_edge.index.cli, "EXTRA_COMMAND_MODULES", ("extra_pkg.broken_cli",))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        main(["index", "info", str(tmp_path)])
