#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf stubs (services/gateway/stubs/) from protos/synthrad/v1/*.proto.
#
#   scripts/gen_protos.sh                # rewrites services/gateway/stubs/*_pb2*.py, *.pyi
#   scripts/gen_protos.sh --out OUTDIR   # writes them into OUTDIR
#   scripts/gen_protos.sh --check        # exit 1 when the committed stubs are stale
#
# The work is done by `python -m services.gateway.stubs.generate` (grpc_tools.protoc, a dev extra); this script
# only runs it with the project's venv python (or $PYTHON) from the repo root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi
cd "$ROOT"
exec "$PY" -m services.gateway.stubs.generate "$@"
