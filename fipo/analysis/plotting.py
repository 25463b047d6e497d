"""One style for every figure, panels of per-step series, and atomic writers for figures and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the pipeline runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fipo.analysis import catalog  # noqa: E402
from fipo.analysis.across_seeds import band  # noqa: E402
from fipo.analysis.labels import validation_benchmarks  # noqa: E402
from fipo.analysis.runs import experiment_runs, series, validation_metric  # noqa: E402
from fipo.eval.metrics import LEVEL  # noqa: E402
from fipo.files import atomic_write, write_text_atomic  # noqa: E402
from fipo.tables import to_csv, to_latex, to_markdown  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 160, "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
    "legend.fontsize": 7.5, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
    "axes.spines.right": False, "lines.linewidth": 1.4, "pdf.fonttype": 42,
}
# the same colour for the same experiment in every figure
COLORS = {
    "dapo": "#1f77b4", "fipo": "#d62728", "grpo": "#2ca02c", "fipo-raw": "#9467bd", "fipo-fclip-1.0-1.2": "#8c564b",
    "fipo-tau8": "#e377c2", "fipo-tau128": "#7f7f7f", "fipo-tau256": "#bcbd22", "fipo-cliphigh-1.4": "#17becf",
    "fipo-maxlen-25k": "#ff7f0e", "fipo-minibatch32": "#8c564b", "fipo-minibatch32-nooverlong": "#7f7f7f",
}


def apply_style() -> None:
    plt.rcParams.update(STYLE)


def color(experiment: str) -> str | None:
    return COLORS.get(experiment)


def grid(panels: int, columns: int = 3, size=(3.4, 2.6)):
    """A figure with ``panels`` axes in rows of ``columns``; unused axes are hidden."""
    apply_style()
    columns = min(columns, panels)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def plot_metric(ax, frame: pd.DataFrame, experiments: Sequence[str], metric: str, title: str, ylabel: str = "",
                scale: float = 1.0, marker: str | None = None) -> None:
    """One panel: ``metric`` against step for each experiment; an experiment run at several seeds is drawn as
    their mean, a band and one thin line per seed (:func:`plot_seeds`)."""
    for experiment in experiments:
        per_seed = {seed: series(frame, run, metric) * scale
                    for seed, run in experiment_runs(frame, experiment).items()}
        if per_seed:
            preset = frame.loc[frame["experiment"] == experiment, "preset"].iloc[0]
            plot_seeds(ax, per_seed, _label(preset, experiment, experiments), color(experiment), marker)
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)


BAND_NOTE = ("several seeds: thick line, the across-seed mean; band, its {level:.0%} t interval at each step "
             "(it resamples training seeds); thin lines, single seeds")


def plot_seeds(ax, per_seed: dict, label: str, line_color: str | None = None, marker: str | None = None) -> None:
    """One experiment's per-step series ({seed: Series indexed by step}). One run: a plain line. Several seeds: the
    across-seed mean (labelled with the number of seeds), its t interval as a band where two seeds or more have
    the step, and each seed as a thin line of the same colour; the figure's footnote (:func:`finish`) says so."""
    if len(per_seed) == 1:
        s = next(iter(per_seed.values()))
        ax.plot(s.index, s.values, label=label, color=line_color, marker=marker, ms=3)
        return
    table = pd.DataFrame(per_seed).sort_index()
    for seed in table.columns:
        s = table[seed].dropna()
        ax.plot(s.index, s.values, color=line_color, lw=0.6, alpha=0.45)
    stats = band(table)
    ax.fill_between(stats.index, stats["low"], stats["high"], color=line_color, alpha=0.18, lw=0)
    ax.plot(stats.index, stats["mean"], label=f"{label} (mean of {len(per_seed)} seeds)", color=line_color,
            marker=marker, ms=3)
    ax.figure.fipo_band_note = BAND_NOTE.format(level=LEVEL)


def _label(preset: str, experiment: str, experiments: Sequence[str]) -> str:
    """The legend label of an experiment's runs, from its spec (fipo.analysis.labels)."""
    return catalog.label(experiment, preset or None, tuple(experiments))


def panel_letter(i: int) -> str:
    return f"({chr(ord('a') + i)})"


def finish(fig, axes, title: str, subtitle: str = "") -> None:
    """Shared legend, the title (what this preset ran), a subtitle (the paper's wording) and, when a panel drew
    several seeds, the footnote that says what the band is."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 3), bbox_to_anchor=(0.5, 1.0), frameon=False)
    # above the legend (anchored at the top edge), whatever the figure's height: offsets in inches
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), y=1 + 0.15 / fig.get_figheight(), va="bottom",
                 fontsize=10)
    fig.tight_layout()
    note = getattr(fig, "fipo_band_note", "")
    if note:
        fig.text(0.01, -0.2 / fig.get_figheight(), note, fontsize=7, color="0.35", va="top")


def save_figure(fig, out_dir, name: str) -> list[Path]:
    """``<name>.png`` and ``<name>.pdf``, each written whole or not at all."""
    paths = [atomic_write(Path(out_dir) / f"{name}{suffix}",
                          lambda tmp, suffix=suffix: fig.savefig(tmp, format=suffix[1:], bbox_inches="tight"))
             for suffix in catalog.FIGURE_SUFFIXES]
    plt.close(fig)
    return paths


def save_table(frame: pd.DataFrame, out_dir, name: str, caption: str = "", notes: Sequence[str] = ()) -> list[Path]:
    """``<name>.csv``, ``.md`` and ``.tex`` of a table of strings and numbers; ``notes`` (footnotes: what the
    numbers and intervals are) go under the Markdown and LaTeX tables (the CSV stays plain: its column titles
    carry the labels)."""
    header = [str(c) for c in frame.columns]
    rows = [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
    paths = []
    renderers = ((".csv", to_csv), (".md", lambda h, r: to_markdown(h, r, notes)),
                 (".tex", lambda h, r: to_latex(h, r, caption, notes)))
    for suffix, render in renderers:
        paths.append(write_text_atomic(Path(out_dir) / f"{name}{suffix}", render(header, rows)))
    return paths


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if value != value else f"{value:.1f}"
    return str(value)


def plot_validation(ax, frame: pd.DataFrame, experiments: Sequence[str], stat: str = "mean", title: str = "") -> None:
    """Validation accuracy in % (Avg@N for ``stat="mean"``, Cons@N for ``"maj"``) against step; several seeds of an
    experiment as in :func:`plot_seeds`."""
    name, benchmarks = "", []
    for experiment in experiments:
        runs = experiment_runs(frame, experiment)
        if not runs:
            continue
        per_seed = {}
        for seed, run in runs.items():
            name = validation_metric(frame, run, stat)
            per_seed[seed] = series(frame, run, name) * 100
        preset = frame.loc[frame["experiment"] == experiment, "preset"].iloc[0]
        plot_seeds(ax, per_seed, _label(preset, experiment, experiments), color(experiment), marker="o")
        if preset:
            benchmarks.append(validation_benchmarks(preset, experiment))
    # what the axis measures: the runs' validation data (by dataset name) and the N verl logged
    benchmark = " / ".join(dict.fromkeys(benchmarks)) or (name.split("/")[1] if name else "")
    n = name.split("@")[-1].split("/")[0] if name else "N"
    statistic = f"{'Avg' if stat == 'mean' else 'Cons'}@{n}"
    ax.set_title((title.replace("@N", f"@{n}") + f", {benchmark}") if title else f"{benchmark} {statistic} (validation)")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{benchmark} {statistic} (%)")
