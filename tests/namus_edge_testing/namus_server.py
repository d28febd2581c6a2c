"""A real HTTP server on loopback that imitates the NamUs API with the real sample records.

It serves ``GET /api/CaseSets/NamUs/States``, ``POST /api/CaseSets/NamUs/<CaseSet>/Search`` (``IsIn``
on the set's state field, projections, take/skip), ``GET .../Cases/<id>`` and image originals at
each record's ``files.original.href``. Image bytes are the real face crops from
``samples/face_crops`` for the images of those cases (the n-th face crop of a case becomes the
n-th face-worthy image), and small synthetic images made with ``cv2.imencode`` elsewhere.

Failures can be injected per request path: ``"503"`` (Service Unavailable), ``"429"`` (Too Many
Requests with ``Retry-After: 0``), ``"reset"`` (TCP
reset without a response), ``"timeout"`` (answer only after ``slow_s``), each consumed once, and
permanent 404s. Every request is logged with its User-Agent.
"""

from __future__ import annotations

import copy
import json
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SET_NAMES = ("MissingPersons", "UnidentifiedPersons", "UnclaimedPersons")
STATE_FIELD = {"MissingPersons": "stateOfLastContact", "UnidentifiedPersons": "stateOfRecovery",
               "UnclaimedPersons": "stateFound"}
FACE_CATEGORIES = {"FacialCaseId", "ActualPhoto", "AgeProgression", "Composite", "ArtistRendering"}
PREFIX = {"MissingPersons": "MP", "UnidentifiedPersons": "UP", "UnclaimedPersons": "UCP"}


