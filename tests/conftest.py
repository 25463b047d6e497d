import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Fresh random inputs on every run (no derandomize); failures print the reproducing seed and example.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("FIPO_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("default")


@pytest.fixture(scope="session")
def ray_dir() -> Path:
    """RAY_TMPDIR of the session's verl runs. Ray's unix sockets live under it and must stay under 108 bytes:
    a short folder of its own (also how the tests find leftover Ray processes)."""
    path = Path(tempfile.mkdtemp(prefix="fipo-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, ray_dir) -> dict[str, Path]:
    """The tiny preset's data and warm-started base model, built once per test session (~30 s)."""
    from fipo.tiny import build_tiny_base_model, prepare_tiny_data

    root = tmp_path_factory.mktemp("tiny_world")
    data_dir, results_dir = root / "data", root / "results"
    prepare_tiny_data(data_dir)
    model = build_tiny_base_model(results_dir / "tiny" / "base_model", log=lambda msg: None)
    return {"root": root, "data": data_dir, "results": results_dir, "model": model, "ray": ray_dir}


def pytest_configure(config):
    """Outside the cluster tests, `scontrol` fails at once. Snakemake's Slurm executor plugin runs `scontrol show
    config` when it is imported (for a help text), on every snakemake call, when Slurm's client tools are
    installed; with no controller running (a machine where `make test-cluster` ran before) it waits 9-10 s for
    one, which was most of the wall time of the ~100 `snakemake -n` calls of the tests. Only the plugin's help
    text depends on the answer, and the cluster tests (`-m cluster`) keep the real command."""
    if "cluster" in (config.getoption("markexpr") or "") or shutil.which("sinfo") is None:
        return
    shim = Path(tempfile.mkdtemp(prefix="fipo-no-scontrol-"))
    config.add_cleanup(lambda: shutil.rmtree(shim, ignore_errors=True))
    (shim / "scontrol").write_text("#!/bin/sh\n# tests/conftest.py: no Slurm controller outside the cluster tests\nexit 1\n")
    (shim / "scontrol").chmod(0o755)
    os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ['PATH']}"


# Tests that need an environment of their own, run only when a marker expression names their marker: `cluster` (a
# local Slurm cluster and Ray nodes, `make test-cluster`) and `vllm` (vLLM's CPU build in .venv-vllm, `make
# test-vllm`).
OWN_ENVIRONMENT = ("cluster", "vllm")


def pytest_collection_modifyitems(config, items):
    """Tests that need an environment of their own (OWN_ENVIRONMENT) run only when asked for by a marker
    expression that names their marker (`-m cluster`, `-m vllm`); any other selection, `-m 'not slow'` included,
    leaves them out rather than failing on a machine without that environment."""
    asked = config.getoption("markexpr") or ""
    left_out = [name for name in OWN_ENVIRONMENT if name not in asked]
    kept = [item for item in items if not any(item.get_closest_marker(name) for name in left_out)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
