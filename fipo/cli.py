"""``python -m fipo`` (or ``fipo``): experiments, training commands, data preparation, spec tables."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from fipo import data as data_mod
from fipo.experiment import SpecError, list_experiments, list_presets, load_experiment
from fipo import training
from fipo.verl_command import RunPaths, command_line, model_path, verl_environment, verl_overrides

DEFAULT_RESULTS = Path("results")


def run_paths(results_dir: Path, preset: str, experiment: str) -> RunPaths:
    return RunPaths(Path(results_dir) / preset / "runs" / experiment)


def cmd_experiments(args) -> int:
    for name in list_experiments(args.preset):
        print(name)
    return 0


def cmd_presets(args) -> int:
    for name in list_presets():
        print(name)
    return 0


def cmd_train(args) -> int:
    exp = load_experiment(args.preset, args.experiment)
    # Absolute paths: Ray workers do not share the launching shell's working directory.
    run = run_paths(args.results_dir.resolve(), args.preset, args.experiment)
    overrides = verl_overrides(
        exp, data_dir=args.data_dir.resolve(), run=run, results_dir=args.results_dir, ray_address=args.ray_address
    )
    overrides += args.override or []
    if args.dry_run:
        print(command_line(overrides))
        env = verl_environment(run, exp)
        print("# environment: " + " ".join(f"{k}={v}" for k, v in env.items()), file=sys.stderr)
        return 0
    data_mod.require_datasets([exp.data.train, *exp.data.val], args.data_dir)
    require_model(exp, args.results_dir)
    return training.run_training(exp, run, overrides, timeout_s=args.timeout or exp.trainer.timeout_s)


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


def cmd_tables(args) -> int:
    from fipo.tables import write_settings_tables

    for path in write_settings_tables(args.out):
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
    p.add_argument("--dry-run", action="store_true", help="print the verl command as one shell line and exit")
    p.add_argument("--data-dir", type=Path, default=data_mod.DEFAULT_DATA_DIR)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--ray-address", help="an existing Ray cluster (multi-node), e.g. 10.0.0.1:6379 or auto")
    p.add_argument("--timeout", type=float, help="wall-clock limit in seconds (default: the preset's trainer.timeout_s)")
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="extra verl Hydra override")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="prepare a dataset in verl's parquet format")
    p.add_argument("dataset", choices=["aime", "dapo", "tiny"])
    p.add_argument("--data-dir", type=Path, default=data_mod.DEFAULT_DATA_DIR)
    p.add_argument("--source", help="dapo: a local copy of DAPO-Math-17k (parquet file or folder)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("tiny-model", help="build the tiny preset's tokenizer and warm-started base model")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("tables", help="write Tables 2 and 3 (training settings) from the spec")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "spec_tables")
    p.set_defaults(func=cmd_tables)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, data_mod.DatasetUnavailable) as e:
        print(f"fipo: error: {e}", file=sys.stderr)
        return 2
