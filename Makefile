# sharpgen: two commands do all set-up on a fresh machine.
#   make run   -> create .venv, install, run the whole pipeline on the embedded default config
#   make test  -> create/update .venv, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default (fast to install). GPU users: `make TORCH_SPEC=` after installing a CUDA
# build of torch into .venv themselves (see README, "GPU install").
TORCH_SPEC ?= torch==2.13.0
CORES ?= 8
SNAKE_ARGS ?=
STAMP := $(VENV)/.sharpgen-installed

.PHONY: venv run test test-fast bench report clean-results dag

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install --quiet -e ".[test,slurm]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --resources gpu=1 --workflow-profile profiles/default $(SNAKE_ARGS)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile profiles/default --report results/report.html $(SNAKE_ARGS)
	$(BIN)/python -m sharpgen.timings results/benchmarks

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

dag: $(STAMP)
	$(BIN)/snakemake --rulegraph | dot -Tpng > results/rulegraph.png

clean-results:
	rm -rf results/data results/gan results/samples results/directions results/ssl results/retrieval results/figures results/logs results/benchmarks results/report.html
