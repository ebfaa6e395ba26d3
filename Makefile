# Everything a fresh machine needs, from this repository's own files.
#   make test   - create .venv (+ .venv-timm for the timm interop test, + .venv-triton-latest for the Triton kernel
#                 tests under the newest Triton), install pinned CPU dependencies (+ the HEAR validator, --no-deps)
#                 + the package (C++ extension built when possible), lint (ruff), run the tests
#   make demo   - the main job: pre-train MaskSpec-tiny on built-in sounds, fine-tune, print the accuracy
#   make bench  - CPU benchmarks (throughput, kernels, patchify, front end)
#   make lint   - ruff
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# timm needs torchvision, which does not load beside the CPU torch 2.13.0: its interop test gets its own venv
TIMM_VENV ?= .venv-timm
# the Triton kernel tests (interpreter + ahead-of-time compiles) also run under the newest Triton release, in their
# own venv beside the pinned one (requirements-triton-latest.txt; the package comes from PYTHONPATH, not installed)
TRITON_LATEST_VENV ?= .venv-triton-latest
PYTEST_ARGS ?= --durations=20  # the slowest tests in every CI log (the suite must stay under 30 min on 2 cores)

.PHONY: install test demo bench lint clean

$(VENV)/.installed: requirements-ci.txt requirements-hear.txt pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -r requirements-ci.txt
	$(VPY) -m pip install -q --no-deps -r requirements-hear.txt  # the HEAR validator without tensorflow (see file)
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

$(TIMM_VENV)/.installed: requirements-timm.txt
	$(PY) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip install -q -r requirements-timm.txt
	touch $@

$(TRITON_LATEST_VENV)/.installed: requirements-triton-latest.txt
	$(PY) -m venv $(TRITON_LATEST_VENV)
	$(TRITON_LATEST_VENV)/bin/python -m pip install -q -r requirements-triton-latest.txt
	touch $@

test: lint $(TIMM_VENV)/.installed $(TRITON_LATEST_VENV)/.installed
	PYTHONPATH=$(CURDIR) $(TIMM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_timm_interop.py tests/test_bench_timm_peer.py
	PYTHONPATH=$(CURDIR) $(TRITON_LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_triton_*.py
	$(VPY) -m pytest -q $(PYTEST_ARGS)

demo: install
	bash benchmarks/demo.sh

bench: install
	$(VPY) benchmarks/throughput.py
	$(VPY) benchmarks/kernels.py
	$(VPY) benchmarks/patchify.py
	$(VPY) benchmarks/frontend.py

lint: install
	$(VPY) -m ruff check maskspec_fast tests benchmarks experiments

clean:
	rm -rf $(VENV) $(TIMM_VENV) $(TRITON_LATEST_VENV) build *.egg-info runs
