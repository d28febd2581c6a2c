"""Hub normalisation end to end: offsets built into a real bundle, searched, judged and reported.

The bundle is built by ``index build`` from NamUs-format cases made of real LFW photos (two photos
per case); the probes are real photos of people in no case (LFW identities with a single photo)
and third photos of the enrolled people, embedded by the real models.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from namus_edge_testing.events import make_event
from namus_edge_testing.namus_factory import SyntheticCase, lfw_identities, write_prepager

import namus_edge.index.bundle as bundle_mod
import namus_edge.models.policy as policy_mod
from namus_edge.cli import main
from namus_edge.core.cases import case_sort_key
from namus_edge.core.config import load_config
from namus_edge.core.errors import BundleError, BundleVerificationError
from namus_edge.edge.decision import DecisionEngine
from namus_edge.edge.event_v2 import v2_fields
from namus_edge.index.build import build_bundle
from namus_edge.index.bundle import Bundle
from namus_edge.index.manifest import MANIFEST_NAME, META_NAME, SIGNATURE_NAME, file_entry, manifest_bytes
from namus_edge.index.signing import generate_keypair, sign_bytes
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.hub_norm import HUB_K, hub_offsets
from namus_edge.models.imagefile import read_image
from namus_edge.models.impostor_tail import ImpostorTail
from namus_edge.models.policy import resolve_policy
from namus_edge.models.registry import ModelSpec, get_spec

TODAY = date(2026, 11, 23)
EVENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
N_CASES = 16
N_STRANGERS = 20


def _embed(analyzer: FaceAnalyzer, paths: list[Path]) -> tuple[list[Path], np.ndarray]:
    """The largest face of each photo (photos without one are dropped): (paths, float32 (N, D))."""
    kept, rows = [], []
    for p in paths:
        faces = [f for f in analyzer.analyze(read_image(p), photo=True) if f.has_embedding]
        if faces:
            kept.append(p)
            rows.append(max(faces, key=lambda f: f.area).embedding)
    return kept, np.stack(rows).astype(np.float32)


def _cases(lfw: dict[str, list[Path]], people: list[str], first_id: int) -> list[SyntheticCase]:
    return [SyntheticCase("MP", first_id + i, n.split(":")[1], "Test", lfw[n][:2], age_at_last=None)
            for i, n in enumerate(people)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir, model_cache) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hub")
    lfw = lfw_identities(data_dir)
    people = [k for k, v in lfw.items() if len(v) >= 3][:N_CASES + 4]
    write_prepager(root / "src", _cases(lfw, people[:N_CASES], 8000))
    key, pub = generate_keypair(root / "op.key")
    config = load_config()
    analyzer = FaceAnalyzer(config, model_cache, with_age=False)
    build_bundle(config, str(root / "src"), root / "bundle", key, analyzer=analyzer, today=TODAY)
    strangers = [v[0] for v in lfw.values() if len(v) == 1][:N_STRANGERS]
    s_paths, s_emb = _embed(analyzer, strangers)
    m_paths, m_emb = _embed(analyzer, [lfw[n][2] for n in people[:N_CASES]])
    case_of = {lfw[n][2]: f"MP{8000 + i}" for i, n in enumerate(people[:N_CASES])}
    return {"mated_cases": [case_of[p] for p in m_paths], "root": root, "bundle": root / "bundle", "key": key,
            "pub": pub, "lfw": lfw, "people": people, "config": config, "analyzer": analyzer,
            "strangers": (s_paths, s_emb), "mated": (m_paths, m_emb)}


def _copy(world: dict[str, Any], dst: Path) -> Path:
    shutil.copytree(world["bundle"], dst)
    return dst


def _resign(bundle: Path, key: Path, edit_manifest: Any) -> None:
    """Rewrite the manifest (hashes of the device files refreshed) and sign it with the operator key."""
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    edit_manifest(manifest)
    manifest["files"][META_NAME] = file_entry(bundle / META_NAME)
    raw = manifest_bytes(manifest)
    (bundle / MANIFEST_NAME).write_bytes(raw)
    (bundle / SIGNATURE_NAME).write_bytes(sign_bytes(raw, key))


def _drop_offsets_column(bundle: Path) -> None:
    """What a bundle built before the column existed holds: the faces table without ``hub_offset``."""
    conn = sqlite3.connect(bundle / META_NAME)
    try:
        conn.execute("ALTER TABLE faces DROP COLUMN hub_offset")
        conn.commit()
        conn.execute("VACUUM")
    finally:
        conn.close()


def _brute_force(bundle: Bundle, query: np.ndarray, top_k: int, hub_norm: bool) -> list[tuple[str, float, int]]:
    """Every face of the gallery scored, the best face per case, the ``top_k`` best cases.

    Similarities are the index's own (all N faces asked for: the index stores fp16), offsets are
    read from SQLite.
    With ``hub_norm`` the probe offset is the mean of the ``k`` best similarities to faces outside
    the rank-1 case, minus the manifest's median hub value.
    """
    faces = bundle.faces()
    sims, ids = bundle.faiss_index.search(query[None].astype(np.float32), bundle.ntotal)
    best: dict[str, tuple[float, int]] = {}
    for sim, fid in zip(sims[0].tolist(), ids[0].tolist(), strict=True):
        f = faces[fid]
        score = sim - (f["hub_offset"] if hub_norm else 0.0)
        cid = f["id_formatted"]
        if cid not in best or score > best[cid][0]:
            best[cid] = (score, fid)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], case_sort_key(kv[0])))[:top_k]
    probe = 0.0
    if hub_norm:
        info = bundle.manifest["index"]["hub_norm"]
        others = [sim for sim, fid in zip(sims[0].tolist(), ids[0].tolist(), strict=True)
                  if faces[fid]["id_formatted"] != ranked[0][0]]
        probe = float(np.mean(sorted(others, reverse=True)[:info["k"]])) - info["median"]
    return [(cid, s - probe, fid) for cid, (s, fid) in ranked]


# ----------------------------------------------------------------------------------------------- build


def test_build_stores_offsets_of_the_whole_gallery(world):
    with Bundle.load(world["bundle"], pubkeys=[world["pub"]]) as b:
        vectors, faces = b.embeddings()
        want, median = hub_offsets(vectors, [f["id_formatted"] for f in faces], HUB_K)
        stored = np.array([f["hub_offset"] for f in faces], np.float32)
        assert len(faces) == 2 * N_CASES
        np.testing.assert_array_equal(stored, want)
        np.testing.assert_array_equal(b.hub_offsets(), want)
        assert b.has_hub_offsets
        # real offsets: spread around the gallery median, not a constant
        assert float(np.std(want)) > 0.005 and abs(float(np.median(want))) < 1e-6
        assert b.manifest["index"]["hub_norm"] == {"k": HUB_K, "median": median,
                                                   "offset_min": round(float(want.min()), 6),
                                                   "offset_max": round(float(want.max()), 6)}
        assert 0.0 < median < 0.5



def test_index_info_says_whether_a_bundle_carries_offsets(world, tmp_path, capsys):
    assert main(["index", "info", str(world["bundle"])]) == 0
    assert f"hub      offsets per face (k {HUB_K}, " in capsys.readouterr().out
    old = _copy(world, tmp_path / "old")
    _drop_offsets_column(old)
    _resign(old, world["key"], lambda m: m["index"].pop("hub_norm"))
    assert main(["index", "info", str(old)]) == 0
    assert "hub      no offsets (searched on raw similarity)" in capsys.readouterr().out
    nomedian = _copy(world, tmp_path / "nomedian")
    _resign(nomedian, world["key"], lambda m: m["index"]["hub_norm"].pop("median"))
    assert main(["index", "info", str(nomedian)]) == 0
    assert "offsets without a median" in capsys.readouterr().out


def test_signature_covers_the_hub_norm_record(world, tmp_path):
    bundle = _copy(world, tmp_path / "b")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["index"]["hub_norm"]["k"] = 5  # the signature is left as it was
    (bundle / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
    with pytest.raises(BundleVerificationError, match="signature"):
        Bundle.load(bundle, pubkeys=[world["pub"]])


def test_incremental_build_recomputes_every_offset(world, tmp_path):
    """A changed gallery changes everyone's neighbours: reused faces get new offsets too."""
    lfw, people = world["lfw"], world["people"]
    write_prepager(tmp_path / "src", _cases(lfw, people[3:N_CASES], 8003) + _cases(lfw, people[N_CASES:], 8100))
    summary = build_bundle(world["config"], str(tmp_path / "src"), tmp_path / "b2", world["key"], base=world["bundle"],
                           analyzer=world["analyzer"], today=TODAY)
    assert summary.images_reused == 2 * (N_CASES - 3)
    assert summary.diff is not None and summary.diff["removed"] == ["MP8000", "MP8001", "MP8002"]
    with Bundle.load(world["bundle"]) as old, Bundle.load(tmp_path / "b2", pubkeys=[world["pub"]]) as new:
        vectors, faces = new.embeddings()
        want, median = hub_offsets(vectors, [f["id_formatted"] for f in faces], HUB_K)
        np.testing.assert_array_equal(np.array([f["hub_offset"] for f in faces], np.float32), want)
        assert new.manifest["index"]["hub_norm"]["median"] == median
        before = {f["image_key"]: f["hub_offset"] for f in old.faces()}
        changed = [abs(f["hub_offset"] - before[f["image_key"]]) > 1e-4 for f in faces if f["image_key"] in before]
        assert len(changed) == 2 * (N_CASES - 3) and sum(changed) >= len(changed) // 2


