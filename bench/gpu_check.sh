#!/usr/bin/env bash
# One call on a lent GPU machine (torch with CUDA, nvcc, no network): build flashstream with its
# CUDA kernels, run the tests, build and run the bench/cpp microbenchmarks and the Python
# benchmarks, and leave everything in $OUT (default ./out) in a few files:
#   $OUT/summary.txt     step timings, `flashstream info`, bench/cpp output, benchmark tables
#   $OUT/build.log       the pip (scikit-build-core/CMake) build
#   $OUT/tests.log       pytest
#   $OUT/results/        the benchmark JSON + PNG written by this run
# Wheels the machine lacks travel in the repo's git-ignored .whl/ (bench/prepare_gpu_wheels.sh
# fills it; name .whl in the call's carry). The copy of the tree there has no .git, so pass the
# commit in: FLASHSTREAM_COMMIT=<sha> bash bench/gpu_check.sh
# Budget: about 5-9 minutes on an H100 machine with 16 cores (CUDA arch limited to 90a).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/out}
mkdir -p "$OUT/results"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1
export FLASHSTREAM_CUDA=ON
export FLASHSTREAM_CUDA_ARCHS=${FLASHSTREAM_CUDA_ARCHS:-90a}
START_MARK=$(mktemp)
failures=()

log() { echo "[gpu_check ${SECONDS}s] $*" | tee -a "$SUMMARY"; }

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

# ---- build the extension with CUDA -------------------------------------------------------------
log "building flashstream (FLASHSTREAM_CUDA=ON, archs $FLASHSTREAM_CUDA_ARCHS)"
if ! python3 -m pip install --no-build-isolation --no-deps -v . >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  log "BUILD FAILED (see build.log)"
  exit 1
fi
grep -h -- "-- flashstream:" "$OUT/build.log" | sed 's/^ *-- //' | tee -a "$SUMMARY" || true
log "build done"

# Run everything below from outside the source tree's python/ so the installed package is used.
if ! { echo; python3 -m flashstream info; echo; } 2>&1 | tee -a "$SUMMARY"; then failures+=("info"); fi

# ---- tests -------------------------------------------------------------------------------------
log "pytest"
if ! timeout 300 python3 -m pytest -x -q tests >"$OUT/tests.log" 2>&1; then
  failures+=("tests")
fi
tail -5 "$OUT/tests.log" | tee -a "$SUMMARY"
log "pytest done"

# ---- bench/cpp microbenchmarks -----------------------------------------------------------------
log "building bench/cpp targets"
BDIR=/tmp/fs-bench-build
if cmake -S . -B "$BDIR" -G Ninja -DPython_EXECUTABLE="$(command -v python3)" -DFLASHSTREAM_CUDA=ON \
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
for b in bench/bench_*.py; do
  log "running $b --device cuda"
  if ! timeout 300 python3 "$b" --device cuda 2>&1 | tee -a "$SUMMARY"; then failures+=("$(basename "$b")"); fi
done

find bench/results -maxdepth 1 -newer "$START_MARK" \( -name '*.json' -o -name '*.png' \) -exec cp {} "$OUT/results/" \;
rm -f "$START_MARK"
log "results: $(ls "$OUT/results" | tr '\n' ' ')"
if ((${#failures[@]})); then
  log "FAILED: ${failures[*]}"
  exit 1
fi
log "all steps passed"
