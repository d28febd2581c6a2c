"""Durable file writes shared by every layer: atomic replace, fsync of files and directories, sha256.

Every writer in namus-edge that replaces a file a reader may open at any moment (a bundle, a
manifest, an engine, a JSON state file) goes through :func:`write_atomic` / :func:`copy_atomic`:
the data goes to a temporary sibling, is fsynced, renamed over the target, and the directory is
fsynced so the rename survives a power cut.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Flush a directory's entry table to disk (makes renames and new files in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Fsync every file and directory under ``root`` (bottom-up), then ``root`` itself."""
    for dirpath, _dirs, names in os.walk(root, topdown=False):
        for name in names:
            fsync_file(Path(dirpath, name))
        fsync_dir(Path(dirpath))


def _replace_via_tmp(path: Path, fill: BinaryIO | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(fill, bytes):
                out.write(fill)
            else:
                shutil.copyfileobj(fill, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp sibling, fsync, rename, fsync dir).

    A reader sees either the old file or the new one, never a partial one; the parent directory
    is created when missing.

    Raises:
        OSError: the directory cannot be created or written.
    """
    _replace_via_tmp(Path(path), data, mode)


def copy_atomic(src: Path, dst: Path, mode: int = 0o644) -> None:
    """Copy ``src`` over ``dst`` atomically and durably (same guarantees as :func:`write_atomic`).

    Raises:
        OSError: the source cannot be read or the destination written.
    """
    with Path(src).open("rb") as inp:
        _replace_via_tmp(Path(dst), inp, mode)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