# ------------------------------------------------------------------------------------------- old bundles


def test_bundle_without_the_column_loads_and_scores_raw(world, tmp_path):
    bundle = _copy(world, tmp_path / "old")
    _drop_offsets_column(bundle)
    _resign(bundle, world["key"], lambda m: m["index"].pop("hub_norm"))
    _, queries = world["strangers"]
    with Bundle.load(bundle, pubkeys=[world["pub"]]) as old, Bundle.load(world["bundle"]) as new:
        assert "hub_offset" not in old.faces()[0]
        assert not old.has_hub_offsets and old.hub_offsets() is None
        got = old.search(queries, top_k=3, hub_norm=True)
        assert got == old.search(queries, top_k=3) == new.search(queries, top_k=3)
        assert all(m.score == m.similarity for row in got for m in row)


def test_bundle_without_a_median_is_searched_raw(world, tmp_path, caplog):
    """Built before probe offsets: the registry's normalised tails do not describe its scores."""
    bundle = _copy(world, tmp_path / "nomedian")
    _resign(bundle, world["key"], lambda m: m["index"]["hub_norm"].pop("median"))
    _, queries = world["strangers"]
    with Bundle.load(bundle, pubkeys=[world["pub"]]) as old:
        assert not old.has_hub_offsets
        got = old.search(queries, top_k=3, hub_norm=True)
        assert all(m.score == m.similarity and m.probe_offset == 0.0 for row in got for m in row)
    assert "has no median" in caplog.text and "rebuild" in caplog.text
    _resign(bundle, world["key"], lambda m: m["index"]["hub_norm"].update(median="0.3"))
    with pytest.raises(BundleError, match=r"index\.hub_norm\.median must be a finite number"):
        Bundle.load(bundle, pubkeys=[world["pub"]])


