#!/usr/bin/env bash
# Create .venv with the project and its dev tools, and make sure a redis-server binary exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import worker, config, tasks" >/dev/null
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server"
    (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
  else
    echo "redis-server is required: install it (e.g. apt-get install redis-server)" >&2
    exit 1
  fi
fi
