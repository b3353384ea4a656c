# Two commands on a fresh machine (Python 3.10+, a C++ compiler, the package registries):
#   make demo   set up .venv (torch, the package and its kernels) and run the main job
#   make test   the same set-up, then the test suite
# Both are idempotent: the set-up reruns only when the build inputs change.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.boxsup-installed
BUILD_INPUTS := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

CUDA_VENV ?= .venv-cuda
CUDA_TORCH_SPEC ?= torch==2.14.1
CUDA_HOME ?= /usr/local/cuda
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0

.PHONY: setup demo test bench format-check cuda-check gpu-check clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(BUILD_INPUTS)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install setuptools wheel ninja pybind11
	@# pydensecrf2 ships as source and needs its own isolated build (Cython); everything else is a wheel.
	$(PIP) install "pydensecrf2>=1.0"
	@# [sam]: transformers for the sam proposal method and its tests (~15 s, ~200 MB with its dependencies).
	$(PIP) install --no-build-isolation -e ".[test,sam]"
	@touch $(STAMP)

demo: setup
	$(PY) -m boxsup_ext.demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/assign_bench.py --json $(DEMO_OUT)/../assign_bench.json

# The C++/CUDA format check (CI): csrc/ against .clang-format, with a pinned clang-format from PyPI
# (a wheel of a few MB, installed into the venv once), so every machine formats alike.
CLANG_FORMAT_VERSION ?= 19.1.7
CLANG_FORMAT := $(VENV)/bin/clang-format
format-check: $(PY)
	@$(CLANG_FORMAT) --version 2>/dev/null | grep -qF "version $(CLANG_FORMAT_VERSION)" || \
		$(PIP) install -q "clang-format==$(CLANG_FORMAT_VERSION)"
	$(CLANG_FORMAT) --dry-run --Werror $$(find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' | sort)

# CUDA compile check (CI, where nvcc exists): build the CUDA kernels against a CUDA build of torch
# in a second environment, from a copy of the tree so the CPU build in place is left alone.
cuda-check:
	@test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	@$(CUDA_VENV)/bin/python -c "import torch" 2>/dev/null || $(CUDA_VENV)/bin/pip install "$(CUDA_TORCH_SPEC)"
	$(CUDA_VENV)/bin/pip install setuptools wheel ninja pybind11 numpy
	rm -rf build/cuda-check-src && mkdir -p build/cuda-check-src
	tar --exclude=./.venv --exclude=./$(CUDA_VENV) --exclude=./build --exclude=./runs --exclude=./.git \
		--exclude='*.so' -cf - . | tar -xf - -C build/cuda-check-src
	cd build/cuda-check-src && FORCE_CUDA=1 CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" \
		../../$(CUDA_VENV)/bin/pip install --no-build-isolation --no-deps --force-reinstall .
	cd build && ../$(CUDA_VENV)/bin/python -c "import sys, torch; from boxsup_ext import ops; \
		info = ops.build_info(); print('boxsup_ext build:', info); \
		has = [torch._C._dispatch_has_kernel_for_dispatch_key('boxsup::' + op, 'CUDA') for op in \
		       ('proposal_costs', 'proposal_costs_batched', 'pack_masks', 'unpack_masks', 'paint_labels', 'paint_labels_batched')]; \
		print('CUDA kernels registered:', has); sys.exit(0 if info['cuda_compiled'] and all(has) else 1)"

# The device check, on a machine with a GPU (the performance contract in docs/ops.md; a few minutes on one H200
# with the build): builds the CUDA kernels in place with that machine's python3 and torch, then runs
# benchmarks/gpu_check.py, which exits non-zero on any failure and writes its JSON report.
GPU_PYTHON ?= python3
GPU_CHECK_JSON ?= $(DEMO_OUT)/gpu_check.json
gpu-check:
	@# FORCE_CUDA: a machine without a CUDA toolkit or with a CPU-only torch fails here, in one line,
	@# rather than building CPU-only kernels; the kernels are built for the visible GPU's architecture.
	FORCE_CUDA=1 MAX_JOBS=$${MAX_JOBS:-8} $(GPU_PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	$(GPU_PYTHON) benchmarks/gpu_check.py --device cuda --json $(GPU_CHECK_JSON)

clean:
	rm -rf build *.egg-info boxsup_ext/_C*.so
