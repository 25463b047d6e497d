"""Per-token dumps of FIPO's internals (``token_dump.rank<R>.jsonl``, see :mod:`fipo.token_dump`) for the
influence notebook: which tokens of a response FIPO up- or down-weights, and how f is spread over training."""

from __future__ import annotations

import json
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
    """One row per dumped response: rank file, call, global step, prompt group (uid), length, token ids and the
    per-token arrays, in training order. ``progress`` runs from 0 to 1 over the dumped global steps (over write
    time for dumps written before they carried steps). A torn last line (a crash mid-write) is skipped; a bad line
    elsewhere is an error.

    A resumed run trains the steps after its checkpoint again, and its dump file (appended to) still holds the
    stopped attempt's records of those steps, drawn from responses the run no longer has (its rollout dumps are
    rewritten). Each rank file's records are split into attempts (a new process: another pid, or a loss-call
    counter that starts again), and of every global step only the last attempt's records are kept."""
    rows = []
    for path in dump_files(run_dir):
        attempt, last_pid, last_call = 0, None, None
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
            pid, call = record.get("pid"), record.get("call")
            if last_call is not None and (pid != last_pid or (call is not None and call <= last_call)):
                attempt += 1
            last_pid, last_call = pid, call
            for response in responses:
                n = len(response["influence_weight"])
                ids = response.get("token_ids")
                if any(len(response[f]) != n for f in FIELDS) or (ids is not None and len(ids) != n):
                    raise MalformedLogError(path, number, "per-token arrays of different lengths")
                step = response.get("global_step", record.get("global_step"))
                rows.append({"file": path.name, "attempt": attempt, "time": time, "call": call,
                             "global_step": np.nan if step is None else int(step), "uid": response.get("uid"),
                             "length": response["length"], "token_ids": ids,
                             **{f: np.asarray(response[f], dtype=np.float64) for f in FIELDS}})
    if not rows:
        raise MalformedLogError(dump_files(run_dir)[0], 0, "no records")
    frame = pd.DataFrame(rows)
    by_step = bool(frame["global_step"].notna().all())
    if by_step:  # of each step, the last attempt that trained it
        last = frame.groupby(["file", "global_step"])["attempt"].transform("max")
        frame = frame[frame["attempt"] == last]
    clock = frame["global_step"] if by_step else frame["time"]
    frame = frame.assign(clock=clock).sort_values(["clock", "time"], kind="stable").reset_index(drop=True)
    frame["progress"] = (frame["clock"] - frame["clock"].min()) / max(frame["clock"].max() - frame["clock"].min(), 1e-9)
    frame.attrs["progress_unit"] = "global step" if by_step else "write time (dumps without global steps)"
    return frame.drop(columns="clock")


def tokenizer_source(run_dir: Path, results_dir: Path) -> str:
    """Where the run's tokenizer is: the model in its provenance (``${results_dir}`` filled in; a hub id stays a
    hub id), else its converted checkpoint. Raises MissingRunError naming what was tried."""
    run_dir, tried = Path(run_dir), []
    provenance = run_dir / "provenance.json"
    if provenance.exists():
        model = str(json.loads(provenance.read_text()).get("model", {}).get("path", ""))
        model = model.replace("${results_dir}", str(results_dir))
        if model and (Path(model) / "tokenizer_config.json").exists():
            return model
        if _looks_like_hub_id(model):
            return model  # e.g. Qwen/Qwen2.5-32B: transformers loads it from the local hub cache
        tried.append(model or f"{provenance} (no model path)")
    converted = run_dir / "hf" / "selected"
    if (converted / "tokenizer_config.json").exists():
        return str(converted)
    tried.append(str(converted))
    raise MissingRunError(run_dir.name, Path(tried[0]), f"no tokenizer found (tried: {', '.join(tried)})")


def _looks_like_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~", "$")) and not Path(model).exists()


def decode(frame: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """Add ``tokens`` (one string per dumped token, decoded one id at a time so that they line up with the
    per-token values) and ``text`` (the response decoded as a whole). Responses dumped without ids get None."""
    def pieces(ids):
        return None if ids is None else [tokenizer.decode([i]) for i in ids]

    def text(ids):
        return None if ids is None else tokenizer.decode(ids)

    return frame.assign(tokens=[pieces(ids) for ids in frame["token_ids"]], text=[text(ids) for ids in frame["token_ids"]])


def weight_by_token(frame: pd.DataFrame, min_count: int = 5) -> pd.DataFrame:
    """Mean f, mean Future-KL and count per token string over all decoded dumps, tokens seen at least
    ``min_count`` times, sorted by mean f: which tokens FIPO up- (top) and down-weights (bottom)."""
    rows = [(tok, w, k) for toks, ws, ks in zip(frame["tokens"], frame["influence_weight"], frame["future_kl"])
            if toks is not None for tok, w, k in zip(toks, ws, ks)]
    if not rows:
        return pd.DataFrame(columns=["token", "mean_f", "mean_future_kl", "count"])
    table = pd.DataFrame(rows, columns=["token", "f", "future_kl"]).groupby("token")
    out = pd.DataFrame({"mean_f": table["f"].mean(), "mean_future_kl": table["future_kl"].mean(),
                        "count": table["f"].size()}).reset_index()
    return out[out["count"] >= min_count].sort_values("mean_f", ascending=False, kind="stable").reset_index(drop=True)


def padded(frame: pd.DataFrame, field: str = "influence_weight", max_tokens: int | None = None) -> np.ndarray:
    """(responses, tokens) array of one field, NaN past each response's end: the heat-map view."""
    width = max(len(v) for v in frame[field]) if max_tokens is None else max_tokens
    out = np.full((len(frame), width), np.nan)
    for i, values in enumerate(frame[field]):
        out[i, : min(len(values), width)] = values[:width]
    return out


def quantiles_over_training(frame: pd.DataFrame, bins: int = 10, field: str = "influence_weight",
                            qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> pd.DataFrame:
    """Quantiles of all dumped per-token values over training: one row per dumped global step when there are at
    most ``bins`` of them, else per equal slice of training progress. ``x`` is the global step (the slice's
    centre in steps) or, for dumps without steps, the progress fraction."""
    by_step = frame.attrs.get("progress_unit") == "global step"
    if by_step and frame["global_step"].nunique() <= bins:
        groups = [(float(step), frame["global_step"] == step) for step in sorted(frame["global_step"].unique())]
    else:
        edges = np.linspace(0, 1, bins + 1)
        index = np.clip(np.searchsorted(edges, frame["progress"], side="right") - 1, 0, bins - 1)
        first, last = (frame["global_step"].min(), frame["global_step"].max()) if by_step else (0.0, 1.0)
        centres = first + (edges[:-1] + edges[1:]) / 2 * (last - first)
        groups = [(float(centres[b]), index == b) for b in range(bins)]
    rows = []
    for x, selected in groups:
        picked = frame.loc[selected, field]
        if picked.empty:
            continue
        values = np.concatenate(list(picked))
        rows.append({"x": x, "tokens": values.size,
                     **{f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in qs},
                     "frac_up": float(np.mean(values > 1)), "frac_down": float(np.mean(values < 1))})
    return pd.DataFrame(rows)
