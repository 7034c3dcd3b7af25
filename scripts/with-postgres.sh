#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL server of its own:
#
#   bash scripts/with-postgres.sh cargo test
#
# Installs PostgreSQL from Debian's packages when no server binaries are
# found (root + apt-get only), creates a data directory in a temporary
# directory, starts the server on loopback on a free port (as the `postgres`
# user when run as root: PostgreSQL refuses to run as root), creates the
# database `taskmaster_test`, exports TEST_DATABASE_URL, runs the command,
# and stops the server and removes the data directory when the command ends
# (whatever way it ends). The command's exit status is this script's.
#
# PG_PORT picks the port (default: a free one from 55432 up).
set -euo pipefail

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "with-postgres: installing PostgreSQL from Debian's packages" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      postgresql postgresql-client >/dev/null
    bindir=$(find_bindir)
  else
    echo "with-postgres: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin, and" \
      "cannot install them here (needs root and apt-get)." >&2
    echo "Install PostgreSQL, or point TEST_DATABASE_URL at a server you run." >&2
    exit 1
  fi
fi

# The server must not run as root.
as_pg=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
  as_pg=(runuser -u postgres --)
fi

base=$(mktemp -d /tmp/taskmaster-pg.XXXXXX)
chmod 755 "$base"
[ "$(id -u)" = 0 ] && chown postgres: "$base"
data="$base/data"

port=${PG_PORT:-}
if [ -z "$port" ]; then
  port=55432
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    port=$((port + 1))
  done
fi

stop() {
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$base"
}
trap stop EXIT INT TERM

"${as_pg[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
# Room for tests that run several replicas at once, each with its pool.
"${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -l "$base/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $base -c max_connections=300 -c shared_buffers=128MB" \
  start >/dev/null || { cat "$base/server.log" >&2; exit 1; }
"${as_pg[@]}" "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -q -c "CREATE DATABASE taskmaster_test" >/dev/null

export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/taskmaster_test"
echo "with-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (TEST_DATABASE_URL=$TEST_DATABASE_URL)" >&2

set +e
"$@"
status=$?
set -e
exit $status
