"""`namus-edge install` into a temporary root: units, config, directories, idempotence, --force."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from namus_edge.cli import main
from namus_edge.core.config import load_config
from namus_edge.install import PLACEHOLDER_EXEC, UNIT_FILES, InstallError, install, render_unit

SCRIPT = Path(sys.executable).parent / "namus-edge"


def test_install_cli_places_units_config_and_directories(tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["install", "--prefix", str(root)]) == 0
    out = capsys.readouterr().out
    assert "4 written, 0 unchanged, 0 kept" in out
    units = root / "etc/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == sorted(UNIT_FILES)
    service = (units / "namus-edge.service").read_text()
    assert f"ExecStart={SCRIPT.absolute()} run --config /etc/namus-edge/config.yaml" in service
    assert PLACEHOLDER_EXEC not in service.replace("# Installed", "")
    assert f"ExecStart={SCRIPT.absolute()} index sync" in (units / "namus-edge-sync.service").read_text()
    config = load_config(root / "etc/namus-edge/config.yaml")  # the installed config is valid
    assert config.sync.state_dir == "/var/lib/namus-edge/index"
    cred = root / "etc/namus-edge/credentials"
    assert stat.S_IMODE(cred.stat().st_mode) == 0o700
    for rel in ("var/lib/namus-edge/index", "var/lib/namus-edge/outbox", "var/cache/namus-edge/models"):
        assert (root / rel).is_dir(), rel

    # idempotent: nothing rewritten the second time
    assert main(["install", "--prefix", str(root)]) == 0
    assert "0 written, 4 unchanged, 0 kept" in capsys.readouterr().out


def test_existing_config_is_kept_unless_forced(tmp_path):
    root = tmp_path / "root"
    install(root)
    config = root / "etc/namus-edge/config.yaml"
    config.write_text("sync:\n  url: https://bundles.example.org/\n")
    report = install(root)
    assert report.kept == [config]
    assert "bundles.example.org" in config.read_text()
    src = tmp_path / "site.yaml"
    src.write_text("service:\n  device_id: cam-7\n")
    report = install(root, config_src=src, force=True)
    assert config in report.written
    assert load_config(config).service.device_id == "cam-7"


def test_invalid_config_is_refused_before_anything_is_written(tmp_path):
    src = tmp_path / "bad.yaml"
    src.write_text("sync:\n  keep_version: 3\n")
    with pytest.raises(InstallError, match=r"sync.keep_version: unknown key"):
        install(tmp_path / "root", config_src=src)
    assert not (tmp_path / "root/etc/systemd").exists()


def test_missing_executable_is_an_error(tmp_path):
    with pytest.raises(InstallError, match="does not exist or is not executable"):
        install(tmp_path / "root", executable=tmp_path / "nope")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ExecStart=/usr/local/bin/namus-edge run", "ExecStart=/opt/ne/bin/namus-edge run"),
        ("ExecStart=-/usr/local/bin/namus-edge run", "ExecStart=-/opt/ne/bin/namus-edge run"),
        ("ExecStartPre=/usr/local/bin/namus-edge check", "ExecStartPre=/opt/ne/bin/namus-edge check"),
        ("ExecStart=/usr/local/bin/namus-edge-other x", None),
    ],
)
def test_render_unit_rewrites_only_the_placeholder(line, expected):
    if expected is None:
        with pytest.raises(InstallError):
            render_unit(line, Path("/opt/ne/bin/namus-edge"))
    else:
        assert render_unit(line, Path("/opt/ne/bin/namus-edge")) == expected
