#!/usr/bin/env bash
# Install synthrad with its test dependencies into .venv, the system packages the tests need, and run the whole
# test suite (slow tests included).
set -euo pipefail
source "$(dirname "$0")/_venv.sh" dev
# The reader-study browser test drives Debian's chromium with Playwright (no browser download): install it.
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  export DEBIAN_FRONTEND=noninteractive
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; } \
    || echo "warning: could not install Debian's chromium: tests/e2e/test_study_browser.py will fail" >&2
fi
export RAY_USAGE_STATS_ENABLED=0 PYTHONHASHSEED=0
exec .venv/bin/python -m pytest -ra "$@"
