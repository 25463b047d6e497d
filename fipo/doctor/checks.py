"""The doctor's checks: :class:`~fipo.doctor.needs.Needs` against what a probe (fipo.doctor.probe) sees. Each check
gives one :class:`Result`: ``ok``, ``FAIL`` with what is wrong and how to fix it, or ``skip`` when the jobs do not
need it (a CPU preset has no use for CUDA)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fipo import data as data_mod
from fipo.doctor.compat import COMPAT, torch_requirement_problem, version_problem
from fipo.doctor.estimates import MEMORY_NOTE
from fipo.doctor.needs import GB, Needs
from fipo.doctor.probe import ProbeError
from fipo.eval.models import is_hub_id

GIB = 1 << 30
RAY_RECIPE = "docs/scale.md, 'Paper scale on a cluster'"


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # "ok", "FAIL" or "skip"
    detail: str
    fix: str = ""
    note: str = ""  # printed under the line: what the figure in it means

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def ok(name: str, detail: str, note: str = "") -> Result:
    return Result(name, "ok", detail, note=note)


def fail(name: str, detail: str, fix: str, note: str = "") -> Result:
    return Result(name, "FAIL", detail, fix, note)


def skip(name: str, detail: str) -> Result:
    return Result(name, "skip", detail)


def check_torch(needs: Needs, probe) -> Result:
    torch = probe.torch()
    if torch.version is None:
        return fail("torch", f"not importable ({torch.error})", COMPAT["torch"].install)
    if not needs.cuda:
        return ok("torch", f"{torch.version} (these jobs run on the CPU)")
    if torch.cuda is None:
        return fail("torch", f"{torch.version} is a CPU build", f"pip uninstall torch, then {COMPAT['torch'].install}")
    problem = version_problem("torch", torch.version)
    if problem:
        return fail("torch", problem, COMPAT["torch"].install)
    if needs.ray_address:  # the GPUs are the Ray cluster's; this machine may be a driver without any
        return ok("torch", f"{torch.version}, CUDA {torch.cuda} build (GPUs: the Ray cluster's)")
    if not torch.cuda_available:
        return fail("torch", f"{torch.version} (CUDA {torch.cuda}) sees no GPU: torch.cuda.is_available() is False",
                    "run on a GPU node; check nvidia-smi, the driver, and CUDA_VISIBLE_DEVICES")
    return ok("torch", f"{torch.version}, CUDA {torch.cuda}")


def check_package(name: str, needs: Needs, probe) -> Result:
    compat = COMPAT[name]
    if name not in needs.packages:
        return skip(name, "not used by these jobs")
    package = probe.package(compat.distribution, compat.module)
    if package.version is None:
        return fail(name, "not installed", compat.install)
    problem = version_problem(name, package.version)
    if problem:
        return fail(name, problem, compat.install)
    torch = probe.torch()
    mismatch = torch.version and torch_requirement_problem(name, list(package.requires), torch.version)
    if mismatch:
        return fail(name, mismatch, f"install the torch it was built for, or a build of it for this torch: {compat.install}")
    if package.import_error:
        return fail(name, f"{package.version} is installed but `import {compat.module}` fails: {package.import_error}",
                    f"reinstall a build for this torch ({torch.version}) and CUDA: {compat.install}")
    return ok(name, package.version)


def check_gpus(needs: Needs, probe) -> Result:
    want = f"{needs.nodes} node(s) × {needs.gpus_per_node} GPU(s)"
    if not needs.cuda:
        return skip("gpus", "these jobs need no GPU")
    if needs.ray_address:
        try:
            nodes = probe.ray_nodes(needs.ray_address)
        except ProbeError as err:
            return fail("gpus", f"cannot reach the Ray cluster at {needs.ray_address}: {err}",
                        f"start the cluster first ({RAY_RECIPE}); with Ray >= 2.60 export RAY_AUTH_MODE=token and "
                        "the cluster's token here too")
        full = [n for n in nodes if n.gpus >= needs.gpus_per_node]
        seen = ", ".join(f"{n.host}: {n.gpus:g}" for n in nodes) or "no alive node"
        if len(full) < needs.nodes:
            return fail("gpus", f"Ray cluster at {needs.ray_address} has {len(full)} node(s) with "
                                f">= {needs.gpus_per_node} GPUs ({seen}); the jobs need {want}",
                        f"join {needs.nodes - len(full)} more node(s): ray start --address={needs.ray_address} "
                        f"--num-gpus={needs.gpus_per_node} on each ({RAY_RECIPE})")
        return ok("gpus", f"Ray cluster at {needs.ray_address}: {len(full)} node(s) with >= {needs.gpus_per_node} "
                          f"GPUs ({seen})")
    if needs.nodes > 1:
        return fail("gpus", f"the jobs need {want}, but without a Ray cluster verl runs on this node alone",
                    f"start a Ray cluster over {needs.nodes} nodes and pass its address: --ray-address here, "
                    f"train.ray_address in the pipeline's config ({RAY_RECIPE})")
    gpus = probe.gpus()
    if len(gpus) < needs.gpus_per_node:
        names = ", ".join(sorted({g.name for g in gpus})) or "none"
        return fail("gpus", f"the jobs need {needs.gpus_per_node} GPU(s) on this node; {len(gpus)} visible ({names})",
                    f"run on a node with {needs.gpus_per_node} GPUs (under Slurm the rule's gpu resource asks for "
                    "them); check CUDA_VISIBLE_DEVICES")
    return ok("gpus", f"{len(gpus)} visible ({', '.join(sorted({g.name for g in gpus}))}); {want} needed")


def check_gpu_memory(needs: Needs, probe) -> Result:
    if not needs.cuda:
        return skip("gpu memory", "these jobs need no GPU")
    if needs.gpu_bytes is None:
        return skip("gpu memory", needs.gpu_note)
    gpus = probe.gpus()
    if not gpus:
        where = ("Ray does not report per-GPU memory: run fipo doctor on a node of the cluster to check it"
                 if needs.ray_address else "no GPU visible (see gpus)")
        return skip("gpu memory", where)
    smallest = min(gpus, key=lambda g: g.total_bytes)
    want = f"≈{needs.gpu_bytes / GIB:.0f} GiB per GPU ({needs.gpu_note}; a lower bound)"
    if smallest.total_bytes < needs.gpu_bytes:
        return fail("gpu memory", f"needs {want}; the smallest GPU here has {smallest.total_bytes / GIB:.0f} GiB "
                                  f"({smallest.name})",
                    "use larger GPUs, or spread the model further: more rollout/evaluation tensor parallelism, "
                    "parameter and optimizer offload, a smaller ppo_max_token_len_per_gpu (engine keys of the preset)",
                    MEMORY_NOTE)
    return ok("gpu memory", f"{smallest.total_bytes / GIB:.0f} GiB per GPU ({smallest.name}); needs {want}",
              MEMORY_NOTE)


def check_datasets(needs: Needs, data_dir: Path) -> Result:
    if not needs.datasets:
        return skip("datasets", "none needed")
    missing = [n for n in needs.datasets if not data_mod.dataset_path(n, data_dir).is_file()]
    if missing:
        where = "; ".join(f"{n}: {data_mod.dataset_path(n, data_dir)}" for n in missing)
        makers = sorted({f"{data_mod.DATASETS[n][1]} --data-dir {data_dir}" for n in missing})
        return fail("datasets", f"missing {where}", "; ".join(makers))
    return ok("datasets", f"{', '.join(needs.datasets)} under {data_dir}")


def missing_weights(folder: Path) -> Optional[str]:
    """Why ``folder`` is not a whole Hugging Face model (weights an index names but absent, or no weights); None
    when it is. An interrupted download leaves broken links in a cache snapshot: those count as absent."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError):
            return f"{index} is not a safetensors index"
        absent = [s for s in shards if not (folder / s).is_file()]
        return f"{len(absent)} of {len(shards)} weight files absent (e.g. {absent[0]})" if absent else None
    if any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin")):
        return None
    return "no weight files (*.safetensors, pytorch_model*.bin)"


