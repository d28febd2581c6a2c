"""Reading and writing JSON files the way NamUs data needs: UTF-8 always, tolerant where scrapers are sloppy.

* :func:`load_json_file` reads UTF-8 (a leading BOM is accepted) and, with ``allow_trailing_comma``,
  accepts the ``,]`` ending that ``Prepager/namus-scraper`` writes when its last case request failed
  (NAMUS_FORMAT §6.1). Errors name the file, line, column and byte offset.
* :func:`write_json_atomic` writes to a temporary sibling and renames it into place, so a reader
  never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from namus_edge.core.errors import NamusEdgeError
from namus_edge.core.fsutil import write_atomic

# The Prepager writer joins case bodies with "," and closes with "]": a failed last request
# leaves ",]" (possibly with whitespace between). Only that exact ending is repaired.
_TRAILING_COMMA_RE = re.compile(rb",\s*\]\s*$")


class JsonFileError(NamusEdgeError):
    """A JSON file cannot be read or parsed (message names the file and the position)."""


def parse_json_bytes(data: bytes, name: str, allow_trailing_comma: bool = False) -> Any:
    """Parse UTF-8 JSON bytes.

    Args:
        data: The file content.
        name: File name used in error messages.
        allow_trailing_comma: Accept a top-level array ending in ``,]`` / ``, ]``.

    Returns:
        The decoded JSON value.

    Raises:
        JsonFileError: Not valid UTF-8, or not valid JSON; the message gives line, column and offset.
    """
    if allow_trailing_comma:
        m = _TRAILING_COMMA_RE.search(data)
        if m is not None:
            data = data[: m.start()] + b"]"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JsonFileError(f"{name}: not UTF-8 at byte {exc.start}: {exc.reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonFileError(
            f"{name}: invalid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}"
        ) from None


def load_json_file(path: str | os.PathLike[str], allow_trailing_comma: bool = False) -> Any:
    """Read and parse a UTF-8 JSON file.

    Args:
        path: The file.
        allow_trailing_comma: Accept a top-level array ending in ``,]`` (Prepager output).

    Raises:
        JsonFileError: The file cannot be read, is not UTF-8 or is not valid JSON.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise JsonFileError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_json_bytes(data, str(p), allow_trailing_comma=allow_trailing_comma)


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> None:
    """Write ``value`` as UTF-8 JSON (non-ASCII kept as is) atomically and durably over ``path``.

    Raises:
        OSError: The directory cannot be created or written.
    """
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    write_atomic(Path(path), data)
