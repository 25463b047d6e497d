"""``python -m fipo`` (or ``fipo``): experiments, training commands, data preparation, spec tables."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from fipo import data as data_mod
from fipo.doctor import STAGES
from fipo.eval import BENCHMARKS
from fipo.checkpoint_steps import SELECTIONS
from fipo.eval.metrics import DEFAULT_UNANSWERED, UNANSWERED_RULES
from fipo.eval.models import hub_snapshot, resolve_model
from fipo.eval.runner import ON_CHANGE
from fipo.eval.sampling import BACKENDS
from fipo.eval.scoring import SCORERS
from fipo.spec import SpecError, list_experiments, list_presets, load_experiment, with_overrides, with_seed
from fipo import training
from fipo.files import write_text_atomic
from fipo.analysis.errors import AnalysisError
from fipo.provenance import folder_digest, project_version, short
from fipo.run_folder import RunFolderBusy, run_folder, run_provenance
from fipo.verl_command import (absolute_path, command_line, model_path, portable_overrides, verl_environment,
                               verl_overrides)

DEFAULT_RESULTS = Path("results")


def cmd_experiments(args) -> int:
    for name in list_experiments(args.preset):
        print(name)
    return 0


def cmd_presets(args) -> int:
    for name in list_presets():
        print(name)
    return 0


def cmd_train(args) -> int:
    # The overrides are applied to the spec and checked like it: what verl gets is what every rule and the
    # fingerprint saw (fipo.spec.with_overrides).
    exp = with_overrides(with_seed(load_experiment(args.preset, args.experiment), args.seed, args.study),
                         args.override or [])
    # Absolute paths: Ray workers do not share the launching shell's working directory.
    results_dir, data_dir = absolute_path(args.results_dir), absolute_path(args.data_dir)
    run = run_folder(results_dir, args.preset, args.experiment, args.seed, args.study)
    overrides = verl_overrides(exp, data_dir=data_dir, run=run, results_dir=results_dir, ray_address=args.ray_address)
    if args.dry_run:
        print(command_line(overrides))
        env = verl_environment(run, exp)
        print("# environment: " + " ".join(f"{k}={v}" for k, v in env.items()), file=sys.stderr)
        return 0
    datasets = [exp.data.train, *exp.data.val]
    data_mod.require_datasets(datasets, data_dir)
    require_model(exp, results_dir)
    provenance = run_provenance(
        exp, portable_overrides(exp), {name: data_mod.dataset_path(name, data_dir) for name in datasets},
        model_identity(exp, results_dir), project_version(),
    )
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    seed = ("" if args.seed is None else f" --seed {args.seed}") + (" --study" if args.study else "")
    with run.lock(f"fipo train --preset {args.preset} --experiment {args.experiment}{seed}") as lock_fd:
        outcome = run.claim(provenance, log=log)
        log(f"[fipo] {exp.run_id}: fingerprint {short(provenance['fingerprint'])} ({outcome})")
        finished = run.completion(provenance["fingerprint"]) if outcome == "resume" else None
        if finished is not None:  # verl would resume from its last checkpoint and train past the end
            log(f"[fipo] {exp.run_id}: already trained to step {finished.get('last_step')} with this fingerprint; "
                "nothing to train")
            if args.record:  # the record as it was written when the run finished, byte for byte
                write_text_atomic(args.record, run.completed.read_text())
            return 0
        start = time.time()
        code = training.run_training(exp, run, overrides, timeout_s=args.timeout or exp.trainer.timeout_s,
                                     lock_fd=lock_fd)
        if code == 0:
            run.write_record(args.record, provenance, command_line(overrides), wall_s=time.time() - start)
    return code


def cmd_rehearse(args) -> int:
    from fipo.rehearse import rehearse

    return rehearse(args.preset, args.experiment, args.results_dir, args.data_dir, timeout_s=args.timeout)


def model_identity(exp, results_dir: Path) -> dict:
    """The model as part of a run's fingerprint: its spec path, and the content of a local folder (the tiny
    model, or a local copy); a hub id stands for itself."""
    path = Path(model_path(exp, results_dir))
    return {"path": exp.model.path, "sha256": folder_digest(path) if path.is_dir() else None}


def require_model(exp, results_dir: Path) -> None:
    path = model_path(exp, results_dir)
    if "${results_dir}" in exp.model.path and not Path(path).is_dir():
        raise data_mod.DatasetUnavailable(
            f"model folder not found: {path} (make it with: python -m fipo tiny-model --results-dir {results_dir})"
        )


def cmd_data(args) -> int:
    if args.dataset == "tiny":
        from fipo.tiny import prepare_tiny_data

        paths = prepare_tiny_data(args.data_dir)
    elif args.dataset == "aime":
        paths = data_mod.prepare_aime(args.data_dir)
    elif args.dataset == "dapo":
        paths = [data_mod.prepare_dapo(args.data_dir, args.source)]
    else:
        raise SystemExit(f"unknown dataset {args.dataset!r}")
    for path in paths:
        print(path)
    return 0


def cmd_tiny_model(args) -> int:
    from fipo.tiny import build_tiny_base_model

    out = Path(args.results_dir) / "tiny" / "base_model"
    print(build_tiny_base_model(out, log=lambda msg: print(msg, file=sys.stderr, flush=True)))
    return 0


def cmd_eval(args) -> int:
    from fipo.eval.runner import evaluate
    from fipo.eval.sampling import SamplingSettings

    settings = SamplingSettings(n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                                seed=args.seed)
    out = args.out or Path(args.results_dir) / "eval" / Path(args.model).name / args.benchmark
    model = resolve_model(args.model, args.revision)  # a local folder, or a hub id's snapshot in the HF cache
    summary = evaluate(str(model), args.benchmark, out, settings, backend=args.backend, scorer=args.scorer,
                       data_dir=args.data_dir, tensor_parallel_size=args.tensor_parallel_size, on_change=args.on_change,
                       cons_unanswered=args.cons_unanswered, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    n = settings.n
    passed = f"  Pass@{n} {summary[f'pass@{n}']:.1f}" if f"pass@{n}" in summary else ""  # n = 1: Pass@1 is Avg@1
    print(f"{args.benchmark}: Avg@{n} {summary[f'avg@{n}']:.1f}  Cons@{n} {summary[f'cons@{n}']:.1f}{passed}  ({out})")
    return 0


def cmd_fetch_model(args) -> int:
    """Put a hub model's snapshot into the Hugging Face cache (the pipeline does it once, on a machine with
    internet, before the GPU jobs that read it) and record which commit it is."""
    path = hub_snapshot(args.model, args.revision)
    record = {"model": args.model, "revision": args.revision or "main", "commit": path.name, "path": str(path)}
    if args.record:
        write_text_atomic(args.record, json.dumps(record, indent=2) + "\n")
    print(path)
    return 0


def cmd_convert(args) -> int:
    from fipo.eval.checkpoints import convert, select_step

    run = run_folder(absolute_path(args.results_dir), args.preset, args.experiment, args.seed, args.study)
    name = run.run_dir.name
    metric = args.metric
    if args.which == "best" and not args.step and not metric:  # the run's validation Avg@N (AIME24 if there)
        from fipo.analysis.runs import load_metrics, validation_metric

        metric = validation_metric(load_metrics(run.metrics, args.preset, name), f"{args.preset}/{name}")
    step = args.step or select_step(run.checkpoints, args.which, run.metrics, metric)
    target = args.out or run.run_dir / "hf" / f"global_step_{step}"
    # the seed only when given: an unseeded run's provenance.json stays as it was
    origin = {"preset": args.preset, "experiment": args.experiment, **({} if args.seed is None else {"seed": args.seed}),
              **({"study": True} if args.study else {}),
              "run_fingerprint": run.recorded_fingerprint(), "which": "step" if args.step else args.which}
    print(convert(run.checkpoints, step, target, provenance=origin))
    return 0


def cmd_lengths(args) -> int:
    from fipo.analysis.rollouts import write_length_stats

    exp = load_experiment(args.preset, args.experiment)
    run = run_folder(args.results_dir, args.preset, args.experiment, args.seed, args.study)
    out = args.out or run.length_stats
    print(write_length_stats(run.rollouts, out, model_path(exp, args.results_dir), exp.data.max_response_length,
                             log=lambda msg: print(msg, file=sys.stderr, flush=True)))
    return 0


def cmd_tables(args) -> int:
    from fipo.tables import write_settings_tables

    for path in write_settings_tables(args.out):
        print(path)
    return 0


def cmd_plan(args) -> int:
    from fipo.plan import Assumptions, plan, render, with_overrides

    assumptions = with_overrides(Assumptions(), response_fraction=args.response_fraction,
                                 keep_fraction=args.keep_fraction, mfu=args.mfu,
                                 decode_tokens_per_s=args.decode_tokens_per_s, gpu_memory_gib=args.gpu_memory_gib)
    estimates = plan(args.preset, [args.experiment] if args.experiment else None, assumptions)
    print(render(args.preset, estimates, assumptions), end="")
    return 0


def _float_argument(text: str, expected: str) -> float:
    """``text`` as a float, or argparse's error saying what was ``expected``."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a seed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if not 0 <= value < 2**32:  # the seeds numpy and verl take
        raise argparse.ArgumentTypeError(f"must be a non-negative integer below 2**32, got {text!r}")
    return value


