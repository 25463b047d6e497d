"""``fipo eval``: sample n responses per problem, score them, write per-sample JSONL and a summary.

The per-sample file is written one problem at a time (all n lines in one write, then fsync), so a crash
loses at most the problem in flight; a rerun with the same settings reuses every finished problem and
samples only the rest. Rerunning with different settings into the same folder is refused.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from fipo.files import atomic_write, read_jsonl, write_text_atomic

from fipo.data import DEFAULT_DATA_DIR, dataset_path, require_datasets
from fipo.eval import BENCHMARKS
from fipo.eval.metrics import ProblemResult, summarize
from fipo.eval.sampling import Sampler, SamplingSettings, make_sampler
from fipo.eval.scoring import get_scorer

SAMPLES_FILE, SUMMARY_FILE, SUMMARY_CSV, SETTINGS_FILE = "samples.jsonl", "summary.json", "summary.csv", "settings.json"


def load_benchmark(name: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[dict]:
    """[{problem_id, messages, ground_truth}] from the benchmark's verl parquet (same prompt as training)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; allowed: {', '.join(BENCHMARKS)}")
    require_datasets([name], data_dir)
    frame = pd.read_parquet(dataset_path(name, data_dir))
    problems = []
    for i, row in enumerate(frame.itertuples()):
        extra = row.extra_info if isinstance(row.extra_info, dict) else {}
        problems.append(
            {
                "problem_id": str(extra.get("problem_id", extra.get("index", i))),
                "messages": [dict(m) for m in row.prompt],
                "ground_truth": str(row.reward_model["ground_truth"]),
            }
        )
    return problems


def read_finished(path: Path, n: int) -> dict[str, list[dict]]:
    """problem_id -> its n sample records, from a previous (possibly interrupted) run."""
    if not path.exists():
        return {}
    by_problem: dict[str, list[dict]] = {}
    for _, record in read_jsonl(path, "sample"):
        by_problem.setdefault(record["problem_id"], []).append(record)
    return {pid: recs for pid, recs in by_problem.items() if len(recs) == n}


def _check_settings(out_dir: Path, settings: dict) -> None:
    path = out_dir / SETTINGS_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise ValueError(f"{out_dir} holds an evaluation with other settings ({', '.join(changed)}); use another --out")
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")


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
) -> dict:
    problems = load_benchmark(benchmark, data_dir)
    score = get_scorer(scorer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, {"model": str(model_path), "benchmark": benchmark, "scorer": scorer, **asdict(settings)})
    samples_path = out_dir / SAMPLES_FILE
    finished = read_finished(samples_path, settings.n)
    # Rewrite the file with complete problems only (drops a torn tail), then append.
    with open(samples_path, "w") as f:
        for records in finished.values():
            f.writelines(json.dumps(r) + "\n" for r in records)
    todo = [(i, p) for i, p in enumerate(problems) if p["problem_id"] not in finished]
    log(f"[fipo eval] {benchmark}: {len(problems)} problems, {len(finished)} already done, {len(todo)} to sample")
    if todo:
        sampler = sampler or make_sampler(backend, model_path, tensor_parallel_size, settings.seed)
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
                    records = []
                    for k, s in enumerate(samples):
                        result = score(s.text, problem["ground_truth"])
                        records.append({
                            "problem_id": problem["problem_id"], "sample_index": k, "response": s.text,
                            "extracted_answer": result.extracted, "correct": result.correct,
                            "length": s.num_tokens, "finish_reason": s.finish_reason,
                        })
                    f.write("".join(json.dumps(r) + "\n" for r in records))
                    f.flush()
                    os.fsync(f.fileno())
                    finished[problem["problem_id"]] = records
            done = min(c + chunk_problems, len(todo))
            log(f"[fipo eval] {benchmark}: {done}/{len(todo)} problems sampled ({time.time() - start:.0f} s)")
    summary = summarize_records(problems, finished, settings.seed)
    summary.update({"benchmark": benchmark, "model": str(model_path), "scorer": scorer, "backend": backend,
                    "settings": asdict(settings)})
    write_summary(out_dir, summary)
    return summary


def summarize_records(problems: list[dict], finished: dict[str, list[dict]], seed: int = 0) -> dict:
    results = []
    for p in problems:
        records = sorted(finished[p["problem_id"]], key=lambda r: r["sample_index"])
        answer_ok = {}
        for r in records:
            if r["extracted_answer"]:
                answer_ok[r["extracted_answer"]] = answer_ok.get(r["extracted_answer"], False) or r["correct"]
        results.append(ProblemResult(p["problem_id"], [r["correct"] for r in records],
                                     [r["extracted_answer"] for r in records], p["ground_truth"], answer_ok))
    summary = summarize(results, seed=seed)
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
