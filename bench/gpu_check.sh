#!/usr/bin/env bash
# One call on a lent GPU machine (torch with CUDA, nvcc, no network): build flashstream with its
# CUDA kernels, run the tests, build and run the bench/cpp microbenchmarks and the Python
# benchmarks, and leave everything in $OUT (default ./out) in a few files:
#   $OUT/summary.txt     step timings, `flashstream info`, bench/cpp output, benchmark tables
#   $OUT/build.log       the pip (scikit-build-core/CMake) build
#   $OUT/tests.log       pytest
#   $OUT/peers.log       the build of the causal-conv1d peer from its carried sdist
#   $OUT/results.tar.gz  the benchmark JSON + PNG written by this run (one file: a device call
#                        brings back at most 8)
# Wheels the machine lacks travel in the repo's git-ignored .whl/ (bench/prepare_gpu_wheels.sh
# fills it; name .whl in the call's carry). The copy of the tree there has no .git, so pass the
# commit in: FLASHSTREAM_COMMIT=<sha> bash bench/gpu_check.sh
# A device call runs at most 10 minutes, and the whole check takes longer (the build alone takes
# a few), so it runs in steps, one call each while the machine stays warm (an installed build of
# the same commit is reused, not rebuilt):
#   GPU_CHECK_STEPS="build test cpp"  bash bench/gpu_check.sh     # build, pytest, bench/cpp
#   GPU_CHECK_STEPS=bench GPU_CHECK_BENCHES="bench_fsq bench_causal_conv" bash bench/gpu_check.sh
# GPU_CHECK_STEPS defaults to all four steps; GPU_CHECK_BENCHES to every bench/bench_*.py.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1
export FLASHSTREAM_CUDA=ON
export FLASHSTREAM_CUDA_ARCHS=${FLASHSTREAM_CUDA_ARCHS:-90a}
START_MARK=$(mktemp)
failures=()

log() { echo "[gpu_check ${SECONDS}s] $*" | tee -a "$SUMMARY"; }
STEPS=" ${GPU_CHECK_STEPS:-build test cpp bench} "
step() { [[ "$STEPS" == *" $1 "* ]]; }
BENCHES=()
for b in bench/bench_*.py; do
  name=$(basename "$b" .py)
  if [[ -z "${GPU_CHECK_BENCHES:-}" || " $GPU_CHECK_BENCHES " == *" $name "* ]]; then BENCHES+=("$b"); fi
done

