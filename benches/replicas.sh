#!/usr/bin/env bash
# Intake throughput and dispatch latency on SQLite, on PostgreSQL with one
# replica, and on PostgreSQL with two replicas, in the same run, with the
# same load: signed 22 KB pull_request.opened deliveries, each with a new
# delivery id, 16 connections in total (wrk; with two replicas, two wrk
# processes of 8 connections, one per replica).
#
# Intake throughput: wrk's requests per second (each answer waits for the
# delivery's commit). Dispatch latency: per delivery, from `received_at`
# (intake) to `finished_at` (the dispatcher handled it), read from the
# database after the run. Workflows start nothing, so the figure is intake
# plus dispatch.
#
# PostgreSQL: a throwaway server from scripts/with-postgres.sh (defaults:
# fsync on, synchronous_commit on), same machine.
#
# Usage: bash benches/replicas.sh [seconds per run, default 10]
# Needs: wrk, python3, PostgreSQL server binaries (or root + apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TEST_DATABASE_URL:-}" ]; then
  exec bash scripts/with-postgres.sh bash "$0" "$@"
fi

DURATION=${1:-10}
SECRET=bench-secret
BODY=tests/fixtures/webhooks/pull_request.opened.json
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin taskmaster
BIN=target/release/taskmaster

SIGNATURE=$(python3 - "$SECRET" "$BODY" <<'PY'
import hmac, hashlib, sys
print("sha256=" + hmac.new(sys.argv[1].encode(), open(sys.argv[2], "rb").read(), hashlib.sha256).hexdigest())
PY
)
export BODY_FILE=$BODY SIGNATURE EVENT=pull_request
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
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

wait_port() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

serve() { # $1 = port, $2 = DATABASE_URL, $3 = log
  GITHUB_WEBHOOK_SECRET=$SECRET HOST=127.0.0.1 PORT=$1 DATABASE_URL="$2" \
    TASKMASTER_WORKFLOWS="$WORK/workflows" LOG_FORMAT=json RUST_LOG=warn \
    "$BIN" serve >"$3" 2>&1 &
  wait_port "$1"
}

wrk_json() { # $1 = port, $2 = connections, $3 = run id
  RUN_ID=$3 wrk -t1 -c"$2" -d"${DURATION}s" --latency -s benches/webhook.lua \
    "http://127.0.0.1:$1" | tail -n 1
}

schema_url() { # a fresh schema in the test database
  psql "$TEST_DATABASE_URL" -qc "CREATE SCHEMA $1" >/dev/null
  echo "${TEST_DATABASE_URL}?options=-c%20search_path%3D$1"
}

report() { # $1 = label, $2.. = wrk JSON lines; then the latency query's output on stdin
  python3 -c '
import json, sys
label, runs = sys.argv[1], [json.loads(x) for x in sys.argv[2:]]
lat = sys.stdin.read().split()
rps = sum(r["rps"] for r in runs)
acked = sum(r["requests"] - r["non2xx"] - r["errors"] for r in runs)
p50 = max(r["p50_ms"] for r in runs); p99 = max(r["p99_ms"] for r in runs)
print(f"| {label} | {rps:,.0f} | {p50:.2f} / {p99:.2f} | {lat[1]} / {lat[2]} / {lat[3]} | {acked:,} | {lat[0]} |")
' "$@"
}

echo "payload $(wc -c <"$BODY") bytes; 16 connections in total; ${DURATION}s per run; $(nproc) cores"
echo "| setup | intake req/s | answer p50 / p99 ms | dispatch latency p50 / p99 / max ms | acknowledged | rows |"
echo "| --- | --- | --- | --- | --- | --- |"

# 1. SQLite, one process.
serve 3990 "sqlite://$WORK/bench.db" "$WORK/sqlite.log"; PID=$!
R=$(wrk_json 3990 16 "sqlite-$$")
sleep 2; kill -TERM $PID; wait $PID
python3 - "$WORK/bench.db" <<'PY' | report "SQLite, 1 process" "$R"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("select count(*) from deliveries").fetchone()[0]
lat = sorted(r[0] for r in db.execute("select finished_at - received_at from deliveries where finished_at is not null"))
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else -1
print(rows, q(0.5), q(0.99), lat[-1] if lat else -1)
PY

PG_LAT="SELECT COUNT(*), \
  COALESCE(percentile_disc(0.5) WITHIN GROUP (ORDER BY finished_at - received_at), -1), \
  COALESCE(percentile_disc(0.99) WITHIN GROUP (ORDER BY finished_at - received_at), -1), \
  COALESCE(MAX(finished_at - received_at), -1) FROM deliveries"

# 2. PostgreSQL, one replica.
URL=$(schema_url bench_one)
serve 3991 "$URL" "$WORK/pg1.log"; PID=$!
R=$(wrk_json 3991 16 "pg1-$$")
sleep 2; kill -TERM $PID; wait $PID
psql "$URL" -tA -F' ' -c "$PG_LAT" | report "PostgreSQL, 1 replica" "$R"

# 3. PostgreSQL, two replicas, 8 connections each.
URL=$(schema_url bench_two)
serve 3992 "$URL" "$WORK/pg2a.log"; PID_A=$!
serve 3993 "$URL" "$WORK/pg2b.log"; PID_B=$!
wrk_json 3992 8 "pg2a-$$" >"$WORK/a.json" &
W_A=$!
wrk_json 3993 8 "pg2b-$$" >"$WORK/b.json" &
W_B=$!
wait $W_A $W_B
sleep 2; kill -TERM $PID_A $PID_B; wait $PID_A $PID_B
psql "$URL" -tA -F' ' -c "$PG_LAT" | report "PostgreSQL, 2 replicas" "$(cat "$WORK/a.json")" "$(cat "$WORK/b.json")"