def test_manifest_claiming_offsets_the_database_lacks_is_refused(world, tmp_path):
    bundle = _copy(world, tmp_path / "bad")
    _drop_offsets_column(bundle)
    _resign(bundle, world["key"], lambda m: None)
    with pytest.raises(BundleError, match=r"meta\.sqlite3.*hub_offset"):
        Bundle.load(bundle, pubkeys=[world["pub"]])


# ------------------------------------------------------------------------------------------------ search


@pytest.mark.parametrize(("top_k", "first_factor"), [(1, None), (3, None), (1, 1), (3, 1)])
def test_normalised_search_is_exact_and_reranks_hub_photos(world, top_k, first_factor, monkeypatch):
    """Search with offsets equals scoring every face; some strangers' raw best is a hub photo that loses.

    ``first_factor=1``: FAISS is first asked for no more faces than a raw search, so exactness
    rests on the widening (a face not returned could still outscore the last case kept).
    """
    if first_factor is not None:
        monkeypatch.setattr(bundle_mod, "HUB_SEARCH_FACTOR", first_factor)
    _, s_emb = world["strangers"]
    _, m_emb = world["mated"]
    reranked = 0
    with Bundle.load(world["bundle"]) as b:
        offsets = b.hub_offsets()
        assert offsets is not None
        queries = np.concatenate([s_emb, m_emb])
        raw_all, hub_all = b.search(queries, top_k), b.search(queries, top_k, hub_norm=True)
        for q, raw, hub in zip(queries, raw_all, hub_all, strict=True):
            for got, norm in ((raw, False), (hub, True)):
                want = _brute_force(b, q, top_k, norm)
                assert [m.id_formatted for m in got] == [c for c, _, _ in want]
                assert [m.score for m in got] == pytest.approx([s for _, s, _ in want], abs=1e-5)
                for m in got:
                    assert m.probe_offset == got[0].probe_offset  # one per search
                    assert m.probe_offset != 0.0 if norm else m.probe_offset == 0.0
                    want_score = m.similarity - (offsets[m.face_id] if norm else 0.0) - m.probe_offset
                    assert m.score == pytest.approx(want_score, abs=1e-6)
                    # the index stores fp16: its similarities are the stored vectors' within ~1e-3
                    assert m.similarity == pytest.approx(float(q @ b.embeddings()[0][m.face_id]), abs=2e-3)
            if raw[0].id_formatted != hub[0].id_formatted:
                reranked += 1
                loser = next((m for m in hub if m.id_formatted == raw[0].id_formatted), None)
                # the raw winner's photo attracts more strangers than the photo that beats it
                assert offsets[raw[0].face_id] > offsets[hub[0].face_id]
                assert hub[0].similarity <= raw[0].score
                assert hub[0].score >= raw[0].score - offsets[raw[0].face_id] - hub[0].probe_offset
                if loser is not None:
                    assert loser.score < hub[0].score
        assert reranked >= 1
        # exact_above: every case scoring at least the floor is found with its true score and rank
        for floor in (0.1, 0.2, 0.3):
            for q, got in zip(queries, b.search(queries, top_k, hub_norm=True, exact_above=floor), strict=True):
                want = [(c, s) for c, s, _ in _brute_force(b, q, top_k, True) if s >= floor]
                assert [(m.id_formatted, m.score) for m in got[:len(want)]] == [
                    (c, pytest.approx(s, abs=1e-5)) for c, s in want]
                assert all(m.score < floor for m in got[len(want):])
        # the mated probes still find their own case first after normalisation
        mated_top = [row[0].id_formatted for row in hub_all[len(s_emb):]]
        hits = sum(c == want for c, want in zip(mated_top, world["mated_cases"], strict=True))
        assert hits >= len(mated_top) - 1, (mated_top, world["mated_cases"])


