#!/usr/bin/env bash
# Webhook intake benchmark: signed 22 KB pull_request.opened deliveries, each
# with a new delivery id, 16 connections, measured with wrk against
#   1. the ceiling: an axum handler that only verifies the HMAC (examples/hmac_ceiling.rs)
#   2. taskmaster serve: verify, parse, store durably (SQLite, WAL, synchronous=FULL)
# in the same run, on the same machine. Then it checks that every delivery
# taskmaster acknowledged is in the database.
#
# Usage: bash benches/intake.sh [seconds per run, default 15]
#        TASKMASTER_BIN=/path/to/taskmaster bash benches/intake.sh 10   (another build)
#        EVENT=star bash benches/intake.sh 10   (an event stored as ignored: intake without dispatch)
#        DRAIN=1 bash benches/intake.sh 10   (then time the dispatcher emptying the queue)
# Needs: wrk (Debian package `wrk`), sqlite3 is not needed (the count uses taskmaster's own test of rows via python3).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-15}
CONNECTIONS=16
THREADS=2
SECRET=bench-secret
BODY=tests/fixtures/webhooks/pull_request.opened.json
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

cargo build --release --quiet --bin taskmaster --example hmac_ceiling
# TASKMASTER_BIN runs another build (say an older commit's, for an A/B in one session).
BIN=${TASKMASTER_BIN:-target/release/taskmaster}
CEILING=target/release/examples/hmac_ceiling

SIGNATURE=$(python3 - "$SECRET" "$BODY" <<'PY'
import hmac, hashlib, sys
print("sha256=" + hmac.new(sys.argv[1].encode(), open(sys.argv[2], "rb").read(), hashlib.sha256).hexdigest())
PY
)
export BODY_FILE=$BODY SIGNATURE EVENT=${EVENT:-pull_request}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

run_wrk() { # $1 = port, $2 = run id
  RUN_ID=$2 wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s benches/webhook.lua \
    "http://127.0.0.1:$1" | tail -n 1
}

echo "payload: $(wc -c <"$BODY") bytes; $CONNECTIONS connections, $THREADS wrk threads, ${DURATION}s per run; $(nproc) cores"

GITHUB_WEBHOOK_SECRET=$SECRET PORT=3999 "$CEILING" &
CEILING_PID=$!
wait_port 3999
CEILING_RESULT=$(run_wrk 3999 "ceiling-$$")
kill $CEILING_PID; wait $CEILING_PID 2>/dev/null || true
echo "ceiling (HMAC only):        $CEILING_RESULT"

# A workflow set that no pull_request event starts: deliveries are routed to
# no workflow, so the figure is intake plus dispatch, not agents' work.
mkdir -p "$WORK/workflows"
cat >"$WORK/workflows/idle.yml" <<'YML'
name: idle
on:
  issues:
    actions: [transferred]
steps:
  noop:
    agent: command
    with:
      run: ["true"]
YML
GITHUB_WEBHOOK_SECRET=$SECRET HOST=127.0.0.1 PORT=3998 DATABASE_URL="sqlite://$WORK/bench.db" \
  TASKMASTER_WORKFLOWS="$WORK/workflows" \
  LOG_FORMAT=json RUST_LOG=info "$BIN" serve >"$WORK/taskmaster.log" 2>&1 &
TM_PID=$!
wait_port 3998
TM_RESULT=$(run_wrk 3998 "taskmaster-$$")
if [ -n "${DRAIN:-}" ]; then
  # How fast the dispatcher empties the queue the load left (inbox depth
  # from /api/health every 0.1 s, until it is empty or 60 s have passed).
  python3 - <<'PY'
import json, time, urllib.request
def depth():
    inbox = json.load(urllib.request.urlopen("http://127.0.0.1:3998/api/health"))["inbox"]
    return inbox["queued"] + inbox["processing"]
start, first = time.monotonic(), depth()
left = first
while left > 0 and time.monotonic() - start < 60:
    time.sleep(0.1)
    left = depth()
took = time.monotonic() - start
print(f"dispatcher: {first} deliveries queued when the load stopped; {first - left} handled "
      f"in {took:.1f} s ({(first - left) / took:.0f}/s), {left} left")
PY
fi
kill -TERM $TM_PID; wait $TM_PID || { echo "taskmaster did not exit cleanly" >&2; exit 1; }
echo "taskmaster (durable, SQLite): $TM_RESULT"

python3 - "$CEILING_RESULT" "$TM_RESULT" "$WORK/bench.db" <<'PY'
import json, sqlite3, sys
ceiling, tm = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = sqlite3.connect(sys.argv[3]).execute("select count(*) from deliveries").fetchone()[0]
acked = tm["requests"] - tm["non2xx"] - tm["errors"]
print(f"throughput ratio taskmaster/ceiling: {tm['rps'] / ceiling['rps']:.2f}")
print(f"taskmaster p50 {tm['p50_ms']:.2f} ms, p99 {tm['p99_ms']:.2f} ms; ceiling p50 {ceiling['p50_ms']:.2f} ms, p99 {ceiling['p99_ms']:.2f} ms")
print(f"acknowledged (2xx): {acked}; rows in the database after shutdown: {rows}")
# wrk counts requests it completed; a response cut off at the end of the run
# may have been stored without being counted, so rows >= acked.
if rows < acked:
    sys.exit(f"LOST DELIVERIES: {acked - rows}")
PY
