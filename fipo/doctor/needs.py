"""What a job of the pipeline needs from the machine, read off the experiment spec: the packages, GPUs per node
and nodes, GPU memory per device, datasets, models and disk. One :class:`Needs` per job (training one experiment,
evaluating one model on some benchmarks); :func:`combine` folds several into what all of them need together."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from fipo.checkpoint_steps import checkpoint_steps
from fipo.doctor import estimates
from fipo.spec import EvaluationSpec, Experiment, ReleasedSpec
from fipo.run_folder import run_folder
from fipo.verl_command import model_path

GB = 1e9


@dataclass(frozen=True)
class Needs:
    cuda: bool = False
    packages: tuple[str, ...] = ()  # names in fipo.doctor.compat.COMPAT
    nodes: int = 1
    gpus_per_node: int = 0
    ray_address: Optional[str] = None
    gpu_bytes: Optional[float] = None  # per device; None: no estimate (see gpu_note)
    gpu_note: str = ""
    datasets: tuple[str, ...] = ()
    # (hub id or folder, hub revision, how the pipeline makes it or None) that must be here or downloadable
    models: tuple[tuple[str, Optional[str], Optional[str]], ...] = ()
    disk_path: Optional[Path] = None
    disk_bytes: Optional[float] = 0.0  # None: a checkpoint's size is unknown (see disk_notes)
    # (run, what it still has to keep, how that comes about): the report groups runs that share the last two
    disk_notes: tuple[tuple[str, str, str], ...] = ()


def _shape(model: str, revision: Optional[str], probe) -> Optional[estimates.ModelShape]:
    return estimates.model_shape(model, probe.model_config(model, revision))


def _unknown_size(model: str) -> str:
    return (f"no size known for model {model}: not in fipo/doctor/estimates.py KNOWN_SHAPES and no config.json of it "
            "here")


def kept_checkpoints(exp: Experiment) -> tuple[int, str]:
    """How many checkpoints a run keeps at the end (verl: one every save_freq steps, the oldest removed beyond
    trainer.max_actor_ckpt_to_keep; null keeps all), and how that count comes about. ``exp`` with the run's
    overrides applied (fipo.spec.with_overrides), as verl gets it."""
    steps, every = exp.trainer.total_training_steps, exp.trainer.save_freq
    saved = steps // every + (steps % every != 0)  # verl also saves at the last step
    keep = exp.engine.get("trainer.max_actor_ckpt_to_keep")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int)):
        raise ValueError(f"trainer.max_actor_ckpt_to_keep must be an integer or null, got {keep!r}")
    kept = min(saved, keep) if keep else saved
    limit = f"trainer.max_actor_ckpt_to_keep {keep}" if keep else "trainer.max_actor_ckpt_to_keep null keeps all"
    return kept, f"{saved} saved, one every {every} of {steps} steps; {limit}"


def train_needs(exp: Experiment, results_dir: Path, probe, ray_address: Optional[str] = None) -> Needs:
    """Training ``exp`` (its overrides applied) with verl (``fipo train``)."""
    cuda = exp.trainer.device == "cuda"
    # verl always; on GPUs flash-attn (remove-padding, fused cross entropy) and vLLM when it serves the rollouts
    packages = ("verl",) + (("vllm",) if cuda and exp.rollout.engine == "vllm" else ()) + (("flash-attn",) if cuda else ())
    model = model_path(exp, results_dir)  # a hub id, or the folder ${results_dir} names
    shape = _shape(model, None, probe)
    gpu_bytes = estimates.training_gpu_bytes(exp, shape) if shape and cuda else None
    run = run_folder(results_dir, exp.preset, exp.name)
    kept, how = kept_checkpoints(exp)
    existing = len(checkpoint_steps(run.checkpoints)) if run.checkpoints.is_dir() else 0
    how += f"; {existing} already here" if existing else ""
    if shape:
        each, more = estimates.checkpoint_bytes(shape), max(kept - existing, 0)
        disk, note = each * more, (exp.name, f"{more} × ≈{each / GB:.0f} GB", how)
    else:
        disk, note = None, (exp.name, "size unknown", _unknown_size(model))
    return Needs(
        cuda=cuda, packages=packages,
        nodes=exp.trainer.nnodes if cuda else 1, gpus_per_node=exp.trainer.n_gpus_per_node if cuda else 0,
        ray_address=ray_address if cuda else None,
        gpu_bytes=gpu_bytes,
        gpu_note=("verl rollout (vLLM) or FSDP actor, whichever is larger" if gpu_bytes
                  else "" if not cuda else _unknown_size(model)),
        datasets=(exp.data.train, *exp.data.val),
        models=((model, None, f"python -m fipo tiny-model --results-dir {results_dir}"
                 if "${results_dir}" in exp.model.path else None),),
        disk_path=Path(results_dir), disk_bytes=disk, disk_notes=(note,),
    )


def eval_needs(spec: EvaluationSpec, benchmarks: list[str], probe, model: Optional[str] = None,
               revision: Optional[str] = None, architecture: Optional[str] = None) -> Needs:
    """Evaluating a model on ``benchmarks`` (``fipo eval``): ``model`` must be here or downloadable (None: the
    pipeline makes it, a run's converted checkpoint); ``architecture`` names a model of the same shape for the
    memory estimate (default: ``model``)."""
    vllm = spec.backend == "vllm"
    sized = architecture or model
    shape = _shape(sized, revision if sized == model else None, probe) if sized else None
    gpu_bytes = estimates.eval_gpu_bytes(spec, shape) if shape and vllm else None
    return Needs(
        cuda=vllm, packages=("vllm",) if vllm else (),
        nodes=1, gpus_per_node=spec.tensor_parallel_size if vllm else 0,
        gpu_bytes=gpu_bytes,
        gpu_note=(f"vLLM, tensor parallel {spec.tensor_parallel_size}" if gpu_bytes
                  else "" if not vllm else _unknown_size(sized or "?")),
        datasets=tuple(benchmarks),
        models=((model, revision, None),) if model else (),
    )


def run_eval_needs(exp: Experiment, spec: EvaluationSpec, benchmarks: list[str], probe) -> Needs:
    """Evaluating ``exp``'s converted checkpoint (made by the pipeline; the base model's shape)."""
    return eval_needs(spec, benchmarks, probe, architecture=exp.model.path)


def released_needs(released: ReleasedSpec, spec: EvaluationSpec, benchmarks: list[str], probe) -> Needs:
    return eval_needs(spec, benchmarks, probe, model=released.model, revision=released.revision)


def combine(needs: list[Needs]) -> Needs:
    """What all of ``needs`` need together: every package, dataset and model, the most GPUs and memory, the sum of
    the disk (one results folder)."""
    first, rest = needs[0], needs[1:]
    out = first
    for n in rest:
        sized = [x for x in (out, n) if x.gpu_bytes is not None]
        big = max(sized, key=lambda x: x.gpu_bytes) if sized else out
        out = replace(
            out,
            cuda=out.cuda or n.cuda,
            packages=tuple(dict.fromkeys(out.packages + n.packages)),
            nodes=max(out.nodes, n.nodes), gpus_per_node=max(out.gpus_per_node, n.gpus_per_node),
            ray_address=out.ray_address or n.ray_address,
            gpu_bytes=big.gpu_bytes, gpu_note=big.gpu_note or out.gpu_note or n.gpu_note,
            datasets=tuple(dict.fromkeys(out.datasets + n.datasets)),
            models=tuple(dict.fromkeys(out.models + n.models)),
            disk_path=out.disk_path or n.disk_path,
            disk_bytes=None if out.disk_bytes is None or n.disk_bytes is None else out.disk_bytes + n.disk_bytes,
            disk_notes=out.disk_notes + n.disk_notes,
        )
    return out
