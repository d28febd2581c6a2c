"""``namus-edge eval identify`` on a small real subset: stable JSON, policy applied, cache reused, bad input."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from namus_edge.cli import main
from namus_edge.models.identify_eval import (
    LOOKALIKE_ONE,
    LOOKALIKE_TWO,
    IdentifyInputError,
    Row,
    half_of,
    identity_ci95,
    mated_lookalikes,
    read_rows,
)
from namus_edge.models.registry import get_spec

TOP_KEYS = {"models", "policy_config", "split", "data", "tail", "by_gallery_size", "predicted", "prediction_check",
            "by_age_gap", "bias", "top_nonmated", "by_group", "false_alerts", "mated_rank1_errors", "mated_lookalikes"}
SIZE_KEYS = {"gallery_size", "measured", "rule", "threshold", "child_threshold", "nonmated", "false_alerts", "fpir",
             "fpir_ci95", "mated", "fnir", "fnir_ci95", "mated_wrong_alert", "rank1", "rank5", "nonmated_rejections",
             "mated_rejections", "face_only"}


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "identity", "age", "sex", "race", "age_gap"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    """8 enrolled LFW people + 2 FG-NET subjects + 90 distractor faces (LFW and UTKFace), real photos."""
    root = tmp_path_factory.mktemp("ident")
    ver: dict[str, list[dict[str, str]]] = defaultdict(list)
    with (data_dir / "verification" / "manifest.csv").open() as fh:
        for r in csv.DictReader(fh):
            ver[r["identity"]].append(r)
    gallery: list[dict[str, object]] = []
    probes: list[dict[str, object]] = []
    lfw = sorted(k for k, v in ver.items() if k.startswith("lfw:") and len(v) >= 3)[:8]
    for name in lfw:
        photos = sorted(r["path"] for r in ver[name])
        gallery.append({"path": f"verification/{photos[0]}", "identity": name})
        probes += [{"path": f"verification/{p}", "identity": name} for p in photos[1:3]]
    for subject in sorted(k for k in ver if k.startswith("fgnet:"))[:2]:
        rows = sorted(ver[subject], key=lambda r: float(r["age"]))
        gallery.append({"path": f"verification/{rows[0]['path']}", "identity": subject})
        probes += [{"path": f"verification/{r['path']}", "identity": subject, "age": r["age"],
                    "age_gap": float(r["age"]) - float(rows[0]["age"])} for r in rows[1:4]]
    with (data_dir / "identification" / "manifest.csv").open() as fh:
        ident = list(csv.DictReader(fh))
    for r in ident[::155][:90]:
        row = {"path": f"identification/{r['path']}", "identity": r["identity"], "age": r["age"],
               "sex": r["gender"], "race": r["race"]}
        gallery.append(row)
        probes.append(row)  # leave-one-identity-out: a non-mated search
    return {"gallery": _write(root / "gallery.csv", gallery), "probes": _write(root / "probes.csv", probes),
            "cache": root / "cache", "root": data_dir, "dir": root}


def _run(sets, capsys, *extra: str) -> dict:
    argv = ["eval", "identify", "--gallery", str(sets["gallery"]), "--probes", str(sets["probes"]),
            "--root", str(sets["root"]), "--cache-dir", str(sets["cache"]), "--sizes", "50", "--json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_identify_metrics_policy_cache_and_exclusions(sets, capsys, model_cache, monkeypatch):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(model_cache))
    r = _run(sets, capsys)
    assert set(r) == TOP_KEYS
    d = r["data"]
    assert d["gallery_faces"] == 100 and d["enrolled_identities"] == 10 and d["mated_probes"] == 22
    report_half = sum(half_of(g.identity, 0) == "report"
                      for g in read_rows(sets["gallery"], sets["root"]) if g.identity.startswith(("lfw:", "utk")))
    assert 0 < d["nonmated_probes"] <= report_half
    sizes = r["by_gallery_size"]
    assert [e["gallery_size"] for e in sizes] == [50, 100]
    for e in sizes:
        assert set(e) == SIZE_KEYS
        assert e["mated"] == 22 and e["nonmated"] == d["nonmated_probes"]
        assert e["fpir"] == e["false_alerts"] / e["nonmated"]
        for rate in ("fpir", "fnir"):
            lo, hi = e[f"{rate}_ci95"]
            assert 0 <= lo <= e[rate] <= hi <= 1
        assert set(e["face_only"]) == {"1e-02", "1e-03", "fpir_at_threshold"}
    assert sizes[-1]["rank1"] >= 0.6  # same-age LFW probes of 8 people are easy; FG-NET are not
    assert [p["gallery_size"] for p in r["predicted"]] == [55_000, 1_000_000]
    for p in r["predicted"]:
        assert {"adult", "child", "fpir", "fpir_ci95", "fpir_probe_mix", "fnir_face_only"} <= set(p)
        lo, hi = p["fpir_ci95"]
        assert 0 <= lo <= hi <= 1
    assert {"adult", "child"} <= set(r["tail"]["fit"])
    assert set(r["by_age_gap"]) <= {"0-4", "5-9", "10-19", "20+"} and r["by_age_gap"]
    assert set(r["bias"]) >= {"sex", "race", "age_band"}
    assert r["tail"]["fit"]["pairs"] > 0 and r["tail"]["report"]["pairs"] > 0

    # an explicit threshold overrides the policy: nothing alerts at 0.99
    fixed = _run(sets, capsys, "--set", "matching.threshold=0.99")
    assert all(e["rule"] == "fixed_threshold" and e["fpir"] == 0 and e["fnir"] == 1
               for e in fixed["by_gallery_size"])

    # hub normalisation: on by default once the embedder has a normalised tail; either way measurable
    assert r["policy_config"]["hub_norm"] is (get_spec("edgeface_xs").hub_impostor_tail is not None)
    for flag in ("--hub-norm", "--no-hub-norm"):
        h = _run(sets, capsys, flag)
        assert h["policy_config"]["hub_norm"] is (flag == "--hub-norm")
        assert ("hub" in h["tail"]["fit"]) is (flag == "--hub-norm")
        assert [e["gallery_size"] for e in h["by_gallery_size"]] == [50, 100]
    hub_tail = _run(sets, capsys, "--hub-norm")["tail"]["fit"]["hub"]
    assert hub_tail["pairs"] == 2 * r["tail"]["fit"]["pairs"]  # ordered pairs
    assert all(p["score"] >= hub_tail["floor"] for p in hub_tail["top_pairs"])

    # the cache: nothing is embedded again
    files = sorted(p.name for p in Path(d["embedding_cache"]).glob("shard-*.npz"))
    _run(sets, capsys)
    assert sorted(p.name for p in Path(d["embedding_cache"]).glob("shard-*.npz")) == files

    # a listed label-noise pair leaves the tail
    top = r["tail"]["fit"]["top_pairs"][0]
    excl = sets["dir"] / "exclude.csv"
    rel = lambda p: str(Path(p).relative_to(sets["root"]))  # noqa: E731
    excl.write_text(f"path_a,path_b,reason\n{rel(top['a'])},{rel(top['b'])},test\n")
    r2 = _run(sets, capsys, "--exclude", str(excl))
    assert r2["data"]["excluded_pairs"] == 1
    assert r2["tail"]["fit"]["pairs"] == r["tail"]["fit"]["pairs"] - 1
    assert {(p["a"], p["b"]) for p in r2["tail"]["fit"]["top_pairs"]}.isdisjoint({(top["a"], top["b"])})

    # a mated probe whose pair with its identity's only enrolment photo is listed (two people under
    # one name) has no mate: it leaves the metrics and is named
    rows = read_rows(sets["gallery"], sets["root"])
    probe = next(p for p in read_rows(sets["probes"], sets["root"]) if p.identity.startswith("lfw:"))
    enrolment = next(g for g in rows if g.identity == probe.identity)
    excl.write_text(f"path_a,path_b,reason\n{rel(enrolment.path)},{rel(probe.path)},test\n")
    r3 = _run(sets, capsys, "--exclude", str(excl))
    assert r3["data"]["mislabelled_probes"] == [str(probe.path)]
    assert r3["data"]["mated_probes"] == d["mated_probes"] - 1
    assert r3["by_gallery_size"][-1]["mated"] == sizes[-1]["mated"] - 1
    assert r3["data"]["nonmated_probes"] == d["nonmated_probes"]

    # look-alikes of enrolled people among the distractors are listed for review, with every photo
    # of the person each concerns; a candidate whose pairs are all listed is not
    assert isinstance(r["mated_lookalikes"], list)
    for c in r["mated_lookalikes"]:
        assert c["identity"] in {g.identity for g in rows} and c["probe"] in c["photos"]
        assert c["score"] >= LOOKALIKE_TWO and 1 <= c["above"] <= len(c["photos"])


def test_bad_inputs_name_the_file_and_line(tmp_path, data_dir, capsys):
    g = tmp_path / "g.csv"
    g.write_text("path,name\nx.jpg,a\n")
    with pytest.raises(IdentifyInputError, match=r"g\.csv: missing column\(s\) identity"):
        read_rows(g, data_dir)
    g.write_text("path,identity\nnope/missing.jpg,a\n")
    with pytest.raises(IdentifyInputError, match=r"g\.csv:2: image .*missing\.jpg does not exist"):
        read_rows(g, data_dir)
    g.write_text("path,identity,age\nidentification/manifest.csv,a,old\n")
    with pytest.raises(IdentifyInputError, match="column age: 'old' is not a number"):
        read_rows(g, data_dir)
    g.write_text("path,identity,sex\nidentification/manifest.csv,a,x\n")
    with pytest.raises(IdentifyInputError, match="column sex"):
        read_rows(g, data_dir)
    assert main(["eval", "identify", "--gallery", str(tmp_path / "none.csv"), "--probes", str(g),
                 "--root", str(data_dir)]) != 0
    assert "none.csv" in capsys.readouterr().err


def test_split_is_deterministic_and_balanced() -> None:
    ids = [f"utkface:{i}" for i in range(2000)]
    halves = [half_of(i, 0) for i in ids]
    assert halves == [half_of(i, 0) for i in ids]
    assert 0.45 < halves.count("fit") / len(ids) < 0.55
    assert halves != [half_of(i, 1) for i in ids]


def test_mated_lookalikes_selects_by_one_strong_or_two_moderate_scores() -> None:
    def unit(*xs: float) -> np.ndarray:
        v = np.array([*xs, 0, 0, 0, 0][:4], np.float32)
        v[3] = np.sqrt(max(0.0, 1 - float(v[:3] @ v[:3])))
        return v

    a1, a2 = Path("a1.jpg"), Path("a2.jpg")
    emb = {a1: unit(1, 0, 0), a2: unit(0, 1, 0)}
    one_strong = unit(LOOKALIKE_ONE + 0.01, 0, 0)  # a1 alone
    two_moderate = unit(LOOKALIKE_TWO + 0.01, LOOKALIKE_TWO + 0.01, 0)  # both, below LOOKALIKE_ONE
    one_moderate = unit(LOOKALIKE_TWO + 0.01, 0, 0)  # a1 alone, moderate: not listed
    stranger = unit(0, 0, 1)
    d = [Row(Path(f"d{i}.jpg"), f"utk:{i}") for i in range(4)]
    d_emb = np.stack([one_strong, two_moderate, one_moderate, stranger])
    out = mated_lookalikes({"lfw:a": [a1, a2]}, emb, d, d_emb, set())
    assert [c["gallery"] for c in out] == ["d0.jpg", "d1.jpg"]  # strongest first
    assert out[0]["probe"] == "a1.jpg" and out[0]["above"] == 1 and out[1]["above"] == 2
    assert out[0]["photos"] == ["a1.jpg", "a2.jpg"]
    # listed pairs: a candidate is dropped only when every pair with the person is listed
    half = {frozenset((a1, d[0].path))}
    assert mated_lookalikes({"lfw:a": [a1, a2]}, emb, d, d_emb, half)[0]["gallery"] == "d0.jpg"
    both = half | {frozenset((a2, d[0].path))}
    assert "d0.jpg" not in [c["gallery"] for c in mated_lookalikes({"lfw:a": [a1, a2]}, emb, d, d_emb, both)]


def test_identity_ci95_resamples_people_not_searches() -> None:
    # 10 people with 10 searches each; one person misses all 10: 10 % of searches miss
    ids = [f"p{k}" for k in range(10) for _ in range(10)]
    errors = [k == 0 for k in range(10) for _ in range(10)]
    lo, hi = identity_ci95(errors, ids)
    assert lo == 0.0 and hi >= 0.25  # drawing the bad person 0 or 3+ times out of 10 is likely
    # the same rate spread over people: a much narrower interval
    spread = [j == 0 for _ in range(10) for j in range(10)]
    lo2, hi2 = identity_ci95(spread, ids)
    assert lo2 == hi2 == 0.1
    assert identity_ci95(errors, ids) == [lo, hi]  # seeded
    assert identity_ci95([], []) is None
    # no error at all: the upper bound is the exact binomial bound over the 10 people, not 0
    assert identity_ci95([False] * 100, ids) == [0.0, pytest.approx(1 - 0.025 ** 0.1, abs=1e-5)]
    assert identity_ci95([True] * 100, ids) == [pytest.approx(0.025 ** 0.1, abs=1e-5), 1.0]
