"""Bundles end to end with real files, real FAISS and real Ed25519 keys (synthetic embeddings)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from namus_edge.core.errors import BundleError, BundleVerificationError
from namus_edge.index.bundle import Bundle, CaseMatch
from namus_edge.index.bundle_diff import diff_bundles
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.faiss_index import PQ_K_FACTOR, PQ_MIN_TRAIN, IndexChoice, build_index, choose_index, search_param
from namus_edge.index.manifest import ModelIdentity, manifest_bytes, verify_bundle
from namus_edge.index.signing import SigningKeyError, generate_keypair

DIM = 512
MODEL = ModelIdentity("edgeface_xs", "f64d05c10d84919122df8e2c72d1ba1e8d9a54b1855a802d9a3d7458c16d48a9", DIM)
OTHER_MODEL = ModelIdentity("sface", "0797f178dfe98571f998b4dabe93200557d542a213ef67b46906bcb4b2c631e0", 128)
DETECTOR = {"name": "det_500m", "sha256": "5e4447f5" * 8, "input_size": [640, 640]}
CROWD = "MP9000"  # a case with 10 near-identical photos
RUNNER_UP = "UP9001"  # the true second case for the crowd query
JPEG = b"\xff\xd8\xff\xe0" + b"thumb" * 20 + b"\xff\xd9"


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def case_ids(n: int) -> list[str]:
    sets = ("MP", "UP", "UCP")
    return [f"{sets[i % 3]}{100 + i}" for i in range(n)]


def sha(i: int) -> str:
    return f"{i:064x}"


class Synthetic:
    """``n_cases`` identities (+ the crowd pair), 1-8 faces each: identity centre + noise."""

    def __init__(self, seed: int = 7, n_cases: int = 40) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.ids = case_ids(n_cases)
        self.centres = {cid: unit(rng.normal(size=DIM)) for cid in self.ids}
        self.faces: list[tuple[str, str, np.ndarray]] = []
        for i, cid in enumerate(self.ids):
            for j in range(1 + (i * 5) % 8):  # 1..8 photos per case
                self.faces.append(
                    (cid, f"{i:04d}{j:02d}" + "a" * 26, unit(self.centres[cid] + 0.04 * rng.normal(size=DIM)))
                )
        self.centres[CROWD] = unit(rng.normal(size=DIM))
        self.centres[RUNNER_UP] = unit(rng.normal(size=DIM))
        for j in range(10):
            self.faces.append(
                (CROWD, f"crowd{j:02d}" + "c" * 25, unit(self.centres[CROWD] + 0.01 * rng.normal(size=DIM)))
            )
        self.faces.append(
            (RUNNER_UP, "runnerup" + "d" * 24, unit(self.centres[RUNNER_UP] + 0.01 * rng.normal(size=DIM)))
        )

    def case_row(self, cid: str) -> dict[str, Any]:
        return {
            "id_formatted": cid,
            "display_name": f"Person {cid}",
            "sex": "Female",
            "race": ["White / Caucasian"],
            "age_min": 20,
            "age_max": 25,
            "age_kind": "at_last_contact",
            "date_last": "2019-05-04",
            "current_age_min": 26,
            "current_age_max": 31,
            "city": "Fresno",
            "county": "Fresno",
            "state": "California",
            "link": f"https://www.namus.gov/MissingPersons/Case#/{cid}",
            "modified": "2025-01-02T03:04:05Z",
            "agency": "Fresno PD",
            "agency_case_number": "19-123",
        }

    def write(
        self,
        out: Path,
        key: Path,
        *,
        flat_max: int = 500_000,
        flat_fp16: bool = False,
        drop: tuple[str, ...] = (),
        **kw: Any,
    ) -> dict[str, Any]:
        with BundleWriter(out, MODEL, DETECTOR, flat_max=flat_max, flat_fp16=flat_fp16, **kw) as w:
            for cid in [*self.ids, CROWD, RUNNER_UP]:
                if cid not in drop:
                    w.add_case(self.case_row(cid))
            for n, (cid, key_, vec) in enumerate(self.faces):
                if cid in drop:
                    continue
                w.add_face(
                    cid,
                    key_,
                    vec,
                    quality=0.8,
                    det_score=0.9,
                    bbox=[10, 20, 110, 140],
                    category="FacialCaseId",
                    is_rendering=False,
                    file_sha256=sha(n),
                    ambiguous=n == 3,
                    thumbnail_jpeg=JPEG,
                )
            w.add_problem(self.ids[0], "b" * 32, "no face found")
            return w.finish(key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "operator.key")


@pytest.fixture(scope="module")
def data() -> Synthetic:
    return Synthetic()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path], data: Synthetic) -> Path:
    out = tmp_path_factory.mktemp("built") / "bundle"
    data.write(out, keys[0], source_snapshot="samples-2025-09-20")
    return out


@pytest.fixture()
def bundle_copy(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    return dst


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# -- writing and the manifest ---------------------------------------------------------------


def test_manifest_describes_the_bundle(built: Path, data: Synthetic, keys: tuple[Path, Path]) -> None:
    raw = (built / "manifest.json").read_bytes()
    m = json.loads(raw)
    assert raw == manifest_bytes(m)  # sorted keys, deterministic serialisation
    assert m["format"] == "namus-edge-bundle" and m["format_version"] == 1
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", m["bundle_version"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created"])
    assert m["bundle_version"][:15].replace("T", "") == m["created"][:19].replace("-", "").replace(":", "").replace(
        "T", ""
    )
    n_per_set = {
        s: sum(1 for c in [*data.ids, CROWD, RUNNER_UP] if re.match(f"^{s}[0-9]", c)) for s in ("MP", "UP", "UCP")
    }
    assert m["counts"] == {
        "cases": n_per_set,
        "faces": len(data.faces),
        "images_with_faces": len(data.faces),
        "problems": 1,
    }
    assert m["embedding_model"] == MODEL.to_dict()
    assert m["detector"] == DETECTOR
    assert m["index"]["type"] == "flat" and m["index"]["metric"] == "inner_product"
    assert m["index"]["ntotal"] == len(data.faces)
    assert set(m["files"]) == {"index.faiss", "meta.sqlite3"}
    thumbs = {f"thumbs/{k}.jpg" for _, k, _ in data.faces}
    assert set(m["operator_files"]) == {"embeddings.npy", "problems.json"} | thumbs
    for rel, entry in {**m["files"], **m["operator_files"]}.items():
        assert (built / rel).stat().st_size == entry["size"]
    assert m["source_snapshot"] == "samples-2025-09-20" and m["base_version"] is None and m["diff"] is None
    assert len((built / "manifest.sig").read_bytes()) == 64
    assert verify_bundle(built, [keys[1]], MODEL) == m
    assert json.loads((built / "problems.json").read_text())["problems"] == [
        {"id_formatted": data.ids[0], "image_key": "b" * 32, "reason": "no face found"}
    ]


def test_sqlite_holds_only_device_safe_columns(built: Path) -> None:
    conn = sqlite3.connect(built / "meta.sqlite3")
    cols = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in ("cases", "faces")}
    conn.close()
    assert cols["cases"] == [
        "id_formatted",
        "case_set",
        "case_id",
        "display_name",
        "sex",
        "race",
        "age_min",
        "age_max",
        "age_kind",
        "date_last",
        "current_age_min",
        "current_age_max",
        "city",
        "county",
        "state",
        "link",
        "modified",
        "agency",
        "agency_case_number",
    ]
    assert cols["faces"] == [
        "face_id",
        "id_formatted",
        "image_key",
        "category",
        "is_rendering",
        "quality",
        "det_score",
        "bbox",
        "file_sha256",
        "ambiguous",
        "hub_offset",
    ]


@pytest.mark.parametrize("key", ["caseContributors", "circumstances", "contributor_email", "narrative"])
def test_forbidden_case_key_is_refused(tmp_path: Path, data: Synthetic, key: str) -> None:
    row = data.case_row("MP1") | {key: "Jane Doe, 555-0100, jane@example.org"}
    with (
        pytest.raises(ValueError, match=f"key '{key}' is not allowed"),
        BundleWriter(tmp_path / "b", MODEL, DETECTOR) as w,
    ):
        w.add_case(row)
    assert leftovers(tmp_path) == [] and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"id_formatted": "1358"}, "must look like MP123"),
        ({"case_set": "UP"}, "does not match the id prefix"),
        ({"case_id": 7}, "does not match the id number"),
        ({"race": "White"}, "race must be a list"),
        ({"date_last": "05/04/2019"}, "ISO date"),
        ({"age_min": "twenty"}, "age_min must be a finite number"),
        ({"city": 12}, "city must be a string"),
    ],
)
def test_invalid_case_values_are_refused(tmp_path: Path, data: Synthetic, change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match), BundleWriter(tmp_path / "b", MODEL, DETECTOR) as w:
        w.add_case(data.case_row("MP1") | change)


def test_invalid_faces_are_refused(tmp_path: Path, data: Synthetic) -> None:
    v = data.faces[0][2]
    kw: dict[str, Any] = dict(
        quality=0.5, det_score=0.9, bbox=[0, 0, 1, 1], category="FacialCaseId", is_rendering=False, file_sha256=sha(1)
    )
    with BundleWriter(tmp_path / "b", MODEL, DETECTOR) as w:
        w.add_case(data.case_row("MP1"))
        with pytest.raises(ValueError, match="L2-normalised"):
            w.add_face("MP1", "k1", v * 2, **kw)
        with pytest.raises(ValueError, match=r"shape \(512,\)"):
            w.add_face("MP1", "k1", v[:128], **kw)
        with pytest.raises(ValueError, match="image_key"):
            w.add_face("MP1", "../../etc/passwd", v, **kw)
        with pytest.raises(ValueError, match="not JPEG"):
            w.add_face("MP1", "k1", v, **kw, thumbnail_jpeg=b"GIF89a")
        assert w.add_face("MP1", "k1", v, **kw) == 0
        with pytest.raises(ValueError, match="added twice"):
            w.add_face("MP1", "k1", v, **kw)
        with pytest.raises(ValueError, match="added twice"):
            w.add_case(data.case_row("MP1"))


def test_face_of_unknown_case_fails_finish_without_output(
    tmp_path: Path, data: Synthetic, keys: tuple[Path, Path]
) -> None:
    w = BundleWriter(tmp_path / "b", MODEL, DETECTOR)
    w.add_case(data.case_row("MP1"))
    w.add_face(
        "UP77",
        "k1",
        data.faces[0][2],
        quality=0.5,
        det_score=0.9,
        bbox=[0, 0, 1, 1],
        category="FacialCaseId",
        is_rendering=False,
        file_sha256=sha(1),
    )
    with pytest.raises(ValueError, match="never added: UP77"):
        w.finish(keys[0])
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


# -- atomic writes -----------------------------------------------------------------------------


def test_existing_out_dir_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(BundleError, match="already exists"):
        BundleWriter(out, MODEL, DETECTOR)
    assert (out / "keep.txt").read_text() == "old" and leftovers(tmp_path) == []


def test_bad_key_path_leaves_no_bundle(tmp_path: Path, data: Synthetic, keys: tuple[Path, Path]) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(SigningKeyError, match=r"nope\.key"):
        data.write(out, tmp_path / "nope.key")
    assert not out.exists() and leftovers(tmp_path) == []
    with pytest.raises(SigningKeyError, match=r"\.pub"):
        data.write(out, keys[1])  # a public key cannot sign
    assert not out.exists() and leftovers(tmp_path) == []


def test_crash_mid_write_leaves_no_half_bundle_and_keeps_the_old_one(
    tmp_path: Path, data: Synthetic, keys: tuple[Path, Path], built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: BundleWriter, path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(BundleWriter, "_write_sqlite", disk_full)
    out = tmp_path / "bundle"
    with pytest.raises(OSError, match="No space left"):
        data.write(out, keys[0])
    assert not out.exists() and leftovers(tmp_path) == []
    # Replacing an existing bundle: a crash keeps the old one complete and valid.
    shutil.copytree(built, out)
    with pytest.raises(OSError, match="No space left"):
        data.write(out, keys[0], overwrite=True)
    assert (
        verify_bundle(out, [keys[1]])["bundle_version"]
        == json.loads((built / "manifest.json").read_text())["bundle_version"]
    )
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_the_bundle(tmp_path: Path, data: Synthetic, keys: tuple[Path, Path], built: Path) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(built, out)
    m = data.write(out, keys[0], overwrite=True, drop=(CROWD,))
    assert verify_bundle(out, [keys[1]]) == m
    assert m["counts"]["faces"] == len(data.faces) - 10
    assert leftovers(tmp_path) == []
    assert oct(out.stat().st_mode & 0o777) == "0o755"


# -- verification --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["index.faiss", "meta.sqlite3", "embeddings.npy"])
def test_flipped_byte_is_named(bundle_copy: Path, keys: tuple[Path, Path], name: str) -> None:
    path = bundle_copy / name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleVerificationError, match=re.escape(f"{name}: sha256")):
        verify_bundle(bundle_copy, [keys[1]])
    if name != "embeddings.npy":
        with pytest.raises(BundleVerificationError, match=re.escape(name)):
            Bundle.load(bundle_copy, [keys[1]])


def test_truncated_missing_and_unlisted_files(bundle_copy: Path) -> None:
    index = bundle_copy / "index.faiss"
    index.write_bytes(index.read_bytes()[:-10])
    with pytest.raises(BundleVerificationError, match=r"index\.faiss: size"):
        verify_bundle(bundle_copy)
    index.unlink()
    with pytest.raises(BundleVerificationError, match=r"index\.faiss: missing"):
        verify_bundle(bundle_copy)


def test_unlisted_files_only_in_operator_dirs(bundle_copy: Path) -> None:
    (bundle_copy / "thumbs" / "extra-notes.jpg").write_bytes(JPEG)
    verify_bundle(bundle_copy)  # operator directory: tolerated
    (bundle_copy / "evil.so").write_bytes(b"\x7fELF")
    with pytest.raises(BundleVerificationError, match=r"evil\.so: not listed"):
        verify_bundle(bundle_copy)


def test_tampered_manifest_fails_the_signature(bundle_copy: Path, keys: tuple[Path, Path]) -> None:
    path = bundle_copy / "manifest.json"
    m = json.loads(path.read_bytes())
    m["counts"]["faces"] += 1
    path.write_bytes(manifest_bytes(m))
    with pytest.raises(BundleVerificationError, match=r"manifest\.sig: signature does not verify"):
        verify_bundle(bundle_copy, [keys[1]])
    verify_bundle(bundle_copy)  # hashes alone cannot see it: that is what the signature is for


def test_wrong_key_and_missing_signature(bundle_copy: Path, tmp_path: Path) -> None:
    _, other = generate_keypair(tmp_path / "other.key")
    with pytest.raises(BundleVerificationError, match="does not verify"):
        verify_bundle(bundle_copy, [other])
    with pytest.raises(BundleVerificationError, match="does not verify"):
        Bundle.load(bundle_copy, [other])
    (bundle_copy / "manifest.sig").unlink()
    with pytest.raises(BundleVerificationError, match=r"manifest\.sig: missing \(the bundle is unsigned\)"):
        verify_bundle(bundle_copy, [other])


def test_expected_model_mismatch_is_refused(built: Path, keys: tuple[Path, Path]) -> None:
    msg = "bundle built for edgeface_xs sha256 f64d05c10d84 dim 512, device runs sface sha256 0797f178dfe9 dim 128"
    with pytest.raises(BundleVerificationError, match=msg):
        verify_bundle(built, [keys[1]], OTHER_MODEL)
    with pytest.raises(BundleVerificationError, match="device runs sface"):
        Bundle.load(built, [keys[1]], OTHER_MODEL)


def test_device_only_verification_after_dropping_operator_files(bundle_copy: Path, keys: tuple[Path, Path]) -> None:
    for name in ("embeddings.npy", "problems.json"):
        (bundle_copy / name).unlink()
    shutil.rmtree(bundle_copy / "thumbs")
    with pytest.raises(BundleVerificationError, match=r"embeddings\.npy: missing"):
        verify_bundle(bundle_copy, [keys[1]])
    m = verify_bundle(bundle_copy, [keys[1]], MODEL, include_operator_files=False)
    with Bundle.load(bundle_copy, [keys[1]], MODEL) as b:
        assert b.version == m["bundle_version"]
        with pytest.raises(BundleError, match=r"embeddings\.npy: absent"):
            b.embeddings()


# -- loading and search ------------------------------------------------------------------------


def test_noisy_queries_find_their_case(built: Path, data: Synthetic, keys: tuple[Path, Path]) -> None:
    with Bundle.load(built, [keys[1]], MODEL) as b:
        assert b.dim == DIM and b.ntotal == len(data.faces)
        queries = unit(np.stack([data.centres[c] + 0.05 * data.rng.normal(size=DIM) for c in data.ids]))
        results = b.search(queries, top_k=5)
    assert len(results) == len(data.ids)
    for cid, matches in zip(data.ids, results, strict=True):
        assert matches[0].id_formatted == cid
        assert matches[0].score > 0.4  # noise norm ~1.1 on both sides: cosine ~0.5
        assert len(matches) == 5 and len({m.id_formatted for m in matches}) == 5
        assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
        assert matches[1].score < 0.25  # unrelated identities are near-orthogonal in 512-D
        best_face = next(f for f in data.faces if f[1] == matches[0].image_key)
        assert best_face[0] == cid


def test_best_face_per_case_so_a_crowded_case_cannot_hide_the_runner_up(built: Path, data: Synthetic) -> None:
    query = unit(data.centres[CROWD] + 0.8 * data.centres[RUNNER_UP])[None, :]
    with Bundle.load(built, verify=False) as b:
        (matches,) = b.search(query, top_k=2)
        # Plain FAISS top-2 would be two photos of the crowd case.
        _, raw_ids = b.faiss_index.search(query, 2)
    assert [b_.id_formatted for b_ in matches] == [CROWD, RUNNER_UP]
    assert all(isinstance(m, CaseMatch) for m in matches)
    crowd_keys = {k for c, k, _ in data.faces if c == CROWD}
    assert matches[0].image_key in crowd_keys
    faces = {i: c for i, (c, _, _) in enumerate(data.faces)}
    assert {faces[int(i)] for i in raw_ids[0]} == {CROWD}


def test_search_validates_queries(built: Path) -> None:
    with Bundle.load(built, verify=False) as b:
        with pytest.raises(ValueError, match=r"shape \(N, 512\)"):
            b.search(np.zeros((1, 128), np.float32))
        with pytest.raises(ValueError, match=r"shape \(N, 512\)"):
            b.search(np.zeros(512, np.float32))
        assert b.search(np.zeros((0, 512), np.float32)) == []
    with pytest.raises(BundleError, match="closed"):
        b.search(np.zeros((1, 512), np.float32))


def test_case_rows_face_keys_and_embeddings(built: Path, data: Synthetic) -> None:
    with Bundle.load(built) as b:
        row = b.case(data.ids[1])
        assert row is not None
        assert row == data.case_row(data.ids[1]) | {"case_set": "UP", "case_id": 101}
        assert row["race"] == ["White / Caucasian"]
        assert b.case("MP999999") is None
        assert [c["id_formatted"] for c in b.cases()][:4] == ["MP100", "MP103", "MP106", "MP109"]
        keys = b.face_keys()
        assert keys == {k: (c, sha(n)) for n, (c, k, _) in enumerate(data.faces)}
        vectors, faces = b.embeddings()
    assert vectors.dtype == np.float32 and vectors.shape == (len(data.faces), DIM)
    np.testing.assert_allclose(vectors, np.stack([v for _, _, v in data.faces]), atol=1e-6)
    assert [f["image_key"] for f in faces] == [k for _, k, _ in data.faces]
    assert faces[3]["ambiguous"] is True and faces[0]["ambiguous"] is False
    assert faces[0]["bbox"] == [10.0, 20.0, 110.0, 140.0]


def test_pq_refine_bundle_keeps_k_factor_and_returns_exact_scores(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    big = Synthetic(seed=11, n_cases=160)  # ~730 faces: enough to train the PQ
    assert len(big.faces) >= PQ_MIN_TRAIN
    m = big.write(tmp_path / "pq", keys[0], flat_max=50)
    assert m["index"]["type"] == "pq_refine" and m["index"]["factory"] == "PQ64x4fs,Refine(SQfp16)"
    assert m["index"]["params"]["k_factor"] == PQ_K_FACTOR
    exact = big.write(tmp_path / "flat", keys[0])
    assert exact["index"]["type"] == "flat"
    # weak queries (cosine ~0.5 to their case centre) as well as easy ones
    noise = big.rng.normal(size=(len(big.ids), DIM))
    queries = unit(np.stack([big.centres[c] for c in big.ids]) + np.stack([0.03, 0.045])[np.arange(len(big.ids)) % 2,
                                                                                        None] * noise)
    with Bundle.load(tmp_path / "pq", [keys[1]], MODEL) as pq, Bundle.load(tmp_path / "flat") as flat:
        assert search_param(pq.faiss_index, "k_factor") == PQ_K_FACTOR
        got, want = pq.search(queries, top_k=3), flat.search(queries, top_k=3)
    assert [r[0].id_formatted for r in got] == big.ids
    assert min(r[0].score for r in want) < 0.6  # the weak queries are weak
    for a, b in zip(got, want, strict=True):
        # the re-rank scores are fp16 cosines, not PQ estimates: the threshold means the same
        assert abs(a[0].score - b[0].score) <= 2e-3


def test_fp16_flat_ranks_like_fp32(tmp_path: Path, data: Synthetic, keys: tuple[Path, Path], built: Path) -> None:
    m = data.write(tmp_path / "fp16", keys[0], flat_fp16=True)
    assert m["index"]["type"] == "flat_fp16"
    assert (
        m["files"]["index.faiss"]["size"]
        < 0.6 * json.loads((built / "manifest.json").read_text())["files"]["index.faiss"]["size"]
    )
    queries = unit(np.stack([data.centres[c] + 0.05 * data.rng.normal(size=DIM) for c in data.ids]))
    with Bundle.load(tmp_path / "fp16") as half, Bundle.load(built) as full:
        for a, b in zip(half.search(queries, 3), full.search(queries, 3), strict=True):
            # the best case is the same; near-tied runners-up may swap, but scores agree within fp16 error
            assert a[0].id_formatted == b[0].id_formatted
            sa, sb = {x.id_formatted: x.score for x in a}, {y.id_formatted: y.score for y in b}
            for cid in sa.keys() & sb.keys():
                assert abs(sa[cid] - sb[cid]) <= 2e-3


def test_incremental_diff(tmp_path: Path, data: Synthetic, keys: tuple[Path, Path], built: Path) -> None:
    removed, changed_field, changed_faces = data.ids[5], data.ids[6], data.ids[7]
    with Bundle.load(built) as base:
        base_vectors, base_faces = base.embeddings()
        with BundleWriter(tmp_path / "next", MODEL, DETECTOR, base_version=base.version) as w:
            for cid in [*data.ids, CROWD, RUNNER_UP]:
                if cid == removed:
                    continue
                row = data.case_row(cid) | ({"city": "Clovis"} if cid == changed_field else {})
                w.add_case(row)
            w.add_case(data.case_row("UCP5"))
            for vec, face in zip(base_vectors, base_faces, strict=True):  # reuse, as `index build --base` does
                if face["id_formatted"] == removed:
                    continue
                w.add_face(
                    face["id_formatted"],
                    face["image_key"],
                    vec,
                    quality=face["quality"],
                    det_score=face["det_score"],
                    bbox=face["bbox"],
                    category=face["category"],
                    is_rendering=face["is_rendering"],
                    file_sha256=face["file_sha256"],
                )
            w.add_face(
                changed_faces,
                "new" + "e" * 29,
                unit(data.centres[changed_faces]),
                quality=0.7,
                det_score=0.8,
                bbox=[0, 0, 50, 50],
                category="ActualPhoto",
                is_rendering=False,
                file_sha256=sha(999),
            )
            diff = w.diff_against(base)
            m = w.finish(keys[0], diff=diff)
    assert diff["added"] == ["UCP5"]
    assert diff["removed"] == [removed]
    assert diff["changed"] == [changed_field, changed_faces]  # MP106, UP107: natural case order
    assert diff["details"][changed_field]["fields"] == ["city"]
    assert diff["details"][changed_faces]["faces_added"] == ["new" + "e" * 29]
    assert m["diff"] == {k: diff[k] for k in ("added", "removed", "changed")}
    assert m["base_version"] == json.loads((built / "manifest.json").read_text())["bundle_version"]
    assert "diff.json" in m["operator_files"]
    assert json.loads((tmp_path / "next" / "diff.json").read_text())["details"][changed_field]["fields"] == ["city"]
    with Bundle.load(built) as old, Bundle.load(tmp_path / "next", [keys[1]]) as new:
        recomputed = diff_bundles(old, new)
    assert recomputed == diff


# -- index choice ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "dim", "flat_max", "fp16", "kind", "factory"),
    [
        (0, 512, 10, False, "flat", "Flat"),
        (10, 512, 10, False, "flat", "Flat"),
        (10, 512, 10, True, "flat_fp16", "SQfp16"),
        (11, 512, 10, False, "flat", "Flat"),  # over flat_max but too few to train a PQ
        (PQ_MIN_TRAIN - 1, 512, 10, True, "flat_fp16", "SQfp16"),
        (PQ_MIN_TRAIN, 512, 10, True, "pq_refine", "PQ64x4fs,Refine(SQfp16)"),
        (55_000, 512, 80_000, True, "flat_fp16", "SQfp16"),  # NamUs today
        (1_000_000, 512, 80_000, True, "pq_refine", "PQ64x4fs,Refine(SQfp16)"),
        (1_000_000, 128, 80_000, False, "pq_refine", "PQ64x4fs,Refine(SQfp16)"),  # SFace
        (1_000_000, 100, 80_000, False, "pq_refine", "PQ50x4fs,Refine(SQfp16)"),  # even divisor of 100 <= 64
        (1_000_000, 8, 80_000, False, "pq_refine", "PQ4x4fs,Refine(SQfp16)"),  # never more than dim/2
    ],
)
def test_choose_index_by_size(n: int, dim: int, flat_max: int, fp16: bool, kind: str, factory: str) -> None:
    choice = choose_index(n, dim, flat_max, fp16)
    assert (choice.type, choice.factory) == (kind, factory)
    assert str(n) in choice.reason


def test_choose_index_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="flat_max > 0"):
        choose_index(10, 512, 0, False)


def test_pq_refine_builds_trains_and_recalls_weak_matches() -> None:
    rng = np.random.default_rng(3)
    dim = 128
    gallery = unit(rng.normal(size=(3000, dim)))
    ids = np.arange(3000, dtype=np.int64) * 7 + 1000  # not positions
    choice = choose_index(len(gallery), dim, flat_max=100, fp16=False)
    assert choice.factory == "PQ64x4fs,Refine(SQfp16)"
    index = build_index(gallery, ids, choice)
    assert index.ntotal == 3000 and search_param(index, "k_factor") == PQ_K_FACTOR
    # weak queries (cosine ~0.55 to a gallery vector): far outside any local neighbourhood
    targets = rng.choice(3000, size=200, replace=False)
    queries = unit(0.55 * gallery[targets] + 0.83 * unit(rng.normal(size=(200, dim))))
    exact = queries @ gallery.T
    scores, found = index.search(queries, 5)  # the bundle always asks for several neighbours
    assert (found[:, 0] == ids[exact.argmax(axis=1)]).mean() >= 0.99
    np.testing.assert_allclose(scores[:, 0], exact.max(axis=1), atol=2e-3)
    with pytest.raises(ValueError, match=f"needs at least {PQ_MIN_TRAIN} vectors"):
        build_index(gallery[:100], ids[:100], choice)


def test_build_index_validates_inputs() -> None:
    v = unit(np.random.default_rng(0).normal(size=(4, 8)))
    flat = IndexChoice("flat", "Flat")
    with pytest.raises(ValueError, match="float32"):
        build_index(v.astype(np.float64), np.arange(4, dtype=np.int64), flat)
    with pytest.raises(ValueError, match="unique"):
        build_index(v, np.zeros(4, dtype=np.int64), flat)
    with pytest.raises(ValueError, match="int64"):
        build_index(v, np.arange(4, dtype=np.int32), flat)
