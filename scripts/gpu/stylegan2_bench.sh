#!/usr/bin/env bash
# StyleGAN2 GPU benchmarks only (images/s per backend x batch, ratio vs eager fp32 in the same run).
#   OUT=/path SG2_BENCH=anchor|full bash scripts/gpu/stylegan2_bench.sh
# anchor (~3-4 min incl. torch.compile warm-ups): shipped 64px arch at batch 64 (eager, compile-fp16cl, onnx if a
# GPU EP exists) + config-f-shaped 256px random-weight generator at batch 64 (eager fp32 vs fp16+channels_last+compile).
set -uo pipefail
PY=${PY:-python}
: "${OUT:?set OUT}"
mkdir -p "$OUT"
case "${SG2_BENCH:-anchor}" in
  none) ;;
  full)
    timeout 240 $PY benchmarks/bench_generator.py --device cuda --arch cxr64 --batch-sizes 1,16,64 --seconds 2 \
        --check --json "$OUT/bench_stylegan2_gpu.json" 2>&1 | grep -v -i warn | tail -n 20
    timeout 240 $PY benchmarks/bench_generator.py --device cuda --arch f256 --batch-sizes 64 \
        --variants eager,eager-fp16cl,compile,compile-fp16cl --seconds 3 --json "$OUT/bench_stylegan2_f256_gpu.json" \
        2>&1 | grep -v -i warn | tail -n 12 ;;
  *)
    timeout 150 $PY benchmarks/bench_generator.py --device cuda --arch cxr64 --batch-sizes 64 \
        --variants eager,compile-fp16cl,onnx --seconds 2 --check --json "$OUT/bench_stylegan2_gpu.json" \
        2>&1 | grep -v -i warn | tail -n 10
    timeout 180 $PY benchmarks/bench_generator.py --device cuda --arch f256 --batch-sizes 64 \
        --variants eager,compile-fp16cl --seconds 3 --json "$OUT/bench_stylegan2_f256_gpu.json" \
        2>&1 | grep -v -i warn | tail -n 10 ;;
esac
