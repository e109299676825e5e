# The two commands of README.md. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmtune-installed

.PHONY: demo test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: this is the CPU build on local disk; a looser spec pulls GBs of CUDA.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the offline defaults: MiniLM + BBC News, 10 trials, best config retrained and tested.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lmtune lora --trials 10 --max-length 64 --study-name demo --output-dir lmtune-out/demo

lint: $(STAMP)
	$(BIN)/ruff check lmtune tests benchmarks scripts

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
