# Two commands on a fresh machine (see README): `make run` sets up and runs the main job, `make test` sets up
# and runs the tests. Both create the virtual environment in $(VENV) on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU build of torch, installed before the project so that pip never resolves `torch` to a CUDA build.
# GPU users: `make setup TORCH_SPEC=` and `$(PYTHON) -m pip install -e '.[gpu]'`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(if $(TORCH_SPEC),$(PYTHON) -m pip install --quiet "$(TORCH_SPEC)")
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

# The main job. Until the Snakemake pipeline lands this is the Future-KL / loss benchmark.
run: $(STAMP)
	$(PYTHON) benchmarks/bench_future_kl.py

test: $(STAMP)
	$(PYTHON) -m pytest

bench: run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
