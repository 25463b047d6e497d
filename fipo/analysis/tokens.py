"""Per-token dumps of FIPO's internals (``token_dump.rank<R>.jsonl``, see :mod:`fipo.token_dump`) for the
influence notebook: which tokens of a response FIPO up- or down-weights, and how f is spread over training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fipo.analysis.errors import MalformedLogError, MissingRunError
from fipo.files import MalformedLineError, read_jsonl

FIELDS = ("log_ratio", "future_kl", "influence_weight", "advantage")


def dump_files(run_dir: Path) -> list[Path]:
    files = sorted(Path(run_dir).glob("token_dump*.jsonl"))
    if not files:
        raise MissingRunError(Path(run_dir).name, Path(run_dir) / "token_dump.rank<R>.jsonl",
                              "per-token dumps are off: set fipo.dump_every > 0 in the preset and train again")
    return files


def load_token_dumps(run_dir: Path) -> pd.DataFrame:
    """One row per dumped response: order (training progress, by write time), rank file, call, length and the
    per-token arrays. A torn last line (a crash mid-write) is skipped; a bad line elsewhere is an error."""
    rows = []
    for path in dump_files(run_dir):
        try:
            records = list(read_jsonl(path, "token-dump"))
        except MalformedLineError as err:
            raise MalformedLogError(path, err.line, err.reason) from None
        for number, record in records:
            try:
                responses = record["responses"]
                time = float(record["time"])
            except (KeyError, TypeError, ValueError):
                raise MalformedLogError(path, number, "expected a token-dump record") from None
            for response in responses:
                if any(len(response[f]) != len(response["influence_weight"]) for f in FIELDS):
                    raise MalformedLogError(path, number, "per-token arrays of different lengths")
                rows.append({"file": path.name, "time": time, "call": record.get("call"), "length": response["length"],
                             **{f: np.asarray(response[f], dtype=np.float64) for f in FIELDS}})
    if not rows:
        raise MalformedLogError(dump_files(run_dir)[0], 0, "no records")
    frame = pd.DataFrame(rows).sort_values("time", kind="stable").reset_index(drop=True)
    # Training progress in [0, 1]: the dumps carry no global step (verl does not pass one to a policy loss).
    frame["progress"] = (frame["time"] - frame["time"].min()) / max(frame["time"].max() - frame["time"].min(), 1e-9)
    return frame


def padded(frame: pd.DataFrame, field: str = "influence_weight", max_tokens: int | None = None) -> np.ndarray:
    """(responses, tokens) array of one field, NaN past each response's end: the heat-map view."""
    width = max(len(v) for v in frame[field]) if max_tokens is None else max_tokens
    out = np.full((len(frame), width), np.nan)
    for i, values in enumerate(frame[field]):
        out[i, : min(len(values), width)] = values[:width]
    return out


def quantiles_over_training(frame: pd.DataFrame, bins: int = 10, field: str = "influence_weight",
                            qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> pd.DataFrame:
    """Quantiles of all dumped per-token values, per equal slice of training progress."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.searchsorted(edges, frame["progress"], side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        picked = frame.loc[index == b, field]
        if picked.empty:
            continue
        values = np.concatenate(list(picked))
        rows.append({"progress": (edges[b] + edges[b + 1]) / 2, "tokens": values.size,
                     **{f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in qs},
                     "frac_up": float(np.mean(values > 1)), "frac_down": float(np.mean(values < 1))})
    return pd.DataFrame(rows)
