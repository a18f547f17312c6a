#!/usr/bin/env bash
# The combined GPU session (device tool), in two calls on one warm machine:
#   bash scripts/gpu/run_all.sh train   # both default models train at once for $TRAIN_MINUTES, export, evaluate
#   bash scripts/gpu/run_all.sh bench   # then the GPU benchmarks, one at a time (clean timings)
# Carry: .whl (Python 3.12 wheels: pydantic, pydantic-settings, diffusers, ...), .gpu/data (NIH 64 px copy),
# and for `bench` also .gpu/metrics (FID weights, see scripts/gpu/metrics.sh --prepare).
# Results come back as a few archives in $OUT (the device tool returns at most 8 files).
set -u
PHASE=${1:-train}
export PYTHONUNBUFFERED=1 TRAIN_MINUTES=${TRAIN_MINUTES:-4.5}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" SYNTHRAD_HOME=/tmp/synthrad-home DATA="$PWD/.gpu/data/nih-chestxray14-64"
export PY=python3 PYTHON=python3
R=/tmp/res-$PHASE; mkdir -p "$R"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u;
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"; } > "$R/gpu.txt"
if [ "$PHASE" = train ]; then
  ( SG2_MINUTES=$TRAIN_MINUTES SG2_BENCH=none OUT=$R bash scripts/gpu/stylegan2.sh > "$R/stylegan2.log" 2>&1 ) &
  ( OUT=$R bash scripts/gpu/diffusion.sh train > "$R/diffusion.log" 2>&1 ) &
  wait
  tail -n 15 "$R"/*.log
  (cd "$R" && tar czf "$OUT/train-results.tgz" --exclude='checkpoint.pt' .)
else
  ( OUT=$R SG2_BENCH=anchor bash scripts/gpu/stylegan2_bench.sh > "$R/bench_stylegan2.log" 2>&1 )
  ( OUT=$R bash scripts/gpu/diffusion.sh bench > "$R/bench_diffusion.log" 2>&1 )
  [ -d .gpu/metrics ] && ( OUT=$R bash scripts/gpu/metrics.sh > "$R/bench_metrics.log" 2>&1 )
  tail -n 12 "$R"/*.log
  (cd "$R" && tar czf "$OUT/bench-results.tgz" .)
fi
ls -la "$OUT"
