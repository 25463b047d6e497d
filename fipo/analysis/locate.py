"""Finding the results folder from wherever a notebook runs.

JupyterLab starts a notebook's kernel in the notebook's own folder; papermill, the pipeline and a terminal
start it elsewhere. A relative ``results_dir`` (the notebooks' default, "results") is therefore looked up in
order: as given, from the working directory; against the project root (the folder holding
``workflow/Snakefile``, found above the working directory or above this package); and as the results folder
that contains the working directory (an executed copy under ``results/<preset>/notebooks/``, also after the
results folder was moved). The first that holds ``<preset>/`` wins; if none does, the error lists every place
tried.
"""

from __future__ import annotations

import os
from pathlib import Path

from fipo.analysis.errors import AnalysisError

PROJECT_MARKER = Path("workflow") / "Snakefile"


class ResultsNotFoundError(AnalysisError):
    def __init__(self, given, preset: str, tried: list[Path]):
        self.given, self.preset, self.tried = given, preset, tried
        places = "\n".join(f"  - {p}" for p in tried)
        super().__init__(
            f"results_dir={str(given)!r}: no folder with results of preset {preset!r} found. Looked in:\n{places}\n"
            f"(working directory: {Path.cwd()}). Pass results_dir= the folder that holds {preset}/runs/ "
            "(the pipeline's results_dir), or produce the results first: `snakemake --cores all`."
        )


def project_root(start: Path | None = None) -> Path | None:
    """The folder holding workflow/Snakefile above ``start`` (default: the working directory), else above this
    package (an editable install), else None."""
    for origin in (Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parent):
        for folder in (origin, *origin.parents):
            if (folder / PROJECT_MARKER).is_file():
                return folder
    return None


def candidates(given, cwd: Path | None = None) -> list[Path]:
    """Where ``given`` may point, in the order tried (duplicates removed)."""
    cwd = Path(cwd or Path.cwd()).resolve()
    given = Path(os.path.expanduser(str(given)))
    found = [given if given.is_absolute() else cwd / given]
    if not given.is_absolute():
        root = project_root(cwd)
        if root is not None:
            found.append(root / given)
    # an executed notebook in <results>/<preset>/notebooks/: the results folder is two levels up
    found += [cwd.parent.parent, *[p for p in cwd.parents if p.name == given.name]]
    return list(dict.fromkeys(Path(os.path.normpath(p)) for p in found))


def results_dir(given, preset: str, cwd: Path | None = None) -> Path:
    """The absolute, normalised results folder that holds ``<preset>/``; raises ResultsNotFoundError."""
    tried = candidates(given, cwd)
    for path in tried:
        if (path / preset).is_dir():
            return path
    raise ResultsNotFoundError(given, preset, tried)


def output_dir(out_dir, given_results, results: Path, preset: str, kind: str) -> Path:
    """Where a notebook writes: ``out_dir`` if given (re-based onto ``results`` when it lay under the
    ``results_dir`` the notebook was given, so that it follows a moved results folder), else
    ``<results>/<preset>/figures`` or ``tables``."""
    if not out_dir:
        return Path(results) / preset / ("figures" if kind == "figure" else "tables")
    out, given = Path(os.path.normpath(str(out_dir))), Path(os.path.normpath(str(given_results)))
    try:
        return Path(results) / out.relative_to(given)
    except ValueError:
        return out if out.is_absolute() else Path.cwd() / out
