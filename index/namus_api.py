"""Client for the (undocumented) NamUs JSON API and a resumable on-disk store of its records and photos.

Enumeration follows NAMUS_FORMAT §3: GET the states, then per case set and state one ``IsIn``
search on the set's state field (``stateOfLastContact`` / ``stateOfRecovery`` / ``stateFound``)
with ``take``/``skip`` paging, then GET every case and download the original of each face-worthy
image via ``files.original.href`` (root-relative; prefixed with the scheme and host of
``base_url``).

HTTP uses only the standard library (``urllib`` in a ``ThreadPoolExecutor`` of
``cfg.concurrency`` workers): a few thousand small JSON GETs and image downloads need neither
connection pooling nor async, and no dependency is added. Every request sends ``cfg.user_agent``
and is retried on HTTP 5xx/429, timeouts and connection errors with exponential back-off and
jitter (``backoff_s * 2**attempt``, scaled by a random factor in [0.5, 1], capped at
``backoff_max_s``; a ``Retry-After`` in seconds is honoured up to the same cap), at most
``cfg.retries`` times. A 404 on a case is reported and the case skipped; other 4xx fail at once.

Store layout (``store_dir``), readable directly by :func:`index.layouts.scan_source`::

    store.json                                      fetched_at (UTC), base_url, case sets, states
    cases/<CaseSet>/<id>.json                       raw case record, written tmp + rename
    files/<CaseSet>/<category>/<id>-<storageKey><ext>  originals, downloaded to .part + rename
    removed/<CaseSet>/<id>.json, removed/files/...  cases gone from search, and stale images

Re-runs are incremental: a case is fetched again only when its search ``modifiedDateTime`` is
newer than the stored one; where the API does not return ``modifiedDateTime`` for a case set
(the projection gives HTTP 400 "Invalid field name"), every case is fetched again, but images
already present with a non-zero size are never downloaded twice. A stored case whose state was
searched successfully but which the search no longer returns is moved to ``removed/`` and
reported, so the build drops it.
"""

from __future__ import annotations

import http.client
import json
import logging
import mimetypes
import os
import random
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from namus_edge.core.cases import case_set_code, case_set_name
from namus_edge.core.config import NamusApiConfig
from namus_edge.core.errors import NamusEdgeError
from namus_edge.index.jsonutil import JsonFileError, load_json_file, parse_json_bytes, write_json_atomic
from namus_edge.index.records import (
    DEFAULT_FACE_CATEGORIES,
    STATE_FIELDS,
    ImageRef,
    RecordError,
    image_refs,
    parse_namus_datetime,
    raw_case_id,
    raw_state_name,
)
from namus_edge.models.imagefile import sniff_image

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Projections asked for first; ``namus2Number`` alone when the API rejects the others.
SEARCH_PROJECTIONS: tuple[str, ...] = ("namus2Number", "idFormatted", "modifiedDateTime")
#: NamUs MIME spellings -> file extension (NAMUS_FORMAT §5, same map as Prepager plus standard names).
MIME_EXTENSIONS: dict[str, str] = {
    "image/jpg": ".jpg",
    "image/jpeg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/x-png": ".png",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
    "image/tiff": ".tif",
}
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_]+$")
_CHUNK = 1 << 16


