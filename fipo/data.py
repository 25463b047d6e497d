"""Training and evaluation data in verl's parquet format.

* AIME 2024 / 2025 from the verified JSONL files shipped in ``data/aime/`` (copied from shared/data/aime),
  with ``data_source`` = ``aime2024`` / ``aime2025`` (verl's default_compute_score routes ``aime*`` to the
  math_dapo rule) and the DAPO "Answer:" prompt.
* DAPO-Math-17k from the Hugging Face hub (``BytedTsinghua-SIA/DAPO-Math-17k``) or a local copy of it,
  deduplicated by prompt.

verl's columns: data_source, prompt (list of {role, content}), ability, reward_model {style, ground_truth},
extra_info {index, split, ...}.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fipo.files import atomic_write

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"
SHIPPED_AIME_DIR = PROJECT_ROOT / "data" / "aime"
DAPO_HUB_ID = "BytedTsinghua-SIA/DAPO-Math-17k"

# The DAPO-Math-17k prompt: the model must end with a line "Answer: $Answer" (math_dapo's rule reads it).
DAPO_PROMPT_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_PROMPT_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

# dataset name -> (file name under the data dir, the command that makes it)
DATASETS = {
    "dapo-math-17k": ("dapo-math-17k.parquet", "python -m fipo data dapo"),
    "aime2024": ("aime2024.parquet", "python -m fipo data aime"),
    "aime2025": ("aime2025.parquet", "python -m fipo data aime"),
    "tiny-train": ("tiny/train.parquet", "python -m fipo data tiny"),
    "tiny-val": ("tiny/val.parquet", "python -m fipo data tiny"),
    "tiny-test": ("tiny/test.parquet", "python -m fipo data tiny"),
}


class DatasetUnavailable(RuntimeError):
    """A dataset could not be obtained; the message names it and says what to do."""


def dataset_path(name: str, data_dir: Path | str = DEFAULT_DATA_DIR) -> Path:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return Path(data_dir) / DATASETS[name][0]


def require_datasets(names: list[str], data_dir: Path | str = DEFAULT_DATA_DIR) -> None:
    """Fail before anything runs if a dataset file is missing, naming it and the command that makes it."""
    missing = [(n, dataset_path(n, data_dir)) for n in names if not dataset_path(n, data_dir).is_file()]
    if missing:
        lines = [f"  {name}: {path} (make it with: {DATASETS[name][1]} --data-dir {data_dir})" for name, path in missing]
        raise DatasetUnavailable("missing dataset file(s):\n" + "\n".join(lines))


def dapo_prompt(problem: str) -> str:
    return DAPO_PROMPT_PREFIX + problem + DAPO_PROMPT_SUFFIX


def verl_row(*, data_source: str, problem: str, answer: str, index: int, split: str, **extra) -> dict:
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": dapo_prompt(problem)}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(answer)},
        "extra_info": {"index": index, "split": split, **extra},
    }


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """Write to a temporary file beside ``path`` and rename: a crash never leaves a half-written parquet."""
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_aime_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetUnavailable(f"AIME source file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetUnavailable(f"{path}:{number}: not valid JSON: {e}") from None
        missing = {"id", "problem", "answer"} - set(row)
        if missing:
            raise DatasetUnavailable(f"{path}:{number}: missing field(s) {sorted(missing)}")
        rows.append(row)
    return rows


def prepare_aime(data_dir: Path | str = DEFAULT_DATA_DIR, source_dir: Path | str = SHIPPED_AIME_DIR) -> list[Path]:
    """AIME 2024 and 2025 as verl parquet (30 rows each), one row per problem."""
    written = []
    for year in (2024, 2025):
        name = f"aime{year}"
        problems = read_aime_jsonl(Path(source_dir) / f"{name}.jsonl")
        rows = [
            verl_row(
                data_source=name, problem=p["problem"], answer=p["answer"], index=i, split="test", problem_id=p["id"]
            )
            for i, p in enumerate(problems)
        ]
        written.append(write_parquet_atomic(pd.DataFrame(rows), dataset_path(name, data_dir)))
    return written


def _load_dapo_source(source: str | None) -> pd.DataFrame:
    """A local parquet file/folder of DAPO-Math-17k, or the hub dataset when ``source`` is None."""
    if source is not None:
        path = Path(source)
        files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise DatasetUnavailable(f"DAPO-Math-17k: no parquet file at {path}")
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    try:
        import datasets

        return datasets.load_dataset(DAPO_HUB_ID, split="train").to_pandas()
    except Exception as e:  # offline, hub down, DNS: all mean the same thing to the user
        raise DatasetUnavailable(
            f"DAPO-Math-17k: could not load {DAPO_HUB_ID} from the Hugging Face hub ({type(e).__name__}: {e}).\n"
            f"On a machine with internet: huggingface-cli download --repo-type dataset {DAPO_HUB_ID} "
            "--local-dir DAPO-Math-17k, copy that folder here, then: python -m fipo data dapo --source DAPO-Math-17k"
        ) from None


def dedup_dapo(frame: pd.DataFrame) -> pd.DataFrame:
    """Deduplicate DAPO-Math-17k (the hub copy repeats each prompt) by prompt text, keeping the first row."""
    required = {"prompt", "reward_model"}
    missing = required - set(frame.columns)
    if missing:
        raise DatasetUnavailable(f"DAPO-Math-17k: source lacks column(s) {sorted(missing)}")

    def prompt_text(prompt) -> str:
        return "\n".join(str(turn["content"]) for turn in prompt)

    def ground_truth(reward_model) -> str:
        return str(reward_model["ground_truth"])

    out = frame.assign(_key=frame["prompt"].map(prompt_text)).drop_duplicates("_key").reset_index(drop=True)
    rows = [
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": key}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": ground_truth(rm)},
            "extra_info": {"index": i, "split": "train"},
        }
        for i, (key, rm) in enumerate(zip(out["_key"], out["reward_model"]))
    ]
    return pd.DataFrame(rows)


def prepare_dapo(data_dir: Path | str = DEFAULT_DATA_DIR, source: str | None = None) -> Path:
    return write_parquet_atomic(dedup_dapo(_load_dapo_source(source)), dataset_path("dapo-math-17k", data_dir))