def add_seed_argument(parser: argparse.ArgumentParser) -> None:
    """``--seed`` of the commands that find a run folder (train, convert, lengths)."""
    parser.add_argument("--seed", type=non_negative_int, help="the run at this training seed (trainer.seed: data "
                        "order, rollout sampling), in runs/<experiment>@seed<N>/; default: the spec's seed, in "
                        "runs/<experiment>/")
    parser.add_argument("--study", action="store_true", help="with --seed: the study's run at that seed "
                        "(snakemake study: trained longer), in runs/<experiment>@study-seed<N>/")


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    value = _float_argument(text, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _positive_float(expected: str, must_be: str):
    """An argparse type: a finite float > 0 (0, negative values, nan and inf are refused)."""

    def parse(text: str) -> float:
        value = _float_argument(text, expected)
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be {must_be}, got {text!r}")
        return value

    return parse


positive_number = _positive_float("a number > 0", "a finite number > 0")
# a hang guard's limit
positive_seconds = _positive_float("a number of seconds", "a finite number of seconds > 0")


def cmd_doctor(args) -> int:
    """Exit 0 when every check passes (and write --marker), 1 when one fails."""
    from fipo.doctor import diagnose
    from fipo.doctor.checks import report

    title, results = diagnose(args.preset, args.results_dir, args.data_dir, experiment=args.experiment,
                              stage=args.stage, benchmark=args.benchmark, ray_address=args.ray_address,
                              overrides=args.override)
    text = report(results, title)
    print(text, end="", flush=True)
    if any(r.failed for r in results):
        return 1
    if args.marker:
        write_text_atomic(args.marker, text)
    return 0


def cmd_released_table(args) -> int:
    from fipo.analysis.released import write_released_table

    for path in write_released_table(args.results_dir, args.preset, args.out):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fipo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the presets (model scales)")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("experiments", help="list the experiments of a preset, one per line")
    p.add_argument("--preset", required=True)
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("train", help="run (or print with --dry-run) the verl command of one experiment")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--experiment", required=True)
    add_seed_argument(p)
    p.add_argument("--dry-run", action="store_true", help="print the verl command as one shell line and exit")
    p.add_argument("--data-dir", type=Path, default=data_mod.DEFAULT_DATA_DIR)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--ray-address", help="an existing Ray cluster (multi-node), e.g. 10.0.0.1:6379 or auto")
    p.add_argument("--timeout", type=positive_seconds, help="stop the attempt once nothing in its run folder changed for this many seconds (default: the preset's trainer.timeout_s)")
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="extra verl Hydra override")
    p.add_argument("--record", type=Path, help="on success, write the run's record (JSON: steps, wall time, command) here")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("rehearse", help="run a GPU preset's experiment for 2 steps of the real verl trainer on the CPU "
                                        "(tiny model and data, sizes scaled down; fipo/rehearse.py) and check it")
    p.add_argument("--preset", required=True, help="a GPU preset")
    p.add_argument("--experiment", default="fipo", help="an experiment of the preset (default: fipo)")
    p.add_argument("--data-dir", type=Path, default=data_mod.DEFAULT_DATA_DIR,
                   help="where the tiny data is (made if missing)")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS,
                   help="the tiny model (made if missing) and the run: <results-dir>/rehearsal/<preset>/<experiment>/")
    p.add_argument("--timeout", type=positive_seconds, help="stop once nothing in the run folder changed for this many seconds (default: the tiny preset's)")
    p.set_defaults(func=cmd_rehearse)

    p = sub.add_parser("data", help="prepare a dataset in verl's parquet format")
    p.add_argument("dataset", choices=["aime", "dapo", "tiny"])
    p.add_argument("--data-dir", type=Path, default=data_mod.DEFAULT_DATA_DIR)
    p.add_argument("--source", help="dapo: a local copy of DAPO-Math-17k (parquet file or folder)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("tiny-model", help="build the tiny preset's tokenizer and warm-started base model")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("eval", help="sample and score a model on AIME 2024/2025 or the tiny test set")
    p.add_argument("--model", required=True,
                   help="a Hugging Face model folder, or a hub id (owner/name: its snapshot in the HF cache, "
                        "downloaded there when missing)")
    p.add_argument("--revision", help="hub id only: a branch, tag or commit (default: main)")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--backend", default="vllm", choices=BACKENDS)
    p.add_argument("--scorer", default="math_dapo", choices=SCORERS,
                   help="math_dapo: verl 0.9.1's rule (Answer: line, else the last \\boxed{}; our training reward); "
                        "math_dapo_strict: the Answer: line only (the official recipe's reward); math_verify: "
                        "Math-Verify's mathematical comparison")
    p.add_argument("--cons-unanswered", default=DEFAULT_UNANSWERED, choices=UNANSWERED_RULES,
                   help="Cons@n: samples without an answer vote as one 'no answer' class (vote, the default: verl's "
                        "maj@N convention) or do not vote (abstain)")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=20480)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=data_mod.DEFAULT_DATA_DIR)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--out", type=Path, help="output folder (default: results/eval/<model>/<benchmark>)")
    p.add_argument("--on-change", choices=ON_CHANGE, default="refuse",
                   help="the folder holds an evaluation of another model (by content) or with other settings: refuse "
                        "(default), or restart after moving the old files to <out>/superseded/")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fetch-model", help="download a hub model into the Hugging Face cache (nothing if cached)")
    p.add_argument("model", help="a hub id, owner/name")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")
    p.add_argument("--record", type=Path, help="write the model, revision, commit and local path here (JSON)")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("convert", help="turn a run's checkpoint into a Hugging Face folder (verl's model merger)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--experiment", required=True)
    add_seed_argument(p)
    p.add_argument("--step", type=int, help="a checkpointed step (default: chosen by --which)")
    p.add_argument("--which", default="last", choices=SELECTIONS)
    p.add_argument("--metric", help="validation metric for --which best, e.g. val-core/aime2024/acc/mean@32")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("lengths", help="per-step response-length quantiles of a run, from verl's rollout dumps")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--experiment", required=True)
    add_seed_argument(p)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--out", type=Path, help="CSV path (default: <run>/length_stats.csv)")
    p.set_defaults(func=cmd_lengths)

    p = sub.add_parser("plan", help="estimate GPU-hours, tokens, peak memory per GPU and disk of a preset's runs "
                                    "(a stated cost model, fipo/plan.py: estimates, not measurements)")
    p.add_argument("--preset", required=True)
    p.add_argument("--experiment", help="one experiment of the preset (default: all of them, and their total)")
    p.add_argument("--response-fraction", type=fraction,
                   help="mean response / max_response_length (default: the paper's mean length where it reports "
                        "one, else 0.3; set, it replaces them for every experiment)")
    p.add_argument("--keep-fraction", type=fraction,
                   help="share of groups that survive DAPO's dynamic sampling (default 0.5)")
    p.add_argument("--mfu", type=fraction, help="model FLOPs utilisation of the update (default 0.3)")
    p.add_argument("--decode-tokens-per-s", type=positive_number,
                   help="vLLM decode throughput per GPU (default: the model's row in fipo.plan.MODELS)")
    p.add_argument("--gpu-memory-gib", type=positive_number, help="memory of one GPU in GiB (default 80)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("doctor", help="check that this machine can run a preset's GPU jobs (exit 1 if not)")
    p.add_argument("--preset", required=True)
    p.add_argument("--experiment", help="one experiment (default: every experiment of the preset)")
    p.add_argument("--stage", default="all", choices=STAGES,
                   help="train, eval (of the runs), all (both; default) or released (the preset's released model)")
    p.add_argument("--benchmark", choices=BENCHMARKS, help="eval/released: one benchmark (default: the preset's)")
    p.add_argument("--ray-address", help="the Ray cluster training joins: its nodes and GPUs are counted")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="a verl override training gets (trainer.total_training_steps, save_freq and "
                        "max_actor_ckpt_to_keep change the checkpoints to keep)")
    p.add_argument("--data-dir", type=Path, default=data_mod.DEFAULT_DATA_DIR)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--marker", type=Path, help="on success, write the report here (the pipeline's marker file)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("released-table", help="the released model's evaluation beside the paper's Table 1 row")
    p.add_argument("--preset", required=True, help="a preset with a 'released:' section (qwen2.5-32b)")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS,
                   help="holds <preset>/released/eval/<benchmark>/summary.json")
    p.add_argument("--out", type=Path, help="output folder (default: <results-dir>/<preset>/tables)")
    p.set_defaults(func=cmd_released_table)

    p = sub.add_parser("study-report", help="the study's claims (FIPO vs DAPO) from runs at several seeds: "
                                            "effect, across-seed interval, paired test, verdict (Markdown)")
    p.add_argument("--run", action="append", default=[], type=study_run, metavar="EXPERIMENT:SEED=RUN_DIR",
                   help="one run folder (holding metrics.jsonl) of an experiment at a seed; repeat for every run")
    p.add_argument("--seeds", nargs="+", type=non_negative_int, metavar="N",
                   help="instead of --run: the runs `fipo train --seed N --study` made, runs/<experiment>@study-seed<N>/ of "
                        "--results-dir and --preset, for every --experiments")
    p.add_argument("--experiments", nargs="+", default=["dapo", "fipo", "grpo"], metavar="NAME",
                   help="with --seeds: the experiments (default: dapo fipo grpo)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--method", default="fipo")
    p.add_argument("--baseline", default="dapo")
    p.add_argument("--window", type=int, default=None, help="training steps averaged at each end (default 5)")
    p.add_argument("--out", type=Path, required=True, help="the report (Markdown), written atomically")
    p.set_defaults(func=cmd_study_report)

    p = sub.add_parser("tables", help="write Tables 2 and 3 (training settings) from the spec")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "spec_tables")
    p.set_defaults(func=cmd_tables)
    return parser


