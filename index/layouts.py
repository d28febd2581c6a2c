"""Finding NamUs case records and their image files on disk, whatever wrote them.

:func:`scan_source` auto-detects three layouts (NAMUS_FORMAT §6):

``prepager``
    ``Prepager/namus-scraper`` and its forks: ``output/<CaseSet>/<CaseSet>.json`` is one JSON
    array (possibly ending in ``,]``) and ``output/<CaseSet>/files/<category>/<caseId>-<storageKey><ext>``
    holds the downloaded originals. ``path`` may be the folder holding ``output/`` or ``output/`` itself.
``auto_scraper``
    ``minhsueh/Auto-namus-scraper``: ``<YYYY-MM-DD-HH-MM-SS>/<CaseSet>/<CaseSet>_<State>.json``, one
    JSON object ``{"<id>": record}`` per state. ``path`` may be a folder of snapshots (or the repo's
    ``output/`` parent) or a single snapshot. There are no images; ``files_root`` may point at a local
    tree using the Prepager file naming.
``store``
    The resumable store written by :func:`index.namus_api.fetch_all`: ``cases/<CaseSet>/<id>.json``
    and ``files/<CaseSet>/<category>/<caseId>-<storageKey><ext>``, plus ``store.json``.

Records are de-duplicated on ``(case set, id)`` keeping the highest ``modifiedDateTime`` (on a tie,
the one scanned last, i.e. the later snapshot). Image files are joined to records by splitting the
file name at the first ``-`` and checking that the storage key belongs to an image of that case;
documents (PDF flyers and the like, which Prepager stores in the same folders) are ignored.

Problems (an unparseable file, an unknown case-set folder, a record without an id, a file that
belongs to no case) are collected as :class:`SourceProblem` and scanning goes on.

``snapshot_time`` is a naive datetime whose meaning is given by ``snapshot_source``:

* ``auto_scraper``: the newest snapshot folder name (US/Pacific local time, as the scraper names it);
* ``prepager``: the newest ``modifiedDateTime`` among the kept records (NamUs local time). File
  mtimes change on every copy, so they are only the fallback when no record has a timestamp;
* ``store``: ``fetched_at`` from ``store.json`` (UTC), else the newest ``modifiedDateTime``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from namus_edge.core.cases import PUBLIC_SITE, case_set_code, case_set_name, is_case_set_name
from namus_edge.core.errors import NamusEdgeError
from namus_edge.index.jsonutil import JsonFileError, load_json_file
from namus_edge.index.records import (
    CaseRecord,
    RecordError,
    normalize_case,
    parse_namus_datetime,
    raw_case_id,
)

logger = logging.getLogger(__name__)

SourceKind = Literal["prepager", "auto_scraper", "store"]

#: Auto-namus-scraper snapshot folder names.
SNAPSHOT_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
#: ``<caseId>-<storageKey><ext>``; the extension is optional (Prepager writes ``.unknown`` at worst).
FILE_NAME_RE = re.compile(r"^(\d+)-([0-9A-Fa-f]{32})(\.[A-Za-z0-9]+)?$")
#: Extensions of case documents that share the Prepager category folders with images.
DOCUMENT_EXTENSIONS = frozenset({".pdf", ".doc", ".docx", ".rtf", ".txt", ".odt", ".xls", ".xlsx"})
#: Leftovers of interrupted downloads/writes, skipped silently.
_PARTIAL_SUFFIXES = (".part", ".tmp")
_UNKNOWN_SET = "unknown case set folder; expected MissingPersons, UnidentifiedPersons or UnclaimedPersons"


class SourceError(NamusEdgeError):
    """A source path does not exist or holds no recognised NamUs layout."""


@dataclass(frozen=True)
class SourceProblem:
    """Something in a source that was skipped; scanning went on.

    Attributes:
        path: The file or folder at fault.
        reason: What is wrong, naming the case/field where relevant.
    """

    path: Path
    reason: str


@dataclass(frozen=True)
class SourceScan:
    """What :func:`scan_source` found.

    Attributes:
        kind: The detected layout.
        root: The folder the layout was found in (``output/``, the snapshot parent, the store).
        records: Raw case records keyed on ``(case_set code, id)``, de-duplicated.
        record_paths: The JSON file each kept record came from.
        snapshot_time: When the data was current (see the module docstring), or None.
        snapshot_source: How ``snapshot_time`` was determined.
        image_files: ``files.original.storageKey`` -> local file, only for keys that belong to an
            image of a kept record with the same case id.
        problems: Everything skipped, in scan order.
    """

    kind: SourceKind
    root: Path
    records: Mapping[tuple[str, int], Mapping[str, Any]]
    record_paths: Mapping[tuple[str, int], Path]
    snapshot_time: datetime | None
    snapshot_source: str
    image_files: Mapping[str, Path]
    problems: tuple[SourceProblem, ...]

    def case_records(self, today: date, site: str = PUBLIC_SITE) -> tuple[list[CaseRecord], list[SourceProblem]]:
        """Normalise every kept record (sorted by case set, then id).

        Args:
            today: Date current ages are computed for.
            site: Public website used for case links.

        Returns:
            The records that normalised, and a problem for each that raised :class:`RecordError`.
        """
        order = {"MP": 0, "UP": 1, "UCP": 2}
        out: list[CaseRecord] = []
        bad: list[SourceProblem] = []
        for key in sorted(self.records, key=lambda k: (order.get(k[0], 9), k[1])):
            try:
                out.append(normalize_case(self.records[key], key[0], today, site=site))
            except RecordError as exc:
                bad.append(SourceProblem(self.record_paths[key], str(exc)))
        return out, bad


@dataclass
class _Collector:
    """Mutable accumulator used during one scan (never shared)."""

    records: dict[tuple[str, int], Mapping[str, Any]] = field(default_factory=dict)
    modified: dict[tuple[str, int], datetime] = field(default_factory=dict)
    paths: dict[tuple[str, int], Path] = field(default_factory=dict)
    problems: list[SourceProblem] = field(default_factory=list)

    def problem(self, path: Path, reason: str) -> None:
        logger.warning("%s: %s", path, reason)
        self.problems.append(SourceProblem(path, reason))

    def add(self, cs: str, raw: Any, path: Path, where: str) -> None:
        if not isinstance(raw, Mapping):
            self.problem(path, f"{where}: not a JSON object ({type(raw).__name__}); skipped")
            return
        try:
            case_id = raw_case_id(raw, where)
        except RecordError as exc:
            self.problem(path, f"{exc}; skipped")
            return
        fmt = raw.get("idFormatted")
        if fmt is not None and fmt != f"{cs}{case_id}":
            self.problem(path, f"{where}: idFormatted {fmt!r} is not a {case_set_name(cs)} case; skipped")
            return
        try:
            modified = parse_namus_datetime(raw.get("modifiedDateTime", ""))
        except ValueError:
            self.problem(path, f"{cs}{case_id}: modifiedDateTime {raw.get('modifiedDateTime')!r} unparseable; "
                         "treated as oldest")
            modified = datetime.min
        key = (cs, case_id)
        if key in self.modified and self.modified[key] > modified:
            return
        self.records[key] = raw
        self.modified[key] = modified
        self.paths[key] = path


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(d for d in path.iterdir() if d.is_dir())
    except OSError:
        return []


def _load(path: Path, col: _Collector, allow_trailing_comma: bool = False) -> Any:
    try:
        return load_json_file(path, allow_trailing_comma=allow_trailing_comma)
    except JsonFileError as exc:
        col.problem(path, str(exc).removeprefix(f"{path}: "))
        return None


def _detect(path: Path) -> tuple[SourceKind, Path, list[Path]]:
    """Return (kind, root, snapshot folders for auto_scraper)."""
    if (path / "cases").is_dir() and (
        any(is_case_set_name(d.name) for d in _subdirs(path / "cases")) or (path / "store.json").is_file()
    ):
        return "store", path, []
    for cand in (path, path / "output"):
        for d in _subdirs(cand):
            if is_case_set_name(d.name) and (d / f"{d.name}.json").is_file():
                return "prepager", cand, []
    for cand in (path, path / "output"):
        snaps = [d for d in _subdirs(cand) if SNAPSHOT_RE.match(d.name)]
        if snaps:
            return "auto_scraper", cand, snaps
    for d in _subdirs(path):
        if is_case_set_name(d.name) and any(d.glob(f"{d.name}_*.json")):
            return "auto_scraper", path, [path]
    raise SourceError(
        f"{path}: no NamUs layout found; expected output/<CaseSet>/<CaseSet>.json (Prepager), "
        "<YYYY-MM-DD-HH-MM-SS>/<CaseSet>/<CaseSet>_<State>.json (Auto-namus-scraper) "
        "or cases/<CaseSet>/<id>.json (namus-edge API store)"
    )


def _scan_prepager(root: Path, col: _Collector) -> list[tuple[Path, str | None]]:
    file_roots: list[tuple[Path, str | None]] = []
    for d in _subdirs(root):
        if not is_case_set_name(d.name):
            col.problem(d, _UNKNOWN_SET)
            continue
        cs = case_set_code(d.name)
        data_file = d / f"{d.name}.json"
        if not data_file.is_file():
            col.problem(d, f"no {data_file.name} in case set folder")
        else:
            data = _load(data_file, col, allow_trailing_comma=True)
            if data is not None and not isinstance(data, list):
                col.problem(data_file, f"expected a JSON array of cases, got {type(data).__name__}")
            elif isinstance(data, list):
                for n, raw in enumerate(data):
                    col.add(cs, raw, data_file, f"{cs} record [{n}]")
        if (d / "files").is_dir():
            file_roots.append((d / "files", cs))
    return file_roots


def _scan_auto(snapshots: list[Path], col: _Collector) -> None:
    for snap in sorted(snapshots, key=lambda s: s.name):
        for d in _subdirs(snap):
            if not is_case_set_name(d.name):
                col.problem(d, _UNKNOWN_SET)
                continue
            cs = case_set_code(d.name)
            for f in sorted(d.glob("*.json")):
                if not f.name.startswith(f"{d.name}_"):
                    col.problem(f, f"not a {d.name}_<State>.json file; skipped")
                    continue
                data = _load(f, col)
                if data is None:
                    continue
                if not isinstance(data, Mapping):
                    col.problem(f, f"expected a JSON object {{id: case}}, got {type(data).__name__}")
                    continue
                for k, raw in data.items():
                    if isinstance(raw, Mapping) and str(raw.get("id")) != str(k):
                        col.problem(f, f"key {k!r} differs from the record's id {raw.get('id')!r}; using the id")
                    col.add(cs, raw, f, f"{cs} record {k!r}")


def _scan_store(root: Path, col: _Collector) -> None:
    for d in _subdirs(root / "cases"):
        if not is_case_set_name(d.name):
            col.problem(d, _UNKNOWN_SET)
            continue
        cs = case_set_code(d.name)
        for f in sorted(d.glob("*.json")):
            raw = _load(f, col)
            if raw is None:
                continue
            if isinstance(raw, Mapping) and str(raw.get("id")) != f.stem:
                col.problem(f, f"file name differs from the record's id {raw.get('id')!r}; skipped")
                continue
            col.add(cs, raw, f, f"{cs} record {f.stem}")


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _match_files(
    roots: list[tuple[Path, str | None]], col: _Collector
) -> dict[str, Path]:
    """Join ``<caseId>-<storageKey><ext>`` files to the collected records' images."""
    owner: dict[str, tuple[str, int]] = {}
    documents: set[str] = set()
    for (cs, case_id), raw in col.records.items():
        for img in raw.get("images") or []:
            original = ((img.get("files") or {}).get("original") or {}) if isinstance(img, Mapping) else {}
            key = original.get("storageKey") if isinstance(original, Mapping) else None
            if isinstance(key, str):
                owner[key.lower()] = (cs, case_id)
        for doc in raw.get("documents") or []:
            key = (doc.get("file") or {}).get("storageKey") if isinstance(doc, Mapping) else None
            if isinstance(key, str):
                documents.add(key.lower())

    found: dict[str, Path] = {}
    for root, forced_cs in roots:
        for path in _walk_files(root):
            name = path.name
            if name.startswith(".") or name.endswith(_PARTIAL_SUFFIXES):
                continue
            m = FILE_NAME_RE.match(name)
            if m is None:
                col.problem(path, "file name is not <caseId>-<storageKey><ext>; skipped")
                continue
            ext = (m.group(3) or "").lower()
            key = m.group(2).lower()
            if ext in DOCUMENT_EXTENSIONS or key in documents:
                continue
            cs_hint = forced_cs
            if cs_hint is None:
                cs_hint = next(
                    (case_set_code(p) for p in path.relative_to(root).parts[:-1] if is_case_set_name(p)), None
                )
            if key not in owner:
                col.problem(path, f"storageKey {key} belongs to no image of any case in this source; skipped")
                continue
            cs, case_id = owner[key]
            if int(m.group(1)) != case_id or (cs_hint is not None and cs_hint != cs):
                col.problem(
                    path,
                    f"storageKey {key} belongs to {cs}{case_id}, but the file is named for "
                    f"{cs_hint or '?'}{int(m.group(1))}; skipped",
                )
                continue
            if key in found:
                col.problem(path, f"second file for storageKey {key}; kept {found[key]}")
                continue
            found[key] = path
    return found


