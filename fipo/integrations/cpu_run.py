"""What a CPU run hands verl from the outside: its environment and the Hydra keys of the quick-poll sampler.

Kept apart from :mod:`fipo.integrations.verl_cpu`, which imports verl (and through it torch, tensordict and
transformers: about 4 s on 2 cores) to register the CPU platform and rollout: ``fipo train`` needs these values
to start verl, and paid that import once more before every run's own driver imported it again. Nothing here
touches verl; every contact with its internals stays in ``verl_cpu``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

CPU_SUPPORT_MODULE = "fipo.integrations.verl_cpu"
QUICK_POLL_SAMPLER = "QuickPollReplayBuffer"  # the class in CPU_SUPPORT_MODULE (a test checks the name)


def cpu_environment() -> dict[str, str]:
    """Environment for a CPU run: load the CPU support everywhere, pick the CPU platform and verl's FSDP engine."""
    modules = [m for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if CPU_SUPPORT_MODULE not in modules:
        modules.append(CPU_SUPPORT_MODULE)
    return {
        "VERL_USE_EXTERNAL_MODULES": ",".join(modules),
        "VERL_PLATFORM": "cpu",
        # verl registers its FSDP engine for device "cuda" only; it runs on CPU tensors unchanged.
        "VERL_ENGINE_DEVICE": "cuda",
        "TOKENIZERS_PARALLELISM": "false",
    }


def sampler_overrides(
    filter_groups_metric: Optional[str], train_batch_size: int, gen_batch_size: Optional[int], seed: int,
    poll_interval: float = 0.05,
) -> dict[str, Any]:
    """The verl keys that plug in the CPU support's quick-poll replay buffer for one experiment; ``seed`` (the
    run's ``trainer.seed``) seeds the names verl gives its prompts."""
    kwargs = {"poll_interval": poll_interval, "filter_groups_metric": filter_groups_metric,
              "train_batch_size": train_batch_size, "uid_seed": seed}
    if gen_batch_size is not None:
        kwargs["gen_batch_size"] = gen_batch_size
    return {
        "trainer.v1.sampler.custom_sampler.path": f"pkg://{CPU_SUPPORT_MODULE}",
        "trainer.v1.sampler.custom_sampler.name": QUICK_POLL_SAMPLER,
        "++trainer.v1.sampler.sampler_kwargs": kwargs,  # ++: replace the empty dict verl declares
    }
