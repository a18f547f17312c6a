#!/usr/bin/env bash
# One GPU window (issue 11): every shipped generator trains at once, continuing its shipped training state,
# for the window's budget minus a margin; the exports come back packed (<= 8 files of <= 15.9 MB) in $OUT.
# Everything here only calls `python -m services.generator.train.window` (see its docstring and docs/training.md).
#
# 1) here, once:   bash scripts/gpu/window.sh --prepare
#    copies the plan's data into .gpu/data (NIH 64 px 6 MB, Kermany 224 px 42 MB) and downloads the Python
#    wheels the GPU image lacks into .whl (both git-ignored; together under the 64 MiB carry limit).
# 2) rehearse here: bash scripts/gpu/window.sh --rehearse     (tiny networks on the CPU, 3 minutes)
# 3) device run:   run(command="MINUTES=13 bash scripts/gpu/window.sh", carry=[".gpu/data", ".whl"], timeout_s=600)
#    (MINUTES is the whole window; with a 10-minute command limit use MINUTES=9.5.)
# 4) back here:    python -m services.generator.train.window unpack <files_at> --to runs/window-N
#                  then the printed `finalize` command per model (evaluation + cards, on the CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  --prepare)
    SHARED="${SYNTHRAD_SHARED_DATA:-../shared/data}"
    mkdir -p .gpu/data/kermany-pneumonia-224 .whl
    rm -rf .gpu/data/nih-chestxray14-64 .gpu/data/kermany-pneumonia-224/train
    cp -r "$SHARED/nih-chestxray14-64" .gpu/data/
    cp -r "$SHARED/kermany-pneumonia-224/train" .gpu/data/kermany-pneumonia-224/
    .venv/bin/python -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 -d .whl \
      diffusers pydantic pydantic-settings pydantic-core safetensors psutil click tqdm huggingface-hub
    du -sh .gpu/data .whl
    exit 0 ;;
  --rehearse)
    exec .venv/bin/python -m services.generator.train.window run --minutes 3 --margin 0.6 --tiny --device cpu \
      --out "${OUT:-/tmp/window-rehearsal}" ;;
esac
OUT="${OUT:?set OUT (the device tool sets it)}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PWD:/tmp/site"
fi
export PYTHONUNBUFFERED=1 SYNTHRAD_HOME=/tmp/synthrad-home
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec python3 -m services.generator.train.window run --minutes "${MINUTES:-13}" --margin "${MARGIN:-1.5}" \
  --data-root .gpu/data --device cuda --out "$OUT" --work /tmp/window