def study_run(text: str) -> tuple[str, int, Path]:
    """EXPERIMENT:SEED=RUN_DIR (argparse type)."""
    head, sep, folder = text.partition("=")
    experiment, colon, seed = head.rpartition(":")
    if not (sep and colon and experiment and folder and seed.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected EXPERIMENT:SEED=RUN_DIR, e.g. fipo:1=results/tiny/runs/fipo")
    return experiment, int(seed), Path(folder)


def cmd_study_report(args) -> int:
    from fipo.analysis import study

    window = study.LENGTH_WINDOW if args.window is None else args.window
    if window < 1:
        raise ValueError(f"--window: must be >= 1, got {window}")
    if bool(args.run) == bool(args.seeds):
        raise ValueError("study-report: give either --run (run folders) or --seeds (runs of fipo train --seed --study)")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds: must be distinct, got {args.seeds}")
    runs = args.run or [(e, seed, run_folder(args.results_dir, args.preset, e, seed, study=True).run_dir)
                        for e in args.experiments for seed in args.seeds]
    measures: dict[str, dict[int, object]] = {}
    for experiment, seed, folder in runs:
        if seed in measures.get(experiment, {}):
            raise ValueError(f"study-report: {experiment} at seed {seed} given twice")
        measures.setdefault(experiment, {})[seed] = study.measure_run_folder(folder, experiment, seed, window)
    text = study.render_report(measures, window, args.method, args.baseline)
    write_text_atomic(args.out, text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "study", False) and args.seed is None:
        parser.error("--study: the study's runs are at a seed; give --seed N")
    try:
        return args.func(args)
    except (SpecError, data_mod.DatasetUnavailable, ValueError, AnalysisError, RunFolderBusy) as e:
        print(f"fipo: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # a backend that is not installed here (vLLM on a CPU machine, math-verify)
        print(f"fipo: error: {e} (is the package installed in this environment? see README)", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"fipo: error: {' '.join(map(str, e.cmd))} exited with {e.returncode}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing file or folder, a full disk, no permission: one line, not a traceback
        print(f"fipo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP from snakemake or Slurm (fipo.training)
        print(f"fipo: interrupted ({e or 'SIGINT'}); rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
