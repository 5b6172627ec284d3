#!/usr/bin/env bash
# The test suite: lint, then every test (unit + integration against real Redis, real Celery
# workers and the TikTok emulator, including the slow chaos tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
