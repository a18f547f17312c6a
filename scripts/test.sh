#!/usr/bin/env bash
# Install synthrad with its test dependencies into .venv and run the whole test suite (slow tests included).
set -euo pipefail
source "$(dirname "$0")/_venv.sh" dev
export RAY_USAGE_STATS_ENABLED=0 PYTHONHASHSEED=0
exec .venv/bin/python -m pytest -ra "$@"