# ------------------------------------------------------------------------------------- policy and events


def _hub_spec() -> ModelSpec:
    """edgeface_xs with normalised tails (made up for the test: the raw tails shifted down by 0.05)."""
    raw = get_spec("edgeface_xs")
    assert raw.impostor_tail is not None and raw.child_impostor_tail is not None

    def shifted(tail: ImpostorTail) -> ImpostorTail:
        return ImpostorTail(tuple((t - 0.05, f) for t, f in tail.points), tail.pairs, "test: raw tail - 0.05")

    return dataclasses.replace(raw, hub_impostor_tail=shifted(raw.impostor_tail),
                               hub_child_impostor_tail=shifted(raw.child_impostor_tail))


def test_device_decision_and_event_with_a_normalised_policy(world):
    spec = _hub_spec()
    m_emb = world["mated"][1]
    matching = world["config"].matching.model_copy(update={"confirm_frames": 1, "min_threshold": 0.0})
    with Bundle.load(world["bundle"]) as b:
        policy = resolve_policy(matching, spec, b.ntotal, hub_norm=b.has_hub_offsets)
        assert policy.hub_norm and policy.to_dict()["hub_norm"] is True
        engine = DecisionEngine(matching.model_copy(update={"threshold": policy.threshold}), b.case)
        engine.set_policy(policy)
        decisions = []
        for i, emb in enumerate(m_emb):
            matches = b.search(emb[None], 5, hub_norm=policy.hub_norm)[0]
            d = engine.observe("cam", i, float(i), 0.9, 10_000.0, None, matches)
            if d is not None:
                decisions.append((d, matches))
        assert decisions, "no mated probe alerted"
        schema = json.loads(re.findall(r"```json\n(.*?)```", EVENTS_DOC.read_text(), flags=re.S)[0])
        offsets = b.hub_offsets()
        assert offsets is not None
        for d, matches in decisions:
            fields = v2_fields(d, b.photo, static_suspect=False)
            event = make_event(similarity=round(d.similarity, 4), margin=round(d.margin, 4), image_key=d.image_key,
                               case=dataclasses.replace(make_event().case, id_formatted=d.id_formatted,
                                                        link=f"https://www.namus.gov/MissingPersons/Case#/{d.id_formatted[2:]}"),
                               **fields)
            data = json.loads(event.to_json())
            jsonschema.validate(data, schema)
            assert data["policy"]["hub_norm"] is True
            top = matches[0]
            first = data["candidates"][0]
            # similarity stays the raw cosine; score is what the threshold was compared with
            assert first["similarity"] == pytest.approx(top.similarity, abs=1e-4) == pytest.approx(data["similarity"],
                                                                                                 abs=1e-4)
            assert first["score"] == pytest.approx(top.similarity - offsets[top.face_id] - top.probe_offset, abs=1e-4)
            assert first["score"] >= data["policy"]["threshold"] - 1e-4
            for c, m in zip(data["candidates"][1:], matches[1:], strict=False):
                assert (c["id_formatted"], c["similarity"], c["score"]) == (
                    m.id_formatted, pytest.approx(m.similarity, abs=1e-4), pytest.approx(m.score, abs=1e-4))


