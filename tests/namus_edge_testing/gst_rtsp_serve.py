"""A real RTSP server on loopback for the tests: GStreamer's gst-rtsp-server (RTP/JPEG, live test pattern).

Run with the system Python that has PyGObject (``/usr/bin/python3``, Debian packages python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good)::

    /usr/bin/python3 gst_rtsp_serve.py PORT [FPS]

serves ``rtsp://127.0.0.1:PORT/cam``. ffmpeg cannot serve RTSP to a client (its ``-rtsp_flags
listen`` is for *receiving* a published stream) and mediamtx is not packaged by Debian, so the
server side is GStreamer's reference RTSP server; the device side is OpenCV's FFmpeg backend,
exactly as with an IP camera.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1]
fps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate={fps}/1 "
    "! jpegenc ! rtpjpegpay name=pay0 pt=96 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
