#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine,
# then runs the whole suite on both store backends (SQLite and PostgreSQL).
# Usage: bash scripts/test.sh [cargo test args]
# With TEST_DATABASE_URL set, the PostgreSQL tests use that database;
# otherwise scripts/with-postgres.sh runs a throwaway server for the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# bubblewrap: the `command` agent's hardened/paranoid sandbox is tested for real.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing bubblewrap (sandbox tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "warning: bwrap missing and cannot be installed here; the sandbox test will be skipped" >&2
  fi
fi

# chromium + chromium-driver: the dashboard's browser test (tests/dashboard_browser.rs)
# drives headless Chromium; it fails, never skips, when the browser is missing.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver (dashboard browser test)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "warning: chromium/chromedriver missing and cannot be installed here; the dashboard browser test will fail" >&2
  fi
fi

# git: workspaces are tested against a real git server (`git http-backend`).
if ! command -v git >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing git (workspace tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null
  else
    echo "warning: git missing and cannot be installed here; the workspace tests will fail" >&2
  fi
fi

# pytest and ruff from PyPI: tests/publish.rs reads the JUnit XML of a real
# pytest run and the SARIF of a real ruff run. Installed for the `python3` on
# PATH (which need not be Debian's: pip first, Debian's pip when missing).
python_pip() {
  python3 -m pip install -q --root-user-action=ignore "$@" 2>/dev/null \
    || python3 -m pip install -q --root-user-action=ignore --break-system-packages "$@"
}
if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi
if ! python3 -m pytest --version >/dev/null 2>&1; then
  echo "installing pytest (test-report tests)"
  python_pip pytest || echo "warning: pytest cannot be installed here; the JUnit test will fail" >&2
fi
RUFF_VERSION=0.17.6
if ! python3 -m ruff --version 2>/dev/null | grep -q "$RUFF_VERSION"; then
  echo "installing ruff $RUFF_VERSION (SARIF test)"
  python_pip "ruff==$RUFF_VERSION" || echo "warning: ruff cannot be installed here; the SARIF test will fail" >&2
fi

# The Claude Code CLI from npm: tests/workspaces.rs runs the real CLI against a
# scripted stand-in of the Messages API. Pinned, so CI runs what was tested.
CLAUDE_CODE_VERSION=2.1.332
if ! command -v claude >/dev/null 2>&1 || ! claude --version 2>/dev/null | grep -q "$CLAUDE_CODE_VERSION"; then
  if command -v npm >/dev/null 2>&1; then
    echo "installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION (real agent CLI test)"
    npm install -g --no-fund --no-audit "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >/dev/null
  else
    echo "warning: npm missing; the Claude Code CLI test will fail" >&2
  fi
fi

# The deployment files (Dockerfile, Kubernetes, fly.toml, Caddy, cloudflared):
# linted and validated against their schemas, in seconds. Only for a whole run.
if [ "$#" -eq 0 ]; then
  bash scripts/check-deploy.sh
fi

# PostgreSQL: the store tests run on both backends. Without a server named
# by TEST_DATABASE_URL, start one of our own for the whole run (installed
# from Debian's packages when missing) and stop it at the end.
if [ -n "${TEST_DATABASE_URL:-}" ]; then
  cargo test "$@"
else
  bash scripts/with-postgres.sh cargo test "$@"
fi

# The operator API against its own OpenAPI description (schemathesis, every
# check; a fixed seed, so a failure reproduces). Only for a whole run.
if [ "$#" -eq 0 ]; then
  bash scripts/fuzz-api.sh
fi
