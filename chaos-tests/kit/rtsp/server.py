#!/usr/bin/env python3
"""A real RTSP camera stand-in for the tests: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0 + python3-gst-1.0) serving a live H.264 test pattern.

  server.py PORT [MOUNT]      -> rtsp://127.0.0.1:PORT/MOUNT (default /cam)

Prints "ready" on stdout once listening; runs until killed.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

port = sys.argv[1]
mount = sys.argv[2] if len(sys.argv) > 2 else "/cam"
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=25/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=500 "
    "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
# One pipeline per client, as gst-rtsp-server's own test-launch does. A shared media was seen
# stuck answering 503 to every DESCRIBE for 90 s once three pulls described it at the same time
# on a loaded machine (its prepare failed and the failed media stayed shared).
factory.set_shared(False)
server.get_mount_points().add_factory(mount, factory)
if server.attach(None) == 0:
    sys.exit("cannot listen on port " + port)
print("ready", flush=True)
GLib.MainLoop().run()
