"""A real RTSP camera on loopback (GStreamer's RTSP server in a child process), for soak tests."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from namus_edge_testing.mosquitto import free_port

SCRIPT = Path(__file__).with_name("gst_rtsp_serve.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def gst_rtsp_available() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return ("GStreamer RTSP server bindings missing: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                "gstreamer1.0-plugins-good (" + probe.stderr.strip().splitlines()[-1] + ")")
    return None


class RtspCamera:
    """``rtsp://127.0.0.1:<port>/cam``: a live 320x240 test pattern over RTP/JPEG."""

    def __init__(self, fps: int = 10) -> None:
        self.port = free_port()
        self.fps = fps
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout: float = 20.0) -> RtspCamera:
        why = gst_rtsp_available()
        if why:
            pytest.fail(why)  # required, never skipped (.ci/run installs it)
        self._proc = subprocess.Popen([SYSTEM_PYTHON, str(SCRIPT), str(self.port), str(self.fps)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self._proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"RTSP server did not start on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

