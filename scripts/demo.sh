#!/usr/bin/env bash
# The demo, end to end: installs the project into .venv, then runs scripts/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m scripts.demo "$@"
