#!/usr/bin/env python3
"""LL-HLS live latency, measured from the media itself (python3 stdlib only, loopback).

The publisher's timeline is anchored to the wall clock: the origin starts a room's timeline at 0
with its first frame, and ffmpeg (`-re`, a live source) opens its RTMP output first and then
produces the frame of media time t at ANCHOR + t, where ANCHOR is the moment the origin accepted
the publish (`startedAtMs` in `GET /api/v1/apps/:app/rooms`, Unix ms). So a frame's decode time
in the CMAF parts (tfdt + sample durations, 90 kHz) gives the wall-clock time the encoder emitted
it. (ffmpeg's encode of one frame, a few ms at 720p veryfast, is not counted.)

A client then plays the LL-HLS playlist as an LL-HLS player does (blocking reload for the hinted
part, then the part) and, for every part it receives, computes

    availability latency = wall clock at receipt - wall-clock time the part's last frame was emitted

i.e. glass (encoder output) to the moment the part is in the viewer's hands, through RTMP, the
origin's packaging, the QUIC relay and the edge's packaging. A player adds its hold-back on top
(PART-HOLD-BACK, reported too).

  ll_hls_latency.py PLAYLIST_URL ANCHOR [SECONDS]
"""
import json
import re
import statistics
import struct
import sys
import time
import urllib.request


def now():
    return time.time()


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def boxes(buf, start=0, end=None):
    end = len(buf) if end is None else end
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[i:i + 8])
        if size < 8:
            return
        yield kind.decode("latin1"), i + 8, i + size
        i += size


def video_last_ticks(part):
    """Decode time of the last video sample (track 1) of the part: tfdt + the durations before it."""
    end = None
    for kind, a, b in boxes(part):
        if kind != "moof":
            continue
        for k2, a2, b2 in boxes(part, a, b):
            if k2 != "traf":
                continue
            track = base = None
            total = 0
            last = 0
            for k3, a3, b3 in boxes(part, a2, b2):
                if k3 == "tfhd":
                    track = struct.unpack(">I", part[a3 + 4:a3 + 8])[0]
                elif k3 == "tfdt":
                    v = part[a3]
                    base = struct.unpack(">Q", part[a3 + 4:a3 + 12])[0] if v == 1 else \
                        struct.unpack(">I", part[a3 + 4:a3 + 8])[0]
                elif k3 == "trun":
                    flags = int.from_bytes(part[a3 + 1:a3 + 4], "big")
                    count = struct.unpack(">I", part[a3 + 4:a3 + 8])[0]
                    p = a3 + 8 + (4 if flags & 1 else 0) + (4 if flags & 4 else 0)
                    per = sum(4 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
                    for _ in range(count):
                        if flags & 0x100:
                            last = struct.unpack(">I", part[p:p + 4])[0]
                            total += last
                        p += per
            if track == 1 and base is not None:
                end = base + total - last
    return end


def main():
    url = sys.argv[1]
    anchor = float(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30
    base = url.rsplit("/", 1)[0]
    text = get(url).decode()
    hold = None
    lat = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        m = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part-(\d+)\.(\d+)\.m4s"', text)
        if not m:
            time.sleep(0.1)
            text = get(url).decode()
            continue
        msn, idx = int(m.group(1)), int(m.group(2))
        try:
            # The hinted part: the server holds the request until it exists.
            part = get(f"{base}/part-{msn}.{idx}.m4s")
        except Exception:
            part = None
        received = now()
        m = re.search(r"PART-HOLD-BACK=([0-9.]+)", text)
        hold = float(m.group(1)) if m else hold
        if part:
            end = video_last_ticks(part)
            if end is not None:
                lat.append(received - (anchor + end / 90000.0))
        try:
            text = get(f"{url}?_HLS_msn={msn}&_HLS_part={idx + 1}").decode()
        except Exception:
            text = get(url).decode()
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * (len(lat) - 1)))]
    res = {
        "parts": len(lat),
        "availability_latency_ms_p50": round(1000 * pct(0.5)),
        "availability_latency_ms_p95": round(1000 * pct(0.95)),
        "availability_latency_ms_max": round(1000 * lat[-1]),
        "part_hold_back_s": hold,
        "player_latency_est_ms_p50": round(1000 * (pct(0.5) + (hold or 0))),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