def test_search_alert_cli_reports_score_and_similarity(world, model_cache, capsys, monkeypatch):
    """``index search --alert`` normalises only with offsets, matching.hub_norm and normalised tails."""
    photos = [world["mated"][0][0], world["strangers"][0][0]]
    argv = ["index", "search", str(world["bundle"]), "--alert", "--json", "--pubkey", str(world["pub"]),
            "--set", f"models.cache_dir={model_cache}", "--set", "matching.min_threshold=0",
            *[a for p in photos for a in ("--image", str(p))]]
    spec = _hub_spec()
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: spec if name == spec.name else get_spec(name))

    def run(*extra: str) -> dict[str, Any]:
        assert main([*argv, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    raw = run("--set", "matching.hub_norm=false")  # switched off: raw scores, raw tail
    assert raw["policy"]["hub_norm"] is False
    assert all(c["score"] == c["similarity"] for r in raw["results"] for c in r["candidates"])
    doc = run()
    assert doc["policy"]["hub_norm"] is True and doc["policy"]["threshold"] < raw["policy"]["threshold"]
    with Bundle.load(world["bundle"]) as b:
        offsets, keys = b.hub_offsets(), {f["image_key"]: f["face_id"] for f in b.faces()}
        embs = [world["mated"][1][0], world["strangers"][1][0]]  # the two photos' embeddings
        direct = [b.search(e[None], 5, hub_norm=True)[0] for e in embs]
    assert offsets is not None
    for row, want in zip(doc["results"], direct, strict=True):
        assert row["probe_offset"] == pytest.approx(want[0].probe_offset, abs=2e-4)
        for c, m in zip(row["candidates"], want, strict=True):
            assert c["case"] == m.id_formatted and c["score"] == pytest.approx(m.score, abs=2e-4)
            assert c["score"] == pytest.approx(c["similarity"] - offsets[keys[c["image_key"]]] - row["probe_offset"],
                                               abs=3e-4)
    assert all(r["probe_offset"] == 0 for r in raw["results"])
    assert doc["results"][0]["alert"] == world["mated_cases"][0], doc["results"][0]
    # an embedder without normalised tails stays raw even for a bundle with offsets
    no_tails = dataclasses.replace(spec, hub_impostor_tail=None, hub_child_impostor_tail=None)
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: no_tails if name == spec.name else get_spec(name))
    assert run()["policy"] == raw["policy"]
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: spec if name == spec.name else get_spec(name))
    assert main([a for a in argv if a != "--json"]) == 0  # the text output names both numbers
    text = capsys.readouterr().out
    assert "hub-normalised scores" in text and "similarity" in text


