"""The experiment spec: one YAML file per preset (model scale) under config/presets/, scale-free method
definitions in config/methods.yaml. An experiment resolves as the deep merge of, in order:

    methods.yaml[method] (following its ``base:``)  ->  preset ``defaults``  ->  preset ``methods[method]``
    ->  the experiment's ``base:`` chain (each one's ``set:``)  ->  the experiment's own ``set:``

and is then validated into frozen (pydantic) dataclasses: every unknown key, wrong type or out-of-range value raises
:class:`SpecError` naming the key path, what is allowed and the layer (file and part) that wrote the value,
before anything runs. Spec files are read refusing duplicate keys, and every preset, method, experiment and
ablation family name is checked (NAME_PATTERN, FAMILY_PATTERN) before anything uses it.

The package: ``vocab`` (closed lists of values, name rules), ``schema`` (the sections and what each field
determines), ``rules`` (value and cross-section rules), ``loader`` (files, layers, origins, overrides, seeds).
Everything else imports the spec from here.
"""

from fipo.spec.loader import (CONFIG_DIR, Origins, ablations, describe_layer, evaluation, experiment_layers, flatten,
                              list_experiments, list_presets, load_all, load_experiment, merge_layers,
                              parse_override, preset_info, preset_scale, released, with_overrides, with_seed)
from fipo.spec.schema import (SECTIONS, AlgorithmSpec, DataSpec, EvaluationSpec, Experiment, FIPOSpec, ModelSpec,
                              PolicySpec, ReleasedSpec, RewardSpec, RolloutSpec, SpecError, TrainerSpec,
                              ValidationSpec, check_name)
from fipo.spec.vocab import (CHOICES, EVAL_CHOICES, FAMILY_PATTERN, LOGGERS, MAX_NAME_LENGTH, NAME_PATTERN, PAPER_ROWS,
                             PAPER_SCALES)

__all__ = [
    "CONFIG_DIR", "Origins", "ablations", "describe_layer", "evaluation", "experiment_layers", "flatten",
    "list_experiments", "list_presets", "load_all", "load_experiment", "merge_layers", "parse_override",
    "preset_info", "preset_scale", "released", "with_overrides", "with_seed",
    "SECTIONS", "AlgorithmSpec", "DataSpec", "EvaluationSpec", "Experiment", "FIPOSpec", "ModelSpec", "PolicySpec",
    "ReleasedSpec", "RewardSpec", "RolloutSpec", "SpecError", "TrainerSpec", "ValidationSpec", "check_name",
    "CHOICES", "EVAL_CHOICES", "FAMILY_PATTERN", "LOGGERS", "MAX_NAME_LENGTH", "NAME_PATTERN", "PAPER_ROWS",
    "PAPER_SCALES",
]
