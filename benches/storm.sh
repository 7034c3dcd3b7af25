#!/usr/bin/env bash
# The PR storm benchmark (issue #23; figures in benches/README.md, "PR storm").
#
# Each delivery is a signed pull_request.opened of a different pull request
# (number, head commit, title) across 50 repositories; GitHub is the test
# suite's stateful fake on loopback answering 50 ms late; agents are the
# AgentAPI stand-in answering each turn in 1 s (examples/storm_bench.rs says
# exactly what runs). In one run, alternating, ROUNDS times:
#   idle    taskmaster with a workflow set no delivery starts (durable intake)
#   probot  Probot 14 (benches/probot), an app that only receives
#   storm   taskmaster with the shipped workflows (workflows/)
#   memstore  taskmaster's intake path over a store that keeps nothing
#   durable   the same over SQLite with an accept-all dispatcher: durable intake
#             alone (these two bound what any durable design can reach here)
#   journal   durable, behind an append-only intake journal (one fdatasync per
#             group, a mover into SQLite): the design issue #23 asked to measure
#             (JOURNAL_SKIP_MOVE=1 in the environment: the journal alone)
# 16 connections, closed loop, SECONDS each. Then, open loop (a delivery
# every 1/RATE s whatever the answers), the time from each 202 to the run's
# first check run at GitHub, with one installation per repository (GitHub's
# 80 content-creating requests a minute per installation bind) and with one
# installation per pull request (they do not).
#
# Usage: bash benches/storm.sh [SECONDS=10] [ROUNDS=2] [RATE=100]
#        DATABASE_URL=postgres://… bash benches/storm.sh   (the storms on PostgreSQL; use an empty database)
# Needs: node + npm (Probot), cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-10}
ROUNDS=${2:-2}
RATE=${3:-100}
cargo build --release --quiet --bin taskmaster --example storm_bench --example agentapi_standin \
  --example intake_memstore --example hmac_ceiling
if [ ! -x benches/probot/node_modules/.bin/probot ]; then
  (cd benches/probot && npm install --no-audit --no-fund --silent)
fi
BENCH=target/release/examples/storm_bench
DB_ARGS=()
if [ -n "${DATABASE_URL:-}" ]; then DB_ARGS=(--database-url "$DATABASE_URL"); fi

reset_pg() { # an empty database for each taskmaster run on PostgreSQL
  if [ -n "${DATABASE_URL:-}" ]; then
    PGOPTIONS='-c client_min_messages=warning' \
      psql "$DATABASE_URL" -q -c "DROP SCHEMA public CASCADE; CREATE SCHEMA public;" >/dev/null
  fi
}

summary() {
  python3 -c '
import json, sys
d = json.loads(sys.stdin.readline())
keys = ["target", "mode", "rate", "installations", "database", "rps", "p50_ms", "p99_ms", "errors", "refused",
        "first_check_p50_ms", "first_check_p99_ms", "first_check_runs", "first_check_missing", "settled_seconds", "lag_max_during_ms", "lag_max_after_ms",
        "deliveries_stored", "stored_after_load_s",
        "steps_started_per_s", "runs", "runs_finished", "deliveries_not_yet_handled", "peak_rss_mb", "accounted"]
print(json.dumps({k: (round(d[k], 1) if isinstance(d.get(k), float) else d.get(k)) for k in keys if k in d}))
'
}

echo "# $(nproc) cores; ${SECONDS_EACH}s per load; $ROUNDS rounds; open loop at $RATE deliveries/s"
for round in $(seq "$ROUNDS"); do
  for target in idle probot storm memstore durable journal; do
    extra=()
    case $target in idle|storm) reset_pg; extra=("${DB_ARGS[@]}") ;; esac
    "$BENCH" "$target" --seconds "$SECONDS_EACH" --settle 20 "${extra[@]}" | summary
  done
done
reset_pg
"$BENCH" storm --seconds "$SECONDS_EACH" --rate "$RATE" --settle 180 "${DB_ARGS[@]}" | summary
reset_pg
"$BENCH" storm --seconds "$SECONDS_EACH" --rate "$RATE" --installations 1000000 --settle 120 "${DB_ARGS[@]}" | summary
