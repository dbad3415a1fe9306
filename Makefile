# Two entry points: `make demo` (the main job on built-in data) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo_run

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/headway synth $(DEMO)/data --sequences 4 --frames 40 --seed 0
	$(BIN)/headway track $(DEMO)/data --format otb --out $(DEMO)/tiny --config tiny
	$(BIN)/headway eval $(DEMO)/tiny --dataset $(DEMO)/data --format otb

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO)
