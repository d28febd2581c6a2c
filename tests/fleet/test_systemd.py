"""The shipped units pass `systemd-analyze verify` once installed, and carry the settings the service relies on."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

from namus_edge.core.config import ServiceConfig
from namus_edge.install import UNIT_FILES, install

REPO = Path(__file__).resolve().parents[2]


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file keeping repeated keys (DeviceAllow=, LoadCredential=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    install(root)
    return root / "etc/systemd/system"


def test_systemd_analyze_verify_passes_without_warnings(installed, have_tool):
    tool = have_tool("systemd-analyze")
    paths = [str(installed / name) for name in UNIT_FILES]
    res = subprocess.run([tool, "verify", *paths], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    # unknown keys and bad values are only warnings for systemd: none allowed
    assert res.stderr.strip() == "", res.stderr


def test_systemd_analyze_catches_a_broken_unit(installed, tmp_path, have_tool):
    """The check above can fail: a typo and a missing binary are reported."""
    tool = have_tool("systemd-analyze")
    broken = tmp_path / "namus-edge.service"
    text = (installed / "namus-edge.service").read_text()
    broken.write_text(text.replace("WatchdogSec=60", "WatchdogSecs=60"))
    res = subprocess.run([tool, "verify", str(broken)], capture_output=True, text=True, timeout=120, check=False)
    assert "Unknown key" in res.stderr and "WatchdogSecs" in res.stderr
    broken.write_text(text.replace(str(_exec(installed)), "/nonexistent/namus-edge"))
    res = subprocess.run([tool, "verify", str(broken)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0 and "/nonexistent/namus-edge" in res.stderr


def _exec(installed: Path) -> str:
    return _unit(installed / "namus-edge.service")["Service"]["ExecStart"][0].split()[0]


def test_service_unit_settings(installed):
    svc = _unit(installed / "namus-edge.service")
    s = svc["Service"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["60"]
    # the service's own stall detector stops the pings (sent every WatchdogSec/2) before systemd's deadline
    assert ServiceConfig().watchdog_stall_s < 60 / 2
    # stop timeout covers the drain bound
    assert float(s["TimeoutStopSec"][0]) > ServiceConfig().drain_timeout_s
    assert s["Restart"] == ["on-failure"] and s["RestartSec"] == ["10"]
    # no start rate limit: a long outage or a crash loop can never leave the service down for good
    assert svc["Unit"]["StartLimitIntervalSec"] == ["0"] and "StartLimitBurst" not in svc["Unit"]
    assert s["DynamicUser"] == ["yes"] and s["SupplementaryGroups"] == ["video"]
    for key in ("StateDirectory", "CacheDirectory", "LogsDirectory"):
        assert s[key][0].startswith("namus-edge"), key
    assert sorted(c.split(":")[0] for c in s["LoadCredential"]) == ["mqtt-password", "mqtt-tls-key"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert "AF_INET" in s["RestrictAddressFamilies"][0]
    assert s["DevicePolicy"] == ["closed"]
    allowed = " ".join(s["DeviceAllow"])
    for dev in ("/dev/nvmap", "char-nvhost*", "char-nvgpu*", "char-video4linux"):
        assert dev in allowed, dev
    assert "MemoryDenyWriteExecute" not in s  # CUDA's JIT needs W+X pages
    assert s["PrivateDevices"] == ["no"]


def test_sync_units(installed):
    svc = _unit(installed / "namus-edge-sync.service")["Service"]
    assert svc["Type"] == ["oneshot"]
    assert " index sync " in svc["ExecStart"][0]
    assert svc["User"] == _unit(installed / "namus-edge.service")["Service"]["User"]  # shared dynamic UID
    assert svc["PrivateDevices"] == ["yes"]
    timer = _unit(installed / "namus-edge-sync.timer")["Timer"]
    for key in ("OnBootSec", "OnUnitActiveSec", "RandomizedDelaySec"):
        assert timer[key], key
    assert timer["Unit"] == ["namus-edge-sync.service"]


def test_repository_units_are_the_installed_ones_but_for_the_executable(installed):
    for name in UNIT_FILES:
        shipped = (REPO / "systemd" / name).read_text()
        assert (installed / name).read_text() == shipped.replace("/usr/local/bin/namus-edge", _exec(installed))


def test_configparser_reads_units():
    # a sanity check that the files are plain INI-like text (no tabs, no stray sections)
    for name in UNIT_FILES:
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.read_string((REPO / "systemd" / name).read_text())
        assert cp.sections()[0] == "Unit"
