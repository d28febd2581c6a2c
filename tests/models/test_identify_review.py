"""``bench.identify_review accept``: a look-alike judged to be the enrolled person is listed with every photo."""

from __future__ import annotations

import csv
from pathlib import Path

from bench.identify_review import accept


def test_accept_lists_every_photo_of_a_lookalike_once(tmp_path: Path) -> None:
    root = tmp_path / "data"
    photos = [root / "verification" / "lfw" / "A" / f"A_000{i}.jpg" for i in (1, 2, 3)]
    other = root / "identification" / "utkface" / "x.jpg"
    noise = tmp_path / "noise.csv"
    noise.write_text("path_a,path_b,score,review,evidence\n"
                     f"{photos[0].relative_to(root)},{other.relative_to(root)},0.500,by_eye,r4\n")
    pairs = [
        {"probe": str(photos[1]), "gallery": str(other), "score": 0.61, "photos": [str(p) for p in photos]},
        {"probe": str(photos[2]), "gallery": str(root / "identification" / "utkface" / "y.jpg"), "score": 0.41},
    ]
    assert accept(pairs, [0], "r5", root, noise) == 2  # the pair with A_0001 was already listed
    rows = list(csv.DictReader(noise.open()))
    assert {(r["path_a"], r["path_b"]) for r in rows} == {(str(p.relative_to(root)), str(other.relative_to(root)))
                                                          for p in photos}
    assert [r["evidence"] for r in rows[1:]] == ["r5", "r5"]
    assert accept(pairs, [0], "r5", root, noise) == 0  # idempotent
    # a pair without photos (a non-mated list) adds exactly that pair
    assert accept(pairs, [1], "r5", root, noise) == 1
