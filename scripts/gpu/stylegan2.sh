#!/usr/bin/env bash
# StyleGAN2 GPU work for the combined GPU run: train the shipped 64px model for a fixed time budget,
# export EMA weights + descriptor + sample grid, evaluate conditional agreement, benchmark backends.
#
#   OUT=/path/to/out bash scripts/gpu/stylegan2.sh
#
# Env knobs: PY (python, default python), DATA (NIH 64px root; default shared/data/... or ../shared/data/...),
# SG2_MINUTES (training budget, default 6), SG2_BATCH (64), SG2_BENCH (anchor|full|none, default anchor),
# SG2_DEVICE (cuda), SG2_EVAL_N (200 images per condition),
# SG2_KEEP_CKPT=1 keeps the ~130 MB checkpoint.pt under $OUT (default: moved to /tmp to keep $OUT small).
set -uo pipefail
PY=${PY:-python}
: "${OUT:?set OUT}"
if [ -z "${DATA:-}" ]; then
  for d in shared/data/nih-chestxray14-64 ../shared/data/nih-chestxray14-64 /work/shared/data/nih-chestxray14-64; do
    [ -f "$d/labels.csv" ] && DATA=$d && break
  done
fi
: "${DATA:?NIH 64px data not found; set DATA}"
MIN=${SG2_MINUTES:-6}
DEV=${SG2_DEVICE:-cuda}   # SG2_DEVICE=cpu for a dry run of this script without a GPU
EVAL_N=${SG2_EVAL_N:-200}
BATCH=${SG2_BATCH:-64}
RUN=$OUT/stylegan2
mkdir -p "$RUN"
export SYNTHRAD_CACHE_DIR=${SYNTHRAD_CACHE_DIR:-/tmp/synthrad-cache}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

# 1) train (time budget includes data caching; final checkpoint + export are written when it runs out)
$PY -m synthrad.cli.main train stylegan2 --data "$DATA" --layout nih --views PA,AP --split train \
    --resolution 64 --out "$RUN" --device "$DEV" --max-minutes "$MIN" --batch "$BATCH" --kimg 100000 \
    --snap-minutes 2 --no-progress 2>&1 | tail -n 40
rc=$?
if [ ! -f "$RUN/export/stylegan2-cxr64.safetensors" ]; then echo "stylegan2: training/export FAILED (rc=$rc)"; exit 1; fi
cp "$RUN/export/stylegan2-cxr64.safetensors" "$RUN/export/stylegan2-cxr64.json" "$RUN/export/stylegan2-cxr64-samples.png" "$OUT/"
tail -n 3 "$RUN/log.jsonl" || true
if [ "${SG2_KEEP_CKPT:-0}" != "1" ]; then mv "$RUN/checkpoint.pt" /tmp/stylegan2-checkpoint.pt 2>/dev/null || true; fi

# 2) conditional agreement (classifier trained on real NIH train labels; generated vs real held-out)
SYNTHRAD_MODEL_DIRS="$RUN/export" timeout 150 $PY -m synthrad.cli.main models evaluate stylegan2-cxr64 \
    --backend eager --data "$DATA" --layout nih --views PA,AP --device "$DEV" \
    --n-per-condition "$EVAL_N" \
    --json "$OUT/stylegan2_conditioning.json" 2>&1 | tail -n 25 || echo "stylegan2: conditioning eval failed (run it on CPU later)"

# 2b) quality figure: FID/KID (Inception, CXR encoder) of generated vs NIH valid reference, real train as floor
[ "${SG2_QUALITY:-1}" = 1 ] && SYNTHRAD_MODEL_DIRS="$RUN/export" timeout 120 $PY -m services.generator.train.quality \
    --model stylegan2-cxr64 --device "$DEV" --data "$DATA" --n 1000 --json "$OUT/stylegan2_quality.json" 2>&1 \
    | grep -v -i warn | tail -n 5 \
    || echo "stylegan2: quality figure failed (finalize computes it on CPU later)"

# 3) backend benchmark (images/s per backend x batch, ratio vs eager fp32 in the same run)
OUT="$OUT" PY="$PY" bash scripts/gpu/stylegan2_bench.sh
echo "stylegan2: done; files in $OUT (stylegan2-cxr64.*, bench_stylegan2*_gpu.json, stylegan2_conditioning.json, stylegan2_quality.json)"
echo "ship them with: python -m services.generator.train.finalize --from $OUT"
