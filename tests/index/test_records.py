"""index.records on the real NamUs sample records (values checked by reading the JSON by hand)."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from namus_edge.core.cases import CASE_SETS, CaseIdError, case_link, case_set_code, case_set_name
from namus_edge.index.records import (
    DEFAULT_FACE_CATEGORIES,
    CaseRecord,
    ImageRef,
    RecordError,
    face_worthy,
    normalize_case,
    parse_namus_datetime,
)

TODAY = date(2025, 9, 20)
SETS = {"MP": "MissingPersons", "UP": "UnidentifiedPersons", "UCP": "UnclaimedPersons"}


@pytest.fixture(scope="module")
def raw(shared_dir: Path) -> dict[str, dict[str, Any]]:
    """All 20 sample records keyed on idFormatted, read with json directly (not with index code)."""
    samples = shared_dir / "namus" / "samples"
    out: dict[str, dict[str, Any]] = {}
    for name in SETS.values():
        for rec in json.loads((samples / "prepager-layout/output" / name / f"{name}.json").read_text("utf-8")):
            out[rec["idFormatted"]] = rec
        for f in (samples / "auto-namus-scraper").glob(f"*/{name}/{name}_*.json"):
            for rec in json.loads(f.read_text("utf-8")).values():
                out[rec["idFormatted"]] = rec
    assert len(out) == 20
    return out


def norm(raw: dict[str, dict[str, Any]], fmt: str, today: date = TODAY) -> CaseRecord:
    cs = next(c for c in ("UCP", "MP", "UP") if fmt.startswith(c))
    return normalize_case(raw[fmt], cs, today)


def test_mp2336_and_up2336_are_different_people(raw: dict[str, dict[str, Any]]) -> None:
    mp, up = norm(raw, "MP2336"), norm(raw, "UP2336")
    assert mp.id == up.id == 2336
    assert mp.key == ("MP", 2336) and up.key == ("UP", 2336)
    assert mp.id_formatted == "MP2336" and up.id_formatted == "UP2336"
    assert (mp.display_name, mp.sex) == ("Chin Suk Kim Beshears", "Female")
    assert (up.display_name, up.sex) == ("Unidentified male", "Male")
    assert mp.link == "https://www.namus.gov/MissingPersons/Case#/2336"
    assert up.link == "https://www.namus.gov/UnidentifiedPersons/Case#/2336"
    assert [i.storage_key for i in mp.images] == ["8b9af02f3f644b23b3e8beb86e00c70c"]
    assert up.images == ()
    assert len({mp.key, up.key}) == 2


@pytest.mark.parametrize(
    ("fmt", "name", "sex", "race", "ages", "kind", "date_last", "place", "agency", "agency_no"),
    [
        ("MP2336", "Chin Suk Kim Beshears", "Female", ("Asian",), (44, 44), "at_last_contact", date(2001, 12, 16),
         ("Homewood", "Jefferson County", "Alabama"), "Homewood Police Department", "011200676"),
        ("MP24922", "Maleina Luhk", "Female", ("Asian",), (9, 9), "at_last_contact", date(2011, 5, 25),
         ("Saipan", "Saipan", "Northern Mariana Islands"), "Department of Public Safety", None),
        ("UP2336", "Unidentified male", "Male", ("Uncertain",), (35, 60), "estimated", date(1972, 3, 10),
         ("Crownsville", "Anne Arundel County", "Maryland"), "Maryland State Police Barrack J", "72-491"),
        ("UP11056", "Unidentified person", "Unsure", ("Uncertain",), (18, 59), "estimated", date(1985, 5, 14),
         (None, "All", "Guam"), None, "MLC85-0015C"),
        ("UP51903", "Unidentified female", "Female", ("White / Caucasian",), (None, None), None, date(1986, 3, 30),
         ("Marbury", "Autauga County", "Alabama"), "Autauga County Sheriff's Office", "86-36141"),
        ("UCP75919", "Mark Andrew Payne", "Male", ("White / Caucasian",), (None, None), None, date(2020, 10, 20),
         ("Birmingham", "Jefferson County", "Alabama"), "Jefferson County Medical Examiners Office", "2020-5015"),
        ("UCP137669", "Gilberto Sanchez", "Male", ("Hispanic / Latino",), (None, None), None, date(2025, 1, 6),
         ("York", "York County", "Maine"), "Maine Office of Chief Medical Examiner", "2025-0074"),
    ],
)
def test_normalised_values(raw, fmt, name, sex, race, ages, kind, date_last, place, agency, agency_no) -> None:
    r = norm(raw, fmt)
    assert r.display_name == name
    assert r.sex == sex
    assert r.race == race
    assert (r.age_min, r.age_max) == ages
    assert r.age_kind == kind
    assert r.date_last == date_last
    assert (r.city, r.county, r.state) == place
    assert r.agency == agency
    assert r.agency_case_number == agency_no
    assert r.modified == raw[fmt]["modifiedDateTime"]
    assert r.resolved is False


@pytest.mark.parametrize(
    ("fmt", "today", "current"),
    [
        # 44 at 2001-12-16 + 23 whole years = 67 = NamUs currentMinAge.
        ("MP2336", date(2025, 9, 20), (67, 67)),
        # 36 at 2007-06-21 + 18 years = 54, but NamUs (birth date known) says 55 on a record served
        # before today: the person is at least 55.
        ("MP4598", date(2025, 9, 20), (55, 55)),
        # Later today: computed from the date (28 years), the stale record value (67) is not used.
        ("MP2336", date(2030, 1, 1), (72, 72)),
        # Before the record was modified, the record's current age is not trusted: 44 + 2.
        ("MP2336", date(2004, 1, 1), (46, 46)),
        ("UP2336", date(2025, 9, 20), (88, 113)),  # 35..60 estimated in 1972 + 53
        ("UP51903", date(2025, 9, 20), (None, None)),
        ("UCP75919", date(2025, 9, 20), (None, None)),
    ],
)
def test_current_age(raw, fmt: str, today: date, current) -> None:
    r = norm(raw, fmt, today)
    assert (r.current_age_min, r.current_age_max) == current


def test_ucp_age_from_year_of_birth(raw) -> None:
    rec = copy.deepcopy(raw["UCP75919"])
    rec["subjectIdentification"]["yearOfBirth"] = 1960
    r = normalize_case(rec, "UnclaimedPersons", TODAY)
    # found 2020-10-20: born in 1960 -> 59 or 60 when found; 4 whole years later 63..64
    assert (r.age_min, r.age_max, r.age_kind) == (59, 60, "at_last_contact")
    assert (r.current_age_min, r.current_age_max) == (63, 64)
    assert r.deceased is True
    del rec["subjectIdentification"]["yearOfBirth"]
    rec["subjectIdentification"]["missingMinAge"] = 40
    rec["subjectIdentification"]["missingMaxAge"] = 45
    r = normalize_case(rec, "UCP", TODAY)
    assert (r.age_min, r.age_max, r.age_kind) == (40, 45, "at_last_contact")


def test_ucp_sex_and_race_come_from_subject_identification(raw) -> None:
    rec = raw["UCP80158"]
    assert "subjectDescription" not in rec
    r = normalize_case(rec, "UCP", TODAY)
    assert r.sex == rec["subjectIdentification"]["sex"]["name"] == "Male"
    assert r.race == ("Black / African American",)


def test_up_possible_name_and_living_status(raw) -> None:
    rec = copy.deepcopy(raw["UP11055"])
    rec["subjectDescription"]["possibleFirstName"] = "John"
    rec["subjectDescription"]["possibleLastName"] = "Doe"
    rec["circumstances"]["status"] = {"id": 2, "name": "Unidentified Living", "localizedName": "x"}
    r = normalize_case(rec, "UP", TODAY)
    assert r.display_name == "Unidentified person (possibly John Doe)"
    assert r.deceased is False
    assert norm(raw, "UP11055").deceased is True
    assert norm(raw, "MP1358").deceased is False


def test_resolved_flag(raw) -> None:
    rec = copy.deepcopy(raw["MP1358"])
    assert norm(raw, "MP1358").resolved is False
    rec["caseIsResolved"] = True
    assert normalize_case(rec, "MP", TODAY).resolved is True


def test_images_categories_and_renderings(raw) -> None:
    r = norm(raw, "MP24922")
    assert [(i.category, i.is_rendering) for i in r.images] == [("FacialCaseId", False), ("AgeProgression", True)]
    prog = r.images[1]
    assert prog.caption == "Maleina's photo is shown age-progressed to 12 years."
    src = raw["MP24922"]["images"][1]
    assert prog.identity_id == src["identityId"]
    assert prog.href == src["files"]["original"]["href"]
    assert (prog.mime, prog.width, prog.height) == (
        src["files"]["original"]["mimeType"], src["files"]["original"]["width"], src["files"]["original"]["height"])
    # MP1358: FacialCaseId + a flyer in "Other" -> only the first is face-worthy
    mp1358 = norm(raw, "MP1358")
    assert [i.category for i in mp1358.images] == ["FacialCaseId", "Other"]
    assert [i.category for i in mp1358.face_images()] == ["FacialCaseId"]
    up = norm(raw, "UP51903")
    assert [i.is_rendering for i in up.face_images()] == [False, True]


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _forbidden(rec: dict[str, Any]) -> set[str]:
    """Contributor/contact person names, e-mails, phones, street addresses and narrative text of a raw record."""
    bad: set[str] = set()
    people = [c.get("user") or {} for c in rec.get("caseContributors") or []]
    for a in rec.get("investigatingAgencies") or []:
        sel = a.get("selection") or {}
        people.append(sel.get("contact") or {})
        ag = sel.get("agency") or {}
        bad.update(v for k, v in ag.items() if k in ("phone", "email", "street1", "street2") and v)
    for c in rec.get("caseContributors") or []:
        ag = c.get("agency") or {}
        bad.update(v for k, v in ag.items() if k in ("phone", "email", "street1", "street2") and v)
    for p in people:
        if p.get("firstName") and p.get("lastName"):
            bad.add(f"{p['firstName']} {p['lastName']}")
        bad.update(v for k, v in p.items() if k in ("email", "phone1", "phone2", "jobTitle") and v)
    circ = rec.get("circumstances") or {}
    bad.update(v for k, v in circ.items() if k.startswith("circumstances") and isinstance(v, str))
    bad.update(_strings(rec.get("notes")))
    bad.update(d.get("description") for d in rec.get("physicalFeatureDescriptions") or [] if d.get("description"))
    bad.update(d.get("description") for d in rec.get("clothingAndAccessoriesArticles") or [] if d.get("description"))
    return {b for b in bad if isinstance(b, str) and len(b.strip()) >= 4}


def test_no_contributor_pii_or_narrative_in_normalised_records(raw) -> None:
    checked: set[str] = set()
    for fmt, rec in raw.items():
        cs = next(c for c in ("UCP", "MP", "UP") if fmt.startswith(c))
        text = json.dumps(dataclasses.asdict(normalize_case(rec, cs, TODAY)), default=str, ensure_ascii=False)
        forbidden = _forbidden(rec)
        leaked = [b for b in forbidden if b in text]
        assert not leaked, f"{fmt} leaks {leaked}"
        checked |= forbidden
    # the check is not vacuous: the samples hold contributor names, phones, e-mails and narratives
    assert "Doug Finch" in checked  # MP2336 contributor
    assert "2053326237" in checked  # an agency phone
    assert "msp.annapolis@maryland.gov" in checked
    assert "Beshears was last seen on December 16, 2001 in Homewood, Alabama." in checked
    assert len(checked) > 40


@pytest.mark.parametrize(
    ("mutate", "cs", "match"),
    [
        (lambda r: r.pop("id"), "MP", r"MP record MP2336.*'id' is missing"),
        (lambda r: r.update(id="abc"), "MP", r"'id' is not an integer"),
        (lambda r: None, "UP", r"idFormatted is 'MP2336', expected 'UP2336'"),
        (lambda r: r["sighting"].update(date="16/12/2001"), "MP", r"MP2336: field sighting.date .*'16/12/2001'"),
        (lambda r: r["subjectIdentification"].update(computedMissingMinAge="old"), "MP",
         r"MP2336: field subjectIdentification.computedMissingMinAge is not a number"),
    ],
)
def test_record_errors_name_case_and_field(raw, mutate, cs: str, match: str) -> None:
    rec = copy.deepcopy(raw["MP2336"])
    mutate(rec)
    with pytest.raises(RecordError, match=match):
        normalize_case(rec, cs, TODAY)


def test_unknown_case_set_lists_valid_names() -> None:
    with pytest.raises(CaseIdError, match="MP/MissingPersons"):
        case_set_code("Missing")


@pytest.mark.parametrize(
    ("given", "code", "name"),
    [("MP", "MP", "MissingPersons"), ("MissingPersons", "MP", "MissingPersons"),
     ("UnidentifiedPersons", "UP", "UnidentifiedPersons"), ("UCP", "UCP", "UnclaimedPersons")],
)
def test_case_set_names(given: str, code: str, name: str) -> None:
    assert case_set_code(given) == code
    assert case_set_name(given) == name
    assert code in CASE_SETS


def test_case_link() -> None:
    assert case_link("UCP", 137669) == "https://www.namus.gov/UnclaimedPersons/Case#/137669"


@pytest.mark.parametrize(
    ("text", "micro"),
    [("2017-10-31T12:42:55", 0), ("2025-03-04T20:53:31.4", 400000), ("2025-03-04T20:53:31.48", 480000),
     ("2024-09-04T17:01:13.247", 247000)],
)
def test_parse_namus_datetime(text: str, micro: int) -> None:
    dt = parse_namus_datetime(text)
    assert dt.microsecond == micro and dt.tzinfo is None


@pytest.mark.parametrize("text", ["2025-03-04", "2025-03-04 20:53:31", "yesterday", ""])
def test_parse_namus_datetime_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a NamUs timestamp"):
        parse_namus_datetime(text)


def _img(category: str) -> ImageRef:
    return ImageRef("0" * 32, 1, category, None, category in {"AgeProgression"}, "/api/x", "image/jpg", 10, 10)


@pytest.mark.parametrize(
    ("category", "expected"),
    [("FacialCaseId", True), ("ActualPhoto", True), ("AgeProgression", True), ("Composite", True),
     ("ArtistRendering", True), ("Tattoo", False), ("Other", False), ("OfficeLogo", False), ("Clothing", False)],
)
def test_face_worthy_default_categories(category: str, expected: bool) -> None:
    assert face_worthy(_img(category)) is expected
    assert set(DEFAULT_FACE_CATEGORIES) == {"FacialCaseId", "ActualPhoto", "AgeProgression", "Composite",
                                            "ArtistRendering"}


def test_face_worthy_custom_categories() -> None:
    assert face_worthy(_img("Other"), ["Other"]) is True
    assert face_worthy(_img("FacialCaseId"), ["ActualPhoto"]) is False


@pytest.mark.parametrize("key", ["abc", "G" * 32, "8B9AF02F3F644B23B3E8BEB86E00C70C", "../" + "0" * 29])
def test_image_ref_rejects_bad_storage_key(key: str) -> None:
    with pytest.raises(RecordError, match="storage_key"):
        ImageRef(key, 1, "FacialCaseId", None, False, "/api/x")


def test_image_without_storage_key_is_skipped_not_fatal(raw, caplog: pytest.LogCaptureFixture) -> None:
    rec = copy.deepcopy(raw["MP21001"])
    del rec["images"][1]["files"]["original"]["storageKey"]
    r = normalize_case(rec, "MP", TODAY)
    assert len(r.images) == 3
    assert "MP21001: images[1]" in caplog.text