# ---- wheels carried in .whl/ -------------------------------------------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  log "installed $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
fi
for mod in scikit_build_core ninja hypothesis; do
  if ! python3 -c "import $mod" 2>/dev/null; then
    if compgen -G ".whl/build/*.whl" >/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/build/*.whl
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      export PATH=/tmp/site/bin:$PATH
      log "$mod missing: installed .whl/build/*.whl into /tmp/site"
      break
    fi
    log "WARNING: $mod not importable and no .whl/build wheels carried"
  fi
done

# ---- build the extension with CUDA (reused when this machine already installed this commit) -----
installed_here() {
  (cd /tmp && python3 -c "import sys, flashstream._C as C; sys.exit(not (C.with_cuda and C.git_commit == sys.argv[1]))" \
    "${FLASHSTREAM_COMMIT:-unknown}") 2>/dev/null
}
if step build || ! installed_here; then
  log "building flashstream (FLASHSTREAM_CUDA=ON, archs $FLASHSTREAM_CUDA_ARCHS)"
  if ! python3 -m pip install --no-build-isolation --no-deps -v . >"$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"
    log "BUILD FAILED (see build.log)"
    exit 1
  fi
  grep -h -- "-- flashstream:" "$OUT/build.log" | sed 's/^ *-- //' | tee -a "$SUMMARY" || true
  log "build done"
else
  log "flashstream ${FLASHSTREAM_COMMIT:-} with CUDA already installed here: not rebuilt"
fi

# ---- the causal-conv1d peer, built from its sdist for sm_90 while the tests run -----------------
# Its setup.py hard-codes nine archs; keeping sm_90 alone cuts the build to a few minutes.
PEER_PID=
if ! step bench || [[ " ${BENCHES[*]} " != *"bench_causal_conv.py"* ]]; then
  :  # no conv bench in this call
elif python3 -c "import causal_conv1d" 2>/dev/null; then
  log "causal-conv1d peer already importable"
elif compgen -G ".whl/sdist/causal_conv1d-*.tar.gz" >/dev/null; then
  (
    set -e
    rm -rf /tmp/peer-src && mkdir -p /tmp/peer-src && tar -xzf .whl/sdist/causal_conv1d-*.tar.gz -C /tmp/peer-src
    src=$(echo /tmp/peer-src/causal_conv1d-*)
    python3 - "$src/setup.py" <<'PYEOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
pair = re.compile(r'^([ \t]*)cc_flag\.append\("-gencode"\)\n[ \t]*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)', re.M)
text, n = pair.subn(lambda m: m.group(0) if m.group(2) == "90" else m.group(1) + "pass", text)
assert n > 0, "causal-conv1d setup.py: no -gencode pairs found"
open(path, "w").write(text)
PYEOF
    CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=8 python3 -m pip install --no-build-isolation --no-deps --no-index \
      --target /tmp/site -v "$src"
  ) >"$OUT/peers.log" 2>&1 &
  PEER_PID=$!
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  log "building the causal-conv1d peer in the background (log in peers.log)"
else
  log "no .whl/sdist/causal_conv1d-*.tar.gz carried: the conv bench runs without that peer"
fi

# Run everything below from outside the source tree's python/ so the installed package is used.
if ! { echo; python3 -m flashstream info; echo; } 2>&1 | tee -a "$SUMMARY"; then failures+=("info"); fi

# ---- tests -------------------------------------------------------------------------------------
if step test; then
  log "pytest"
  if ! timeout 360 python3 -m pytest -q tests >"$OUT/tests.log" 2>&1; then
    failures+=("tests")
  fi
  tail -5 "$OUT/tests.log" | tee -a "$SUMMARY"
  log "pytest done"
fi

# ---- bench/cpp microbenchmarks -----------------------------------------------------------------
BDIR=/tmp/fs-bench-build
if ! step cpp; then
  :
elif log "building bench/cpp targets" && cmake -S . -B "$BDIR" -G Ninja -DPython_EXECUTABLE="$(command -v python3)" -DFLASHSTREAM_CUDA=ON \
     -DFLASHSTREAM_CUDA_ARCHS="$FLASHSTREAM_CUDA_ARCHS" >>"$OUT/build.log" 2>&1; then
  for src in bench/cpp/*.cu; do
    name=$(basename "$src" .cu)
    if cmake --build "$BDIR" --target "$name" >>"$OUT/build.log" 2>&1; then
      log "running $name"
      if ! "$BDIR/$name" 2>&1 | tee -a "$SUMMARY"; then failures+=("$name"); fi
    else
      log "$name: build FAILED (see build.log)"
      failures+=("$name-build")
    fi
  done
else
  log "cmake configure for bench/cpp FAILED (see build.log)"
  failures+=("bench-cpp-configure")
fi

# ---- Python benchmarks -------------------------------------------------------------------------
if [[ -n "$PEER_PID" ]]; then
  if wait "$PEER_PID"; then log "causal-conv1d peer built"; else log "causal-conv1d peer build FAILED (see peers.log)"; failures+=("peer-build"); fi
fi
if step bench; then
  for b in "${BENCHES[@]}"; do
    log "running $b --device cuda"
    if ! timeout 300 python3 "$b" --device cuda 2>&1 | tee -a "$SUMMARY"; then failures+=("$(basename "$b")"); fi
  done
fi

new_results=$(cd bench/results && find . -maxdepth 1 -newer "$START_MARK" \( -name '*.json' -o -name '*.png' \) | sort)
rm -f "$START_MARK"
if [[ -n "$new_results" ]]; then
  # shellcheck disable=SC2086  # one name per word
  tar -czf "$OUT/results.tar.gz" -C bench/results $new_results
fi
log "results: $(echo $new_results)"
if ((${#failures[@]})); then
  log "FAILED: ${failures[*]}"
  exit 1
fi
log "all steps passed"
