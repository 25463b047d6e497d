"""What the doctor asks of the machine, in one small object: the checks (fipo.doctor.checks) only call these
methods, so tests hand them a stand-in with the same methods (no CUDA, no vLLM, a Ray cluster of one node...)
and this module is the only place that imports torch, vLLM, Ray or huggingface_hub for the doctor.

Nothing here downloads anything or changes the machine: a hub model is looked up (metadata only), never fetched.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional
from fipo.eval.models import hub_snapshot


class ProbeError(RuntimeError):
    """A query that could not be answered (a Ray cluster that cannot be reached); the message says why."""


@dataclass(frozen=True)
class Package:
    version: Optional[str]  # None: not installed
    import_error: Optional[str] = None  # installed, but `import` failed (a wheel built for another torch or CUDA)
    requires: tuple[str, ...] = ()  # its Requires-Dist lines


@dataclass(frozen=True)
class Torch:
    version: Optional[str]  # None: not importable
    cuda: Optional[str] = None  # torch.version.cuda: None for a CPU build
    cuda_available: bool = False
    error: Optional[str] = None


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int


@dataclass(frozen=True)
class RayNode:
    host: str
    gpus: float


class SystemProbe:
    """The real machine."""

    def torch(self) -> Torch:
        try:
            import torch
        except Exception as err:  # noqa: BLE001 - not installed, or a broken install: both are the answer
            return Torch(None, error=f"{type(err).__name__}: {err}")
        return Torch(torch.__version__, torch.version.cuda, bool(torch.cuda.is_available()))

    def gpus(self) -> list[Gpu]:
        import torch

        if not torch.cuda.is_available():
            return []
        return [Gpu(torch.cuda.get_device_name(i), int(torch.cuda.get_device_properties(i).total_memory))
                for i in range(torch.cuda.device_count())]

    def package(self, distribution: str, module: str) -> Package:
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return Package(None)
        requires = tuple(metadata.requires(distribution) or ())
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - ImportError, OSError (a missing libcuda), RuntimeError
            return Package(version, f"{type(err).__name__}: {err}", requires)
        return Package(version, None, requires)

    def ray_nodes(self, address: str) -> list[RayNode]:
        """The alive nodes of the Ray cluster at ``address`` and their GPUs (Ray's state of the cluster)."""
        try:
            import ray
        except ImportError as err:
            raise ProbeError(f"ray is not importable ({err})") from None
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            return [RayNode(str(n.get("NodeManagerAddress", "?")), float(n.get("Resources", {}).get("GPU", 0.0)))
                    for n in ray.nodes() if n.get("Alive")]
        except Exception as err:  # noqa: BLE001 - ConnectionError, auth errors, timeouts
            raise ProbeError(f"{type(err).__name__}: {err}") from None
        finally:
            ray.shutdown()

    def cached_model(self, model: str, revision: Optional[str]) -> Optional[Path]:
        """The hub model's snapshot folder in the Hugging Face cache, without any network access."""
        try:
            return hub_snapshot(model, revision, download=False)
        except (FileNotFoundError, ValueError):
            return None

    def hub_problem(self, model: str, revision: Optional[str]) -> Optional[str]:
        """None when the hub serves ``model`` (metadata only: nothing is downloaded); else why not."""
        from huggingface_hub import HfApi, constants

        if constants.is_offline_mode():
            return "HF_HUB_OFFLINE is set"
        try:
            HfApi().model_info(model, revision=revision, timeout=10)
        except Exception as err:  # noqa: BLE001 - no network, no such repository, a gated model without a token
            return f"{type(err).__name__}: {err}"
        return None

    def model_config(self, model: str, revision: Optional[str]) -> Optional[dict]:
        """config.json of a local folder or of the cached hub snapshot; None when neither is here."""
        folder = Path(model) if Path(model).is_dir() else self.cached_model(model, revision)
        path = folder / "config.json" if folder else None
        try:
            return json.loads(path.read_text()) if path and path.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None

    def disk_free(self, path: Path) -> int:
        """Free bytes on the file system that holds ``path`` (or would: its nearest existing parent)."""
        path = Path(os.path.abspath(path))
        while not path.exists():
            path = path.parent
        return shutil.disk_usage(path).free
