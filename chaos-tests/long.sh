#!/usr/bin/env bash
# The long chaos mode: every scenario of chaos-tests/ run ROUNDS times (default 10), each round
# with a fresh seed (printed by the test; a failure prints it again with the fault timeline).
#   chaos-tests/long.sh [ROUNDS] [test-name-filter]
# Replay a failing round: CHAOS_SEED=<seed> cargo test -p streamhub-chaos-tests --test <name>
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
FILTER=${2:-}
cargo build -p streamhub-origin -p streamhub-edge
cargo test -p streamhub-chaos-tests --no-run
tests=$(ls chaos-tests/tests/*.rs | xargs -n1 basename | sed 's/\.rs$//' | grep -e "$FILTER")
failed=0
for r in $(seq 1 "$ROUNDS"); do
  for t in $tests; do
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    if CHAOS_SEED=$seed CHAOS_NO_BUILD=1 cargo test -q -p streamhub-chaos-tests --test "$t" > "/tmp/chaos-long-$t-$seed.log" 2>&1; then
      echo "round $r  $t  seed=$seed  ok"
    else
      echo "round $r  $t  seed=$seed  FAILED (log: /tmp/chaos-long-$t-$seed.log)"
      failed=$((failed + 1))
    fi
  done
done
echo "failures: $failed"
[ "$failed" = 0 ]
