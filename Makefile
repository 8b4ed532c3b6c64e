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
# Exact versions of every other package (made by `make lock`). `make LOCK= test` installs the
# newest versions pyproject.toml allows instead.
LOCK ?= requirements.lock
EXTRAS ?= test,slurm
# Snakemake's --cores: the machine's cores. More than it has oversubscribes the CPU (measured on
# 2 cores: the default pipeline 14:45 with --cores 8, 13:35 with --cores 2, identical outputs)
CORES ?= $(shell nproc 2>/dev/null || echo 2)
SNAKE_ARGS ?=
# pytest worker processes for `make test` (pytest-xdist; 0 = one process). Each test file runs
# whole in one worker (tests/conftest.py). On 2 cores (AMD, 2026-12-02): 16.6 min with 2 workers,
# 24-27 min in one process
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
STAMP := $(VENV)/.sharpgen-installed

.PHONY: venv lock run test test-fast bench report clean-results dag

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install --quiet $(if $(LOCK),-c $(LOCK)) -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Refresh requirements.lock: resolve pyproject.toml (+ extras) in a throw-away venv next to the
# torch build of TORCH_SPEC and freeze it. torch itself stays out of the lock (TORCH_SPEC / the
# user's CUDA build decides it); then pin the conda envs (envs/*.yaml) to the same versions.
# Commit the result.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then .lock-venv/bin/python -m pip install --quiet "$(TORCH_SPEC)"; fi
	.lock-venv/bin/python -m pip install --quiet ".[$(EXTRAS)]"
	{ echo "# Exact versions for \`make\` (pip constraints). Made by \`make lock\` with $$(.lock-venv/bin/python --version)"; \
	  echo "# and $(or $(TORCH_SPEC),the installed torch); torch itself is chosen by TORCH_SPEC (see Makefile)."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(sharpgen|torch|pip|setuptools|wheel)( |==|@)'; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock
	rm -rf .lock-venv
	$(PYTHON) envs/pin.py --lock requirements.lock --torch "$(patsubst torch==%,%,$(or $(TORCH_SPEC),torch==2.13.0))"

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --resources gpu=1 --workflow-profile profiles/default $(SNAKE_ARGS)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile profiles/default --report results/report.html $(SNAKE_ARGS)
	$(BIN)/python -m sharpgen.timings results/benchmarks

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# benchmarks/bench_scale.py runs with BENCH_SCALE_ARGS (default --quick: N = 100-400, a few
# minutes); `make bench BENCH_SCALE_ARGS=` runs the full 1k/4k/16k records (about an hour)
BENCH_SCALE_ARGS ?= --quick
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; \
	  case $$b in *bench_scale.py) args="$(BENCH_SCALE_ARGS)";; *) args=;; esac; \
	  $(BIN)/python $$b $$args || exit 1; done

dag: $(STAMP)
	$(BIN)/snakemake --rulegraph | dot -Tpng > results/rulegraph.png

clean-results:
	rm -rf results/data results/gan results/samples results/directions results/ssl results/retrieval results/figures results/logs results/benchmarks results/report.html
