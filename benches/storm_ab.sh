#!/usr/bin/env bash
# A/B (or A/B/C…) of taskmaster binaries under the PR storm (benches/storm.sh
# says what the storm is): in one run, alternating the binaries (in reverse
# order every other round), ROUNDS times, the idle and storm targets in
# closed loop (16 connections, SECONDS each), Probot once per round for
# scale; then each binary once in open
# loop at RATE deliveries/s with one installation per pull request (time
# from each 202 to its run's first check run). SQLite only.
#
# Usage: [SECONDS=8] [ROUNDS=2] [RATE=100] bash benches/storm_ab.sh BIN_A BIN_B [BIN_C …]
# e.g. the previous commit's binary, built in a worktree:
#   git worktree add /tmp/old HEAD~1 && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target \
#     cargo build --release --bin taskmaster)
#   bash benches/storm_ab.sh /tmp/old-target/release/taskmaster target/release/taskmaster
# The load generator (examples/storm_bench) is built when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -ge 2 ] || { echo "usage: bash benches/storm_ab.sh BIN_A BIN_B [BIN_C …]" >&2; exit 2; }
SECONDS_EACH=${SECONDS_EACH:-8}
ROUNDS=${ROUNDS:-2}
RATE=${RATE:-100}
BENCH=target/release/examples/storm_bench
if [ ! -x "$BENCH" ] || [ ! -x target/release/examples/agentapi_standin ]; then
  cargo build --release --quiet --example storm_bench --example agentapi_standin
fi
if [ ! -x benches/probot/node_modules/.bin/probot ]; then
  (cd benches/probot && npm install --no-audit --no-fund --silent)
fi
label() { python3 -c '
import json, sys
d = json.loads(sys.stdin.readline())
d["binary"] = sys.argv[1]
keys = ["binary", "target", "mode", "rps", "p50_ms", "p99_ms", "errors", "first_check_p50_ms",
        "first_check_p99_ms", "first_check_missing", "settled_seconds", "lag_max_during_ms", "lag_max_after_ms", "steps_started_per_s", "runs",
        "deliveries_not_yet_handled", "peak_rss_mb", "accounted"]
print(json.dumps({k: (round(d[k], 1) if isinstance(d.get(k), float) else d.get(k)) for k in keys if k in d}))
' "$1"; }
echo "# $(nproc) cores; ${SECONDS_EACH}s per load; $ROUNDS rounds; binaries: $*"
# The order flips every round (A B, then B A): a run pays for the disk
# writes the run before it left behind, so a fixed order favours the first.
order=("$@")
for round in $(seq "$ROUNDS"); do
  "$BENCH" probot --seconds "$SECONDS_EACH" | label probot
  for target in idle storm; do
    for bin in "${order[@]}"; do
      TASKMASTER_BIN=$bin "$BENCH" "$target" --seconds "$SECONDS_EACH" --settle 20 | label "$bin"
    done
  done
  reversed=()
  for ((i = ${#order[@]} - 1; i >= 0; i--)); do reversed+=("${order[i]}"); done
  order=("${reversed[@]}")
done
for bin in "$@"; do
  TASKMASTER_BIN=$bin "$BENCH" storm --seconds "$SECONDS_EACH" --rate "$RATE" \
    --installations 1000000 --settle 120 | label "$bin"
done
