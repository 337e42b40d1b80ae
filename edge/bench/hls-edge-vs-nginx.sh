#!/usr/bin/env bash
# HLS fan-out from an edge fed over QUIC, beside nginx-rtmp in the same run, with the kit in
# ../shared/bench; then LL-HLS live latency through origin -> QUIC -> edge.
#   edge/bench/hls-edge-vs-nginx.sh ["200 1000"]
# Needs: nginx-light libnginx-mod-rtmp ffmpeg python3 curl; release builds of both binaries.
# Env: DUR (fan-out seconds per N, default 30), KIT, OUTDIR, LL (also run the edge with LL-HLS
# advertised, default 1).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${KIT:-$ROOT/../shared/bench}
NS=${1:-"200 1000"}
export DUR=${DUR:-30}
export OUTDIR=${OUTDIR:-${TMPDIR:-/tmp}/streamhub-bench/edge-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUTDIR"
ORIGIN=$ROOT/target/release/streamhub-origin
EDGE=$ROOT/target/release/streamhub-edge
[ -x "$ORIGIN" ] && [ -x "$EDGE" ] || (cd "$ROOT" && cargo build --release -p streamhub-origin -p streamhub-edge)

echo "== baseline: nginx-rtmp"
NGINX_PID=$("$KIT/nginx-rtmp/start-nginx-rtmp.sh")
trap '"$KIT/nginx-rtmp/stop-nginx-rtmp.sh" >/dev/null 2>&1 || true' EXIT
"$KIT/bench_hls.sh" nginx rtmp://127.0.0.1:1935/live/test http://127.0.0.1:8080/hls/test.m3u8 "$NGINX_PID" "$NS"
"$KIT/nginx-rtmp/stop-nginx-rtmp.sh" >/dev/null 2>&1 || true
trap - EXIT
sleep 2

# origin (ingest) + edge (viewers); only the edge serves the clients.
start_pair() {  # start_pair NAME LL_HLS
  local name=$1 ll=$2
  DATA=$(mktemp -d)
  ADMIN_USER=admin ADMIN_PASS=bench-pass "$ORIGIN" --data-dir "$DATA/o" --http 127.0.0.1:3020 \
    --rtmp 127.0.0.1:1935 --cluster 127.0.0.1:4433 --node-id bench-origin --ll-hls "$ll" --log warn \
    > "$OUTDIR/$name-origin.log" 2>&1 &
  O_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:3020/healthz >/dev/null && break; sleep 0.1; done
  TOKEN=$(curl -sf -X POST http://127.0.0.1:3020/api/v1/auth/login -H 'content-type: application/json' \
    -d '{"username":"admin","password":"bench-pass"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["data"]["token"])')
  KEY=$(curl -sf -X POST http://127.0.0.1:3020/api/v1/apps/demo/ingress -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d '{"type":"rtmp","room":"bench"}' \
    | python3 -c 'import json,sys;print(json.load(sys.stdin)["data"]["streamKey"])')
  JOIN=$(curl -sf -X POST http://127.0.0.1:3020/api/v1/cluster/join-tokens -H "authorization: Bearer $TOKEN" \
    | python3 -c 'import json,sys;print(json.load(sys.stdin)["data"]["token"])')
  "$EDGE" --data-dir "$DATA/e" --http 127.0.0.1:3021 --cluster 127.0.0.1:4434 --node-id bench-edge \
    --join http://127.0.0.1:3020 --join-token "$JOIN" --ll-hls "$ll" --log warn > "$OUTDIR/$name-edge.log" 2>&1 &
  E_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:3021/healthz >/dev/null && break; sleep 0.1; done
  trap 'kill $E_PID $O_PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
}

stop_pair() {
  kill "$E_PID" "$O_PID" 2>/dev/null || true; wait "$E_PID" "$O_PID" 2>/dev/null || true
  rm -rf "$DATA"; trap - EXIT; sleep 2
}

echo "== streamhub: origin + edge over QUIC, plain HLS playlist"
start_pair edge false
"$KIT/bench_hls.sh" edge "rtmp://127.0.0.1:1935/live/$KEY" http://127.0.0.1:3021/hls/demo/bench/index.m3u8 "$E_PID" "$NS"
echo "origin CPU while the edge served (ingest + packaging + relay):"
python3 "$KIT/hlsbench.py" cpu --server-pid "$O_PID" --duration 5 2>/dev/null || true
stop_pair

if [ "${LL:-1}" = 1 ]; then
  echo "== streamhub: origin + edge over QUIC, LL-HLS (clients do blocking reloads and parts)"
  start_pair edge-ll true
  SKIP_STARTUP=1 "$KIT/bench_hls.sh" edge-ll "rtmp://127.0.0.1:1935/live/$KEY" http://127.0.0.1:3021/hls/demo/bench/index.m3u8 "$E_PID" "$NS"
  echo "== LL-HLS live latency (media time anchored to the wall clock at the publisher's start)"
  ffmpeg -hide_banner -nostdin -loglevel error -re -f lavfi -i "testsrc2=size=1280x720:rate=30" \
    -f lavfi -i "sine=frequency=1000:sample_rate=48000" -c:v libx264 -preset veryfast -tune zerolatency \
    -g 60 -b:v 2500k -pix_fmt yuv420p -c:a aac -b:a 128k \
    -f flv "rtmp://127.0.0.1:1935/live/$KEY" > "$OUTDIR/latency-publisher.log" 2>&1 &
  PUB=$!
  python3 "$KIT/hlsbench.py" wait --playlist http://127.0.0.1:3021/hls/demo/bench/index.m3u8 -k 2 --timeout 40 >/dev/null || true
  # The anchor: when the origin accepted the publish (media time 0), in Unix seconds.
  OFFSET=$(curl -sf http://127.0.0.1:3020/api/v1/apps/demo/rooms -H "authorization: Bearer $TOKEN" \
    | python3 -c 'import json,sys;print(json.load(sys.stdin)["data"][0]["startedAtMs"]/1000)')
  python3 "$ROOT/edge/bench/ll_hls_latency.py" http://127.0.0.1:3021/hls/demo/bench/index.m3u8 "$OFFSET" 30 | tee "$OUTDIR/ll-latency-edge.json"
  python3 "$ROOT/edge/bench/ll_hls_latency.py" http://127.0.0.1:3020/hls/demo/bench/index.m3u8 "$OFFSET" 15 | tee "$OUTDIR/ll-latency-origin.json"
  kill -INT $PUB 2>/dev/null || true; wait $PUB 2>/dev/null || true
  stop_pair
fi

echo "== side by side ($OUTDIR)"
python3 "$KIT/summarize.py" "$OUTDIR" nginx edge edge-ll
