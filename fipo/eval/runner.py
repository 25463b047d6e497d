"""``fipo eval``: sample n responses per problem, score them, write per-sample JSONL and a summary.

The per-sample file is written one problem at a time (all n lines in one write, then fsync), so a crash
loses at most the problem in flight; a rerun with the same settings reuses every finished problem and
samples only the rest. An evaluation is keyed on its model's and benchmark's content (not their paths) and
its sampling settings and scorer (``settings.json``); rerunning with other ones into the same folder is refused,
or with ``on_change="restart"`` the old results are moved to ``superseded/`` and the evaluation starts again.
``settings.json`` also records the summary's conventions (``cons_unanswered``, ``summary_version``; see
:mod:`fipo.eval.metrics`): they are part of the key, but the samples do not depend on them, so a change keeps
the samples and recomputes ``summary.json`` from them (the pipeline passes ``--cons-unanswered``, so a changed
rule reruns its eval jobs, which then only rewrite their summaries).

One evaluation writes to a folder at a time: ``evaluate`` holds the folder's lock (:mod:`fipo.folder_lock`,
``<parent>/.<folder>.lock``) throughout, and a second one into the same folder is refused at once with
:class:`fipo.folder_lock.FolderBusy` naming the first. The benchmark file and the model folder's JSON files are
checked where they are read: a damaged one is a ValueError naming the file (and its row, or line and column).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional

import pandas as pd

from fipo.data import DEFAULT_DATA_DIR, dataset_path, require_datasets
from fipo.eval import BENCHMARKS
from fipo.eval.metrics import DEFAULT_UNANSWERED, SUMMARY_VERSION, ProblemResult, describe_cons, summarize
from fipo.eval.models import check_model_folder
from fipo.eval.sampling import Sampler, SamplingSettings, make_sampler
from fipo.eval.scoring import answer_equivalence, get_scorer
from fipo.files import MalformedLineError, atomic_write, read_jsonl, write_text_atomic
from fipo.folder_lock import folder_lock
from fipo.provenance import file_digest, folder_digest, short

SAMPLES_FILE, SUMMARY_FILE, SUMMARY_CSV, SETTINGS_FILE = "samples.jsonl", "summary.json", "summary.csv", "settings.json"
SUPERSEDED_DIR = "superseded"
ON_CHANGE = ("refuse", "restart")  # what to do when an output folder holds an evaluation with other settings
INFO_KEYS = ("model",)  # in settings.json for the reader, but not part of the key (the model may move)
SUMMARY_KEYS = ("cons_unanswered", "summary_version")  # conventions of summary.json: a change keeps the samples
SAMPLE_KEYS = ("problem_id", "sample_index", "response", "extracted_answer", "correct", "length", "finish_reason")


class BenchmarkFileError(ValueError):
    """A benchmark parquet that cannot be evaluated as it is: its file and, where there is one, its row."""


def load_benchmark(name: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[dict]:
    """[{problem_id, messages, ground_truth}] from the benchmark's verl parquet (same prompt as training).

    Refused with :class:`BenchmarkFileError` (rows counted from 0, as pandas does): two rows with one problem id
    (the evaluation is keyed on the id: the second problem would be scored with the first one's samples) and a
    row without a ground truth (every answer would be scored against the text "None")."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; allowed: {', '.join(BENCHMARKS)}")
    require_datasets([name], data_dir)
    path = dataset_path(name, data_dir)
    frame = pd.read_parquet(path)
    problems, rows_of = [], {}  # rows_of: problem id -> its row
    for i, row in enumerate(frame.itertuples()):
        extra = row.extra_info if isinstance(getattr(row, "extra_info", None), dict) else {}
        problem_id = str(extra.get("problem_id", extra.get("index", i)))
        if problem_id in rows_of:
            raise BenchmarkFileError(f"{path}: rows {rows_of[problem_id]} and {i} (counting from 0) have the same "
                                     f"problem_id {problem_id!r}; each problem needs its own id")
        rows_of[problem_id] = i
        problems.append({"problem_id": problem_id, "messages": [dict(m) for m in row.prompt],
                         "ground_truth": _ground_truth(getattr(row, "reward_model", None), path, i)})
    return problems


