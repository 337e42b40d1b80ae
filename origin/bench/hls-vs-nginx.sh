#!/usr/bin/env bash
# Side-by-side HLS benchmark: nginx-rtmp (baseline) and streamhub-origin, same machine, same run,
# same publisher and clients, using the kit in ../shared/bench.
#   origin/bench/hls-vs-nginx.sh ["200 1000"]
# Needs: nginx-light libnginx-mod-rtmp ffmpeg python3 curl; a release build of streamhub-origin.
# Env: DUR (fan-out seconds per N, default 30), KIT (path of the bench kit), OUTDIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${KIT:-$ROOT/../shared/bench}
NS=${1:-"200 1000"}
export DUR=${DUR:-30}
export OUTDIR=${OUTDIR:-${TMPDIR:-/tmp}/streamhub-bench/results-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUTDIR"
BIN=$ROOT/target/release/streamhub-origin
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p streamhub-origin)

echo "== baseline: nginx-rtmp"
NGINX_PID=$("$KIT/nginx-rtmp/start-nginx-rtmp.sh")
trap '"$KIT/nginx-rtmp/stop-nginx-rtmp.sh" >/dev/null 2>&1 || true' EXIT
"$KIT/bench_hls.sh" nginx rtmp://127.0.0.1:1935/live/test http://127.0.0.1:8080/hls/test.m3u8 "$NGINX_PID" "$NS"
"$KIT/nginx-rtmp/stop-nginx-rtmp.sh" >/dev/null 2>&1 || true
trap - EXIT
sleep 2

echo "== streamhub-origin"
DATA=$(mktemp -d)
ADMIN_USER=admin ADMIN_PASS=bench-pass "$BIN" --data-dir "$DATA" --http 127.0.0.1:3020 \
  --rtmp 127.0.0.1:1935 --cluster 127.0.0.1:4433 --node-id bench-origin --log warn > "$OUTDIR/streamhub.log" 2>&1 &
SH_PID=$!
trap 'kill $SH_PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:3020/healthz >/dev/null && break; sleep 0.1; done
TOKEN=$(curl -sf -X POST http://127.0.0.1:3020/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-pass"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["data"]["token"])')
KEY=$(curl -sf -X POST http://127.0.0.1:3020/api/v1/apps/demo/ingress -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"type":"rtmp","room":"bench"}' \
  | python3 -c 'import json,sys;print(json.load(sys.stdin)["data"]["streamKey"])')
"$KIT/bench_hls.sh" streamhub "rtmp://127.0.0.1:1935/live/$KEY" \
  http://127.0.0.1:3020/hls/demo/bench/index.m3u8 "$SH_PID" "$NS"

echo "== side by side ($OUTDIR)"
python3 "$KIT/summarize.py" "$OUTDIR" nginx streamhub
