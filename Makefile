# Two commands do everything on a fresh machine:
#   make demo   - set up and lip-sync the bundled synthetic sample
#   make test   - set up (with the dev, onnx and TensorRT-RTX extras, and Chromium for the page test) and run the tests
PYTHON ?= python3
VENV ?= .venv
# torch first, pinned: an unpinned torch makes pip pull several GB of CUDA wheels on a CPU box.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test bench install install-dev clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/pip install --quiet -e '.[dev,onnx,rtx,triton,dali,ray,score,serve]'
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

demo: $(VENV)/.runtime
	$(BIN)/python scripts/demo.py

test: $(VENV)/.dev chromium
	$(BIN)/python -m pytest -q tests

# The page test (tests/test_serve_page.py) drives Debian's Chromium: installed here when run as root on a
# fresh machine (about 30 s); Playwright's own browser download cannot reach its server from CI.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi
	@[ -x $(CHROMIUM) ] || echo "make: $(CHROMIUM) missing (apt-get install chromium as root): the page test will fail" >&2

bench: $(VENV)/.dev
	$(BIN)/python -m pytest -q benchmarks

clean:
	rm -rf $(VENV) demo .pytest_cache

# GPU check for a bare GPU machine (its image's python3 + wheels staged into /tmp/site; no venv, no
# network; README, "Proving it on a GPU"). Without a GPU it prints one line and exits 0.
#   make gpu-check [OUT=DIR] [GPU_RUN=check|rtx]   run 1 (every required step, <= 9 min) or 2 (TensorRT-RTX)
#   make gpu-rehearse                              every step's flow on this CPU (what CI runs a part of)
#   make gpu-stage                                 what runs 1 and 2 upload, into ./.gpu/run1 and ./.gpu/run2
.PHONY: gpu-check gpu-rehearse gpu-stage
OUT ?= benchmarks/results/gpu-check-$(shell date -u +%Y%m%dT%H%M%SZ)
GPU_RUN ?= check
gpu-check:
	@PYTHONPATH=$(CURDIR):/tmp/site$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m gpucheck --run $(GPU_RUN) --out $(OUT) $(GPU_CHECK_ARGS)

gpu-rehearse: $(VENV)/.dev
	$(BIN)/python -m gpucheck --rehearse --out $${REHEARSE_OUT:-/tmp/gpu-rehearse} $(GPU_CHECK_ARGS)

gpu-stage:
	$(PYTHON) -m gpucheck.staging
