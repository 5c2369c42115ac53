#!/usr/bin/env bash
# The GPU checks as one prepared run, for a session lent a GPU machine (the device tool runs it in the
# repository root; its image has torch, torchvision, onnxruntime (CPU), pytest; deploycam is used from
# the tree, not installed). Writes env.txt, tests.log, bench.log, bench.json and bench.png under $OUT.
#
#   scripts/gpu_check.sh                 # CUDA tests, then the CUDA bench of resnet50
#   MODELS="resnet50 efficientnet-lite0" scripts/gpu_check.sh   # lite0 needs its wheels carried
#
# The bench times eager Grad-CAM with and without cuda_graphs=True against eager inference, and the
# ONNX Runtime rows where onnxruntime-gpu is present (otherwise they are listed as unavailable).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-gpu-out}
MODELS=${MODELS:-resnet50}
mkdir -p "$OUT"
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, onnxruntime
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
PY
timeout "${TEST_SECONDS:-240}" python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda_graphs.py tests/test_cuda.py \
    2>&1 | tee "$OUT/tests.log"
# shellcheck disable=SC2086  # MODELS is a list
timeout "${BENCH_SECONDS:-240}" python3 -m deploycam.cli bench --device cuda --models $MODELS --batches 1 8 \
    --no-peers --no-memory --rounds 30 --runtimes onnxruntime onnxruntime-graphs eager-graphs --out "$OUT" \
    2>&1 | tee "$OUT/bench.log"
