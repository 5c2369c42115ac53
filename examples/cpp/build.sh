#!/usr/bin/env bash
# Build the C++ caller against the installed torch wheel, no CUDA toolkit needed.
#   bash examples/cpp/build.sh [OUTPUT]     (default: examples/cpp/deploycam_cam)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/deploycam_cam}"
py="${PYTHON:-python}"
T="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
mkdir -p "$(dirname "$out")"
abi="$("$py" -c 'import torch; print(int(torch.compiled_with_cxx11_abi()))')"
"${CXX:-g++}" -std=c++20 -O1 -D_GLIBCXX_USE_CXX11_ABI="$abi" \
  -I"$T/include" -I"$T/include/torch/csrc/api/include" \
  "$here/main.cpp" -o "$out" \
  -L"$T/lib" -ltorch_cpu -lc10 -Wl,-rpath,"$T/lib"
echo "built $out"
