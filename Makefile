# README's two commands: `make audit` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Without a CUDA GPU, pin the CPU build of torch (an unpinned torch pulls GBs of CUDA wheels).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
CONSTRAINTS := $(if $(HAS_GPU),,-c constraints/cpu.txt)

.PHONY: audit test prove check bench clean

$(BIN)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[test]"
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

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis .pytest_cache