def _ground_truth(reward_model, path: Path, row: int) -> str:
    """The row's ``reward_model.ground_truth`` as text; a missing, null (None, NaN) or blank one is refused."""
    if not isinstance(reward_model, dict):
        problem = "no reward_model"
    else:
        truth = reward_model.get("ground_truth")
        if isinstance(truth, float) and math.isnan(truth):  # how pandas may hand over a null
            truth = None
        if truth is not None and str(truth).strip():
            return str(truth)
        problem = "no reward_model.ground_truth" if truth is None else f"an empty ground truth ({truth!r})"
    raise BenchmarkFileError(f"{path}: row {row} (counting from 0) has {problem}; every problem needs its answer")


def read_finished(path: Path, n: int, problem_ids: Iterable[str],
                  log: Optional[Callable[[str], None]] = None) -> dict[str, list[dict]]:
    """problem_id -> its n sample records, from a previous (possibly interrupted) run.

    The writer appends each problem's n records in one write, so a crash can only tear the end of the file:
    a torn last line and the records of the last problem when it has fewer than n are left out (with a log
    line). Anything else that does not fit is refused with :class:`MalformedLineError` (file and line): a
    record of a problem outside the benchmark, a sample index outside [0, n) or seen twice, a problem with
    more than n records, or an incomplete problem that is not the last one in the file.
    """
    path = Path(path)
    if not path.exists():
        return {}
    known = set(problem_ids)
    finished: dict[str, list[dict]] = {}
    group: list[dict] = []  # the records of the problem being read, from its first line at `group_line`
    group_line = last_line = 0

    def close_group() -> None:
        if len(group) < n:
            raise MalformedLineError(path, group_line, f"problem {group[0]['problem_id']!r} has {len(group)} of n={n} "
                                     "samples but is not the last problem in the file (a crash only tears that one)")
        finished[group[0]["problem_id"]] = list(group)

    for number, record in read_jsonl(path, "sample"):
        last_line = number
        if not isinstance(record, dict) or any(k not in record for k in SAMPLE_KEYS):
            raise MalformedLineError(path, number, f"expected a sample record with {', '.join(SAMPLE_KEYS)}")
        pid, index = record["problem_id"], record["sample_index"]
        if pid not in known:
            raise MalformedLineError(path, number, f"problem {pid!r} is not in the benchmark")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise MalformedLineError(path, number, f"sample_index {index!r} of problem {pid!r} is outside [0, {n})")
        if group and pid != group[0]["problem_id"]:
            close_group()
            group = []
        if pid in finished:
            raise MalformedLineError(path, number, f"problem {pid!r} appears again after other problems")
        if len(group) == n:
            raise MalformedLineError(path, number, f"problem {pid!r} has more than n={n} samples")
        if any(r["sample_index"] == index for r in group):
            raise MalformedLineError(path, number, f"duplicate sample_index {index} of problem {pid!r}")
        if not group:
            group_line = number
        group.append(record)
    if len(group) == n:
        finished[group[0]["problem_id"]] = group
    elif group and log:
        log(f"[fipo eval] {path}: dropping the {len(group)} of n={n} samples of problem {group[0]['problem_id']!r} "
            f"at lines {group_line}-{last_line} (the run that wrote them was interrupted)")
    if log and last_line < len(path.read_text().splitlines()):  # read_jsonl skipped a torn last line
        log(f"[fipo eval] {path}: dropping the torn last line {last_line + 1} (a crash mid-write)")
    return finished


def _changed_keys(previous: dict, current: dict, ignore: tuple = INFO_KEYS + SUMMARY_KEYS) -> list[str]:
    return sorted(k for k in set(previous) | set(current) if k not in ignore and previous.get(k) != current.get(k))


def _describe(key: str, previous: dict, current: dict) -> str:
    old, new = previous.get(key, "(absent)"), current.get(key, "(absent)")
    if key.endswith("_sha256"):
        old, new = (short(v) if isinstance(v, str) else v for v in (old, new))
    return f"{key}: {old} -> {new}"


