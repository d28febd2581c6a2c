"""Peak resident memory during index swaps, measured in fresh processes (bench.index_swap): the retired
bundle is freed as soon as no batch uses it, so a swap holds about two bundles, not three."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Two bundles (measured 1.99 at 30k fp32 faces on the 2-core CI box); the margin is for allocator
#: slack on a bundle this small, not for a third bundle (the reference policy measures ~2.9).
MAX_PEAK_RATIO = 2.15


@pytest.mark.slow
def test_swap_peak_rss_stays_near_two_bundles(tmp_path):
    out = tmp_path / "swap.json"
    subprocess.run([sys.executable, "-m", "bench.index_swap", "--faces", "30000", "--fp32", "--json", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    runs = {r["mode"]: r for r in json.loads(out.read_text())["runs"]}
    lease, reference = runs["lease"], runs["reference"]
    assert lease["one_bundle_mib"] > 55  # the 58.8 MiB index is really resident (the measurement can see it)
    assert lease["peak_ratio"] <= MAX_PEAK_RATIO, lease
    # the old policy (retired bundle kept until the next swap) holds a third bundle at the peak
    assert reference["peak_ratio"] >= lease["peak_ratio"] + 0.6, runs
