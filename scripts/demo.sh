#!/usr/bin/env bash
# The main job on a fresh machine: install synthrad into .venv, start the platform on CPU with the
# shipped default model, generate a batch per finding, score it against the shipped real reference,
# print the scores and where the images are, then stop.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
export RAY_USAGE_STATS_ENABLED=0
exec synthrad demo "$@"
