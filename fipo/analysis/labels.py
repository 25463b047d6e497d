"""Legend labels and settings tables from what was run: each run's resolved spec, not fixed strings.

A run is labelled with its method and, when it is compared with runs of the same method, the settings in which
they differ, with this preset's values: "FIPO, max response 60 tokens" at tiny, "FIPO, max response 25K
tokens" at 32B. Derived engine settings (token budgets per GPU) are left out: they follow from the others.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterable, Sequence

from fipo.spec import flatten, load_experiment

METHOD_NAMES = {"dapo": "DAPO", "grpo": "GRPO", "fipo": "FIPO"}
# Keys that never make a label: identity, bookkeeping, and settings derived from others.
IGNORED_PREFIXES = ("name", "description", "preset", "engine.", "trainer.project_name", "trainer.timeout_s",
                    "trainer.rollout_dump", "fipo.dump_every", "fipo.chunk_size")


def tokens(n: int) -> str:
    """25600 -> "25K tokens" (the paper's K = 1024), 60 -> "60 tokens"."""
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K tokens"
    return f"{n:,} tokens"


def _number(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def plain(value: Any) -> str:
    """As a reader writes it: [a, b] for lists, – for None, no Python reprs."""
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(plain(v) for v in value) + "]"
    return _number(value)


FORMATS = {
    "data.max_response_length": lambda v: f"max response {tokens(v)}",
    "reward.overlong_buffer_len": lambda v: f"overlong buffer {tokens(v)}",
    "reward.overlong_buffer": lambda v: "overlong penalty" if v else "no overlong penalty",
    "policy.clip_ratio_high": lambda v: f"clip-high {1 + v:g}",  # the paper names the upper ratio bound
    "policy.clip_ratio_low": lambda v: f"clip-low {1 - v:g}",
    "policy.ppo_mini_batch_size": lambda v: f"mini-batch {v} prompts",
    "fipo.tau": lambda v: f"τ = {_number(v)}",
    "fipo.f_clip_range": lambda v: f"f clip [{float(v[0])}, {float(v[1])}]",
    "fipo.filter_ratio": lambda v: "ratio filter" if v else "no ratio filter (raw Future-KL)",
    "fipo.filter_threshold": lambda v: f"filter r ≤ {_number(v)}" if v is not None else "filter r ≤ c",
    "fipo.safety_threshold": lambda v: f"safety threshold {_number(v)}",
}


def format_setting(key: str, value: Any) -> str:
    if key in FORMATS:
        return FORMATS[key](value)
    return f"{key} = {_number(value)}"


def settings(preset: str, experiment: str) -> tuple[tuple[str, Any], ...]:
    """The run's resolved spec, flattened to (dotted key, value) pairs (lists as tuples, hashable). Not cached
    here: the spec loader caches each version of a preset file, so an edited spec shows in a running kernel."""
    flat = flatten(asdict(load_experiment(preset, experiment)))
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(flat.items()))


def _labelled(key: str) -> bool:
    return not key.startswith(IGNORED_PREFIXES)


def run_labels(preset: str, experiments: Sequence[str]) -> dict[str, str]:
    """A legend label per run. Among runs of one method, the reference (the run named after the method, else the
    first in legend order) gets the values of every setting the others change; each other run gets the settings
    in which it differs from it."""
    specs = {e: dict(settings(preset, e)) for e in experiments}
    labels = {}
    by_method: dict[str, list[str]] = {}
    for e in experiments:
        by_method.setdefault(specs[e]["method"], []).append(e)
    for method, group in by_method.items():
        name = METHOD_NAMES.get(method, method)
        base = method if method in group else group[0]
        reference = specs[base]
        others = [e for e in group if e != base]
        changed = {e: [k for k in specs[e] if _labelled(k) and specs[e][k] != reference.get(k)] for e in others}
        _drop_implied(changed, specs)
        varied = list(dict.fromkeys(k for keys in changed.values() for k in keys))
        for e in group:
            keys = varied if e == base else changed[e]
            parts = [format_setting(k, specs[e][k]) for k in keys]
            labels[e] = ", ".join([name, *parts])
    return labels


def _drop_implied(changed: dict[str, list[str]], specs: dict) -> None:
    """With the overlong penalty off, its buffer length says nothing."""
    for e, keys in changed.items():
        if specs[e].get("reward.overlong_buffer") is False and "reward.overlong_buffer_len" in keys:
            keys.remove("reward.overlong_buffer_len")


def settings_table(preset: str, experiments: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Rows (key, one value per run) of every labelled setting, the keys that differ between the runs first:
    the readable replacement for a dataclass repr."""
    experiments = list(experiments)
    specs = [dict(settings(preset, e)) for e in experiments]
    keys = [k for k in specs[0] if _labelled(k) or k.startswith("engine.")]
    rows = [(k, [plain(s.get(k)) for s in specs]) for k in keys]
    return sorted(rows, key=lambda row: len(set(row[1])) == 1)  # stable: differing keys first, spec order kept


def validation_benchmarks(preset: str, experiment: str) -> str:
    """The run's validation data, by dataset name (what its val-core accuracy is measured on)."""
    return ", ".join(dict(settings(preset, experiment))["data.val"])
