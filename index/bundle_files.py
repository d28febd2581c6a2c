"""Reading a bundle's files so that the bytes checked are the bytes used.

Verifying files by path and then reopening them by path lets anyone who can write the bundle
directory swap a file in between. Here every file is opened once, relative to a directory file
descriptor and with ``O_NOFOLLOW`` (a symlink is refused, never followed), and:

* small files (manifest, signature, the SQLite metadata) are read whole into memory, hashed,
  and used from those bytes (``sqlite3.Connection.deserialize``);
* the FAISS index is streamed into ``faiss.read_index`` through a reader that hashes every
  byte FAISS consumes; the index is kept only when the hash and size of exactly those bytes
  match the signed manifest. Peak memory is the index itself plus one chunk, not twice the index.

A bundle holding any symlink (file or directory) is refused.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import faiss

from namus_edge.core.errors import BundleError, BundleVerificationError

#: Bytes per read while streaming the FAISS index.
CHUNK = 1 << 20


class BundleDir:
    """An open bundle directory (a file descriptor pinned at open time).

    Args:
        path: the bundle directory (a symlink to it, like ``current``, is resolved once here).

    Raises:
        BundleVerificationError: not a directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise BundleVerificationError(f"bundle {self.path} is not a directory ({exc.strerror})") from exc

    @property
    def fd(self) -> int:
        """The directory's file descriptor."""
        if self._fd is None:
            raise BundleError(f"bundle directory {self.path} is closed")
        return self._fd

    def refuse_symlinks(self) -> None:
        """Raise when any entry under the bundle is a symlink.

        Raises:
            BundleVerificationError: naming the first symlink found.
        """
        for root, dirs, files, _rootfd in os.fwalk(".", dir_fd=self.fd, follow_symlinks=False):
            for name in (*dirs, *files):
                try:
                    st = os.stat(name, dir_fd=_rootfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile; a needed file that is gone fails when it is opened
                if stat.S_ISLNK(st.st_mode):
                    rel = os.path.normpath(os.path.join(root, name))
                    raise BundleVerificationError(f"{self.path / rel}: a symlink; bundles must hold plain files only")

    def open_file(self, rel: str) -> int:
        """Open a regular file of the bundle read-only without following symlinks; returns the fd.

        Raises:
            BundleVerificationError: missing, a symlink, or not a regular file.
        """
        try:
            fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError as exc:
            raise BundleVerificationError(f"{self.path / rel}: missing") from exc
        except OSError as exc:
            raise BundleVerificationError(f"{self.path / rel}: cannot open ({exc.strerror}; symlinks are refused)") \
                from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BundleVerificationError(f"{self.path / rel}: not a regular file")
        return fd

    def read_bytes(self, rel: str, max_bytes: int = 1 << 34) -> bytes:
        """The whole content of one file (opened once, see :meth:`open_file`)."""
        fd = self.open_file(rel)
        try:
            size = os.fstat(fd).st_size
            if size > max_bytes:
                raise BundleVerificationError(f"{self.path / rel}: {size} bytes, over the {max_bytes}-byte limit")
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(size + 1)  # the size read, not the limit: read(n) allocates n bytes up front
            if len(data) > max_bytes:
                raise BundleVerificationError(f"{self.path / rel}: grew past the {max_bytes}-byte limit while read")
            return data
        finally:
            os.close(fd)

    def read_checked(self, rel: str, entry: Mapping[str, Any] | None) -> bytes:
        """Read a listed file and check its size and sha256 against its manifest ``entry`` (None: no check).

        Raises:
            BundleVerificationError: naming the file and the mismatch.
        """
        data = self.read_bytes(rel, max_bytes=int(entry["size"]) if entry is not None else 1 << 34)
        if entry is not None:
            check_digest(self.path / rel, len(data), hashlib.sha256(data).hexdigest(), entry)
        return data

    def read_index(self, rel: str, entry: Mapping[str, Any] | None) -> faiss.Index:
        """Stream a FAISS index into memory, hashing exactly the bytes FAISS parses.

        Raises:
            BundleVerificationError: size or sha256 of the consumed bytes differ from ``entry``.
            BundleError: FAISS cannot parse the file.
        """
        fd = self.open_file(rel)
        digest = hashlib.sha256()
        consumed = 0
        limit = int(entry["size"]) if entry is not None else 1 << 40
        try:
            with os.fdopen(os.dup(fd), "rb", buffering=0) as fh:

                def read(n: int) -> bytes:
                    nonlocal consumed
                    block = fh.read(max(0, min(n, limit - consumed)))
                    digest.update(block)
                    consumed += len(block)
                    return block

                try:
                    index = faiss.read_index(faiss.PyCallbackIOReader(read, CHUNK))  # type: ignore[attr-defined]
                except RuntimeError as exc:
                    raise BundleError(
                        f"{self.path / rel}: cannot be read by FAISS ({str(exc).splitlines()[0]})") from exc
                # bytes after what FAISS parsed are part of the file, and of its hash
                while True:
                    block = read(CHUNK)
                    if not block:
                        break
                trailing = fh.read(1)
        finally:
            os.close(fd)
        if entry is not None:
            size = consumed + len(trailing)
            check_digest(self.path / rel, size, digest.hexdigest() if not trailing else "", entry)
        return index

    def close(self) -> None:
        """Close the directory descriptor (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BundleDir:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_digest(path: Path, size: int, sha256: str, entry: Mapping[str, Any]) -> None:
    """Compare a size and hex sha256 with a manifest entry.

    Raises:
        BundleVerificationError: naming the file and what differs.
    """
    if size != entry["size"]:
        raise BundleVerificationError(f"{path}: size {size} bytes, manifest says {entry['size']}")
    if sha256 != entry["sha256"]:
        raise BundleVerificationError(f"{path}: sha256 {sha256[:16]}… does not match manifest {entry['sha256'][:16]}…")


def sqlite_from_bytes(data: bytes, where: Path) -> sqlite3.Connection:
    """A read-only SQLite connection holding exactly ``data`` (a database image), private to this process.

    Python >= 3.11: ``Connection.deserialize`` into memory. Python 3.10 (JetPack 6) has no
    ``deserialize``: the bytes go to an anonymous ``memfd`` that no other process can reach,
    opened read-only and immutable through ``/proc/self/fd``.

    Raises:
        BundleError: the bytes are not a SQLite database.
    """
    try:
        if sys.version_info >= (3, 11):
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            conn.deserialize(data)
        else:  # pragma: no cover - Python 3.10 only
            fd = os.memfd_create("namus-edge-meta", os.MFD_CLOEXEC)
            with os.fdopen(os.dup(fd), "wb") as fh:
                fh.write(data)
            conn = sqlite3.connect(f"file:/proc/self/fd/{fd}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            os.close(fd)  # sqlite holds its own descriptor
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise BundleError(f"{where}: cannot be opened as a SQLite database ({exc})") from exc
    return conn