def check_model(model: str, revision: Optional[str], probe, maker: Optional[str] = None) -> Result:
    """``model`` (a folder, or a hub id at ``revision``) is here whole, or the hub serves it; ``maker``: the command
    that makes a model the pipeline builds itself."""
    name = "model"
    download = f"hf download {model}{f' --revision {revision}' if revision else ''}"
    if Path(model).is_dir():
        problem = missing_weights(Path(model))
        return fail(name, f"{model}: {problem}", "copy the whole model folder again") if problem else ok(name, f"{model} (local)")
    if not is_hub_id(model):
        fix = f"make it: {maker}" if maker else "set model.path in the preset to a model folder or a hub id"
        return fail(name, f"{model}: no such folder, and not a Hugging Face hub id", fix)
    cached = probe.cached_model(model, revision)
    if cached is not None:
        problem = missing_weights(cached)
        if problem is None:
            return ok(name, f"{model} in the Hugging Face cache ({cached})")
        cached_note = f"in the Hugging Face cache but incomplete: {problem}"
    else:
        cached_note = "not in the Hugging Face cache"
    hub = probe.hub_problem(model, revision)
    if hub is None:
        return ok(name, f"{model}: {cached_note}; the hub serves it (downloaded when first used; not downloaded now)")
    return fail(name, f"{model}: {cached_note}, and the hub cannot be reached ({hub})",
                f"on a machine with internet: {download} (into an HF_HOME this machine shares), or point the preset "
                "at a local copy")


