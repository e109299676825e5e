# The two commands of README.md. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmtune-installed
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.lmtune-installed
#: What test-min runs at the declared lower bounds: the fast tests of every layer.
FAST_TESTS := tests/test_space.py tests/test_compat.py tests/test_layers.py tests/runtime/test_loop.py \
	tests/samplers/test_grid.py tests/finetune/test_data.py tests/inference/test_parts.py tests/cli/test_bad_input.py \
	tests/selection/test_selection.py tests/report/test_report.py

.PHONY: demo test lint test-min screenshots wheel-smoke

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: this is the CPU build on local disk; a looser spec pulls GBs of CUDA.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the offline defaults: MiniLM + BBC News, 7 trials (the compute of 10 trials of the old 10%
# proxy: benchmarks/proxy_end_to_end.py), best config retrained and tested.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lmtune lora --trials 7 --max-length 64 --study-name demo --output-dir lmtune-out/demo

# docs/img again: make demo's report, the README's infer example's, both studies in optuna-dashboard (Chromium).
screenshots: $(STAMP)
	BIN=$(BIN) bash scripts/screenshots.sh

# The wheel alone in a fresh virtualenv outside the checkout, each command once (.ci/run runs it after make test).
wheel-smoke: $(STAMP)
	bash scripts/wheel_smoke.sh

lint: $(STAMP)
	$(BIN)/ruff check lmtune tests benchmarks scripts
	$(BIN)/lint-imports --no-cache  # the layers of docs/ARCHITECTURE.md ([tool.importlinter] in pyproject.toml)

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Every dependency at the lower bound pyproject.toml declares (uv --resolution lowest-direct), torch at 2.13.0.
$(MIN_STAMP): pyproject.toml
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet torch==2.13.0 uv
	$(MIN_VENV)/bin/python scripts/min_requirements.py > $(MIN_VENV)/requirements.txt
	$(MIN_VENV)/bin/uv pip install --quiet --python $(MIN_VENV)/bin/python --resolution lowest-direct \
		-r $(MIN_VENV)/requirements.txt "pytest>=8" "import-linter>=2.17"
	$(MIN_VENV)/bin/uv pip install --quiet --python $(MIN_VENV)/bin/python --no-deps -e .
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	HF_HUB_OFFLINE=1 $(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(FAST_TESTS)
