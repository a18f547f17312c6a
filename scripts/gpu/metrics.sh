#!/usr/bin/env bash
# Metrics GPU check (issue 4): FID Inception extraction in fp32 (TF32 off) vs TF32 vs fp16 vs fp16+torch.compile
# vs bf16 — images/s of the extractor and the FID of NIH 64 px train (600) vs valid (200) with each, relative
# difference to fp32. Needs the package's own dependencies there (not pytorch-fid / torch-fidelity).
#
# 1) once, on the dev machine:   bash scripts/gpu/metrics.sh --prepare
#    writes .gpu/metrics/fid_inception.int8.pth (22 MB; .gpu/ is git-ignored): the FID weights with conv kernels
#    quantised to int8 per output channel (BN vectors fp32). The 87 MB float32 file cannot travel within the
#    64 MiB working-tree limit beside the repo; every variant below uses the same dequantised weights, so the
#    comparison measures compute precision only (FID values are close to, not equal to, the standard network's).
#    If .gpu/metrics/fid_inception.pth (full float32 pytorch-fid state dict) is carried instead, it is used.
#    Images: .gpu/data/nih-chestxray14-64 (carried by the other GPU scripts) or .gpu/metrics/nih (--prepare-data).
# 2) device run:  run(command="bash scripts/gpu/metrics.sh", carry=[".gpu/metrics", ".gpu/data"], timeout_s=480)
#    result: $OUT/bench_metrics_gpu.json (+ $OUT/bench_metrics_gpu.log). Expected run time ~3-4 min on an H100.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=.gpu/metrics
if [[ "${1:-}" == "--prepare" || "${1:-}" == "--prepare-data" ]]; then
  mkdir -p "$DIR"
  rm -f "$DIR/fid_inception_fp16w.pth"
  .venv/bin/python -m services.metrics.extractors.weights_int8 quantize-fid "$DIR/fid_inception.int8.pth"
  if [[ "${1:-}" == "--prepare-data" || ! -d .gpu/data/nih-chestxray14-64 ]]; then
    SHARED="${SYNTHRAD_SHARED_DATA:-../shared/data}"
    mkdir -p "$DIR/nih" && rm -rf "$DIR/nih/train" "$DIR/nih/valid"
    cp -r "$SHARED/nih-chestxray14-64/train" "$SHARED/nih-chestxray14-64/valid" "$DIR/nih/"
  fi
  du -sh "$DIR"
  exit 0
fi
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -f "$DIR/fid_inception.pth" ]]; then
  W="$DIR/fid_inception.pth"; TRANSPORT="float32"
else
  W=/tmp/fid_inception_dequant.pth; TRANSPORT="int8-per-channel (dequantised)"
  python3 -m services.metrics.extractors.weights_int8 dequantize "$DIR/fid_inception.int8.pth" "$W"
fi
NIH=.gpu/data/nih-chestxray14-64
[[ -d "$NIH/train" ]] || NIH="$DIR/nih"
python3 benchmarks/bench_metrics.py --device cuda --weights "$W" --trust-weights --weights-transport "$TRANSPORT" \
  --real "$NIH/train" --synthetic "$NIH/valid" --n 20000 --batch 500 \
  --out "$OUT/bench_metrics_gpu.json" 2>&1 | tee "$OUT/bench_metrics_gpu.log"
