"""Which versions of the GPU stack work with verl 0.9.1: COMPAT below is the one table the doctor checks installed
packages against, each row with the file it was read off (verl 0.9.1 as installed; see also INTEGRATION.md).

vLLM is compiled against one torch release: besides its own range, vLLM's requirement on torch (its package
metadata) must accept the installed torch, or importing it fails with undefined symbols.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Compat:
    distribution: str  # the name pip knows
    module: str  # the name Python imports
    accepted: str  # a version specifier, e.g. ">=0.18.0"
    tested: str  # the version verl 0.9.1's extras pin
    source: str  # where the range is read off
    install: str  # how to get the tested version


GPU_EXTRA = "pip install -e '.[gpu]'"

COMPAT = {
    "verl": Compat(
        "verl", "verl", "==0.9.1", "0.9.1",
        "pyproject.toml pins verl==0.9.1: the fipo loss plugin is written against its policy-loss API",
        GPU_EXTRA),
    "torch": Compat(
        "torch", "torch", ">=2.11,<2.12", "2.11.0",
        "verl-0.9.1.dist-info/METADATA: extras vllm, sglang and fsdp pin torch==2.11.0",
        f"{GPU_EXTRA} (verl[vllm]==0.9.1 brings the CUDA build of torch 2.11.0)"),
    "vllm": Compat(
        "vllm", "vllm", ">=0.18.0", "0.24.0",
        "verl/third_party/vllm/__init__.py refuses older vLLM ('supported vllm versions are 0.18.0+'); "
        "METADATA: extra vllm pins vllm==0.24.0",
        f"{GPU_EXTRA} (verl[vllm]==0.9.1 pins vllm==0.24.0)"),
    "flash-attn": Compat(
        "flash-attn", "flash_attn", ">=2.4.3", "2.8.3",
        "verl/utils/torch_functional.py asserts flash-attn>=2.4.3 (cross_entropy_loss returning a tuple); "
        "METADATA: extra flash-attn-cu130torch211 pins flash-attn==2.8.3",
        "pip install 'verl[flash-attn-cu130torch211]==0.9.1' (flash-attn 2.8.3 for CUDA 13.0 and torch 2.11)"),
}


def version_problem(name: str, installed: str) -> str | None:
    """Why ``installed`` (a version string of package ``name``) does not suit verl 0.9.1; None when it does."""
    compat = COMPAT[name]
    try:
        version = Version(installed)
    except InvalidVersion:
        return f"{name} reports version {installed!r}, which is not a version number"
    if Version(version.public) not in SpecifierSet(compat.accepted):  # 2.11.0+cu130 is 2.11.0
        return f"{name} {installed} is outside {compat.accepted} (verl 0.9.1 is tested with {compat.tested})"
    return None


def torch_requirement_problem(dependent: str, requires: list[str], torch_version: str) -> str | None:
    """Why the installed torch is not the one ``dependent`` (vllm) was built for, by ``requires`` (its package
    metadata's Requires-Dist lines); None when it is, or when it names no torch."""
    try:
        installed = Version(Version(torch_version).public)
    except InvalidVersion:
        return None  # reported by the torch check
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name == "torch" and (req.marker is None or req.marker.evaluate({"extra": ""})):
            if req.specifier and installed not in req.specifier:
                return f"{dependent} was built for torch{req.specifier}, but torch {torch_version} is installed"
    return None