def test_edge_pipeline_decides_on_normalised_scores(world, tmp_path, model_cache, monkeypatch):
    """A clip of an enrolled person through the device pipeline, with normalised tails for its embedder."""
    from datetime import datetime, timezone

    import cv2

    from namus_edge.demo import synthesize_clip
    from namus_edge.edge.frame_queue import Frame
    from namus_edge.edge.pipeline import Pipeline

    spec = _hub_spec()
    monkeypatch.setattr(policy_mod, "get_spec", lambda name: spec if name == spec.name else get_spec(name))
    config = load_config(overrides=["matching.age_check.enabled=false", "matching.min_threshold=0",
                                    "detection.interval=3"])
    probe = world["mated"][0][3]
    clip = synthesize_clip(cv2.imread(str(probe)), tmp_path / "p.avi", frames=45, seed=3)
    analyzer = FaceAnalyzer(config, model_cache)
    events = []
    with Bundle.load(world["bundle"], [world["pub"]]) as bundle:
        pipe = Pipeline(config, analyzer, lambda: bundle, lambda e, crop: events.append(e))
        assert not pipe.policy.hub_norm  # no bundle seen yet
        cap = cv2.VideoCapture(str(clip))
        now = datetime.now(timezone.utc)
        try:
            i = 0
            while True:
                ok, image = cap.read()
                if not ok:
                    break
                pipe.process([Frame("cam", i, i / 30.0, now, image)])
                i += 1
        finally:
            cap.release()
        pipe.finish_camera("cam")
        assert pipe.policy.hub_norm and pipe.policy.gallery_size == bundle.ntotal
        offsets, keys = bundle.hub_offsets(), {f["image_key"]: f["face_id"] for f in bundle.faces()}
    assert offsets is not None
    assert len(events) == 1, events
    data = json.loads(events[0].to_json())
    schema = json.loads(re.findall(r"```json\n(.*?)```", EVENTS_DOC.read_text(), flags=re.S)[0])
    jsonschema.validate(data, schema)
    assert data["case"]["id_formatted"] == world["mated_cases"][3]
    assert data["policy"]["hub_norm"] is True and data["policy"]["threshold"] == round(pipe.policy.threshold, 4)
    first = data["candidates"][0]
    assert first["score"] >= data["policy"]["threshold"]
    # score = similarity - the photo's offset - the face's probe offset; candidates[0] is the track's best
    # frame, the runners-up come from the face that fired and share that face's probe offset
    probe = [c["similarity"] - offsets[keys[c["image_key"]]] - c["score"] for c in data["candidates"]]
    assert len(probe) >= 3 and max(probe[1:]) - min(probe[1:]) < 3e-4
    assert all(1e-3 < abs(p) < 0.3 for p in probe)


