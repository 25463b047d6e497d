# Two commands on a fresh machine (see README): `make run` sets up and runs the main job, `make test` sets up
# and runs the tests. Both create the virtual environment in $(VENV) on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU build of torch, installed before the project so that pip never resolves `torch` to a CUDA build.
# GPU users: `make setup TORCH_SPEC=` and `$(PYTHON) -m pip install -e '.[gpu]'`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run test test-cluster bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(if $(TORCH_SPEC),$(PYTHON) -m pip install --quiet "$(TORCH_SPEC)")
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

# The main job: the whole pipeline (data -> verl training -> evaluation -> every figure and table) for the
# configured preset, the tiny CPU one by default. Extra snakemake arguments: make run ARGS="fig03".
run: $(STAMP)
	$(VENV)/bin/snakemake --cores all $(ARGS)

test: $(STAMP)
	$(PYTHON) -m pytest

# Real clusters on this machine (root, Debian): a one-node Slurm cluster (scripts/local_slurm.sh installs and
# starts it) runs a slice of the pipeline through workflow/profiles/slurm, and two Ray nodes run a 2-node verl
# training (tests/test_cluster.py, marker `cluster`). The Slurm cluster is stopped afterwards, pass or fail.
test-cluster: $(STAMP)
	scripts/local_slurm.sh up
	$(PYTHON) -m pytest -m cluster --durations=0 tests/test_cluster.py; status=$$?; scripts/local_slurm.sh down; exit $$status

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_future_kl.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
