"""The console's systemd unit passes `systemd-analyze verify` and runs `namus-edge review serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "namus-edge-review.service"


def test_review_unit_verifies(tmp_path, have_tool):
    tool = have_tool("systemd-analyze")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/namus-edge review serve " in text
    unit = tmp_path / "namus-edge-review.service"
    unit.write_text(text.replace("/usr/local/bin/namus-edge", sys.executable + " -m namus_edge"))
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr
    unit.write_text(text.replace("StateDirectory=", "StateDirectorys="))
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False)
    assert "Unknown key" in res.stderr
