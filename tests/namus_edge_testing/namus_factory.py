"""Build NamUs-format case sets (Prepager layout) from labelled photos, for tests and benchmarks.

Records carry the fields the ingest reads (NAMUS_FORMAT.md section 4) and nothing else of
value; photos are copied at test time into a temporary directory (third-party data never
enters the repository). Storage keys are derived from the photo path, so rebuilding gives
the same keys.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SET_NAMES = {"MP": "MissingPersons", "UP": "UnidentifiedPersons", "UCP": "UnclaimedPersons"}


@dataclass
class SyntheticCase:
    """One case to write: identity photos become its FacialCaseId images."""

    case_set: str
    case_id: int
    first: str
    last: str
    photos: list[Path]
    age_at_last: float | None = 30
    date_last: str = "2015-06-01"
    sex: str = "Male"
    resolved: bool = False
    modified: str = "2025-01-01T00:00:00"
    categories: list[str] = field(default_factory=list)


def storage_key(path: Path | str) -> str:
    """32-hex storage key of a photo (stable per path)."""
    return hashlib.md5(str(path).encode(), usedforsecurity=False).hexdigest()


def raw_record(case: SyntheticCase) -> dict:
    """A raw NamUs case body with images, in the shape of the real API."""
    images = []
    for i, p in enumerate(case.photos):
        key = storage_key(p)
        cat = case.categories[i] if i < len(case.categories) else "FacialCaseId"
        images.append({
            "id": 1000 + i,
            "identityId": 2000 + i,
            "category": {"id": 1, "name": cat, "localizedName": cat},
            "isPublic": True,
            "files": {"original": {"mimeType": "image/jpg", "storageKey": key,
                                   "href": f"/api/CaseSets/NamUs/{SET_NAMES[case.case_set]}/Cases/"
                                           f"{case.case_id}/Images/{2000 + i}/Original"}},
        })
    rec: dict = {
        "id": case.case_id,
        "idFormatted": f"{case.case_set}{case.case_id}",
        "createdDateTime": "2014-01-01T00:00:00",
        "modifiedDateTime": case.modified,
        "caseIsResolved": case.resolved,
        "images": images,
        "caseContributors": [{"firstName": "Secret", "lastName": "Contributor", "email": "secret@example.org",
                              "phone": "555-0100"}],
    }
    if case.case_set == "MP":
        rec["subjectIdentification"] = {"firstName": case.first, "lastName": case.last,
                                        "computedMissingMinAge": case.age_at_last,
                                        "computedMissingMaxAge": case.age_at_last}
        rec["subjectDescription"] = {"sex": {"name": case.sex}, "ethnicities": [{"name": "Uncertain"}]}
        rec["sighting"] = {"date": case.date_last, "address": {"city": "Testville", "state": {"name": "Alabama",
                                                                                           "displayName": "AL"}}}
        rec["circumstances"] = {"circumstancesOfDisappearance": "Narrative text that must never reach a device."}
    elif case.case_set == "UP":
        rec["subjectDescription"] = {"sex": {"name": case.sex}, "estimatedAgeFrom": case.age_at_last,
                                     "estimatedAgeTo": case.age_at_last}
        rec["circumstances"] = {"dateFound": case.date_last, "address": {"state": {"name": "Alabama"}},
                                "circumstancesOfRecovery": "Narrative text that must never reach a device."}
    else:
        rec["subjectIdentification"] = {"firstName": case.first, "lastName": case.last, "sex": {"name": case.sex}}
        rec["circumstances"] = {"dateBodyFound": case.date_last, "address": {"state": {"name": "Alabama"}}}
    return rec


def write_prepager(root: Path, cases: list[SyntheticCase]) -> Path:
    """Write ``root/output/<CaseSet>/<CaseSet>.json`` and the files tree; returns ``root``."""
    by_set: dict[str, list[SyntheticCase]] = defaultdict(list)
    for c in cases:
        by_set[c.case_set].append(c)
    for cs, items in by_set.items():
        d = root / "output" / SET_NAMES[cs]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{SET_NAMES[cs]}.json").write_text(json.dumps([raw_record(c) for c in items]), encoding="utf-8")
        for c in items:
            rec = raw_record(c)
            for p, img in zip(c.photos, rec["images"], strict=True):
                cat_dir = d / "files" / img["category"]["name"]
                cat_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, cat_dir / f"{c.case_id}-{img['files']['original']['storageKey']}{p.suffix}")
    return root


def lfw_identities(data_dir: Path) -> dict[str, list[Path]]:
    """LFW identity -> its photos (sorted), from ../shared/data/verification/manifest.csv."""
    out: dict[str, list[Path]] = defaultdict(list)
    root = data_dir / "verification"
    with (root / "manifest.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            if r["dataset"] == "lfw":
                out[r["identity"]].append(root / r["path"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def fgnet_identities(data_dir: Path) -> dict[str, list[tuple[float, Path]]]:
    """FG-NET subject -> [(age, photo)] sorted by age."""
    out: dict[str, list[tuple[float, Path]]] = defaultdict(list)
    root = data_dir / "verification"
    with (root / "manifest.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            if r["dataset"] == "fgnet":
                out[r["identity"]].append((float(r["age"]), root / r["path"]))
    return {k: sorted(v) for k, v in sorted(out.items())}


FACE_CATEGORIES = ("FacialCaseId", "ActualPhoto", "AgeProgression", "Composite", "ArtistRendering")


def samples_with_crops(shared: Path, dst: Path) -> Path:
    """Copy the real Prepager-layout sample records to ``dst`` with the real face crops as their photos.

    The crops (samples/face_crops) belong to these cases; which of a case's images each was cut
    from is not recorded, so crop n is filed as the case's n-th face-worthy image. Returns ``dst``.
    """
    out = dst / "output"
    shutil.copytree(shared / "namus" / "samples" / "prepager-layout" / "output", out)
    crops = shared / "namus" / "samples" / "face_crops"
    for set_dir in out.iterdir():
        records = json.loads((set_dir / f"{set_dir.name}.json").read_text(encoding="utf-8"))
        for rec in records:
            files = sorted((crops / set_dir.name).glob(f"namus{rec['id']}-face*.jpg"))
            images = [i for i in rec.get("images", []) if i["category"]["name"] in FACE_CATEGORIES]
            for crop, img in zip(files, images, strict=False):
                d = set_dir / "files" / img["category"]["name"]
                d.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(crop, d / f"{rec['id']}-{img['files']['original']['storageKey']}.jpg")
    return dst


def enrolled_lfw_bundle(root: Path, data_dir: Path, model_cache: Path, n_cases: int) -> dict[str, Any]:
    """A signed bundle of ``n_cases`` LFW people with >= 3 photos, each enrolled with its first photo.

    Cases are ``MP7000`` + i; the other photos of each person are left for probes.

    Returns:
        ``{"root", "bundle", "key", "pub", "lfw", "people"}``.
    """
    from datetime import date

    from namus_edge.core.config import load_config
    from namus_edge.index.build import build_bundle
    from namus_edge.index.signing import generate_keypair
    from namus_edge.models.analyzer import FaceAnalyzer

    lfw = lfw_identities(data_dir)
    people = [k for k, v in lfw.items() if len(v) >= 3][:n_cases]
    cases = [SyntheticCase("MP", 7000 + i, n.split(":")[1], "Test", [lfw[n][0]], age_at_last=None)
             for i, n in enumerate(people)]
    write_prepager(root / "src", cases)
    key, pub = generate_keypair(root / "op.key")
    config = load_config()
    analyzer = FaceAnalyzer(config, model_cache, with_age=False)
    build_bundle(config, str(root / "src"), root / "bundle", key, analyzer=analyzer, today=date(2026, 11, 23))
    return {"root": root, "bundle": root / "bundle", "key": key, "pub": pub, "lfw": lfw, "people": people}
