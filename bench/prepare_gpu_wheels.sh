#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels that bench/gpu_check.sh installs on a GPU
# machine that reaches no registry (Python 3.12, manylinux x86_64). They land in the repo's
# git-ignored .whl/ folder, which a device call carries:
#   .whl/*.whl        always installed there: the FSQ peer (vector-quantize-pytorch) and its
#                     pure-python needs that the GPU image lacks, plus expecttest
#   .whl/build/*.whl  installed there only if scikit-build-core / ninja / hypothesis are missing
#                     (the image normally has them)
# Usage: bash bench/prepare_gpu_wheels.sh      (from anywhere; total well under 20 MB)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
download() {  # dest NAME==VERSION...
  local dest=$1; shift
  mkdir -p "$dest"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@"
}

download .whl \
  vector-quantize-pytorch==1.32.0 einops==0.8.2 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 \
  torch-einops-utils==0.2.0 expecttest==0.3.0
download .whl/build \
  scikit-build-core==0.11.6 pathspec==0.12.1 packaging==25.0 ninja==1.13.0 \
  hypothesis==6.140.2 attrs==25.3.0 sortedcontainers==2.4.0

ls -la .whl .whl/build
du -sh .whl
