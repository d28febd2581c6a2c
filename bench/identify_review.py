"""Contact sheets of the pairs ``eval identify`` reports, for reviewing label noise by eye.

The identification data has no identity labels for UTKFace, and the same public figures appear
under several "identities" (docs/accuracy.md section 6). The exclusion list
``bench/data/identification_label_noise.csv`` is kept by looking at the pairs that score highest
across identities. This tool draws them: each tile is the probe photo beside the gallery photo it
matched, with its number and score, so a reviewer can write down the numbers that plainly show one
person, and then append exactly those pairs to the list.

Usage::

    # sheets of every false alert at the full gallery (also: mated_rank1_errors, mated_lookalikes,
    # top_nonmated, tail_fit, tail_report)
    python -m bench.identify_review sheets RUN.json --list false_alerts --out /tmp/review
    # append the pairs judged "same person" (tile numbers) with their evidence tag
    python -m bench.identify_review accept RUN.json --list false_alerts --tiles 0,3,17 \\
        --evidence r2-fa --root ../shared/data

The sheets hold research photos only and are written outside the repository (``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from namus_edge.models.imagefile import read_image

LISTS = ("false_alerts", "mated_rank1_errors", "mated_lookalikes", "top_nonmated", "tail_fit", "tail_report")
TILE = 112
PER_ROW = 5
ROWS_PER_SHEET = 6
NOISE_LIST = Path(__file__).parent / "data" / "identification_label_noise.csv"


def load_pairs(run: Path, which: str) -> list[dict[str, Any]]:
    """The ``which`` list of an ``eval identify --json`` output: dicts with probe, gallery, score.

    ``tail_fit`` / ``tail_report`` are the highest-scoring impostor pairs of each half's tail: the
    hub-normalised tail when the run normalised (the one its policy used), each pair once.
    """
    data = json.loads(run.read_text())
    if which.startswith("tail_"):
        half = which.removeprefix("tail_")
        hub = data["tail"][half].get("hub")
        if hub is None:
            return [{"probe": p["a"], "gallery": p["b"], "score": p["score"]} for p in data["tail"][half]["top_pairs"]]
        seen: set[frozenset[str]] = set()
        out = []
        for p in hub["top_pairs"]:
            key = frozenset((p["probe"], p["gallery"]))
            if key not in seen:
                seen.add(key)
                out.append({"probe": p["probe"], "gallery": p["gallery"], "score": p["score"]})
        return out
    if which not in data:
        raise SystemExit(f"{run}: no key {which!r} (run eval identify with this version)")
    return [p for p in data[which] if p.get("gallery")]


def _tile(pair: dict[str, Any], number: int) -> np.ndarray:
    ims = []
    for key in ("probe", "gallery"):
        img = read_image(Path(pair[key]))
        ims.append(cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA))
    t = cv2.copyMakeBorder(np.hstack(ims), 18, 4, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    cv2.putText(t, f"{number} {pair['score']:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1)
    return t


def write_sheets(pairs: Sequence[dict[str, Any]], out: Path, stem: str) -> list[Path]:
    """Write contact sheets of ``pairs`` (5 pairs a row, 6 rows a sheet) as PNG; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    per_sheet = PER_ROW * ROWS_PER_SHEET
    written = []
    for s in range(0, len(pairs), per_sheet):
        tiles = [_tile(p, s + k) for k, p in enumerate(pairs[s:s + per_sheet])]
        while len(tiles) % PER_ROW:
            tiles.append(np.full_like(tiles[0], 255))
        sheet = np.vstack([np.hstack(tiles[i:i + PER_ROW]) for i in range(0, len(tiles), PER_ROW)])
        path = out / f"{stem}-{s // per_sheet:02d}.png"
        cv2.imwrite(str(path), sheet)
        written.append(path)
    return written


def accept(pairs: Sequence[dict[str, Any]], tiles: Sequence[int], evidence: str, root: Path,
           noise_list: Path = NOISE_LIST) -> int:
    """Append the chosen tiles' pairs to the exclusion list (``review=by_eye``); returns how many were new.

    A ``mated_lookalikes`` tile judged to show the enrolled person adds a pair for every photo of
    that person (its ``photos``), not only the one drawn: the distractor photo is that person.
    """
    rows = list(csv.DictReader(noise_list.open(newline="")))
    have = {frozenset((r["path_a"], r["path_b"])) for r in rows}
    added = 0
    with noise_list.open("a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for t in tiles:
            p = pairs[t]
            b = str(Path(p["gallery"]).resolve().relative_to(root.resolve()))
            for q in p.get("photos", [p["probe"]]):
                a = str(Path(q).resolve().relative_to(root.resolve()))
                if frozenset((a, b)) in have:
                    continue
                w.writerow([a, b, f"{p['score']:.3f}", "by_eye", evidence])
                have.add(frozenset((a, b)))
                added += 1
    return added


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.identify_review", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheets", help="write contact sheets")
    a = sub.add_parser("accept", help="append reviewed pairs to the exclusion list")
    for p in (s, a):
        p.add_argument("run", type=Path, help="eval identify --json output")
        p.add_argument("--list", choices=LISTS, default="false_alerts")
    s.add_argument("--out", type=Path, required=True)
    a.add_argument("--tiles", required=True, help="comma-separated tile numbers judged to show one person")
    a.add_argument("--evidence", required=True, help="evidence tag, e.g. the review round and list")
    a.add_argument("--root", type=Path, required=True, help="the data folder the list's paths are relative to")
    args = ap.parse_args(argv)
    pairs = load_pairs(args.run, args.list)
    if args.cmd == "sheets":
        for path in write_sheets(pairs, args.out, args.list):
            print(path)
        return 0
    tiles = sorted({int(x) for x in args.tiles.split(",") if x.strip()})
    bad = [t for t in tiles if not 0 <= t < len(pairs)]
    if bad:
        raise SystemExit(f"--tiles: {bad} out of range (the list has {len(pairs)} pairs)")
    print(f"added {accept(pairs, tiles, args.evidence, args.root)} pairs to {NOISE_LIST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