def check_disk(needs: Needs, probe) -> Result:
    if needs.disk_path is None:
        return skip("disk", "these jobs write no checkpoints")
    groups: dict[tuple[str, str], list[str]] = {}
    for run, kept, how in needs.disk_notes:
        groups.setdefault((kept, how), []).append(run)
    notes = "; ".join(f"{', '.join(runs)}: {kept}{' each' if len(runs) > 1 and kept[0].isdigit() else ''} ({how})"
                      for (kept, how), runs in groups.items())
    if needs.disk_bytes is None:
        return skip("disk", notes)
    if not needs.disk_bytes:
        return ok("disk", f"nothing more to keep ({notes})")
    free = probe.disk_free(needs.disk_path)
    want = f"≈{needs.disk_bytes / GB:,.0f} GB for checkpoints ({notes})"
    if free < needs.disk_bytes:
        return fail("disk", f"needs {want}; {free / GB:,.0f} GB free under {needs.disk_path}",
                    "free space, point results_dir at a larger file system, or keep fewer checkpoints: "
                    "train.overrides [trainer.max_actor_ckpt_to_keep=N] in the pipeline's config (--override here; "
                    "with evaluation.checkpoint: best the best step may be among those removed)")
    return ok("disk", f"{free / GB:,.0f} GB free under {needs.disk_path}; needs {want}")


def run_checks(needs: Needs, probe, data_dir: Path) -> list[Result]:
    """Every check, in the order they are printed."""
    results = [check_torch(needs, probe)]
    results += [check_package(name, needs, probe) for name in ("verl", "vllm", "flash-attn")]
    results += [check_gpus(needs, probe), check_gpu_memory(needs, probe), check_datasets(needs, data_dir)]
    results += [check_model(model, revision, probe, maker) for model, revision, maker in needs.models] or [
        skip("model", "made by the pipeline (a run's converted checkpoint)")]
    results.append(check_disk(needs, probe))
    return results


def report(results: list[Result], title: str) -> str:
    """One line per check (``ok``, ``FAIL``, ``skip``), each failure followed by its fix; then the verdict."""
    lines = [f"fipo doctor: {title}"]
    for r in results:
        lines.append(f"{r.status:<5} {r.name:<11} {r.detail}")
        if r.note:
            lines.append(f"{'':<5} {'':<11} {r.note}")
        if r.failed:
            lines.append(f"{'':<5} {'':<11} fix: {r.fix}")
    failed = sum(r.failed for r in results)
    lines.append(f"{failed} of {len(results)} checks failed" if failed else f"all {len(results)} checks passed")
    return "\n".join(lines) + "\n"
