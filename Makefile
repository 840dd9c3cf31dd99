# README's two commands: `make audit` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: audit test prove check bench clean

# Without a CUDA GPU, constraints/pip_args.py pins the CPU build of torch (constraints/cpu.txt; an
# unpinned torch pulls GBs of CUDA wheels) where pip's indexes serve it, and says so in one line
# where they do not (plain PyPI) and the default torch is installed instead.
$(BIN)/.installed: pyproject.toml constraints/cpu.txt constraints/pip_args.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	args="$$($(BIN)/python constraints/pip_args.py --pip $(BIN)/pip)" && $(BIN)/pip install -q $$args -e ".[test]"
	touch $@

audit: $(BIN)/.installed
	$(BIN)/flashproof audit

# Two pytest-xdist workers on CI's 2 cores, one torch thread each (two workers with two OpenMP threads
# each oversubscribe the cores); `make test PYTEST_ARGS=` runs serially.
PYTEST_ARGS ?= -n 2
test: $(BIN)/.installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q $(PYTEST_ARGS)

prove: $(BIN)/.installed
	$(BIN)/flashproof prove

check: $(BIN)/.installed
	$(BIN)/flashproof check

bench: $(BIN)/.installed
	$(BIN)/flashproof bench

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis .pytest_cache
