"""A real HTTP/1.1 server on loopback serving a directory, with Range support and fault injection.

Used by the fleet tests as the "web server or object store" a publish tree is served from.

Faults are keyed by URL path (e.g. ``/20250101T000000Z-abcd1234/index.faiss``):

* ``truncate``: send the full ``Content-Length`` header but only ``at`` bytes of the body, then
  close the connection (a dropped connection mid-file);
* ``status``: answer with an HTTP error code (e.g. 500);
* ``times``: how many requests the fault applies to (``None``: every request).

``throttle_s`` sleeps between ``chunk`` -byte writes so downloads take measurable time (the kill
test needs kills to land mid-download).
"""

from __future__ import annotations

import http.server
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


@dataclass
class Fault:
    kind: str  # "truncate" | "status"
    at: int = 0
    code: int = 500
    times: int | None = 1


@dataclass
class Request:
    path: str
    range: str | None
    status: int


@dataclass
class ServerState:
    root: Path
    faults: dict[str, Fault] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    throttle_s: float = 0.0
    chunk: int = 16384
    lock: threading.Lock = field(default_factory=threading.Lock)


_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState  # set on the subclass by LoopbackHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self, path: str, status: int) -> None:
        with self.state.lock:
            self.state.log.append(Request(path, self.headers.get("Range"), status))

    def _take_fault(self, path: str) -> Fault | None:
        with self.state.lock:
            fault = self.state.faults.get(path)
            if fault is None:
                return None
            if fault.times is not None:
                if fault.times <= 0:
                    return None
                fault.times -= 1
            return fault

    def _error(self, path: str, code: int) -> None:
        body = f"error {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._record(path, code)

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        target = (self.state.root / path.lstrip("/")).resolve()
        if self.state.root.resolve() not in target.parents or not target.is_file():
            self._error(path, 404)
            return
        fault = self._take_fault(path)
        if fault is not None and fault.kind == "status":
            self._error(path, fault.code)
            return
        data = target.read_bytes()
        size = len(data)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE_RE.match(rng.strip())
            if m is None:
                self._error(path, 416)
                return
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record(path, 416)
                return
            end = min(end, size - 1)
            status = 206
        body = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self._record(path, status)
        limit = len(body)
        if fault is not None and fault.kind == "truncate":
            limit = min(limit, fault.at)
        sent = 0
        try:
            while sent < limit:
                n = min(self.state.chunk, limit - sent)
                self.wfile.write(body[sent : sent + n])
                self.wfile.flush()
                sent += n
                if self.state.throttle_s:
                    time.sleep(self.state.throttle_s)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if limit < len(body):
            self.close_connection = True  # drop the connection mid-body


class LoopbackHTTPServer:
    """Serve ``root`` on 127.0.0.1 on a free port from a background thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:<port>/``.
    """

    def __init__(self, root: Path, throttle_s: float = 0.0, chunk: int = 16384) -> None:
        self.state = ServerState(root=Path(root), throttle_s=throttle_s, chunk=chunk)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def fault(self, path: str, fault: Fault) -> None:
        with self.state.lock:
            self.state.faults[path] = fault

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.log)

    def start(self) -> LoopbackHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackHTTPServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
