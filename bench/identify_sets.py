"""Write the gallery and probe CSVs of ``namus-edge eval identify`` for the developer data.

Paths in the CSVs are relative to the shared data folder (``--root`` of ``eval identify``):

* **gallery** = enrolled cases + distractors:
  every LFW identity of ``verification/`` with >= 2 photos, enrolled with its first photo (sorted by
  name); every FG-NET subject, enrolled with its youngest photo; and every face of
  ``identification/`` (2,999 LFW photos of 1,295 further identities, 11,000 UTKFace crops with
  age / sex / race) as distractors.
* **probes** = mated same-age (the other photos of the enrolled LFW identities), mated cross-age
  (the other FG-NET photos, with ``age`` and ``age_gap`` to the enrolled photo), non-mated
  unenrolled (LFW single-photo identities of ``verification/``), and every distractor face again:
  ``eval identify`` searches those leave-one-identity-out, as unknown faces.

Usage::

    python -m bench.identify_sets --out /tmp/ident            # writes gallery.csv, probes.csv
    python -m bench.identify_sets --out /tmp/ident --limit 300  # small real subset (tests)
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

FIELDS = ("path", "identity", "age", "sex", "race", "age_gap", "group")


def default_data_dir() -> Path:
    """``$NAMUS_EDGE_SHARED/data``, else ../shared/data next to the repository."""
    env = os.environ.get("NAMUS_EDGE_SHARED")
    return (Path(env) if env else Path(__file__).resolve().parents[2] / "shared") / "data"


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def build_sets(data: Path, limit: int = 0) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Gallery and probe rows (see the module docstring); ``limit`` > 0 keeps a small real subset.

    With ``limit`` the first ``limit // 10`` enrolled LFW identities, 3 FG-NET subjects and
    ``limit`` distractor faces (every 40th: LFW and UTKFace mixed) are kept.
    """
    ver = _read(data / "verification" / "manifest.csv")
    lfw: dict[str, list[str]] = defaultdict(list)
    fg: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for r in ver:
        path = f"verification/{r['path']}"
        if r["dataset"] == "lfw":
            lfw[r["identity"]].append(path)
        elif r["dataset"] == "fgnet":
            fg[r["identity"]].append((float(r["age"]), path))
    gallery: list[dict[str, object]] = []
    probes: list[dict[str, object]] = []
    multi = sorted(k for k, v in lfw.items() if len(v) >= 2)
    single = sorted(k for k, v in lfw.items() if len(v) == 1)
    subjects = sorted(fg)
    if limit:
        multi, single, subjects = multi[: max(1, limit // 10)], single[: max(1, limit // 10)], subjects[:3]
    for name in multi:
        photos = sorted(lfw[name])
        gallery.append({"path": photos[0], "identity": name, "group": "enrolled"})
        probes += [{"path": p, "identity": name, "group": "same_age"} for p in photos[1:]]
    for name in single:
        probes.append({"path": lfw[name][0], "identity": name, "group": "unenrolled"})
    for subject in subjects:
        (age0, first), *rest = sorted(fg[subject])
        gallery.append({"path": first, "identity": subject, "group": "enrolled"})
        probes += [{"path": p, "identity": subject, "age": a, "age_gap": a - age0, "group": "cross_age"}
                   for a, p in rest]
    ident = _read(data / "identification" / "manifest.csv")
    if limit:
        ident = ident[:: max(1, len(ident) // limit)][:limit]
    for r in ident:
        row = {"path": f"identification/{r['path']}", "identity": r["identity"], "age": r["age"],
               "sex": r["gender"], "race": r["race"], "group": "distractor"}
        gallery.append(row)
        probes.append(row)
    return gallery, probes


def write_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    """Write rows with the :data:`FIELDS` columns (missing values empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="shared data folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for gallery.csv and probes.csv")
    ap.add_argument("--limit", type=int, default=0, help="small real subset of about this many distractors")
    args = ap.parse_args(argv)
    gallery, probes = build_sets(args.data, args.limit)
    write_csv(args.out / "gallery.csv", gallery)
    write_csv(args.out / "probes.csv", probes)
    print(f"{args.out}: {len(gallery)} gallery rows, {len(probes)} probe rows (root: {args.data})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
