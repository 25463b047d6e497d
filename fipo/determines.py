"""What each setting determines: the one declaration every fingerprint is derived from.

Every field of the experiment spec's sections (fipo.spec) is annotated with the pipeline stage whose result
it determines, ``Annotated[int, TRAIN]``; every key of the pipeline's config (workflow/schemas/config.schema.yaml)
says the same with ``x-determines``. The stages, in pipeline order:

- ``train``: the trained model (a run's fingerprint; Snakemake's ``train`` params)
- ``convert``: which checkpoint of a finished run is evaluated (``convert`` params)
- ``evaluate``: an evaluation's samples and scores (``evaluate`` params)
- ``report``: a report made from finished runs and evaluations, not the runs themselves (``study`` params)
- ``scope``: which jobs exist (benchmarks, experiments, seeds): a job added or dropped, none redone
- ``nothing``: where things go or how long to wait, not what is computed (timeouts, trackers, descriptions)

A change reruns its stage's jobs and, through their outputs, everything after them, and nothing before. Snakemake's
params and ``fipo train``'s fingerprint both read these declarations (:func:`material`), so they cannot disagree;
tests/test_determines.py changes every declared key in turn and checks which fingerprints move.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache
from typing import Any

from fipo.provenance import digest_of

TRAIN = "train"
CONVERT = "convert"
EVALUATE = "evaluate"
REPORT = "report"
SCOPE = "scope"
NOTHING = "nothing"
STAGES = (TRAIN, CONVERT, EVALUATE, REPORT, SCOPE, NOTHING)
SECTION = "section"  # a field that is a declared dataclass itself: each of its fields says what it determines


class UndeclaredSetting(TypeError):
    """A spec field without a stage: nothing could say what a change of it reruns."""


@lru_cache(maxsize=None)
def declarations(cls: type) -> dict[str, str]:
    """{field name: stage} of a dataclass whose every field is ``Annotated[type, STAGE]`` or a declared dataclass
    (:data:`SECTION`)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):  # a section: its own fields are declared
            out[f.name] = SECTION
            continue
        stages = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, str) and m in STAGES]
        if len(stages) != 1:
            raise UndeclaredSetting(f"{cls.__name__}.{f.name}: annotate it with the one stage it determines, "
                                    f"Annotated[type, STAGE] with STAGE one of {', '.join(STAGES)}")
        out[f.name] = stages[0]
    return out


def material(obj: Any, stage: str) -> dict[str, Any]:
    """The values of ``obj``'s fields (recursively, for fields that are declared dataclasses themselves) that
    determine ``stage``: what a fingerprint of that stage hashes."""
    out = {}
    for name, declared in declarations(type(obj)).items():
        value = getattr(obj, name)
        if declared == SECTION:
            inner = material(value, stage)
            if inner:
                out[name] = inner
        elif declared == stage:
            out[name] = value
    return out


def fingerprint(stage: str, *objects: Any, **extra: Any) -> str:
    """The fingerprint of a job of ``stage``: the :func:`material` of ``objects`` for that stage, and ``extra``
    (the digest of the code that computes it, settings from outside the spec)."""
    return digest_of({"settings": [material(obj, stage) for obj in objects], **extra})


def schema_declarations(schema: dict, prefix: str = "") -> dict[str, str]:
    """{dotted key: stage} of every leaf property of the pipeline config's JSON schema (``x-determines``)."""
    out = {}
    for key, prop in (schema.get("properties") or {}).items():
        dotted = f"{prefix}{key}"
        if prop.get("type") == "object" and "properties" in prop:
            out.update(schema_declarations(prop, dotted + "."))
        else:
            out[dotted] = prop.get("x-determines")
    return out


def config_material(config: dict, schema: dict, stage: str) -> dict[str, Any]:
    """{dotted key: value} of the pipeline config's keys declared to determine ``stage``."""
    out = {}
    for dotted, declared in schema_declarations(schema).items():
        if declared != stage:
            continue
        value: Any = config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[dotted] = value
    return out