# ---------------------------------------------------------------------------------------- index evaluate


@pytest.mark.parametrize("settings", [[], ["--set", "matching.threshold=0.2"]], ids=["default", "fixed-0.2"])
def test_index_evaluate_measures_the_bundle_as_the_device_judges_it(world, model_cache, tmp_path, capsys, settings):
    """``index evaluate`` on the built bundle agrees, probe by probe, with ``index search --alert``.

    Default policy (hub-normalised, few or no false alerts among 20 strangers) and a fixed low raw
    threshold (many), so that both sides of the comparison are exercised.
    """
    root = Path("/")  # the photos' own folders; absolute paths relative to /
    m_paths, s_paths = world["mated"][0], world["strangers"][0]
    probes = tmp_path / "probes.csv"
    lines = ["path,identity"]
    lines += [f"{p.relative_to(root)},{case}" for p, case in zip(m_paths, world["mated_cases"], strict=True)]
    lines += [f"{p.relative_to(root)},stranger:{p.parent.name}" for p in s_paths]
    probes.write_text("\n".join(lines) + "\n")
    common = ["--pubkey", str(world["pub"]), "--set", f"models.cache_dir={model_cache}", *settings]
    assert main(["index", "evaluate", str(world["bundle"]), "--probes", str(probes), "--root", str(root),
                 "--cache-dir", str(tmp_path / "cache"), "--json", *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bundle"]["faces"] == 2 * N_CASES and doc["bundle"]["hub_offsets"] is True
    assert doc["data"]["gallery_faces"] == 2 * N_CASES and doc["data"]["gallery_identities"] == N_CASES
    assert doc["data"]["mated_probes"] == len(m_paths)
    assert doc["data"]["nonmated_probes"] == len(s_paths)  # every stranger, no fit half taken out
    assert doc["policy_config"]["hub_norm"] is (not settings)  # a fixed threshold is on raw similarity
    full = doc["by_gallery_size"][-1]
    assert full["gallery_size"] == 2 * N_CASES

    # the device's verdicts on the same photos
    assert main(["index", "search", str(world["bundle"]), "--alert", "--json", *common,
                 *[a for p in [*m_paths, *s_paths] for a in ("--image", str(p))]]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["policy"]["threshold"] == full["threshold"]
    verdicts = {Path(r["image"]).resolve(): r["alert"] for r in cli["results"]}
    misses = sum(verdicts[p.resolve()] != case for p, case in zip(m_paths, world["mated_cases"], strict=True))
    false_alerts = sorted(str(p.resolve()) for p in s_paths if verdicts[p.resolve()] is not None)
    assert round(full["fnir"] * len(m_paths)) == misses
    assert full["false_alerts"] == len(false_alerts)
    assert sorted(str(Path(a["probe"]).resolve()) for a in doc["false_alerts"]) == false_alerts
    assert misses < len(m_paths)  # the enrolled people are found
    if settings:
        assert len(false_alerts) >= 1  # the low threshold alerts for strangers: the comparison is not 0 == 0


def test_index_evaluate_needs_mated_probes_and_operator_embeddings(world, tmp_path, capsys):
    probes = tmp_path / "probes.csv"
    s_paths = world["strangers"][0]
    probes.write_text("path,identity\n" + f"{s_paths[0]},stranger\n")
    assert main(["index", "evaluate", str(world["bundle"]), "--probes", str(probes), "--root", "/"]) == 1
    assert "no probe's identity is a case id" in capsys.readouterr().err
    device = _copy(world, tmp_path / "device")
    (device / "embeddings.npy").unlink()
    probes.write_text("path,identity\n" + f"{s_paths[0]},MP8000\n")
    assert main(["index", "evaluate", str(device), "--probes", str(probes), "--root", "/"]) == 1
    assert "embeddings.npy: absent" in capsys.readouterr().err
