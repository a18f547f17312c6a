#!/usr/bin/env bash
# Diffusion part of the combined GPU session (called by scripts/gpu/run_all.sh from the repo root).
#   bash scripts/gpu/diffusion.sh [train|bench|anchors|all]      (default: all = train then bench)
# Env: OUT (results folder, required), DATA (NIH 64px folder), TRAIN_MINUTES (default 6),
#      DDPM_BATCH (default 128), ANCHOR_COMPILE=1 to add the torch.compile anchors (slow: ~2-3 min of compiling).
# Training runs in /tmp/ddpm-run (its checkpoint.pt holds optimizer state, ~130 MB: too big to bring back);
# the exported EMA weights (fp16 safetensors, ~16 MB), descriptor, grids, log and the conditional-agreement
# figures (conditioning.json) are copied/written to $OUT/ddpm/. Ship them later with
#   python -m services.generator.train.finalize --from $OUT/ddpm --model-id ddpm-cxr64 --bench $OUT/bench_diffusion_gpu.json
set -u
PHASE=${1:-all}
: "${OUT:?set OUT}"
DATA=${DATA:-$PWD/.gpu/data/nih-chestxray14-64}
TRAIN_MINUTES=${TRAIN_MINUTES:-6}
RUN=/tmp/ddpm-run
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/ddpm"

if [ "$PHASE" = train ] || [ "$PHASE" = all ]; then
  $PY -m synthrad.cli.train_diffusion --data "$DATA" --layout nih --resolution 64 --views all --split train \
      --out "$RUN" --resume --max-minutes "$TRAIN_MINUTES" --batch "${DDPM_BATCH:-128}" --lr 2e-4 \
      --preset cxr64 --model-id ddpm-cxr64 --grid-every 1000 --ckpt-every 1000 --device cuda --no-progress
  echo "train exit $?"
  cp "$RUN"/ddpm-cxr64.safetensors "$RUN"/ddpm-cxr64.json "$RUN"/ddpm-cxr64-grid.png "$RUN"/log.jsonl "$OUT/ddpm/" 2>/dev/null
  cp -r "$RUN"/grids "$OUT/ddpm/" 2>/dev/null
  # sanity: the exported model loads through its family loader, generates on the GPU, batch-invariant
  $PY -m services.generator.train.check_export --descriptor "$OUT/ddpm/ddpm-cxr64.json" --device cuda
  # model-card figures: conditional agreement (same classifier recipe as the StyleGAN2 card), 200 images/condition
  SYNTHRAD_MODEL_DIRS="$OUT/ddpm" timeout 300 $PY -m synthrad.cli.main models evaluate ddpm-cxr64 \
      --data "$DATA" --layout nih --views PA,AP --device cuda --backend eager --n-per-condition 200 \
      --json "$OUT/ddpm/conditioning.json"
  echo "evaluate exit $?"
  cond=""; [ -f "$OUT/ddpm/conditioning.json" ] && cond="--conditioning $OUT/ddpm/conditioning.json"
  $PY -m services.generator.cards --descriptor "$OUT/ddpm/ddpm-cxr64.json" $cond \
      --samples ddpm-cxr64-grid.png --out "$OUT/ddpm/ddpm-cxr64.md"
fi

if [ "$PHASE" = bench ] || [ "$PHASE" = all ]; then
  timeout 150 $PY benchmarks/bench_diffusion.py --device cuda --batch 16 --json "$OUT/bench_diffusion_gpu.json"
  echo "bench exit $?"
fi

if [ "$PHASE" = anchors ] || [ "${ANCHORS:-0}" = 1 ]; then
  extra=""; [ "${ANCHOR_COMPILE:-0}" = 1 ] && extra="--anchor-compile"
  timeout 300 $PY benchmarks/bench_diffusion.py --device cuda --anchors-only $extra --json "$OUT/bench_diffusion_anchors.json"
  echo "anchors exit $?"
fi
