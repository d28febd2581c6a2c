"""Markdown tables for docs/accuracy.md from ``namus-edge eval identify --json`` outputs.

Usage::

    python -m bench.identify_report NEW.json [--old OLD.json] [--raw RAW.json] [--nohub NOHUB.json]
    python -m bench.identify_report NEW.json --tails     # the fit half's tails, as registry entries

``NEW`` is the run at the default policy with the exclusion list, ``OLD`` the same at the old fixed
threshold (``--set matching.threshold=0.40``), ``RAW`` the default policy without the exclusion list,
``NOHUB`` the default policy on raw similarities (``--no-hub-norm``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pct(x: float | None, digits: int = 2) -> str:
    """A rate as a percentage (``-`` for None)."""
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def ci(e: dict[str, Any], rate: str) -> str:
    """`` [lo–hi]`` of a rate's identity-bootstrap interval, in percent (empty when absent)."""
    c = e.get(f"{rate}_ci95")
    return "" if not c else f" [{100 * c[0]:.2f}–{100 * c[1]:.2f}]"


def sizes_table(r: dict[str, Any]) -> list[str]:
    """Per gallery size: threshold, FPIR, FNIR, rank-1/5, face-only FNIR@FPIR."""
    out = ["| gallery faces | rule | threshold adult / child | FPIR (false alerts) | FNIR | mated wrong alert | "
           "rank-1 | rank-5 | face-only FNIR @ FPIR 1e-2 | @ 1e-3 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in r["by_gallery_size"]:
        fo = e["face_only"]
        child = e.get("child_threshold") or "-"
        rule = e["rule"] + (" + hub" if r["policy_config"].get("hub_norm") else "")
        out.append(f"| {e['gallery_size']:,} | {rule} | {e['threshold']:.3f} / {child} | "
                   f"{pct(e['fpir'])} ({e['false_alerts']} / {e['nonmated']}){ci(e, 'fpir')} | "
                   f"{pct(e['fnir'])}{ci(e, 'fnir')} | "
                   f"{pct(e['mated_wrong_alert'])} | {pct(e['rank1'])} | {pct(e['rank5'])} | "
                   f"{pct(fo['1e-02']['fnir'])} | {pct(fo['1e-03']['fnir'])} |")
    for p in r["predicted"]:
        a, c = p["adult"], p["child"]
        rule = p["rule"] + (" + hub" if r["policy_config"].get("hub_norm") else "")
        out.append(f"| {p['gallery_size']:,} (predicted) | {rule} | {p['threshold']:.3f} / "
                   f"{p.get('child_threshold') or '-'} | adult {pct(a['fpir'])} [{pct(a['fpir_ci95'][0])}, "
                   f"{pct(a['fpir_ci95'][1])}]; child {pct(c['fpir'])} [{pct(c['fpir_ci95'][0])}, "
                   f"{pct(c['fpir_ci95'][1])}] | {pct(p['fnir_face_only'])} (face only) | | | | | |")
    return out


def gap_table(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """FNIR / rank-1 / rank-5 per age gap, old vs new policy."""
    head = "| age gap | mated | FNIR new | rank-1 | rank-5 |" + (" FNIR old (0.40) |" if old else "")
    out = [head, "|---|---|---|---|---|" + ("---|" if old else "")]
    for k, v in new["by_age_gap"].items():
        row = f"| {k} y | {v['mated']} | {pct(v['fnir'], 1)} | {pct(v['rank1'], 1)} | {pct(v['rank5'], 1)} |"
        if old:
            row += f" {pct(old['by_age_gap'].get(k, {}).get('fnir'), 1)} |"
        out.append(row)
    return out


def bias_tables(r: dict[str, Any]) -> list[str]:
    """FPIR / FNIR per sex, race, age band."""
    out: list[str] = []
    for key, groups in r["bias"].items():
        out += ["", f"| {key} | non-mated | false alerts | FPIR | mated | FNIR |", "|---|---|---|---|---|---|"]
        for g, v in groups.items():
            out.append(f"| {g} | {v['nonmated']} | {v['false_alerts']} | {pct(v['fpir'])}{ci(v, 'fpir')} | "
                       f"{v['mated']} | {pct(v['fnir'])}{ci(v, 'fnir')} |")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("new", type=Path)
    ap.add_argument("--old", type=Path)
    ap.add_argument("--raw", type=Path)
    ap.add_argument("--nohub", type=Path)
    ap.add_argument("--tails", action="store_true", help="print the fit half's tails (raw and hub) and stop")
    args = ap.parse_args(argv)
    new = json.loads(args.new.read_text())
    if args.tails:
        fit = new["tail"]["fit"]
        for name, t in (("raw", fit), ("hub", fit.get("hub") or {})):
            for band in ("adult", "child"):
                if band in t:
                    print(f"{name} {band}: faces {t[band]['faces']}, pairs {t[band]['pairs']}, points "
                          f"{[(round(a, 2), float(f'{b:.3g}')) for a, b in t[band]['points']]}")
        return 0
    old = json.loads(args.old.read_text()) if args.old else None
    lines = ["### default policy, label noise excluded", "", *sizes_table(new)]
    if old:
        lines += ["", "### old policy (fixed 0.40), label noise excluded", "", *sizes_table(old)]
    if args.raw:
        raw = json.loads(args.raw.read_text())
        lines += ["", "### default policy, without the exclusion list", "", *sizes_table(raw)]
    if args.nohub:
        nohub = json.loads(args.nohub.read_text())
        lines += ["", "### default policy on raw similarity (no hub normalisation), label noise excluded", "",
                  *sizes_table(nohub)]
    lines += ["", "### probe groups (full gallery)", "", "| group | run | mated | FNIR | rank-1 | rank-5 | non-mated | "
              "FPIR |", "|---|---|---|---|---|---|---|---|"]
    for name, r in (("new", new), ("old", old)):
        for g, v in (r or {}).get("by_group", {}).items():
            lines.append(f"| {g} | {name} | {v['mated']} | {pct(v['fnir'])}{ci(v, 'fnir')} | {pct(v['rank1'])} | "
                         f"{pct(v['rank5'])} | {v['nonmated']} | {pct(v['fpir'])}{ci(v, 'fpir')} |")
    lines += ["", "### cross-age (FG-NET)", "", *gap_table(new, old), "", "### bias", *bias_tables(new)]
    rej = new["by_gallery_size"][-1]
    lines += ["", f"rejections at the full gallery: non-mated {rej['nonmated_rejections']}, "
              f"mated {rej['mated_rejections']}", f"prediction check: {new['prediction_check']}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
