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
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,engines,cluster,serve,video,int8]'
	@# the C++ runner (executors cpp*), when a compiler is present; without one all else works
	$(BIN)/headway runner build || echo "headway-runner not built: the cpp executors are unavailable"
	touch $(STAMP)

# The papers' experiments in small (under 10 minutes here); a rerun reuses finished parts.
demo: $(STAMP)
	$(BIN)/headway reproduce --quick $(DEMO)
	@echo "open $(DEMO)/report.md (plots and raw JSON are next to it)"

# two pytest workers, one test file each at a time (a file's servers and caches stay together):
# 18 min -> 13 min on the 2-core CI machine
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=40

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO)
