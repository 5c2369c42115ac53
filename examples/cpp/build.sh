#!/usr/bin/env bash
# Build the C++ callers against the installed torch wheel, no CUDA toolkit needed.
#   bash examples/cpp/build.sh [OUTPUT]   (default: examples/cpp/deploycam_cam)
# builds OUTPUT (TorchScript: main.cpp) and OUTPUT's folder/deploycam_aoti (AOTInductor: aoti_main.cpp).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/deploycam_cam}"
py="${PYTHON:-python}"
T="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
mkdir -p "$(dirname "$out")"
abi="$("$py" -c 'import torch; print(int(torch.compiled_with_cxx11_abi()))')"
build() {
  "${CXX:-g++}" -std=c++20 -O1 -D_GLIBCXX_USE_CXX11_ABI="$abi" \
    -I"$T/include" -I"$T/include/torch/csrc/api/include" \
    "$1" -o "$2" \
    -L"$T/lib" -ltorch -ltorch_cpu -lc10 -Wl,-rpath,"$T/lib"
  echo "built $2"
}
build "$here/main.cpp" "$out" & first=$!
build "$here/aoti_main.cpp" "$(dirname "$out")/deploycam_aoti" & second=$!
status=0
wait "$first" || status=1
wait "$second" || status=1
exit "$status"
