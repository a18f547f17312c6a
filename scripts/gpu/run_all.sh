#!/usr/bin/env bash
# The combined GPU session (device tool).
#   bash scripts/gpu/run_all.sh all      # one call: both default models train at once for $TRAIN_MINUTES,
#                                        # export + evaluate, then the generator benchmarks one at a time
#   bash scripts/gpu/metrics.sh          # a second call (carry .gpu/metrics): FID extraction precision/speed
# Carry for `all`: .whl (Python 3.12 wheels: pydantic, pydantic-settings, diffusers, ...) and .gpu/data (NIH 64 px).
# Everything is written to $OUT as it finishes (≤ 8 files, each ≤ 16 MB), so a timeout still returns results.
set -u
START=$(date +%s); DEADLINE=$((START + ${BUDGET_S:-575}))
left() { echo $(( DEADLINE - $(date +%s) )); }
export PYTHONUNBUFFERED=1 TRAIN_MINUTES=${TRAIN_MINUTES:-4}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" SYNTHRAD_HOME=/tmp/synthrad-home DATA="$PWD/.gpu/data/nih-chestxray14-64"
export PY=python3 PYTHON=python3
R=/tmp/res; mkdir -p "$R"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u;
  python3 -m services.generator.backends; } > "$R/gpu.txt" 2>&1
cat "$R/gpu.txt"
( SG2_MINUTES=$TRAIN_MINUTES SG2_BENCH=none SG2_QUALITY=0 OUT=$R bash scripts/gpu/stylegan2.sh > "$R/stylegan2.log" 2>&1 ) &
( OUT=$R bash scripts/gpu/diffusion.sh train > "$R/diffusion.log" 2>&1 ) &
wait
echo "== training done after $(( $(date +%s) - START )) s"; tail -n 12 "$R"/*.log
(cd "$R" && tar czf /tmp/train-results.tgz --exclude='checkpoint.pt' . && split -b 15m /tmp/train-results.tgz "$OUT/train-results.tgz.part-")
t=$(( $(left) - 200 )); [ $t -gt 240 ] && t=240
if [ $t -gt 30 ]; then
  echo "== stylegan2 bench (timeout ${t}s)"
  timeout $t python3 benchmarks/bench_generator.py --device cuda --arch cxr64 --batch-sizes 64 \
      --variants eager,compile-fp16cl --seconds 2 --check --json "$OUT/bench_stylegan2_gpu.json" 2>&1 | grep -v -i warn | tail -n 8
  t=$(( $(left) - 130 )); [ $t -gt 150 ] && t=150
  [ $t -gt 30 ] && timeout $t python3 benchmarks/bench_generator.py --device cuda --arch f256 --batch-sizes 64 \
      --variants eager,compile-fp16cl --seconds 3 --json "$OUT/bench_stylegan2_f256_gpu.json" 2>&1 | grep -v -i warn | tail -n 8
fi
t=$(( $(left) - 10 )); [ $t -gt 150 ] && t=150
if [ $t -gt 30 ]; then
  echo "== diffusion bench (timeout ${t}s)"
  timeout $t python3 benchmarks/bench_diffusion.py --device cuda --batch 16 --json "$OUT/bench_diffusion_gpu.json" 2>&1 | tail -n 15
fi
echo "== total $(( $(date +%s) - START )) s"; ls -la "$OUT"