class NamusApiError(NamusEdgeError):
    """A NamUs API request failed for good (after retries, or with a non-retryable status).

    Attributes:
        status: The HTTP status, or None for transport errors.
        url: The URL requested.
    """

    def __init__(self, message: str, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class NamusNotFoundError(NamusApiError):
    """HTTP 404: the case or file does not exist or is not published."""


class _RetryableError(Exception):
    """Internal: a transient failure; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class SearchHit:
    """One search result: the case key and, when the API returned it, ``modifiedDateTime``."""

    case_set: str
    id: int
    modified: str | None


@dataclass(frozen=True)
class FetchFailure:
    """Something :func:`fetch_all` could not do. ``what`` names the search, case or file."""

    what: str
    reason: str


@dataclass(frozen=True)
class FetchReport:
    """Outcome of :func:`fetch_all`. Case lists hold ``idFormatted`` values, sorted.

    Attributes:
        store_dir: The store written.
        states: State names searched.
        found: Search hits per case set code.
        fetched: Cases downloaded (new or changed) and written to the store.
        unchanged: Cases whose stored copy is current (not downloaded again).
        not_found: Cases the search listed but whose GET answered 404 (skipped).
        removed: Stored cases no longer returned by search (moved to ``removed/``).
        failed: Searches, cases and images that failed after retries.
        images_downloaded: Originals downloaded in this run.
        images_present: Originals already in the store (not downloaded).
        bytes_downloaded: Bytes of originals downloaded.
        minimal_projection: Case sets whose search returned no ``modifiedDateTime``.
    """

    store_dir: Path
    states: tuple[str, ...]
    found: Mapping[str, int]
    fetched: tuple[str, ...]
    unchanged: tuple[str, ...]
    not_found: tuple[str, ...]
    removed: tuple[str, ...]
    failed: tuple[FetchFailure, ...]
    images_downloaded: int
    images_present: int
    bytes_downloaded: int
    minimal_projection: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed


class NamusClient:
    """Thread-safe NamUs API client (no I/O in the constructor).

    Args:
        cfg: ``index.api`` configuration (base URL, User-Agent, timeouts, retries, paging).
    """

    def __init__(self, cfg: NamusApiConfig) -> None:
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise NamusApiError(f"index.api.base_url must be an http(s) URL, got {cfg.base_url!r}")
        self.host_url = f"{parts.scheme}://{parts.netloc}"
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._projections: dict[str, tuple[str, ...]] = {}

    # ---------------------------------------------------------------- transport

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = self.cfg.backoff_max_s
        delay = min(cap, self.cfg.backoff_s * (2**attempt)) * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(cap, retry_after))
        return delay

    def _call(self, method: str, url: str, body: bytes | None, handle: Callable[[Any], T]) -> T:
        """Send a request with retries; ``handle`` consumes the open response (may raise ``_RetryableError``)."""
        headers = {"User-Agent": self.cfg.user_agent, "Accept": "application/json, image/*;q=0.9, */*;q=0.5"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        attempts = self.cfg.retries + 1
        last = ""
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                req = urllib.request.Request(url, data=body, method=method, headers=headers)
                with urllib.request.build_opener().open(req, timeout=self.cfg.timeout_s) as resp:
                    return handle(resp)
            except urllib.error.HTTPError as exc:
                detail = _error_body(exc)
                if exc.code == 404:
                    raise NamusNotFoundError(f"{method} {url}: HTTP 404 not found", 404, url) from None
                if exc.code != 429 and exc.code < 500:
                    raise NamusApiError(f"{method} {url}: HTTP {exc.code}: {detail}", exc.code, url) from None
                last = f"HTTP {exc.code}"
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except _RetryableError as exc:
                last, retry_after = str(exc), exc.retry_after
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                # URLError wraps refused/reset connections; TimeoutError and ConnectionResetError are
                # OSErrors; RemoteDisconnected/IncompleteRead are HTTPExceptions.
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                last = f"{type(reason).__name__}: {reason}"
            if attempt + 1 < attempts:
                delay = self._delay(attempt, retry_after)
                logger.info("%s %s: %s; retry %d/%d in %.2fs", method, url, last, attempt + 1, attempts - 1, delay)
                time.sleep(delay)
        raise NamusApiError(f"{method} {url}: gave up after {attempts} attempt(s): {last}", None, url)

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        url = self.base_url + path
        body = None if payload is None else json.dumps(payload).encode("utf-8")

        def handle(resp: Any) -> Any:
            data = _read_all(resp)
            try:
                return parse_json_bytes(data, url)
            except JsonFileError as exc:
                # A truncated or garbled body is treated as transient (proxies, resets).
                raise _RetryableError(str(exc)) from None

        return self._call(method, url, body, handle)

    def absolute_url(self, href: str) -> str:
        """Turn a root-relative ``href`` (``/api/...``) into a URL on ``base_url``'s host.

        Raises:
            NamusApiError: ``href`` is an absolute URL on another host (never followed).
        """
        parts = urllib.parse.urlsplit(href)
        if parts.scheme or parts.netloc:
            if f"{parts.scheme}://{parts.netloc}" != self.host_url:
                raise NamusApiError(f"refusing to follow href on another host: {href!r}")
            return href
        return self.host_url + ("" if href.startswith("/") else "/") + href

    # ---------------------------------------------------------------- endpoints

    def states(self) -> list[str]:
        """``GET /CaseSets/NamUs/States``: the state names used in search predicates."""
        data = self._json("GET", "/CaseSets/NamUs/States")
        if not isinstance(data, list):
            raise NamusApiError(f"{self.base_url}/CaseSets/NamUs/States: expected a JSON array")
        names = [s.get("name") for s in data if isinstance(s, Mapping)]
        return [n for n in names if isinstance(n, str) and n]

    def search(self, case_set: str, state: str) -> list[SearchHit]:
        """All cases of one case set in one state (``IsIn`` on the set's state field, paged).

        Asks for ``namus2Number``, ``idFormatted`` and ``modifiedDateTime``; when the API rejects a
        projection (HTTP 400 "Invalid field name"), repeats with ``namus2Number`` alone and
        remembers that for the case set.

        Raises:
            NamusApiError: A page failed after retries, or the response is malformed.
        """
        cs = case_set_code(case_set)
        path = f"/CaseSets/NamUs/{case_set_name(cs)}/Search"
        take = self.cfg.page_size
        hits: dict[int, SearchHit] = {}
        skip = 0
        while True:
            with self._lock:
                projections = self._projections.get(cs, SEARCH_PROJECTIONS)
            body = {
                "take": take,
                "skip": skip,
                "projections": list(projections),
                "predicates": [{"field": STATE_FIELDS[cs], "operator": "IsIn", "values": [state]}],
            }
            try:
                data = self._json("POST", path, body)
            except NamusApiError as exc:
                if exc.status == 400 and "invalid field name" in str(exc).lower() and len(projections) > 1:
                    with self._lock:
                        first = cs not in self._projections
                        self._projections[cs] = ("namus2Number",)
                    if first:
                        logger.warning(
                            "%s search rejects projections %s (%s); using namus2Number only", cs, projections, exc
                        )
                    continue
                raise
            results = data.get("results") if isinstance(data, Mapping) else None
            if not isinstance(results, list):
                raise NamusApiError(f"POST {self.base_url}{path} ({state}): response has no results list")
            new = 0
            for r in results:
                if not isinstance(r, Mapping):
                    continue
                try:
                    case_id = raw_case_id({"id": r.get("namus2Number")}, f"{cs} search result in {state}")
                except RecordError as exc:
                    logger.warning("%s", exc)
                    continue
                modified = r.get("modifiedDateTime")
                if case_id not in hits:
                    new += 1
                hits[case_id] = SearchHit(cs, case_id, modified if isinstance(modified, str) else None)
            skip += len(results)
            count = data.get("count")
            if len(results) < take or new == 0 or (isinstance(count, int) and skip >= count):
                break
        return sorted(hits.values(), key=lambda h: h.id)

    def uses_modified(self, case_set: str) -> bool:
        """Whether searches of this case set return ``modifiedDateTime`` (False after a fallback)."""
        with self._lock:
            return "modifiedDateTime" in self._projections.get(case_set_code(case_set), SEARCH_PROJECTIONS)

    def get_case(self, case_set: str, case_id: int) -> dict[str, Any]:
        """``GET /CaseSets/NamUs/<CaseSet>/Cases/<id>``: the raw case record.

        Raises:
            NamusNotFoundError: HTTP 404.
            NamusApiError: Other failures, or the body is not this case.
        """
        cs = case_set_code(case_set)
        path = f"/CaseSets/NamUs/{case_set_name(cs)}/Cases/{int(case_id)}"
        data = self._json("GET", path)
        if not isinstance(data, dict):
            raise NamusApiError(f"GET {self.base_url}{path}: expected a JSON object")
        try:
            got = raw_case_id(data, f"GET {path}")
        except RecordError as exc:
            raise NamusApiError(str(exc)) from None
        if got != int(case_id):
            raise NamusApiError(f"GET {self.base_url}{path}: body is case {got}, not {case_id}")
        return data

    def download(self, href: str, dest: Path) -> int:
        """Download ``href`` to ``dest`` via ``dest.part`` + rename; the bytes must sniff as an image.

        Returns:
            The number of bytes written.

        Raises:
            NamusApiError: The download failed after retries, was empty or is not an image.
        """
        url = self.absolute_url(href)
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)

        def handle(resp: Any) -> int:
            expected = resp.headers.get("Content-Length")
            n = 0
            with open(part, "wb") as fh:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    n += len(chunk)
            if expected is not None and expected.isdigit() and int(expected) != n:
                raise _RetryableError(f"short read: {n} of {expected} bytes")
            return n

        try:
            n = self._call("GET", url, None, handle)
            if n == 0:
                raise NamusApiError(f"GET {url}: empty body", None, url)
            kind = sniff_image(part)
            if kind is None:
                with open(part, "rb") as fh:
                    head = fh.read(8)
                raise NamusApiError(f"GET {url}: not an image (first bytes {head.hex(' ')})", None, url)
            os.replace(part, dest)
            return n
        finally:
            part.unlink(missing_ok=True)


def _read_all(resp: Any) -> bytes:
    data: bytes = resp.read()
    expected = resp.headers.get("Content-Length") if resp.headers else None
    if expected is not None and expected.isdigit() and int(expected) != len(data):
        raise _RetryableError(f"short read: {len(data)} of {expected} bytes")
    return data


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(2000).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        text = ""
    finally:
        exc.close()
    return " ".join(text.split())[:500] or (exc.reason if isinstance(exc.reason, str) else "")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own back-off


def file_extension(mime: str | None) -> str:
    """File extension for a NamUs MIME type (``image/pjpeg`` -> ``.jpg``; ``.unknown`` when unknown)."""
    if not mime:
        return ".unknown"
    m = mime.lower().strip()
    return MIME_EXTENSIONS.get(m) or mimetypes.guess_extension(m) or ".unknown"


# -------------------------------------------------------------------------------------------- store


@dataclass
class _Stored:
    modified: str | None
    state: str | None
    images: tuple[ImageRef, ...]


@dataclass
class _Acc:
    """Mutable accumulator of one fetch_all run (main thread only)."""

    fetched: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[FetchFailure] = field(default_factory=list)
    images_downloaded: int = 0
    images_present: int = 0
    bytes_downloaded: int = 0

    def fail(self, what: str, reason: str) -> None:
        logger.warning("%s: %s", what, reason)
        self.failed.append(FetchFailure(what, reason))


def _summary(raw: Mapping[str, Any], cs: str, case: str) -> _Stored:
    modified = raw.get("modifiedDateTime")
    return _Stored(modified if isinstance(modified, str) else None, raw_state_name(raw, cs), image_refs(raw, case))


def _load_stored(store: Path, cs: str) -> dict[int, _Stored]:
    out: dict[int, _Stored] = {}
    folder = store / "cases" / case_set_name(cs)
    if not folder.is_dir():
        return out
    for f in folder.glob("*.json"):
        if not f.stem.isdigit():
            continue
        try:
            raw = load_json_file(f)
            case_id = raw_case_id(raw, str(f))
        except (JsonFileError, RecordError) as exc:
            logger.warning("%s: unreadable stored case (%s); it will be fetched again", f, exc)
            continue
        if case_id == int(f.stem):
            out[case_id] = _summary(raw, cs, f"{cs}{case_id}")
    return out


def _newer(hit_modified: str | None, stored: _Stored | None) -> bool:
    """True when the case must be fetched: unknown search time, nothing stored, or search is newer."""
    if hit_modified is None or stored is None or stored.modified is None:
        return True
    try:
        return parse_namus_datetime(hit_modified) > parse_namus_datetime(stored.modified)
    except ValueError:
        return True


def _case_files(store: Path, cs: str, case_id: int) -> list[Path]:
    root = store / "files" / case_set_name(cs)
    return sorted(root.glob(f"*/{case_id}-*")) if root.is_dir() else []


def _retire(store: Path, path: Path) -> None:
    """Move a store file under ``removed/`` keeping its relative path (nothing is deleted)."""
    target = store / "removed" / path.relative_to(store)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # retired before (case came back and went again): keep both copies
        target = target.with_name(f"{target.name}.{time.strftime('%Y%m%dT%H%M%S')}")
    shutil.move(str(path), str(target))


def _image_dest(store: Path, cs: str, case_id: int, img: ImageRef) -> Path:
    return store / "files" / case_set_name(cs) / img.category / f"{case_id}-{img.storage_key}{file_extension(img.mime)}"


def _present(dest: Path) -> bool:
    for p in dest.parent.glob(f"{dest.name.rsplit('.', 1)[0]}*"):
        if not p.name.endswith(".part") and p.is_file() and p.stat().st_size > 0:
            return True
    return False


def fetch_all(
    cfg: NamusApiConfig,
    store_dir: str | os.PathLike[str],
    case_sets: Iterable[str],
    states: Sequence[str] | None = None,
    *,
    categories: Iterable[str] | None = DEFAULT_FACE_CATEGORIES,
    progress: bool | None = None,
) -> FetchReport:
    """Bring the store under ``store_dir`` up to date with the NamUs API.

    Args:
        cfg: ``index.api`` configuration.
        store_dir: Store folder (created); see the module docstring for its layout.
        case_sets: Case sets to fetch (``"MP"``/``"UP"``/``"UCP"`` or the API names).
        states: State names to search; default ``cfg.states``, else every state the API lists.
        categories: Image categories whose originals are downloaded (default: face-worthy ones);
            None downloads every image.
        progress: Show tqdm progress bars; default only when stderr is a terminal.

    Returns:
        The :class:`FetchReport`. Individual failures are in ``failed``; the store stays consistent.

    Raises:
        NamusApiError: The state list cannot be fetched, or a requested state is unknown.
    """
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    sets: list[str] = list(dict.fromkeys(case_set_code(c) for c in case_sets))
    cats = None if categories is None else frozenset(categories)
    client = NamusClient(cfg)
    show = sys.stderr.isatty() if progress is None else progress
    acc = _Acc()

    all_states = client.states()
    wanted = list(states) if states is not None else (list(cfg.states) if cfg.states else all_states)
    unknown = [s for s in wanted if s not in all_states]
    if unknown:
        raise NamusApiError(f"unknown state name(s) {unknown}; the API lists: {', '.join(all_states)}")

    with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="namus-api") as pool:
        # 1. search every (case set, state)
        searches: dict[Future[list[SearchHit]], tuple[str, str]] = {
            pool.submit(client.search, cs, st): (cs, st) for cs in sets for st in wanted
        }
        hits: dict[str, dict[int, SearchHit]] = {cs: {} for cs in sets}
        searched_ok: dict[str, set[str]] = {cs: set() for cs in sets}
        for sfut in _progress(as_completed(searches), len(searches), "search", show):
            cs, st = searches[sfut]
            try:
                for h in sfut.result():
                    hits[cs][h.id] = h
                searched_ok[cs].add(st)
            except NamusApiError as exc:
                acc.fail(f"search {cs} {st}", str(exc))

        # 2. fetch new and changed cases
        stored = {cs: _load_stored(store, cs) for cs in sets}
        todo: list[tuple[str, int]] = []
        for cs in sets:
            for case_id, h in hits[cs].items():
                if _newer(h.modified, stored[cs].get(case_id)):
                    todo.append((cs, case_id))
                else:
                    acc.unchanged.append(f"{cs}{case_id}")
        gets = {pool.submit(client.get_case, cs, cid): (cs, cid) for cs, cid in todo}
        for gfut in _progress(as_completed(gets), len(gets), "cases", show):
            cs, cid = gets[gfut]
            case = f"{cs}{cid}"
            try:
                raw = gfut.result()
            except NamusNotFoundError:
                logger.warning("%s: search lists it but GET answers 404; skipped", case)
                acc.not_found.append(case)
                continue
            except NamusApiError as exc:
                acc.fail(f"case {case}", str(exc))
                continue
            write_json_atomic(store / "cases" / case_set_name(cs) / f"{cid}.json", raw)
            summary = _summary(raw, cs, case)
            stored[cs][cid] = summary
            acc.fetched.append(case)
            keys = {i.storage_key for i in summary.images}
            for f in _case_files(store, cs, cid):
                name_key = f.name.split("-", 1)[1].split(".", 1)[0].lower() if "-" in f.name else ""
                if name_key not in keys and not f.name.endswith(".part"):
                    logger.info("%s: %s is no longer an image of the case; moved to removed/", case, f.name)
                    _retire(store, f)

        # 3. cases gone from search (only where that state's search succeeded)
        for cs in sets:
            for cid, old in sorted(stored[cs].items()):
                if cid in hits[cs] or old.state not in searched_ok[cs]:
                    continue
                src = store / "cases" / case_set_name(cs) / f"{cid}.json"
                if src.exists():
                    _retire(store, src)
                for f in _case_files(store, cs, cid):
                    _retire(store, f)
                acc.removed.append(f"{cs}{cid}")
                logger.info("%s%d: no longer returned by search; moved to removed/", cs, cid)

        # 4. download missing originals of the current cases
        jobs: list[tuple[str, ImageRef, Path]] = []
        for cs in sets:
            for cid in hits[cs]:
                current = stored[cs].get(cid)
                if current is None:
                    continue
                for img in current.images:
                    if cats is not None and img.category not in cats:
                        continue
                    if not _SAFE_SEGMENT.match(img.category):
                        acc.fail(f"image {cs}{cid}/{img.storage_key}", f"unsafe category name {img.category!r}")
                        continue
                    dest = _image_dest(store, cs, cid, img)
                    if _present(dest):
                        acc.images_present += 1
                    else:
                        jobs.append((f"{cs}{cid}", img, dest))
        downloads = {pool.submit(client.download, img.href, dest): (case, img) for case, img, dest in jobs}
        for dfut in _progress(as_completed(downloads), len(downloads), "images", show):
            case, img = downloads[dfut]
            try:
                acc.bytes_downloaded += dfut.result()
                acc.images_downloaded += 1
            except NamusApiError as exc:
                acc.fail(f"image {case}/{img.storage_key}", str(exc))

    write_json_atomic(
        store / "store.json",
        {
            "fetched_at": datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds"),
            "base_url": cfg.base_url,
            "case_sets": sets,
            "states": wanted,
        },
    )
    report = FetchReport(
        store_dir=store,
        states=tuple(wanted),
        found={cs: len(hits[cs]) for cs in sets},
        fetched=tuple(sorted(acc.fetched)),
        unchanged=tuple(sorted(acc.unchanged)),
        not_found=tuple(sorted(acc.not_found)),
        removed=tuple(sorted(acc.removed)),
        failed=tuple(acc.failed),
        images_downloaded=acc.images_downloaded,
        images_present=acc.images_present,
        bytes_downloaded=acc.bytes_downloaded,
        minimal_projection=tuple(cs for cs in sets if not client.uses_modified(cs)),
    )
    logger.info(
        "NamUs fetch: %d found, %d fetched, %d unchanged, %d removed, %d images downloaded, %d failures",
        sum(report.found.values()), len(report.fetched), len(report.unchanged), len(report.removed),
        report.images_downloaded, len(report.failed),
    )
    return report


def _progress(it: Iterable[T], total: int, desc: str, show: bool) -> Iterable[T]:
    if not show:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="req", leave=False)
