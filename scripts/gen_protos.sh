#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf stubs under synthrad/v1/ from protos/synthrad/v1/*.proto.
#
#   scripts/gen_protos.sh            # writes into the repo (synthrad/v1/*_pb2*.py, *.pyi)
#   scripts/gen_protos.sh OUTDIR     # writes into OUTDIR/synthrad/v1/ (the freshness test uses this)
#
# Run from anywhere; uses the project's venv python when present (needs grpcio-tools, a dev extra).
# The stubs import as `synthrad.v1.*` (package-relative to the repo root), no sys.path tricks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi
mkdir -p "$OUT/synthrad/v1"
cd "$ROOT"
# Relative proto paths keep the generated files independent of where the repo lives.
"$PY" -m grpc_tools.protoc -Iprotos \
  --python_out="$OUT" --grpc_python_out="$OUT" --pyi_out="$OUT" \
  protos/synthrad/v1/common.proto protos/synthrad/v1/generator.proto \
  protos/synthrad/v1/batch.proto protos/synthrad/v1/metrics.proto
if [[ ! -f "$OUT/synthrad/v1/__init__.py" ]]; then
  printf '"""Generated protobuf/gRPC stubs of the synthrad v1 API (see protos/synthrad/v1; regenerate with scripts/gen_protos.sh)."""\n' > "$OUT/synthrad/v1/__init__.py"
fi
