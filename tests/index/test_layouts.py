"""index.layouts / index.jsonutil on the real sample layouts and on damaged copies of them."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from namus_edge.index.jsonutil import JsonFileError, load_json_file, write_json_atomic
from namus_edge.index.layouts import SourceError, scan_source

PREPAGER_KEYS = {("MP", 21001), ("MP", 36723), ("MP", 4598), ("MP", 2336), ("MP", 33530),
                 ("UP", 51903), ("UP", 100266), ("UP", 2336), ("UCP", 75919), ("UCP", 80158)}
AUTO_KEYS = {("MP", 1358), ("MP", 110340), ("MP", 65548), ("MP", 89129), ("MP", 24922), ("MP", 24909),
             ("UP", 11054), ("UP", 11055), ("UP", 11056), ("UCP", 137669)}
SNAP = "2025-09-20-00-23-17"


@pytest.fixture(scope="module")
def samples(shared_dir: Path) -> Path:
    return shared_dir / "namus" / "samples"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:  # the shared samples are read-only
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.mark.parametrize("sub", ["prepager-layout", "prepager-layout/output"])
def test_prepager_sample(samples: Path, sub: str) -> None:
    scan = scan_source(samples / sub)
    assert scan.kind == "prepager"
    assert scan.root == samples / "prepager-layout" / "output"
    assert set(scan.records) == PREPAGER_KEYS
    assert scan.problems == ()
    assert scan.image_files == {}
    # newest modifiedDateTime of the 10 records is MP2336's
    assert scan.snapshot_time == datetime(2025, 9, 17, 19, 9, 50, 550000)
    assert "modifiedDateTime" in scan.snapshot_source
    assert scan.records[("MP", 2336)]["subjectDescription"]["sex"]["name"] == "Female"
    assert scan.records[("UP", 2336)]["subjectDescription"]["sex"]["name"] == "Male"


@pytest.mark.parametrize("sub", ["auto-namus-scraper", f"auto-namus-scraper/{SNAP}"])
def test_auto_scraper_sample(samples: Path, sub: str) -> None:
    scan = scan_source(samples / sub)
    assert scan.kind == "auto_scraper"
    assert set(scan.records) == AUTO_KEYS
    assert scan.problems == ()
    assert scan.snapshot_time == datetime(2025, 9, 20, 0, 23, 17)
    assert scan.record_paths[("MP", 24922)].name == "MissingPersons_Northern Mariana Islands.json"


def test_case_records_normalise_all(samples: Path) -> None:
    recs, bad = scan_source(samples / "prepager-layout").case_records(date(2025, 9, 20))
    assert bad == []
    assert [r.id_formatted for r in recs] == [
        "MP2336", "MP4598", "MP21001", "MP33530", "MP36723", "UP2336", "UP51903", "UP100266", "UCP75919", "UCP80158"]


@pytest.mark.parametrize("ending", [",]", ", ]", ",\n  ]\n"])
def test_prepager_trailing_comma_tolerated(samples: Path, tmp_path: Path, ending: str) -> None:
    src = (samples / "prepager-layout/output/MissingPersons/MissingPersons.json").read_bytes()
    assert src.endswith(b"}]")
    out = tmp_path / "output" / "MissingPersons"
    out.mkdir(parents=True)
    (out / "MissingPersons.json").write_bytes(src[:-1] + ending.encode())
    scan = scan_source(tmp_path)
    assert scan.problems == ()
    assert set(scan.records) == {k for k in PREPAGER_KEYS if k[0] == "MP"}


def test_json_errors_name_file_and_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'[{"id": 1},\n {"id": 2,,}]')
    with pytest.raises(JsonFileError, match=r"bad\.json: invalid JSON at line 2 column 11"):
        load_json_file(bad, allow_trailing_comma=True)
    # a comma before ] anywhere else than at the very end is not repaired
    mid = tmp_path / "mid.json"
    mid.write_bytes(b'[[1,],2]')
    with pytest.raises(JsonFileError, match=r"mid\.json: invalid JSON"):
        load_json_file(mid, allow_trailing_comma=True)
    latin = tmp_path / "latin.json"
    latin.write_bytes('["caf\u00e9"]'.encode("latin-1"))
    with pytest.raises(JsonFileError, match=r"latin\.json: not UTF-8 at byte 5"):
        load_json_file(latin)


def test_json_utf8_roundtrip(tmp_path: Path) -> None:
    value = {"text": "zero\u200bwidth caf\u00e9"}
    write_json_atomic(tmp_path / "a" / "x.json", value)
    assert load_json_file(tmp_path / "a" / "x.json") == value
    assert "\u200b".encode() in (tmp_path / "a" / "x.json").read_bytes()
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]  # no temp file left


def test_corrupt_and_unknown_files_reported_not_fatal(samples: Path, tmp_path: Path) -> None:
    snap = _copy(samples / "auto-namus-scraper" / SNAP, tmp_path / SNAP)
    (snap / "MissingPersons" / "MissingPersons_Texas.json").write_text('{"1": {"id": 1, ', "utf-8")
    (snap / "Unknown").mkdir()
    (snap / "UnidentifiedPersons" / "UnidentifiedPersons_Empty.json").write_text("{}", "utf-8")
    scan = scan_source(tmp_path)
    assert set(scan.records) == AUTO_KEYS
    reasons = {p.path.name: p.reason for p in scan.problems}
    assert set(reasons) == {"MissingPersons_Texas.json", "Unknown"}
    assert "invalid JSON at line 1" in reasons["MissingPersons_Texas.json"]
    assert "unknown case set folder" in reasons["Unknown"]


def test_record_problems_reported(samples: Path, tmp_path: Path) -> None:
    recs = json.loads((samples / "prepager-layout/output/UnidentifiedPersons/UnidentifiedPersons.json").read_text())
    no_id = dict(recs[0])
    del no_id["id"]
    mp_in_up = json.loads((samples / "prepager-layout/output/MissingPersons/MissingPersons.json").read_text())[0]
    out = tmp_path / "output" / "UnidentifiedPersons"
    out.mkdir(parents=True)
    (out / "UnidentifiedPersons.json").write_text(json.dumps([no_id, recs[1], mp_in_up, 7]), "utf-8")
    scan = scan_source(tmp_path / "output")
    assert set(scan.records) == {("UP", 100266)}
    reasons = [p.reason for p in scan.problems]
    assert len(reasons) == 3
    assert "UP record [0] (UP51903): required field 'id' is missing" in reasons[0]
    assert "'MP21001' is not a UnidentifiedPersons case" in reasons[1]
    assert "not a JSON object (int)" in reasons[2]


def _snapshot(root: Path, name: str, cs: str, state: str, records: list[dict[str, Any]]) -> None:
    d = root / name / cs
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{cs}_{state}.json").write_text(json.dumps({str(r["id"]): r for r in records}), "utf-8")


def test_duplicate_across_snapshots_keeps_newest_modified(samples: Path, tmp_path: Path) -> None:
    guam = json.loads((samples / f"auto-namus-scraper/{SNAP}/MissingPersons/MissingPersons_Guam.json").read_text())
    current = guam["1358"]
    assert current["modifiedDateTime"] == "2025-03-04T20:53:31.48"
    stale = json.loads(json.dumps(current))
    stale["modifiedDateTime"] = "2024-01-01T00:00:00"
    stale["subjectIdentification"]["firstName"] = "STALE"
    newer = json.loads(json.dumps(guam["65548"]))
    newer["modifiedDateTime"] = "2025-09-01T00:00:00.5"
    newer["subjectIdentification"]["firstName"] = "NEWER"
    # 0-3 fractional digits: .5 (500 ms) is newer than .48 (480 ms)
    frac = json.loads(json.dumps(guam["89129"]))
    frac_new = json.loads(json.dumps(frac))
    frac["modifiedDateTime"], frac_new["modifiedDateTime"] = "2025-01-08T18:51:49.48", "2025-01-08T18:51:49.5"
    frac_new["subjectIdentification"]["firstName"] = "FRACTION"
    _snapshot(tmp_path, "2025-03-10-00-00-00", "MissingPersons", "Guam", [current, guam["65548"], frac_new])
    _snapshot(tmp_path, "2025-09-20-00-23-17", "MissingPersons", "Guam", [stale, newer, frac])
    scan = scan_source(tmp_path)
    assert scan.kind == "auto_scraper"
    assert scan.records[("MP", 1358)]["subjectIdentification"]["firstName"] == "David"
    assert scan.record_paths[("MP", 1358)].parts[-3] == "2025-03-10-00-00-00"
    assert scan.records[("MP", 65548)]["subjectIdentification"]["firstName"] == "NEWER"
    assert scan.records[("MP", 89129)]["subjectIdentification"]["firstName"] == "FRACTION"
    assert scan.snapshot_time == datetime(2025, 9, 20, 0, 23, 17)
    assert scan.problems == ()


def test_prepager_files_joined_by_case_and_storage_key(samples: Path, tmp_path: Path) -> None:
    out = _copy(samples / "prepager-layout" / "output", tmp_path / "output")
    crop = (samples / "face_crops/MissingPersons/namus2336-face0.jpg").read_bytes()
    mp_files = out / "MissingPersons" / "files"
    (mp_files / "FacialCaseId").mkdir(parents=True)
    good = mp_files / "FacialCaseId" / "2336-8b9af02f3f644b23b3e8beb86e00c70c.jpg"
    good.write_bytes(crop)
    mp4598 = json.loads((out / "MissingPersons/MissingPersons.json").read_text())[2]
    assert mp4598["id"] == 4598
    key4598 = mp4598["images"][0]["files"]["original"]["storageKey"]
    wrong_case = mp_files / "FacialCaseId" / f"21001-{key4598}.jpg"
    wrong_case.write_bytes(crop)
    orphan = mp_files / "Other" / "99999-0123456789abcdef0123456789abcdef.jpg"
    orphan.parent.mkdir()
    orphan.write_bytes(crop)
    (mp_files / "FacialCaseId" / "4598-ffffffffffffffffffffffffffffffff.jpg.part").write_bytes(b"x")
    (mp_files / "FacialCaseId" / "notes.txt").write_bytes(b"x")
    # UP100266 has a PDF document in the ArtistRendering category: ignored, not a problem
    up = json.loads((out / "UnidentifiedPersons/UnidentifiedPersons.json").read_text())[1]
    doc_key = up["documents"][0]["file"]["storageKey"]
    img_key = up["images"][0]["files"]["original"]["storageKey"]
    up_files = out / "UnidentifiedPersons" / "files"
    (up_files / "ArtistRendering").mkdir(parents=True)
    (up_files / "ArtistRendering" / f"100266-{doc_key}.pdf").write_bytes(b"%PDF-1.4")
    (up_files / "FacialCaseId").mkdir()
    up_img = up_files / "FacialCaseId" / f"100266-{img_key}.jpg"
    up_img.write_bytes(crop)
    # the same storage key filed under the wrong case set folder
    misfiled = out / "UnclaimedPersons" / "files" / "FacialCaseId" / f"2336-{'8b9af02f3f644b23b3e8beb86e00c70c'}.png"
    misfiled.parent.mkdir(parents=True)
    misfiled.write_bytes(crop)

    scan = scan_source(tmp_path)
    assert scan.image_files == {"8b9af02f3f644b23b3e8beb86e00c70c": good, img_key: up_img}
    reasons = {p.path.name: p.reason for p in scan.problems}
    assert set(reasons) == {wrong_case.name, orphan.name, "notes.txt", misfiled.name}
    assert "belongs to MP4598, but the file is named for MP21001" in reasons[wrong_case.name]
    assert "belongs to no image of any case" in reasons[orphan.name]
    assert "belongs to MP2336, but the file is named for UCP2336" in reasons[misfiled.name]


def test_auto_scraper_with_files_root(samples: Path, tmp_path: Path) -> None:
    files = tmp_path / "originals" / "MissingPersons" / "files" / "AgeProgression"
    files.mkdir(parents=True)
    nmi = json.loads((samples / f"auto-namus-scraper/{SNAP}/MissingPersons/"
                      "MissingPersons_Northern Mariana Islands.json").read_text())
    key = nmi["24922"]["images"][1]["files"]["original"]["storageKey"]
    f = files / f"24922-{key}.jpg"
    f.write_bytes(b"\xff\xd8\xff")
    scan = scan_source(samples / "auto-namus-scraper", files_root=tmp_path / "originals")
    assert scan.image_files == {key: f}
    assert scan.problems == ()


def test_store_layout(samples: Path, tmp_path: Path) -> None:
    prep = samples / "prepager-layout/output"
    mp = json.loads((prep / "MissingPersons/MissingPersons.json").read_text())[3]
    up = json.loads((prep / "UnidentifiedPersons/UnidentifiedPersons.json").read_text())[2]
    assert mp["id"] == up["id"] == 2336
    write_json_atomic(tmp_path / "cases/MissingPersons/2336.json", mp)
    write_json_atomic(tmp_path / "cases/UnidentifiedPersons/2336.json", up)
    write_json_atomic(tmp_path / "store.json", {"fetched_at": "2025-09-21T10:00:00"})
    img = tmp_path / "files/MissingPersons/FacialCaseId/2336-8b9af02f3f644b23b3e8beb86e00c70c.jpg"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"\xff\xd8\xff")
    scan = scan_source(tmp_path)
    assert scan.kind == "store"
    assert set(scan.records) == {("MP", 2336), ("UP", 2336)}
    assert scan.image_files == {"8b9af02f3f644b23b3e8beb86e00c70c": img}
    assert scan.snapshot_time == datetime(2025, 9, 21, 10, 0)
    assert scan.problems == ()


def test_no_layout_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no NamUs layout found"):
        scan_source(tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        scan_source(tmp_path / "missing")