def _move_aside(out_dir: Path, previous: dict, log: Callable[[str], None]) -> Path:
    """Move the old evaluation's files to ``superseded/<UTC time>-<old model hash>/``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    old_model = previous.get("model_sha256")
    target = out_dir / SUPERSEDED_DIR / f"{stamp}-{short(old_model) if isinstance(old_model, str) else 'unknown'}"
    target.mkdir(parents=True)
    # settings.json last: until it moves, an interrupted move is still seen as the old evaluation (and moved again)
    for name in (SAMPLES_FILE, SUMMARY_FILE, SUMMARY_CSV, SETTINGS_FILE):
        if (out_dir / name).exists():
            os.replace(out_dir / name, target / name)
    log(f"[fipo eval] {out_dir}: settings changed; moved the previous evaluation to {target}")
    return target


def _check_settings(out_dir: Path, settings: dict, on_change: str, log: Callable[[str], None]) -> None:
    """Refuse (or move aside, with ``on_change="restart"``) an evaluation in ``out_dir`` made with other
    settings. Samples without a settings.json are of unknown settings: they count as different."""
    path, samples = out_dir / SETTINGS_FILE, out_dir / SAMPLES_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    elif samples.exists():
        previous = {}
    else:
        return
    changed = _changed_keys(previous, settings)
    if not changed:
        conventions = [k for k in SUMMARY_KEYS if previous.get(k) != settings.get(k)]
        if conventions and samples.exists():
            what = "; ".join(_describe(k, previous, settings) for k in conventions)
            log(f"[fipo eval] {out_dir}: summary conventions changed ({what}); keeping the samples and recomputing "
                "the summary")
        return
    if on_change == "restart":
        _move_aside(out_dir, previous, log)
        return
    what = ("; ".join(_describe(k, previous, settings) for k in changed) if path.exists()
            else f"{samples} has no {SETTINGS_FILE}")
    raise ValueError(f"{out_dir} holds an evaluation with other settings ({what}). Its samples cannot be reused: "
                     f"rerun with --on-change restart (on_change='restart') to move them to "
                     f"{out_dir / SUPERSEDED_DIR}/ and start again, or write to another --out")


def evaluation_key(model_path, benchmark: str, data_dir, scorer: str, settings: SamplingSettings,
                   cons_unanswered: str = DEFAULT_UNANSWERED) -> dict:
    """What ``settings.json`` holds: the model's and the benchmark file's content hashes, the scorer and the
    sampling settings (the key of the samples), the summary's conventions (Cons@n's rule for samples without
    an answer, the summary version; a change recomputes only the summary) and the model's path (information
    only)."""
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"model folder not found: {model_path} (fipo eval keys an evaluation on the model's "
                                "content, so it needs a local Hugging Face folder)")
    return {"model": str(model_path), "model_sha256": folder_digest(model_path), "benchmark": benchmark,
            "benchmark_sha256": file_digest(dataset_path(benchmark, data_dir)), "scorer": scorer, **asdict(settings),
            "cons_unanswered": cons_unanswered, "summary_version": SUMMARY_VERSION}


def evaluate(
    model_path: str,
    benchmark: str,
    out_dir: Path,
    settings: SamplingSettings = SamplingSettings(),
    backend: str = "vllm",
    scorer: str = "math_dapo",
    data_dir: Path = DEFAULT_DATA_DIR,
    tensor_parallel_size: int = 1,
    chunk_problems: int = 8,
    sampler: Optional[Sampler] = None,
    log: Callable[[str], None] = print,
    on_change: str = "refuse",
    cons_unanswered: str = DEFAULT_UNANSWERED,
) -> dict:
    if on_change not in ON_CHANGE:
        raise ValueError(f"on_change={on_change!r}; allowed: {', '.join(ON_CHANGE)}")
    problems = load_benchmark(benchmark, data_dir)
    score = get_scorer(scorer)
    describe_cons(cons_unanswered)  # an unknown rule fails here, before anything is written
    out_dir = Path(out_dir)
    # One evaluation per folder for its whole run: two would both append to samples.jsonl (every problem's
    # samples twice) and move or rewrite each other's files.
    with folder_lock(out_dir, f"fipo eval of {model_path} on {benchmark}"):
        out_dir.mkdir(parents=True, exist_ok=True)
        key = evaluation_key(model_path, benchmark, data_dir, scorer, settings, cons_unanswered)
        check_model_folder(model_path)  # a damaged file named before it could read as "other settings"
        _check_settings(out_dir, key, on_change, log)  # before anything expensive; writes nothing (restart: moves)
        finished = _resume(out_dir / SAMPLES_FILE, settings.n, problems, log)
        todo = [(i, p) for i, p in enumerate(problems) if p["problem_id"] not in finished]
        log(f"[fipo eval] {benchmark}: {len(problems)} problems, {len(finished)} already done, {len(todo)} to sample")
        if todo:
            sampler = sampler or make_sampler(backend, model_path, settings, tensor_parallel_size, chunk_problems)
        # Only now that the model loaded: a failed start (a typo in --model, a backend that cannot start) must not
        # claim the folder for its settings.
        write_text_atomic(out_dir / SETTINGS_FILE, json.dumps(key, indent=2) + "\n")
        if todo:
            _sample(todo, sampler, settings, score, out_dir / SAMPLES_FILE, finished, chunk_problems,
                    lambda message: log(f"[fipo eval] {benchmark}: {message}"))
        summary = summarize_records(problems, finished, scorer, cons_unanswered)
        summary.update({"benchmark": benchmark, "model": str(model_path), "model_sha256": key["model_sha256"],
                        "backend": backend, "settings": asdict(settings)})
        write_summary(out_dir, summary)
    return summary


def _resume(samples_path: Path, n: int, problems: list[dict], log: Callable[[str], None]) -> dict[str, list[dict]]:
    """The finished problems of an earlier run (:func:`read_finished`), with the sample file cut down to them."""
    finished = read_finished(samples_path, n, (p["problem_id"] for p in problems), log)
    # Drop a torn tail (or add a missing final newline) before appending: whole new file or the old one.
    kept = "".join(json.dumps(r) + "\n" for records in finished.values() for r in records)
    if samples_path.exists() and samples_path.read_text() != kept:
        write_text_atomic(samples_path, kept)
    return finished


def _sample(todo: list[tuple[int, dict]], sampler: Sampler, settings: SamplingSettings, score, samples_path: Path,
            finished: dict[str, list[dict]], chunk_problems: int, log: Callable[[str], None]) -> None:
    """Sample, score and append the problems of ``todo`` ((index, problem) pairs), a chunk at a time, each
    problem's n records in one write and fsync'd; adds them to ``finished``."""
    start = time.time()
    for c in range(0, len(todo), chunk_problems):
        chunk = todo[c : c + chunk_problems]
        prompts = [
            sampler.tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
            for _, p in chunk
        ]
        outputs = sampler.sample(prompts, settings, seed_offsets=[i for i, _ in chunk])
        with open(samples_path, "a") as f:
            for (_, problem), samples in zip(chunk, outputs):
                records = [_record(problem, k, s, score) for k, s in enumerate(samples)]
                f.write("".join(json.dumps(r) + "\n" for r in records))
                f.flush()
                os.fsync(f.fileno())
                finished[problem["problem_id"]] = records
        done = min(c + chunk_problems, len(todo))
        log(f"{done}/{len(todo)} problems sampled ({time.time() - start:.0f} s)")


def _record(problem: dict, index: int, sample, score) -> dict:
    result = score(sample.text, problem["ground_truth"])
    return {"problem_id": problem["problem_id"], "sample_index": index, "response": sample.text,
            "extracted_answer": result.extracted, "correct": result.correct, "length": sample.num_tokens,
            "finish_reason": sample.finish_reason}


def summarize_records(problems: list[dict], finished: dict[str, list[dict]], scorer: str = "math_dapo",
                      cons_unanswered: str = DEFAULT_UNANSWERED) -> dict:
    """The summary of the scored samples; Cons@n votes over the answer classes of ``scorer``."""
    results = []
    for p in problems:
        records = sorted(finished[p["problem_id"]], key=lambda r: r["sample_index"])
        results.append(ProblemResult(p["problem_id"], [r["correct"] for r in records],
                                     [r["extracted_answer"] for r in records], p["ground_truth"]))
    summary = {"scorer": scorer, **summarize(results, same=answer_equivalence(scorer), unanswered=cons_unanswered)}
    summary["cons_rule"] = describe_cons(cons_unanswered, scorer)
    lengths = [r["length"] for recs in finished.values() for r in recs]
    summary["mean_response_length"] = statistics.fmean(lengths)
    summary["median_response_length"] = statistics.median(lengths)
    summary["truncated_fraction"] = sum(r["finish_reason"] == "length" for recs in finished.values() for r in recs) / len(lengths)
    return summary


def write_summary(out_dir: Path, summary: dict) -> None:
    write_text_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    rows = summary["per_problem"]

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out_dir / SUMMARY_CSV, write_csv)
