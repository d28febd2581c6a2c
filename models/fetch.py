"""Fill the model cache from a local mirror directory or URLs, verifying every sha256.

``fetch_models(source, cache_dir, names)``: ``source`` is a directory holding the files by
their registry file names (an operators' mirror, ../shared/models in CI), an http(s) base
URL of such a mirror, or ``"official"`` to use each model's official download locations
(``URL#member`` = a file inside a zip archive). Files are downloaded to ``<name>.part`` and
renamed into place only after their hash matched; a file with a wrong hash is refused and
named. Runs only when called: nothing is fetched at import or in a constructor.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from namus_edge.core.errors import ModelError
from namus_edge.models.registry import ModelSpec, check_file, get_spec

logger = logging.getLogger(__name__)

USER_AGENT = "namus-edge-models-fetch/0.1"


@dataclass
class FetchReport:
    """Outcome of a fetch: names already present, fetched, and failed (name -> reason)."""

    present: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _read_url(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return bytes(resp.read())


def _candidates(spec: ModelSpec, source: str) -> list[str]:
    if source == "official":
        if not spec.urls:
            raise ModelError(
                f"{spec.name}: no official download exists ({spec.notes or 'converted by the project'}); "
                "fetch it from your operators' mirror with --from DIR_OR_URL"
            )
        return list(spec.urls)
    if source.startswith(("http://", "https://")):
        return [source.rstrip("/") + "/" + spec.filename]
    return [str(Path(source).expanduser() / spec.filename)]


def _load(location: str, timeout: float) -> bytes:
    url, _, member = location.partition("#")
    if url.startswith(("http://", "https://")):
        data = _read_url(url, timeout)
    else:
        data = Path(url).read_bytes()
    if member:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise ModelError(f"{url}: archive has no member {member}")
            data = zf.read(names[0])
    return data


def fetch_model(spec: ModelSpec, source: str, cache_dir: Path, timeout: float = 60.0) -> Path:
    """Place one verified model file in ``cache_dir``.

    Raises:
        ModelError: not found at the source, or the bytes do not match the registry sha256
            (the file is not placed in the cache).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / spec.filename
    errors = []
    for location in _candidates(spec, source):
        try:
            data = _load(location, timeout)
        except (OSError, urllib.error.URLError, zipfile.BadZipFile) as exc:
            errors.append(f"{location}: {exc}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.sha256 or len(data) != spec.size:
            raise ModelError(
                f"refused {location}: sha256 {digest} ({len(data)} bytes) does not match the registry entry "
                f"for {spec.name} (sha256 {spec.sha256}, {spec.size} bytes)"
            )
        part = target.with_name(target.name + ".part")
        with part.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, target)
        logger.info("fetched %s from %s", spec.filename, location)
        return target
    raise ModelError(f"{spec.name}: not found: " + "; ".join(errors))


def fetch_models(source: str, cache_dir: Path, names: list[str], timeout: float = 60.0) -> FetchReport:
    """Fetch several models; files already present with the right hash are kept."""
    report = FetchReport()
    for name in names:
        spec = get_spec(name)
        state, _ = check_file(spec, cache_dir)
        if state == "present":
            report.present.append(name)
            continue
        try:
            fetch_model(spec, source, cache_dir, timeout)
            report.fetched.append(name)
        except ModelError as exc:
            logger.error("%s", exc)
            report.failed[name] = str(exc)
    return report
