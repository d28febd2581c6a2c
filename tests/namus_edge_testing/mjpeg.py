"""A live MJPEG stream over HTTP on loopback (multipart/x-mixed-replace), read by OpenCV's FFmpeg backend."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import cv2
import numpy as np


class MjpegServer:
    """Serves an endless MJPEG stream at ``/video.mjpg``; stop() cuts live connections too."""

    def __init__(self, fps: float = 50.0, size: tuple[int, int] = (64, 48)) -> None:
        self.fps = fps
        self.size = size
        self.port = self._free_port()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.sent = 0

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def start(self) -> None:
        outer = self
        self._stopping.clear()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                w, h = outer.size
                try:
                    while not outer._stopping.is_set():
                        img = np.full((h, w, 3), (outer.sent * 7) % 256, np.uint8)
                        jpg = cv2.imencode(".jpg", img)[1].tobytes()
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                            + jpg
                            + b"\r\n"
                        )
                        outer.sent += 1
                        time.sleep(1.0 / outer.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
        time.sleep(0.1)  # let handler loops see the flag and close their sockets
