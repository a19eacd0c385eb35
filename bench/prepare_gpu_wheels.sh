#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels that bench/gpu_check.sh installs on a GPU
# machine that reaches no registry (Python 3.12, manylinux x86_64). They land in the repo's
# git-ignored .whl/ folder, which a device call carries:
#   .whl/*.whl        always installed there: the FSQ peer (vector-quantize-pytorch) and its
#                     pure-python needs that the GPU image lacks, expecttest, and the sink
#                     attention peer FlashInfer with apache-tvm-ffi
#   .whl/build/*.whl  installed there only if scikit-build-core / ninja / hypothesis are missing
#                     (the image normally has them)
#   .whl/sdist/       the causal-conv1d source release (the conv peer), which gpu_check.sh builds
#                     there for sm_90 (it ships no wheels on PyPI)
# Usage: bash bench/prepare_gpu_wheels.sh      (from anywhere; about 23 MB in all: a device call
# carries at most 64 MiB)
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
# The sink-attention decode peer (bench/bench_sink_attention_gpu.py): FlashInfer, pure Python; it
# JIT-compiles its kernels with the machine's nvcc at first use (0.6.18.post1's batch decode
# sources compiled with nvcc 13.0 for sm_90a on a machine without a GPU; not yet linked or run on
# one). Of its declared needs, the image lacks only
# apache-tvm-ffi (the JIT modules' runtime); the others (cuda-python, cuda-tile, nccl4py,
# nvidia-cudnn-frontend, nvidia-cutlass-dsl) serve paths the bench does not take and `import
# flashinfer` does not load. 0.6.18.post1: 18 MB (0.7.x: 33-62 MB, too big to carry).
download .whl flashinfer-python==0.6.18.post1 apache-tvm-ffi==0.1.15.post2
download .whl/build \
  scikit-build-core==0.11.6 pathspec==0.12.1 packaging==25.0 ninja==1.13.0 \
  hypothesis==6.140.2 attrs==25.3.0 sortedcontainers==2.4.0

# `pip download` of an sdist runs its setup.py (which needs a CUDA torch), so fetch the file itself,
# pinned and checked against PyPI's sha256.
"$PY" - <<'PYEOF'
import hashlib, json, os, urllib.request
name, version = "causal-conv1d", "1.7.0"
meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json"))
(sdist,) = [u for u in meta["releases"][version] if u["packagetype"] == "sdist"]
data = urllib.request.urlopen(sdist["url"]).read()
assert hashlib.sha256(data).hexdigest() == sdist["digests"]["sha256"], "causal-conv1d sdist: sha256 mismatch"
os.makedirs(".whl/sdist", exist_ok=True)
with open(os.path.join(".whl/sdist", sdist["filename"]), "wb") as f:
    f.write(data)
PYEOF

ls -la .whl .whl/build .whl/sdist
du -sh .whl
