"""The provenance matrix: every setting declares the stage it determines (fipo.determines), and a change of it
moves exactly the fingerprints of that stage. Generated from the declarations: a new key is in the matrix by
being declared, and a key without a declaration fails."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from fipo import determines
from fipo.determines import (CONVERT, EVALUATE, NOTHING, REPORT, SCOPE, SECTION, STAGES, TRAIN, UndeclaredSetting,
                             declarations, fingerprint, schema_declarations)
from fipo.spec import (CHOICES, EVAL_CHOICES, Experiment, EvaluationSpec, ReleasedSpec, evaluation,
                             load_experiment, released)
from fipo.data import DATASETS
from fipo.run_folder import run_provenance, spec_fingerprint
from fipo.verl_command import portable_overrides

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def leaves(obj, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, declared stage) of every setting of a declared dataclass, sections opened."""
    out = []
    for name, stage in declarations(type(obj)).items():
        if stage == SECTION:
            out += leaves(getattr(obj, name), f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", stage))
    return out


def other_value(owner, name: str, key: str):
    """A valid-typed value of ``owner.name`` other than its own: the representative change of the key."""
    value = getattr(owner, name)
    hint = typing.get_type_hints(type(owner))[name]
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = inner[0] if value is None and inner else type(value)
    choices = {**CHOICES, **{f"evaluation.{k}": v for k, v in EVAL_CHOICES.items()},
               "data.train": DATASETS, "data.val": DATASETS}.get(key)
    if isinstance(value, bool):
        return not value
    if choices and isinstance(value, str) and len(choices) > 1:
        return next(c for c in choices if c != value)
    if choices and isinstance(value, list):
        return [*value, next(c for c in choices if c not in value)]
    if kind is int:
        return (value or 0) + 3
    if kind is float:
        return (value or 0.0) * 1.5 + 0.25
    if kind is str:
        return (value or "") + "-changed"
    if kind is dict or typing.get_origin(kind) is dict:
        return {**(value or {}), "actor_rollout_ref.actor.fsdp_config.forward_prefetch": True}
    if isinstance(value, list) and value and isinstance(value[0], float):
        return [v + 0.01 for v in value]
    if isinstance(value, list):
        return [*value, "tensorboard" if "tensorboard" not in value else "wandb"]
    raise AssertionError(f"{key}: no representative change for {value!r}")


def changed(obj, key: str):
    """``obj`` with ``key`` (dotted, through sections) set to another value."""
    head, _, rest = key.partition(".")
    if rest:
        return dataclasses.replace(obj, **{head: changed(getattr(obj, head), rest)})
    return dataclasses.replace(obj, **{head: other_value(obj, head, key_path(obj, head))})


SECTION_NAMES = {cls: name for name, cls in typing.get_type_hints(Experiment).items() if dataclasses.is_dataclass(cls)}
SECTION_NAMES |= {EvaluationSpec: "evaluation", ReleasedSpec: "released"}


def key_path(owner, name: str) -> str:
    """``owner.name`` as the spec writes it (``policy.lr``); a top-level field of Experiment by its name."""
    section = SECTION_NAMES.get(type(owner))
    return f"{section}.{name}" if section else name


def run_prints(exp: Experiment) -> dict[str, str]:
    """The train job's Snakemake fingerprint and `fipo train`'s full one."""
    model = {"path": exp.model.path, "sha256": None}
    return {"dag": spec_fingerprint(exp, "v"),
            "run": run_provenance(exp, portable_overrides(exp), {}, model, "v")["fingerprint"]}


def eval_prints(ev: EvaluationSpec, rel: ReleasedSpec) -> dict[str, str]:
    """The fingerprints the pipeline's convert, evaluate, released-evaluate and released-table jobs compare
    (workflow/rules: the same calls)."""
    return {CONVERT: fingerprint(CONVERT, ev), EVALUATE: fingerprint(EVALUATE, ev),
            "released-evaluate": fingerprint(EVALUATE, ev, rel), REPORT: fingerprint(REPORT, rel)}


EXPERIMENTS = [("tiny", "fipo"), ("qwen2.5-7b-math", "dapo")]  # CPU and GPU, the FIPO loss and verl's
EXPERIMENT_KEYS = leaves(load_experiment("tiny", "fipo"))


@pytest.mark.parametrize("preset, name", EXPERIMENTS)
@pytest.mark.parametrize("key, stage", EXPERIMENT_KEYS, ids=[k for k, _ in EXPERIMENT_KEYS])
def test_a_spec_key_moves_a_runs_fingerprints_exactly_when_it_determines_training(preset, name, key, stage):
    exp = load_experiment(preset, name)
    before, after = run_prints(exp), run_prints(changed(exp, key))
    moved = {k for k in before if before[k] != after[k]}
    # the DAG's fingerprint and `fipo train`'s move together: they cannot disagree on whether to retrain
    assert moved == ({"dag", "run"} if stage == TRAIN else set()), (key, stage, moved)


EVAL_KEYS = [(f"evaluation.{k}", s) for k, s in declarations(EvaluationSpec).items()]
RELEASED_KEYS = [(f"released.{k}", s) for k, s in declarations(ReleasedSpec).items()]
EXPECTED = {CONVERT: {CONVERT}, EVALUATE: {EVALUATE, "released-evaluate"}, REPORT: {REPORT}, SCOPE: set(),
            NOTHING: set()}


@pytest.mark.parametrize("key, stage", EVAL_KEYS + RELEASED_KEYS, ids=[k for k, _ in EVAL_KEYS + RELEASED_KEYS])
def test_an_evaluation_key_moves_exactly_the_fingerprints_of_its_stage(key, stage):
    ev, rel = evaluation("qwen2.5-32b"), released("qwen2.5-32b")
    section, _, field = key.partition(".")
    if section == "evaluation":
        ev2, rel2 = dataclasses.replace(ev, **{field: other_value(ev, field, key)}), rel
    else:
        ev2, rel2 = ev, dataclasses.replace(rel, **{field: other_value(rel, field, key)})
    before, after = eval_prints(ev, rel), eval_prints(ev2, rel2)
    moved = {k for k in before if before[k] != after[k]}
    expected = EXPECTED[stage] if section == "evaluation" or stage != EVALUATE else {"released-evaluate"}
    assert moved == expected, (key, stage, moved)


def test_every_setting_declares_one_stage_and_the_matrix_covers_them_all():
    sizes = {"experiment": len(EXPERIMENT_KEYS), "evaluation": len(EVAL_KEYS), "released": len(RELEASED_KEYS),
             "pipeline config": len(schema_declarations(SCHEMA))}
    assert all(stage in STAGES for _, stage in EXPERIMENT_KEYS + EVAL_KEYS + RELEASED_KEYS)
    # every field of every section is in the matrix: the sections are read from the spec's own dataclasses
    exp = load_experiment("tiny", "fipo")
    assert sizes["experiment"] == sum(len(dataclasses.fields(getattr(exp, name))) if stage == SECTION else 1
                                      for name, stage in declarations(Experiment).items())
    print(f"provenance matrix: {sizes} keys x {len(STAGES)} stages")


def test_a_field_without_a_stage_is_refused():
    @dataclasses.dataclass
    class Section:
        declared: typing.Annotated[int, TRAIN] = 1
        forgotten: int = 2

    with pytest.raises(UndeclaredSetting, match=r"Section.forgotten: annotate it with the one stage"):
        declarations(Section)


def test_every_pipeline_config_key_declares_a_stage():
    found = schema_declarations(SCHEMA)
    assert "eval.n" in found and "train.timeout_s" in found and "study.window" in found
    undeclared = [key for key, stage in found.items() if stage not in STAGES]
    assert not undeclared, f"config keys without x-determines in workflow/schemas/config.schema.yaml: {undeclared}"
    assert found["train.timeout_s"] == NOTHING and found["eval.n"] == EVALUATE and found["results_dir"] == NOTHING


def test_config_material_reads_the_declared_keys():
    config = {"study": {"window": 7, "seeds": [1]}, "train": {"timeout_s": 5}}
    assert determines.config_material(config, SCHEMA, REPORT) == {"study.window": 7}
    assert determines.config_material(config, SCHEMA, NOTHING)["train.timeout_s"] == 5
