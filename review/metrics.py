"""The metrics page: reviewer-confirmed precision, unsure share and time to verdict, per group and over time.

Groups: camera, device, bundle version, similarity band (0.05 wide), and day (UTC) of arrival.
For each group: ``items``, ``reviewed``, ``confirmed``, ``rejected``, ``unsure``,
``unusable``, ``precision`` = confirmed / (confirmed + rejected) (None when both are 0),
``unsure_share`` = unsure / reviewed, ``median_time_to_verdict_s`` (arrival to first verdict).
The similarity histograms of confirmed against rejected items are the data for tuning
thresholds; they are drawn as inline SVG. Everything is exported as CSV (one row per item).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from xml.sax.saxutils import escape

BAND = 0.05
GROUPS = (("camera", "camera_id"), ("device", "device_id"), ("bundle", "index_version"), ("band", "band"),
          ("day", "day"))
CSV_FIELDS = ("item_id", "device_id", "camera_id", "index_version", "case_id", "similarity", "band", "status",
              "first_seen", "first_verdict_at", "decided_at", "time_to_verdict_s")


def band(similarity: float) -> str:
    """The 0.05-wide similarity band, e.g. ``"0.40-0.45"``."""
    lo = math.floor(similarity / BAND + 1e-9) * BAND
    return f"{lo:.2f}-{lo + BAND:.2f}"


def _enrich(row: dict[str, Any]) -> dict[str, Any]:
    r = dict(row)
    r["band"] = band(float(r["similarity"]))
    r["day"] = datetime.fromtimestamp(r["first_seen"], timezone.utc).date().isoformat()
    r["time_to_verdict_s"] = (r["first_verdict_at"] - r["first_seen"]) if r["first_verdict_at"] is not None else None
    return r


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    status = [r["status"] for r in rows]
    confirmed, rejected = status.count("confirmed"), status.count("rejected")
    unsure, unusable = status.count("unsure"), status.count("unusable")
    reviewed = confirmed + rejected + unsure + unusable
    times = [r["time_to_verdict_s"] for r in rows if r["time_to_verdict_s"] is not None]
    return {
        "items": len(rows), "reviewed": reviewed, "confirmed": confirmed, "rejected": rejected, "unsure": unsure,
        "unusable": unusable,
        "precision": confirmed / (confirmed + rejected) if confirmed + rejected else None,
        "unsure_share": unsure / reviewed if reviewed else None,
        "median_time_to_verdict_s": statistics.median(times) if times else None,
    }


def compute(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metrics from :meth:`Store.metric_rows` rows.

    Returns:
        ``{"overall": summary, "by": {"camera"|"device"|"bundle"|"band"|"day": {key: summary}},
        "histogram": {"bins": [lo...], "confirmed": [n...], "rejected": [n...]}}``.
    """
    data = [_enrich(r) for r in rows]
    by: dict[str, dict[str, Any]] = {}
    for name, key in GROUPS:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in data:
            groups.setdefault(str(r[key]), []).append(r)
        by[name] = {k: _summary(v) for k, v in sorted(groups.items())}
    bins = [round(i * BAND, 2) for i in range(round(1 / BAND))]
    hist: dict[str, list[Any]] = {"bins": bins, "confirmed": [0] * len(bins), "rejected": [0] * len(bins)}
    for r in data:
        if r["status"] in ("confirmed", "rejected"):
            i = min(len(bins) - 1, max(0, math.floor(float(r["similarity"]) / BAND + 1e-9)))
            hist[r["status"]][i] += 1
    return {"overall": _summary(data), "by": by, "histogram": hist}


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One CSV line per item (header first), the fields of :data:`CSV_FIELDS`."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(_enrich(r))
    return out.getvalue()


def histogram_svg(hist: dict[str, Any], width: int = 640, height: int = 220) -> str:
    """Side-by-side bars of confirmed (green) and rejected (red) items per similarity bin, as SVG text."""
    bins, conf, rej = hist["bins"], hist["confirmed"], hist["rejected"]
    top = max([1, *conf, *rej])
    pad_l, pad_b, pad_t = 36, 28, 10
    plot_w, plot_h = width - pad_l - 8, height - pad_b - pad_t
    slot = plot_w / len(bins)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="similarity histogram of confirmed and rejected items">',
             f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 8}" y2="{pad_t + plot_h}" stroke="#444"/>',
             f'<text x="4" y="{pad_t + 10}" font-size="10">{top}</text>',
             f'<text x="4" y="{pad_t + plot_h}" font-size="10">0</text>']
    for i, lo in enumerate(bins):
        x = pad_l + i * slot
        for j, (values, colour) in enumerate(((conf, "#2e7d32"), (rej, "#c62828"))):
            h = plot_h * values[i] / top
            parts.append(f'<rect x="{x + 1 + j * slot / 2:.1f}" y="{pad_t + plot_h - h:.1f}" '
                         f'width="{max(1.0, slot / 2 - 2):.1f}" height="{h:.1f}" fill="{colour}">'
                         f'<title>{escape(f"{lo:.2f}: {values[i]}")}</title></rect>')
        if i % 2 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - 10}" font-size="9">{lo:.1f}</text>')
    parts.append(f'<text x="{width - 190}" y="{pad_t + 10}" font-size="11" fill="#2e7d32">■ confirmed</text>')
    parts.append(f'<text x="{width - 100}" y="{pad_t + 10}" font-size="11" fill="#c62828">■ rejected</text>')
    parts.append("</svg>")
    return "".join(parts)
