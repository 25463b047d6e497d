"""Tables 2 and 3 of the paper (training settings), generated from the experiment spec: the spec is the
single source of truth, and tests/test_tables.py checks the result against PAPER.md. The renderers also write
the accuracy tables (1, 4-6, via :func:`fipo.analysis.plotting.save_table`), whose footnotes (``notes``) say
what their numbers are: the scorer, Cons@n's rule and what each interval resamples (problems or samples)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from fipo.spec import Experiment, load_experiment
from fipo.files import write_text_atomic

# table number -> (preset, the experiments it compares, column titles)
SETTINGS_TABLES = {
    2: ("qwen2.5-32b", ("dapo", "fipo"), ("DAPO", "FIPO")),
    3: ("qwen2.5-7b-math", ("dapo", "fipo"), ("DAPO", "FIPO")),
}
LOSS_NAMES = {"vanilla": "DAPO", "fipo": "Future-KL"}


def _number(x: float) -> str:
    """1e-06 -> 1e-6, 10.0 -> 10.0, 0.0 -> 0: the paper's way of writing numbers."""
    if x == 0:
        return "0"
    if abs(x) < 1e-3:
        mantissa, exponent = f"{x:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return repr(float(x))


def _int(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else _number(x)


def settings_rows(exp: Experiment) -> dict[str, str]:
    """Row label -> this experiment's cell, in the paper's wording."""
    p, d = exp.policy, exp.data
    updates = d.train_batch_size // p.ppo_mini_batch_size
    fipo = exp.policy.loss == "fipo"
    low, high = exp.fipo.f_clip_range
    return {
        "global batch (prompts) / group size G": f"{d.train_batch_size} / {exp.rollout.n}",
        "lr, scheduler": f"{_number(p.lr)}, {p.lr_scheduler}, {p.lr_warmup_steps} warm-up steps",
        "weight decay / grad clip": f"{_number(p.weight_decay)} / {_number(p.grad_clip)}",
        "max prompt / max response / overlong buffer": (
            f"{d.max_prompt_length} / {d.max_response_length} / "
            + (str(exp.reward.overlong_buffer_len) if exp.reward.overlong_buffer else "–")
        ),
        "sampling temperature / top-p (training)": f"{_number(exp.rollout.temperature)} / {_number(exp.rollout.top_p)}",
        "dual clip c / policy clip": f"{_number(p.clip_ratio_c)} / [{_number(p.clip_ratio_low)}, {_number(p.clip_ratio_high)}]",
        "KL penalty": _number(p.kl_loss_coef),
        "mini-batch (prompts)": f"{p.ppo_mini_batch_size} ({updates} updates/step)",
        "loss": LOSS_NAMES[p.loss],
        "decay rate τ / f clip range / safety threshold": (
            f"{_int(exp.fipo.tau)} / [{_number(low)}, {_number(high)}] / {_number(exp.fipo.safety_threshold)}"
            if fipo
            else "–"
        ),
    } | ({"context window": str(exp.model.max_position_embeddings)} if exp.model.max_position_embeddings else {})


def settings_table(number: int) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of Table ``number``: one row per setting, one column per method."""
    preset, experiments, titles = SETTINGS_TABLES[number]
    columns = [settings_rows(load_experiment(preset, name)) for name in experiments]
    header = ["setting", *titles]
    return header, [[label, *(col[label] for col in columns)] for label in columns[0]]


def _markdown_row(cells: list[str]) -> str:
    # a literal "|" would end the cell early and shift every later cell of the row
    return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"


def to_markdown(header: list[str], rows: list[list[str]], notes: Sequence[str] = ()) -> str:
    """A pipe table; each note follows it as a list item (the table's footnotes)."""
    lines = [_markdown_row(header), "|" + "---|" * len(header)]
    lines += [_markdown_row(row) for row in rows]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(header: list[str], rows: list[list[str]], caption: str = "", notes: Sequence[str] = ()) -> str:
    """A booktabs tabular (in a table float when captioned), the notes in small type under it; needs
    \\usepackage{booktabs}."""
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines += [r"\par\smallskip", r"{\footnotesize " + " \\\\\n".join(_latex_escape(n) for n in notes) + "}"]
    if caption:
        lines = [r"\begin{table}[t]", r"\centering", *lines, r"\caption{" + _latex_escape(caption) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_settings_tables(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for number in SETTINGS_TABLES:
        header, rows = settings_table(number)
        for suffix, render in ((".csv", to_csv), (".md", to_markdown)):
            path = out_dir / f"table{number}{suffix}"
            write_text_atomic(path, render(header, rows))
            written.append(path)
    return written
