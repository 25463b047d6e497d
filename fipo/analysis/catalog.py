"""Every figure and table the workbench regenerates: which runs it compares, what it needs from them, and
where its files go. The Snakemake pipeline plans its jobs from this catalog, and each notebook reads its own
entry, so the two can never disagree about which runs a figure needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fipo.experiment import list_experiments, preset_info

FIGURE_SUFFIXES = (".png", ".pdf")
TABLE_SUFFIXES = (".csv", ".md", ".tex")


@dataclass(frozen=True)
class Artifact:
    id: str  # fig01 ... fig12, table1 ... table6, influence
    kind: str  # "figure" or "table"
    title: str
    experiments: tuple[str, ...] = ()  # the runs it compares, in legend order
    scale: str | None = None  # the paper scale it belongs to ("32b", "7b"); None: every preset
    needs: tuple[str, ...] = ()  # "metrics", "lengths", "eval", "token_dump"

    @property
    def suffixes(self) -> tuple[str, ...]:
        return FIGURE_SUFFIXES if self.kind == "figure" else TABLE_SUFFIXES


def _fig(id, title, experiments, scale, *needs):
    return Artifact(id, "figure", title, tuple(experiments), scale, ("metrics", *needs))


def _table(id, title, experiments, scale, *needs):
    return Artifact(id, "table", title, tuple(experiments), scale, tuple(needs))


BASE = ("dapo", "fipo")
BASELINES_7B = ("grpo", "dapo", "fipo")
TAUS = ("fipo-tau8", "fipo", "fipo-tau128", "fipo-tau256")

ARTIFACTS: dict[str, Artifact] = {a.id: a for a in (
    _fig("fig01", "AIME24 accuracy and mean response length, FIPO vs DAPO", BASE, "32b"),
    _fig("fig02", "Instability of raw (unfiltered) Future-KL", ("fipo", "fipo-raw"), "32b"),
    _fig("fig03", "Response-length statistics, and accuracy vs length with per-phase slopes", BASE, "32b", "lengths"),
    _fig("fig04", "Training reward, generation batches per step, length-weighted mean advantage", BASE, "32b"),
    _fig("fig05", "Policy KL, entropy and gradient norm", BASE, "32b"),
    _fig("fig06", "7B: length-weighted mean advantage and mean response length", BASELINES_7B, "7b"),
    _fig("fig07", "7B: policy KL, gradient norm and entropy", BASELINES_7B, "7b"),
    _fig("fig08", "32B ablation: clip-high 1.4 and 25K max response",
         ("fipo", "fipo-cliphigh-1.4", "fipo-maxlen-25k"), "32b", "lengths"),
    _fig("fig09", "7B ablation: filtering extreme ratios", ("fipo", "fipo-raw"), "7b"),
    _fig("fig10", "7B ablation: f clip range [1.0, 1.2] vs [0.8, 1.2]", ("fipo-fclip-1.0-1.2", "fipo"), "7b"),
    _fig("fig11", "7B ablation: decay half-life τ", TAUS, "7b"),
    _fig("fig12", "32B ablation: PPO mini-batch 32 vs 64",
         ("fipo", "fipo-minibatch32", "fipo-minibatch32-nooverlong"), "32b"),
    _table("table1", "Avg@32, Cons@32 and Pass@32 of DAPO and FIPO (32B)", BASE, "32b", "eval"),
    _table("table2", "Training settings, Qwen2.5-32B-Base (from the spec)", (), "32b"),
    _table("table3", "Training settings, Qwen2.5-7B-Math (from the spec)", (), "7b"),
    _table("table4", "7B: GRPO, DAPO and FIPO, Avg@32", BASELINES_7B, "7b", "eval"),
    _table("table5", "7B ablation of filtering and f clip range, Avg@32",
           ("fipo-fclip-1.0-1.2", "fipo-raw", "fipo"), "7b", "eval"),
    _table("table6", "7B ablation of τ, Avg@32", TAUS, "7b", "eval"),
    Artifact("influence", "figure", "Per-token influence weights f: which tokens FIPO up- and down-weights",
             ("fipo",), None, ("metrics", "token_dump")),
)}

SCALES = {2: "32b", 3: "7b"}  # the preset's paper_table -> its scale

LABELS = {
    "dapo": "DAPO", "grpo": "GRPO", "fipo": "FIPO", "fipo-raw": "FIPO, raw Future-KL (no filtering)",
    "fipo-fclip-1.0-1.2": "FIPO, f clip [1.0, 1.2]", "fipo-tau8": "FIPO, τ = 8", "fipo-tau128": "FIPO, τ = 128",
    "fipo-tau256": "FIPO, τ = 256", "fipo-cliphigh-1.4": "FIPO, clip-high 1.4", "fipo-maxlen-25k": "FIPO, max length 25K",
    "fipo-minibatch32": "FIPO, mini-batch 32", "fipo-minibatch32-nooverlong": "FIPO, mini-batch 32, no overlong penalty",
}


def label(experiment: str) -> str:
    return LABELS.get(experiment, experiment)


def preset_scale(preset: str) -> str | None:
    """"32b" or "7b" for a paper preset; None for a preset that mirrors both (tiny)."""
    return SCALES.get(preset_info(preset).get("paper_table"))


def artifacts_for(preset: str) -> list[Artifact]:
    """The artifacts a preset produces: those of its scale whose runs the preset defines."""
    scale, defined = preset_scale(preset), set(list_experiments(preset))
    return [a for a in ARTIFACTS.values()
            if (scale is None or a.scale in (None, scale)) and set(a.experiments) <= defined]


def outputs(results_dir, preset: str, artifact: Artifact) -> list[Path]:
    folder = Path(results_dir) / preset / ("figures" if artifact.kind == "figure" else "tables")
    return [folder / f"{artifact.id}{suffix}" for suffix in artifact.suffixes]


def notebook_path(artifact_id: str, notebooks_dir="notebooks") -> Path:
    return Path(notebooks_dir) / f"{artifact_id}.ipynb"