def load_sample_records(samples: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """All 20 sample records keyed on (CaseSet name, id), read with the json module directly."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for cs in SET_NAMES:
        for rec in json.loads((samples / "prepager-layout/output" / cs / f"{cs}.json").read_text("utf-8")):
            out[(cs, rec["id"])] = rec
        for f in sorted((samples / "auto-namus-scraper").glob(f"*/{cs}/{cs}_*.json")):
            for rec in json.loads(f.read_text("utf-8")).values():
                out[(cs, rec["id"])] = rec
    return out


def state_of(cs: str, rec: dict[str, Any]) -> str:
    parent = rec["sighting"] if cs == "MissingPersons" else rec["circumstances"]
    return parent["address"]["state"]["name"]


def synthetic_image(seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 80, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    cv2.circle(img, (40, 45), 25, tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    ok, buf = cv2.imencode(fmt, img)
    assert ok
    return buf.tobytes()


class NamusTestServer:
    """ThreadingHTTPServer on 127.0.0.1:<free port> serving the sample records."""

    def __init__(self, samples: Path, slow_s: float = 1.0) -> None:
        self.records = {k: copy.deepcopy(v) for k, v in load_sample_records(samples).items()}
        self.states = sorted({state_of(cs, r) for (cs, _), r in self.records.items()} | {"New York"})
        self.slow_s = slow_s
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []
        self.fail_once: dict[str, list[str]] = {}
        self.not_found: set[str] = set()
        self.hidden: set[tuple[str, int]] = set()
        self.minimal_projection_sets = {"UnclaimedPersons"}
        self.images: dict[str, tuple[bytes, str]] = {}
        self.crop_keys: dict[str, Path] = {}
        self._build_images(samples)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # silence stderr
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET", b"")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                server._handle(self, "POST", self.rfile.read(n))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api"

    def start(self) -> NamusTestServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    # ------------------------------------------------------------------ data

    def _build_images(self, samples: Path) -> None:
        crops: dict[tuple[str, int], list[Path]] = {}
        for f in sorted((samples / "face_crops").glob("*/namus*-face*.jpg")):
            cid = int(f.name[len("namus"):].split("-")[0])
            crops.setdefault((f.parent.name, cid), []).append(f)
        for (cs, cid), rec in self.records.items():
            faces = [i for i in rec.get("images", []) if i["category"]["name"] in FACE_CATEGORIES]
            own = crops.get((cs, cid), [])
            for n, img in enumerate(rec.get("images", [])):
                orig = img["files"]["original"]
                key = orig["storageKey"]
                if img in faces and faces.index(img) < len(own):
                    path = own[faces.index(img)]
                    self.images[orig["href"]] = (path.read_bytes(), "image/jpeg")
                    self.crop_keys[key] = path
                else:
                    fmt = ".png" if "png" in orig["mimeType"] else ".jpg"
                    self.images[orig["href"]] = (synthetic_image(zlib.crc32(key.encode()) + n, fmt), orig["mimeType"])

    def requests(
        self, method: str | None = None, contains: str = "", path: str | None = None
    ) -> list[tuple[str, str, str]]:
        """Logged (method, path, User-Agent) filtered by method, path substring or exact path."""
        with self.lock:
            return [r for r in self.log if (method is None or r[0] == method) and contains in r[1]
                    and (path is None or r[1] == path)]

    def inject(self, path: str, *kinds: str) -> None:
        with self.lock:
            self.fail_once.setdefault(path, []).extend(kinds)

    # ------------------------------------------------------------------ handling

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _json(self, h: BaseHTTPRequestHandler, value: Any, status: int = 200) -> None:
        self._send(h, status, json.dumps(value).encode("utf-8"))

    def _handle(self, h: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.log.append((method, path, h.headers.get("User-Agent", "")))
            pending = self.fail_once.get(path)
            failure = pending.pop(0) if pending else None
            missing = path in self.not_found
        if failure == "429":
            try:
                h.send_response(429)
                h.send_header("Retry-After", "0")
                h.send_header("Content-Length", "0")
                h.end_headers()
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if failure == "503":
            self._send(h, 503, b"Service Unavailable", "text/plain")
            return
        if failure == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            return
        if failure == "timeout":
            time.sleep(self.slow_s)
        if missing:
            self._send(h, 404, b'{"message":"not found"}')
            return
        parts = path.strip("/").split("/")
        # api CaseSets NamUs ...
        if parts[:3] != ["api", "CaseSets", "NamUs"]:
            self._send(h, 404, b"{}")
            return
        rest = parts[3:]
        if method == "GET" and rest == ["States"]:
            self._json(h, [{"name": s, "displayName": s[:2].upper()} for s in self.states])
        elif method == "POST" and len(rest) == 2 and rest[0] in SET_NAMES and rest[1] == "Search":
            self._search(h, rest[0], body)
        elif method == "GET" and len(rest) == 3 and rest[0] in SET_NAMES and rest[1] == "Cases":
            with self.lock:
                rec = self.records.get((rest[0], int(rest[2]))) if rest[2].isdigit() else None
                data = json.dumps(rec).encode("utf-8") if rec is not None else None
            if data is None:
                self._send(h, 404, b'{"message":"not found"}')
            else:
                self._send(h, 200, data)
        elif method == "GET" and path in self.images:
            data, ctype = self.images[path]
            self._send(h, 200, data, ctype)
        else:
            self._send(h, 404, b"{}")

    def _search(self, h: BaseHTTPRequestHandler, cs: str, body: bytes) -> None:
        req = json.loads(body.decode("utf-8"))
        preds = req.get("predicates") or []
        if (len(preds) != 1 or preds[0].get("field") != STATE_FIELD[cs] or preds[0].get("operator") != "IsIn"
                or not isinstance(preds[0].get("values"), list)):
            self._send(h, 500, b'{"message":"unsupported predicate"}')
            return
        allowed = {"namus2Number"} if cs in self.minimal_projection_sets else {
            "namus2Number", "idFormatted", "modifiedDateTime"}
        projections = req.get("projections") or []
        bad = [p for p in projections if p not in allowed]
        if bad:
            msg = " ".join(f'Invalid field name "{p}".' for p in bad)
            self._json(h, {"message": msg}, 400)
            return
        with self.lock:
            matches = sorted(
                (r for (c, cid), r in self.records.items()
                 if c == cs and (c, cid) not in self.hidden and state_of(c, r) in preds[0]["values"]),
                key=lambda r: r["id"],
            )
            skip, take = int(req.get("skip", 0)), int(req.get("take", 10000))
            page = matches[skip: skip + take] if projections else []
            results = []
            for r in page:
                item: dict[str, Any] = {}
                for p in projections:
                    item[p] = r["id"] if p == "namus2Number" else r[p]
                item["link"] = f"/{cs}/Case#/{r['id']}"
                item["image"] = f"/api/CaseSets/NamUs/{cs}/Cases/{r['id']}/Images/Default/Thumbnail"
                results.append(item)
        self._json(h, {"count": len(matches), "results": results})
