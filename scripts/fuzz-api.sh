#!/usr/bin/env bash
# Fuzzes the operator API against its own OpenAPI description with
# schemathesis (from PyPI, pinned): a live `taskmaster serve` on a throwaway
# SQLite database, an admin token, every check schemathesis has. It fails on
# any finding: a 5xx, a status code the document does not list, a response
# that breaks its schema, a request the document allows that the server
# refuses or one it forbids that the server takes.
#
# Two exclusions, both on purpose:
# * `revoke_token` (DELETE /api/tokens/{name}): the fuzzer would revoke the
#   token it runs with;
# * the `ensure_resource_availability` check: it assumes that what
#   POST /api/tasks creates has a run at GET /api/tasks/{id}/workflow, which
#   answers a documented 404 until a run is linked.
#
# Usage: bash scripts/fuzz-api.sh [path to the taskmaster binary]
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
BIN=${1:-target/debug/taskmaster}
# Through the interpreter (not the `st` script): works wherever pip put it.
st() { python3 -c 'import sys; from schemathesis.cli import schemathesis; sys.argv[0] = "st"; schemathesis()' "$@"; }
if ! st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m pip install -q --root-user-action=ignore "schemathesis==$SCHEMATHESIS_VERSION" 2>/dev/null \
    || python3 -m pip install -q --root-user-action=ignore --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
fi
[ -x "$BIN" ] || cargo build --quiet
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DATABASE_URL="sqlite://$dir/fuzz.db"
token=$("$BIN" token create --role admin --name fuzz | tail -1)
GITHUB_WEBHOOK_SECRET=fuzz TASKMASTER_WORKSPACES=off TASKMASTER_DATA_DIR="$dir/data" \
  "$BIN" serve --host 127.0.0.1 --port "$port" --log error >"$dir/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/api/health" >/dev/null 2>&1 && break
  sleep 0.1
done
st run "http://127.0.0.1:$port/api/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks all --exclude-checks ensure_resource_availability \
  --exclude-operation-id revoke_token \
  --seed 20261206 --max-examples 60 --workers 2 \
  --warnings off
