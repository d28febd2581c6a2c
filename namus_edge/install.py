"""Placing namus-edge on a device: systemd units, the default config, state directories.

:func:`install` writes, under a root directory ``prefix`` (``/`` on a device, a temporary
directory in tests or for packaging, like ``DESTDIR``)::

    etc/systemd/system/namus-edge.service        ExecStart= rewritten to the namus-edge script
    etc/systemd/system/namus-edge-sync.service
    etc/systemd/system/namus-edge-sync.timer
    etc/namus-edge/config.yaml                   never overwritten without ``force``
    etc/namus-edge/credentials/                  mode 0700: mqtt-password, mqtt-tls-key go here
    var/lib/namus-edge/index/, var/lib/namus-edge/outbox/
    var/cache/namus-edge/models/

Paths inside the files stay absolute device paths (``/etc/namus-edge/config.yaml``), whatever
``prefix`` is. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from namus_edge.core.config import Config, ConfigError, load_config
from namus_edge.core.errors import NamusEdgeError

logger = logging.getLogger(__name__)

#: Unit files shipped in the repository's ``systemd/`` directory.
UNIT_FILES: tuple[str, ...] = ("namus-edge.service", "namus-edge-sync.service", "namus-edge-sync.timer")
#: The executable path written in the shipped units; replaced by the real script path.
PLACEHOLDER_EXEC = "/usr/local/bin/namus-edge"
UNIT_DIR = "etc/systemd/system"
CONFIG_DIR = "etc/namus-edge"
CREDENTIALS_DIR = "etc/namus-edge/credentials"
STATE_DIRS: tuple[str, ...] = ("var/lib/namus-edge/index", "var/lib/namus-edge/outbox", "var/cache/namus-edge/models")

_EXEC_RE = re.compile(r"^(Exec[A-Za-z]*=[-@:+!]*)" + re.escape(PLACEHOLDER_EXEC) + r"(?=\s|$)", re.MULTILINE)


class InstallError(NamusEdgeError):
    """Installation cannot proceed (missing unit files or executable, invalid config, unwritable prefix)."""


@dataclass
class InstallReport:
    """What :func:`install` did; paths are under the prefix.

    Attributes:
        written: files created or replaced.
        unchanged: files already identical.
        kept: existing files left alone (a config without ``force``).
        dirs: directories created.
    """

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def find_units_dir(units_dir: Path | None = None) -> Path:
    """The directory holding the shipped unit files.

    Looks at ``units_dir``, then ``systemd/`` beside the package (a source checkout or editable
    install), then ``<sys.prefix>/share/namus-edge/systemd`` (a wheel's data files).

    Raises:
        InstallError: none of them holds all of :data:`UNIT_FILES`.
    """
    candidates = (
        [Path(units_dir)]
        if units_dir
        else [_repo_root() / "systemd", Path(sys.prefix) / "share" / "namus-edge" / "systemd"]
    )
    for d in candidates:
        if all((d / name).is_file() for name in UNIT_FILES):
            return d
    raise InstallError(
        f"unit files {', '.join(UNIT_FILES)} not found in {', '.join(str(c) for c in candidates)}; pass --units-dir"
    )


def find_executable(executable: Path | None = None) -> Path:
    """The absolute path of the ``namus-edge`` console script systemd should run.

    Default: the script beside the running interpreter (the virtual environment's ``bin/``).

    Raises:
        InstallError: the file does not exist or is not executable.
    """
    path = Path(executable) if executable else Path(sys.executable).parent / "namus-edge"
    path = path.absolute()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise InstallError(f"namus-edge executable {path} does not exist or is not executable; pass --exec PATH")
    return path


def render_unit(text: str, executable: Path) -> str:
    """Replace the placeholder executable in every ``Exec*=`` line of a unit file.

    Raises:
        InstallError: the unit has no ``Exec*=`` line using the placeholder.
    """
    if any(c.isspace() for c in str(executable)):
        raise InstallError(f"executable path {executable} contains whitespace; systemd would split it")
    rendered, n = _EXEC_RE.subn(lambda m: m.group(1) + str(executable), text)
    if n == 0:
        raise InstallError(f"unit has no Exec line starting with {PLACEHOLDER_EXEC}")
    return rendered


def default_config_text() -> str:
    """The default config: the repository's documented ``config.yaml``, else the built-in defaults as YAML."""
    documented = _repo_root() / "config.yaml"
    if documented.is_file():
        return documented.read_text(encoding="utf-8")
    data = Config().model_dump(mode="json")
    return "# namus-edge configuration: built-in defaults (see docs for every key)\n" + yaml.safe_dump(
        data, sort_keys=False
    )


def _write_if_changed(path: Path, data: bytes, mode: int, report: InstallReport) -> None:
    if path.is_file() and path.read_bytes() == data:
        report.unchanged.append(path)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    report.written.append(path)


def _mkdir(path: Path, mode: int, report: InstallReport) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, mode=mode)
        report.dirs.append(path)
    os.chmod(path, mode)


def install(
    prefix: Path,
    *,
    config_src: Path | None = None,
    force: bool = False,
    executable: Path | None = None,
    units_dir: Path | None = None,
) -> InstallReport:
    """Install units, config and directories under ``prefix``.

    Args:
        prefix: root directory (``/`` on the device).
        config_src: config file to install (default: :func:`default_config_text`); validated first.
        force: replace an existing ``etc/namus-edge/config.yaml``.
        executable: the ``namus-edge`` script for ``ExecStart=`` (default: beside this interpreter).
        units_dir: where the shipped unit files are (default: :func:`find_units_dir`).

    Returns:
        What was written, kept or created.

    Raises:
        InstallError: a unit file or the executable is missing, the config is invalid, or the
            prefix cannot be written.
    """
    prefix = Path(prefix)
    exe = find_executable(executable)
    src_dir = find_units_dir(units_dir)
    if config_src is not None:
        try:
            config_text = Path(config_src).read_text(encoding="utf-8")
        except OSError as exc:
            raise InstallError(f"cannot read config {config_src}: {exc.strerror or exc}") from exc
    else:
        config_text = default_config_text()
    report = InstallReport()
    try:
        staged = prefix / CONFIG_DIR / f".config.yaml.check-{os.getpid()}"
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(config_text, encoding="utf-8")
        try:
            load_config(staged)
        except ConfigError as exc:
            raise InstallError(f"config to install is invalid: {exc}") from exc
        finally:
            staged.unlink(missing_ok=True)

        _mkdir(prefix / UNIT_DIR, 0o755, report)
        for name in UNIT_FILES:
            text = (src_dir / name).read_text(encoding="utf-8")
            if name.endswith(".service"):
                text = render_unit(text, exe)
            _write_if_changed(prefix / UNIT_DIR / name, text.encode("utf-8"), 0o644, report)

        _mkdir(prefix / CONFIG_DIR, 0o755, report)
        config_path = prefix / CONFIG_DIR / "config.yaml"
        if config_path.exists() and not force:
            if config_path.read_text(encoding="utf-8") == config_text:
                report.unchanged.append(config_path)
            else:
                report.kept.append(config_path)
                logger.warning("kept existing %s (pass --force to replace it)", config_path)
        else:
            _write_if_changed(config_path, config_text.encode("utf-8"), 0o644, report)
        _mkdir(prefix / CREDENTIALS_DIR, 0o700, report)
        for rel in STATE_DIRS:
            _mkdir(prefix / rel, 0o750, report)
    except OSError as exc:
        raise InstallError(f"cannot install under {prefix}: {exc.strerror or exc} ({exc.filename})") from exc
    logger.info(
        "installed under %s: %d written, %d unchanged, %d kept", prefix, len(report.written), len(report.unchanged),
        len(report.kept),
    )
    return report
