"""index.namus_api against a real HTTP server on loopback serving the real NamUs sample records.

The live NamUs API cannot be reached from tests; `namus_server.NamusTestServer` speaks the same
protocol (NAMUS_FORMAT §2-3) over real sockets and injects 503/429, a TCP reset, a slow answer
(client timeout) and a 404.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from namus_edge_testing.namus_server import FACE_CATEGORIES, NamusTestServer

from namus_edge.core.config import NamusApiConfig
from namus_edge.index.layouts import scan_source
from namus_edge.index.namus_api import NamusApiError, NamusClient, fetch_all
from namus_edge.models.imagefile import read_image, sniff_image

UA = "namus-edge-test/1.0 (+loopback)"
API = "/api/CaseSets/NamUs"


@pytest.fixture()
def server(shared_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = NamusTestServer(shared_dir / "namus" / "samples", slow_s=1.0).start()
    try:
        yield srv
    finally:
        srv.stop()


def _cfg(server: NamusTestServer, **kw) -> NamusApiConfig:
    base = dict(base_url=server.base_url, user_agent=UA, concurrency=4, timeout_s=0.5, retries=3,
                backoff_s=0.01, backoff_max_s=0.05, page_size=2)
    base.update(kw)
    return NamusApiConfig(**base)


def _case_gets(server: NamusTestServer, cs: str) -> list[str]:
    return [p for m, p, _ in server.requests("GET", f"{API}/{cs}/Cases/") if "/Images/" not in p]


def test_fetch_all_resumable_store(server: NamusTestServer, tmp_path: Path) -> None:
    store = tmp_path / "store"
    mp2336 = f"{API}/MissingPersons/Cases/2336"
    up2336 = f"{API}/UnidentifiedPersons/Cases/2336"
    mp21001 = server.records[("MissingPersons", 21001)]
    slow_image = next(i for i in mp21001["images"])["files"]["original"]["href"]
    server.inject(f"{API}/States", "429")
    server.inject(mp2336, "503")
    server.inject(up2336, "reset")
    server.inject(slow_image, "timeout")
    server.not_found.add(f"{API}/MissingPersons/Cases/33530")
    expected_faces = sum(
        1 for (_, cid), r in server.records.items() for i in r.get("images", [])
        if i["category"]["name"] in FACE_CATEGORIES and cid != 33530
    )
    assert expected_faces == 27

    # ---- run 1: everything new, every injected failure recovered by a retry
    r1 = fetch_all(_cfg(server), store, ["MP", "UP", "UCP"], progress=False)
    assert r1.failed == ()
    assert r1.states == tuple(server.states) and "New York" in r1.states
    assert dict(r1.found) == {"MP": 11, "UP": 6, "UCP": 3}  # page_size 2: Alabama MP needs 3 pages
    assert r1.not_found == ("MP33530",)
    assert len(r1.fetched) == 19 and r1.unchanged == () and r1.removed == ()
    assert r1.images_downloaded == expected_faces and r1.images_present == 0
    assert r1.minimal_projection == ("UCP",)  # the server rejects modifiedDateTime for UCP with HTTP 400
    assert len(server.requests("GET", path=f"{API}/States")) == 2  # 429 then 200
    assert len(server.requests("GET", path=mp2336)) == 2  # 503 then 200
    assert len(server.requests("GET", path=up2336)) == 2  # reset then 200
    assert len(server.requests("GET", path=slow_image)) == 2  # timed out then 200
    agents = {ua for _, _, ua in server.requests()}
    assert agents == {UA}

    for (cs, cid), rec in server.records.items():
        stored = store / "cases" / cs / f"{cid}.json"
        if cid == 33530:
            assert not stored.exists()
        else:
            assert json.loads(stored.read_text("utf-8")) == rec
    crop = server.crop_keys["8b9af02f3f644b23b3e8beb86e00c70c"]
    mp_img = store / "files/MissingPersons/FacialCaseId/2336-8b9af02f3f644b23b3e8beb86e00c70c.jpg"
    assert mp_img.read_bytes() == crop.read_bytes()
    ucp = server.records[("UnclaimedPersons", 137669)]["images"][0]["files"]["original"]
    ucp_img = store / f"files/UnclaimedPersons/FacialCaseId/137669-{ucp['storageKey']}.png"
    assert sniff_image(ucp_img) == "png" and read_image(ucp_img).shape[2] == 3
    flyer = server.records[("MissingPersons", 1358)]["images"][1]
    assert flyer["category"]["name"] == "Other"
    assert not list(store.rglob(f"*{flyer['files']['original']['storageKey']}*"))
    assert not list(store.rglob("*.part")) and not list(store.rglob("*.tmp"))

    scan = scan_source(store)
    assert scan.kind == "store" and scan.problems == ()
    assert len(scan.records) == 19 and len(scan.image_files) == expected_faces
    recs = {r.id_formatted: r for r in scan.case_records(date(2025, 9, 20))[0]}
    assert recs["MP2336"].display_name == "Chin Suk Kim Beshears" and recs["UP2336"].display_name == "Unidentified male"
    assert scan.image_files["8b9af02f3f644b23b3e8beb86e00c70c"] == mp_img

    # ---- run 2: nothing changed; no image is downloaded again, MP/UP cases are not fetched again
    before = len(server.requests())
    r2 = fetch_all(_cfg(server), store, ["MP", "UP", "UCP"], progress=False)
    assert r2.failed == () and r2.removed == ()
    assert r2.images_downloaded == 0 and r2.images_present == expected_faces and r2.bytes_downloaded == 0
    assert r2.fetched == ("UCP137669", "UCP75919", "UCP80158")  # no modifiedDateTime for UCP: always GET
    assert len(r2.unchanged) == 16
    assert r2.not_found == ("MP33530",)
    run2 = server.requests()[before:]
    assert not [p for _, p, _ in run2 if "/Images/" in p]
    assert [p for m, p, _ in run2 if m == "GET" and "/MissingPersons/Cases/" in p] == [
        f"{API}/MissingPersons/Cases/33530"]

    # ---- run 3: MP2336 modified on the server, MP4598 gone from search
    server.records[("MissingPersons", 2336)]["modifiedDateTime"] = "2025-09-18T08:00:00.1"
    server.records[("MissingPersons", 2336)]["subjectIdentification"]["nicknames"] = "Jina K"
    server.hidden.add(("MissingPersons", 4598))
    key4598 = server.records[("MissingPersons", 4598)]["images"][0]["files"]["original"]["storageKey"]
    r3 = fetch_all(_cfg(server), store, ["MP", "UP", "UCP"], progress=False)
    assert r3.failed == ()
    assert [c for c in r3.fetched if c.startswith("MP")] == ["MP2336"]
    assert r3.removed == ("MP4598",)
    assert r3.images_downloaded == 0
    stored = json.loads((store / "cases/MissingPersons/2336.json").read_text("utf-8"))
    assert stored["modifiedDateTime"] == "2025-09-18T08:00:00.1"
    assert not (store / "cases/MissingPersons/4598.json").exists()
    assert (store / "removed/cases/MissingPersons/4598.json").exists()
    assert list((store / "removed/files/MissingPersons").rglob(f"4598-{key4598}.jpg"))
    scan = scan_source(store)
    assert scan.problems == ()
    assert ("MP", 4598) not in scan.records and len(scan.records) == 18
    assert key4598 not in scan.image_files


def test_failures_after_retries_are_reported(server: NamusTestServer, tmp_path: Path) -> None:
    mp2336 = f"{API}/MissingPersons/Cases/2336"
    server.inject(mp2336, *["503"] * 10)
    original = server.records[("MissingPersons", 4598)]["images"][0]["files"]["original"]
    server.images[original["href"]] = (b"<html>maintenance</html>", "text/html")
    r = fetch_all(_cfg(server, retries=2), tmp_path, ["MissingPersons"], states=["Alabama"], progress=False)
    assert r.states == ("Alabama",)
    failed = {f.what: f.reason for f in r.failed}
    bad_image = f"image MP4598/{original['storageKey']}"
    assert set(failed) == {"case MP2336", bad_image}
    assert "HTTP 503" in failed["case MP2336"] and "gave up after 3 attempt(s)" in failed["case MP2336"]
    assert "not an image (first bytes 3c 68 74 6d" in failed[bad_image]
    assert len(server.requests("GET", path=mp2336)) == 3
    assert sorted(r.fetched) == ["MP21001", "MP33530", "MP36723", "MP4598"]
    assert not list(tmp_path.rglob("4598-*")) and not list(tmp_path.rglob("*.part"))
    assert not r.ok


def test_unknown_state_and_bad_base_url(server: NamusTestServer, tmp_path: Path) -> None:
    with pytest.raises(NamusApiError, match=r"unknown state name\(s\) \['Atlantis'\]; the API lists: Alabama"):
        fetch_all(_cfg(server), tmp_path, ["MP"], states=["Atlantis"], progress=False)
    with pytest.raises(NamusApiError, match="must be an http"):
        NamusClient(NamusApiConfig(base_url="ftp://example.org/api"))


def test_client_paging_and_hrefs(server: NamusTestServer) -> None:
    client = NamusClient(_cfg(server, page_size=1))
    hits = client.search("UnidentifiedPersons", "Guam")
    assert [(h.case_set, h.id) for h in hits] == [("UP", 11054), ("UP", 11055), ("UP", 11056)]
    assert hits[0].modified == "2017-10-31T12:42:55"
    assert len(server.requests("POST", f"{API}/UnidentifiedPersons/Search")) >= 3
    assert client.search("MP", "New York") == []
    assert client.absolute_url("/api/x/Original") == server.base_url.removesuffix("/api") + "/api/x/Original"
    with pytest.raises(NamusApiError, match="another host"):
        client.absolute_url("https://evil.example/api/x")
    with pytest.raises(NamusApiError, match="HTTP 404"):
        client.get_case("UCP", 999999)
