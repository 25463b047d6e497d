"""``fipo doctor``: before any GPU job, check that this machine can run it, one line per check, and for each
failure what is wrong and how to fix it. The pipeline runs it before every training and vLLM evaluation job of a
GPU preset (workflow/rules/doctor.smk).

* :mod:`fipo.doctor.compat`: the versions of torch, vLLM and flash-attn that work with verl 0.9.1, with sources
* :mod:`fipo.doctor.probe`: every question asked of the machine (GPUs, packages, Ray, the Hugging Face hub, disk)
* :mod:`fipo.doctor.estimates`: peak GPU memory and checkpoint size (rough; to be replaced by a fuller planner)
* :mod:`fipo.doctor.needs`: what a job needs, from the experiment spec
* :mod:`fipo.doctor.checks`: the checks and the report
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fipo.doctor.checks import Result, run_checks
from fipo.doctor.needs import combine, released_needs, run_eval_needs, train_needs
from fipo.doctor.probe import SystemProbe
from fipo.spec import evaluation, list_experiments, load_experiment, released, with_overrides

STAGES = ("all", "train", "eval", "released")  # all: train and evaluate the experiment(s)


def diagnose(preset: str, results_dir: Path, data_dir: Path, experiment: Optional[str] = None, stage: str = "all",
             benchmark: Optional[str] = None, ray_address: Optional[str] = None, overrides: Optional[list[str]] = None,
             probe=None) -> tuple[str, list[Result]]:
    """(what was checked, one Result per check) for ``stage`` of ``experiment`` (default: every experiment of the
    preset) on ``benchmark`` (default: the preset's benchmarks); ``probe`` defaults to this machine."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}; allowed: {', '.join(STAGES)}")
    if probe is None:
        probe = SystemProbe()
    spec = evaluation(preset)
    if benchmark is not None and benchmark not in spec.benchmarks:
        raise ValueError(f"benchmark {benchmark!r} is not evaluated by preset {preset!r}; allowed: "
                         f"{', '.join(spec.benchmarks)}")
    benchmarks = [benchmark] if benchmark else list(spec.benchmarks)
    if stage == "released":
        model = released(preset)
        if model is None:
            raise ValueError(f"preset {preset!r} declares no released model (no 'released:' section in its preset file)")
        if experiment is not None:
            raise ValueError("--experiment does not apply to --stage released (the released model is not a run)")
        needs = [released_needs(model, spec, benchmarks, probe)]
        title = f"preset {preset}, evaluate the released {model.model} on {', '.join(benchmarks)}"
    else:
        names = [experiment] if experiment else list_experiments(preset)
        # as verl will get them: a malformed override, or one that breaks a rule of the spec, fails here
        experiments = [with_overrides(load_experiment(preset, e), overrides or []) for e in names]
        needs = []
        if stage in ("all", "train"):
            needs += [train_needs(e, results_dir, probe, ray_address) for e in experiments]
        if stage in ("all", "eval"):
            needs += [run_eval_needs(e, spec, benchmarks, probe) for e in experiments]
        verb = {"all": "train and evaluate", "train": "train", "eval": "evaluate"}[stage]
        names = experiment or f"all {len(experiments)} experiments"
        title = f"preset {preset}, {verb} {names}" + (f" on {', '.join(benchmarks)}" if stage != "train" else "")
    return title, run_checks(combine(needs), probe, Path(data_dir))
