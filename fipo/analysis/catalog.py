"""Every figure and table the workbench regenerates: which runs it compares, what it needs from them, and
where its files go. The Snakemake pipeline plans its jobs from this catalog, and each notebook reads its own
entry, so the two can never disagree about which runs a figure needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fipo.analysis.labels import run_labels
from fipo.spec import list_experiments, preset_scale

FIGURE_SUFFIXES = (".png", ".pdf")
STUDY_REPORT = "study.md"  # <results>/<preset>/study.md: the study target's report (workflow/rules/study.smk)
TABLE_SUFFIXES = (".csv", ".md", ".tex")


@dataclass(frozen=True)
class Artifact:
    id: str  # fig01 ... fig12, table1 ... table6, influence
    kind: str  # "figure" or "table"
    title: str  # what it shows, true at every preset (the runs' own settings go in the legend)
    experiments: tuple[str, ...] = ()  # the runs it compares, in legend order
    scale: str | None = None  # the paper scale it belongs to ("32b", "7b"); None: every preset
    needs: tuple[str, ...] = ()  # "metrics", "lengths", "eval", "token_dump"
    paper: str = ""  # the paper's own caption, e.g. "Figure 8, 32B: clip-high 1.4 and 25K max response"

    @property
    def suffixes(self) -> tuple[str, ...]:
        return FIGURE_SUFFIXES if self.kind == "figure" else TABLE_SUFFIXES

    def heading(self, preset: str) -> str:
        """The title as this preset ran it."""
        return f"{self.title} (preset {preset})"

    @property
    def paper_note(self) -> str:
        """The paper's wording, kept as a subtitle."""
        return f"paper: {self.paper}" if self.paper else "not in the paper"


def _fig(id, title, paper, experiments, scale, *needs):
    return Artifact(id, "figure", title, tuple(experiments), scale, ("metrics", *needs), paper)


def _table(id, title, paper, experiments, scale, *needs):
    return Artifact(id, "table", title, tuple(experiments), scale, tuple(needs), paper)


BASE = ("dapo", "fipo")
BASELINES_7B = ("grpo", "dapo", "fipo")
TAUS = ("fipo-tau8", "fipo", "fipo-tau128", "fipo-tau256")

ARTIFACTS: dict[str, Artifact] = {a.id: a for a in (
    _fig("fig01", "Validation accuracy and mean response length, FIPO vs DAPO",
         "Figure 1, 32B: AIME24 accuracy and mean response length", BASE, "32b"),
    _fig("fig02", "Raw (unfiltered) against filtered Future-KL: dual-clip fraction and stability",
         "Figure 2, 32B: instability of raw Future-KL", ("fipo", "fipo-raw"), "32b"),
    _fig("fig03", "Response-length statistics, and accuracy vs length with per-phase slopes",
         "Figure 3, 32B: response-length dynamics", BASE, "32b", "lengths"),
    _fig("fig04", "Training reward, generation batches per step, length-weighted mean advantage",
         "Figure 4, 32B", BASE, "32b"),
    _fig("fig05", "Policy KL, entropy and gradient norm", "Figure 5, 32B", BASE, "32b"),
    _fig("fig06", "Length-weighted mean advantage and mean response length, GRPO, DAPO and FIPO",
         "Figure 6, 7B", BASELINES_7B, "7b"),
    _fig("fig07", "Policy KL, gradient norm and entropy, GRPO, DAPO and FIPO", "Figure 7, 7B", BASELINES_7B, "7b"),
    _fig("fig08", "Ablation: PPO clip-high and maximum response length",
         "Figure 8, 32B: clip-high 1.4 and 25K max response",
         ("fipo", "fipo-cliphigh-1.4", "fipo-maxlen-25k"), "32b", "lengths"),
    _fig("fig09", "Ablation: filtering extreme ratios out of Future-KL", "Figure 9, 7B", ("fipo", "fipo-raw"), "7b"),
    _fig("fig10", "Ablation: influence-weight clip range", "Figure 10, 7B: f clip [1.0, 1.2] vs [0.8, 1.2]",
         ("fipo-fclip-1.0-1.2", "fipo"), "7b"),
    _fig("fig11", "Ablation: Future-KL decay half-life τ", "Figure 11, 7B: τ ∈ {8, 32, 128, 256}", TAUS, "7b"),
    _fig("fig12", "Ablation: PPO mini-batch size and the overlong penalty", "Figure 12, 32B: mini-batch 32 vs 64",
         ("fipo", "fipo-minibatch32", "fipo-minibatch32-nooverlong"), "32b"),
    _table("table1", "Avg@n, Cons@n and Pass@n of DAPO and FIPO", "Table 1, 32B: Avg@32, Cons@32, Pass@32 on AIME",
           BASE, "32b", "eval"),
    _table("table2", "Training settings (from the spec)", "Table 2: Qwen2.5-32B-Base settings", (), "32b"),
    _table("table3", "Training settings (from the spec)", "Table 3: Qwen2.5-Math-7B settings", (), "7b"),
    _table("table4", "GRPO, DAPO and FIPO, Avg@n", "Table 4, 7B: peak Avg@32 on AIME", BASELINES_7B, "7b", "eval"),
    _table("table5", "Ablation of filtering and the f clip range, Avg@n", "Table 5, 7B: peak Avg@32 on AIME",
           ("fipo-fclip-1.0-1.2", "fipo-raw", "fipo"), "7b", "eval"),
    _table("table6", "Ablation of τ, Avg@n", "Table 6, 7B: peak Avg@32 on AIME", TAUS, "7b", "eval"),
    Artifact("influence", "figure", "Per-token influence weights f: which tokens FIPO up- and down-weights",
             ("fipo",), None, ("metrics", "token_dump")),
)}


LABELS = {
    "dapo": "DAPO", "grpo": "GRPO", "fipo": "FIPO", "fipo-raw": "FIPO, raw Future-KL (no filtering)",
    "fipo-fclip-1.0-1.2": "FIPO, f clip [1.0, 1.2]", "fipo-tau8": "FIPO, τ = 8", "fipo-tau128": "FIPO, τ = 128",
    "fipo-tau256": "FIPO, τ = 256", "fipo-cliphigh-1.4": "FIPO, clip-high 1.4", "fipo-maxlen-25k": "FIPO, max length 25K",
    "fipo-minibatch32": "FIPO, mini-batch 32", "fipo-minibatch32-nooverlong": "FIPO, mini-batch 32, no overlong penalty",
}


def label(experiment: str, preset: str | None = None, among: tuple[str, ...] | list[str] = ()) -> str:
    """The legend label of a run: from its spec when the preset is known (its method and the settings in which it
    differs from the runs it is compared with, ``among``; fipo.analysis.labels), else the paper's name."""
    if preset is None:
        return LABELS.get(experiment, experiment)
    return run_labels(preset, tuple(dict.fromkeys([*among, experiment])))[experiment]


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
