# Two commands for a new user: `make demo` (the main job on the offline toy pair) and
# `make test` (the test suite). Both create the virtual environment .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: demo results test test-fast bench lint clean-venv gpu-wheels

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The demo writes into out/ (out/results, out/leaderboards/index.html), never into the committed
# results/ and leaderboards/ (tests/test_demo.py runs these lines and checks).
demo: $(BIN)/.installed
	$(BIN)/xbt-bench run --pair toy-s-to-m
	$(BIN)/xbt-bench publish

# Everything committed under results/ and leaderboards/ (from one clean commit), the only target
# that writes there: each trained method tuned on support with one budget (issue 21), every
# method with 3 seeds, its partial-backfill curves and its recalls through IVF and HNSW indexes of
# the galleries, the xbt-gallery variant, the sample-efficiency sweep (one seed, recorded in the
# 3-seed result files), the second toy pair, the toy chain, and each pair's diagnostics.
COMMITTED := --results-dir results
TUNE_BUDGET := --trials 10 --max-steps 600 --max-proj-steps 3000
TUNED := xbt xbt-gallery xbt-proj distill finetune
results: $(BIN)/.installed
	rm -rf results
	$(foreach m,$(TUNED),$(BIN)/xbt-bench tune --pair toy-s-to-m --method $(m) $(TUNE_BUDGET) $(COMMITTED) &&) true
	$(BIN)/xbt-bench run --pair toy-s-to-m --seeds 3 --backfill --index ivf --index hnsw $(COMMITTED)
	$(BIN)/xbt-bench run --pair toy-s-to-m --seeds 3 --method xbt-gallery $(COMMITTED)
	$(BIN)/xbt-bench sweep --pair toy-s-to-m $(COMMITTED)
	$(BIN)/xbt-bench run --pair toy-m-to-l --seeds 3 $(COMMITTED)
	$(BIN)/xbt-bench run --pair toy-s-m-l --method procrustes --method slerp --method xbt $(COMMITTED)
	$(BIN)/xbt-bench pairs diagnose toy-s-to-m --split support $(COMMITTED)
	$(BIN)/xbt-bench pairs diagnose toy-m-to-l --split support $(COMMITTED)
	$(BIN)/xbt-bench publish $(COMMITTED) --report-dir leaderboards

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# The fast tier (no end-to-end runs, subprocesses or rendering) on two pytest-xdist workers.
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow" -n 2

# Every speed figure in one run: see benchmarks/__main__.py. On 2 CPU cores the real-size text
# tower of bench_trim.py alone ran over 23 minutes; `python -m benchmarks --only eval trainer demo`
# (about 10 minutes) leaves it out.
bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)

# Wheels for benchmarks/gpu_check.sh on a CUDA machine with PyTorch but no internet (not committed).
gpu-wheels: $(BIN)/.installed
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh --download-wheels
