#!/usr/bin/env bash
# Glass-to-HLS latency of SRT ingest beside RTMP ingest, in one run on one origin: two ffmpeg
# publishers of the same live source (720p30 x264 veryfast/zerolatency, 2.5 Mb/s, AAC), one over
# RTMP, one over SRT (MPEG-TS, encrypted, libsrt's default 120 ms latency), each into its own
# room; both rooms' LL-HLS parts are read at once by edge/bench/ll_hls_latency.py (availability
# latency: part received - when its last frame left the encoder, anchored at the room's
# startedAtMs).
#   origin/bench/srt-vs-rtmp-latency.sh [SECONDS]
# Needs: ffmpeg (with libsrt) python3 curl; a release build of the origin.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SECS=${1:-30}
ORIGIN=$ROOT/target/release/streamhub-origin
[ -x "$ORIGIN" ] || (cd "$ROOT" && cargo build --release -p streamhub-origin)
DATA=$(mktemp -d)
OUT=${OUTDIR:-$DATA}
ADMIN_USER=admin ADMIN_PASS=bench-pass-123 "$ORIGIN" --data-dir "$DATA/o" --http 127.0.0.1:3020 \
  --rtmp 127.0.0.1:1935 --srt 127.0.0.1:9000 --cluster 127.0.0.1:4433 --node-id bench-origin \
  --log warn > "$OUT/origin.log" 2>&1 &
O_PID=$!
PIDS="$O_PID"
trap 'kill $PIDS 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:3020/healthz >/dev/null && break; sleep 0.1; done
API=http://127.0.0.1:3020/api/v1
TOKEN=$(curl -sf -X POST $API/auth/login -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-pass-123"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["data"]["token"])')
ingress() {  # ingress TYPE ROOM FIELD
  curl -sf -X POST $API/apps/demo/ingress -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"type\":\"$1\",\"room\":\"$2\"}" \
    | python3 -c "import json,sys;print(json.load(sys.stdin)['data']['$3'])"
}
RTMP_KEY=$(ingress rtmp viartmp streamKey)
SRT_URL=$(ingress srt viasrt url)
publish() {  # publish FORMAT URL
  ffmpeg -hide_banner -nostdin -loglevel error -re \
    -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440:sample_rate=48000 \
    -c:v libx264 -preset veryfast -tune zerolatency -b:v 2500k -maxrate 2500k -bufsize 5000k -g 60 \
    -pix_fmt yuv420p -c:a aac -b:a 128k -f "$1" "$2" > "$OUT/ffmpeg-$1.log" 2>&1 &
  PIDS="$PIDS $!"
}
publish flv "rtmp://127.0.0.1:1935/live/$RTMP_KEY"
publish mpegts "$SRT_URL"
sleep 4
anchor() {  # anchor ROOM -> startedAtMs / 1000
  curl -sf $API/apps/demo/rooms -H "authorization: Bearer $TOKEN" | python3 -c "
import json,sys
for r in json.load(sys.stdin)['data']:
    if r['room'] == '$1': print(r['startedAtMs'] / 1000.0)"
}
A_RTMP=$(anchor viartmp)
A_SRT=$(anchor viasrt)
python3 "$ROOT/edge/bench/ll_hls_latency.py" http://127.0.0.1:3020/hls/demo/viartmp/index.m3u8 "$A_RTMP" "$SECS" > "$OUT/rtmp.json" &
L1=$!
python3 "$ROOT/edge/bench/ll_hls_latency.py" http://127.0.0.1:3020/hls/demo/viasrt/index.m3u8 "$A_SRT" "$SECS" > "$OUT/srt.json" &
L2=$!
wait $L1 $L2
echo "| ingest | parts | availability p50 / p95 / max (ms) | player estimate p50 (ms) |"
echo "|---|---|---|---|"
for p in rtmp srt; do
  python3 -c "
import json
r = json.load(open('$OUT/$p.json'))
print(f\"| $p | {r['parts']} | {r['availability_latency_ms_p50']} / {r['availability_latency_ms_p95']} / {r['availability_latency_ms_max']} | {r['player_latency_est_ms_p50']} |\")"
done