def _snapshot_time_from_name(name: str) -> datetime | None:
    m = SNAPSHOT_RE.match(name)
    if m is None:
        return None
    y, mo, d, h, mi, sec = (int(g) for g in m.groups())
    return datetime(y, mo, d, h, mi, sec)


def scan_source(path: str | os.PathLike[str], files_root: str | os.PathLike[str] | None = None) -> SourceScan:
    """Detect the layout under ``path`` and collect its records and image files.

    Args:
        path: A Prepager ``output/`` (or its parent), an Auto-namus-scraper snapshot folder or
            folder of snapshots, or a namus-edge API store.
        files_root: An extra folder searched (recursively) for ``<caseId>-<storageKey><ext>``
            image files, e.g. originals downloaded for an Auto-namus-scraper snapshot. A path
            component named like a case set (``MissingPersons``) must agree with the owning case.

    Returns:
        The scan; see :class:`SourceScan`.

    Raises:
        SourceError: ``path`` is not a folder or holds no recognised layout.
    """
    p = Path(path)
    if not p.is_dir():
        raise SourceError(f"{p}: source folder does not exist")
    kind, root, snapshots = _detect(p)
    col = _Collector()
    file_roots: list[tuple[Path, str | None]] = []
    snapshot_time: datetime | None = None
    source = ""
    if kind == "prepager":
        file_roots = _scan_prepager(root, col)
    elif kind == "auto_scraper":
        _scan_auto(snapshots, col)
        times = [t for t in (_snapshot_time_from_name(s.name) for s in snapshots) if t is not None]
        if times:
            snapshot_time, source = max(times), "snapshot folder name (US/Pacific local time)"
    else:
        _scan_store(root, col)
        if (root / "files").is_dir():
            file_roots.append((root / "files", None))
        meta = root / "store.json"
        if meta.is_file():
            info = _load(meta, col)
            fetched = info.get("fetched_at") if isinstance(info, Mapping) else None
            try:
                snapshot_time = datetime.fromisoformat(fetched) if isinstance(fetched, str) else None
            except ValueError:
                col.problem(meta, f"fetched_at {fetched!r} is not an ISO timestamp")
            if snapshot_time is not None:
                snapshot_time, source = snapshot_time.replace(tzinfo=None), "store.json fetched_at (UTC)"
    if files_root is not None:
        fr = Path(files_root)
        if not fr.is_dir():
            raise SourceError(f"{fr}: files root does not exist")
        file_roots.append((fr, None))

    if snapshot_time is None:
        stamps = [t for t in col.modified.values() if t != datetime.min]
        if stamps:
            snapshot_time, source = max(stamps), "newest modifiedDateTime (NamUs local time)"
        elif col.paths:
            mtime = max(f.stat().st_mtime for f in set(col.paths.values()))
            snapshot_time, source = datetime.fromtimestamp(mtime), "newest record file mtime (local time)"
        else:
            source = "none (no records)"

    image_files = _match_files(file_roots, col)
    logger.info(
        "%s: %s layout, %d cases, %d image files, %d problems",
        p, kind, len(col.records), len(image_files), len(col.problems),
    )
    return SourceScan(
        kind=kind,
        root=root,
        records=dict(col.records),
        record_paths=dict(col.paths),
        snapshot_time=snapshot_time,
        snapshot_source=source,
        image_files=image_files,
        problems=tuple(col.problems),
    )
