"""Loading the spec: YAML files read refusing duplicate keys, an experiment's layers merged with the origin of every
value, then built and checked (``fipo.spec.schema``, ``fipo.spec.rules``); overrides and seeds applied the same way."""

from __future__ import annotations

import copy
import dataclasses
import os
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Optional

import yaml

from fipo.eval.models import HUB_REVISION, is_hub_id
from fipo.run_names import run_name
from fipo.spec.rules import SEED_LIMIT, validate_values
from fipo.spec.schema import (SECTIONS, EvaluationSpec, Experiment, ReleasedSpec, SpecError, build_section,
                              check_name, require)
from fipo.spec.vocab import EVAL_CHOICES, FAMILY_PATTERN, PAPER_ROWS, PAPER_SCALES
from fipo.verl_keys import refusal, spec_key

# The spec folder (methods.yaml, presets/); FIPO_CONFIG_DIR points every tool, the pipeline included, elsewhere.
CONFIG_DIR = Path(os.environ.get("FIPO_CONFIG_DIR") or Path(__file__).resolve().parents[2] / "config")

EXPERIMENT_KEYS = {"method", "base", "description", "set"}
PRESET_KEYS = {"description", "paper_table", "defaults", "methods", "experiments", "ablations", "evaluation",
               "released"}


# ------------------------------------------------------------------------------------ loading & merging


def _show(path: Path) -> str:
    """A spec file as the user knows it: relative to the working directory when under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _SpecLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (PyYAML keeps the last one silently: an
    experiment defined twice trained with the second body under the first one's label), two ``<<:`` merge keys in
    one mapping (the same, for what they merge), and a key YAML reads as something other than a string (``no:``
    is False, ``123:`` a number: never a name or a setting)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        merges = []
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' may appear next to overrides
                merges.append(line)
                if len(merges) > 1:
                    raise _DuplicateKey("<<", line, merges[0])
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _NotAString(getattr(key_node, "value", key), key, line)
            first = seen.get(key)
            if first is not None:
                raise _DuplicateKey(key, line, first)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _NotAString(Exception):
    def __init__(self, written: Any, read: Any, line: int):
        super().__init__(written, read, line)
        self.written, self.read, self.line = written, read, line


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"spec file not found: {_show(path)}")
    try:
        data = yaml.load(path.read_text(), Loader=_SpecLoader)
    except _DuplicateKey as e:
        raise SpecError(
            f"{_show(path)}:{e.line}: duplicate key {e.key!r} (first written at line {e.first}); "
            "YAML would keep only the last one, so remove or rename one of them"
        ) from None
    except _NotAString as e:
        raise SpecError(
            f"{_show(path)}:{e.line}: key {e.written!r} is read by YAML as {e.read!r} ({type(e.read).__name__}), not "
            f"a name; quote it ('{e.written}')"
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(f"{_show(path)}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{_show(path)}: expected a mapping at the top level")
    return data


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def list_presets(config_dir: Path = CONFIG_DIR) -> list[str]:
    files = sorted((Path(config_dir) / "presets").glob("*.yaml"))
    return [check_name("preset", p.stem, _show(p)) for p in files]


def _file_stamp(path: Path):
    """What says a spec file changed: a long-lived process (a notebook kernel, a Snakemake run) rereads an
    edited file instead of keeping the version it read first."""
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _load_preset(name: str, config_dir: Path) -> dict:
    """The preset file, its structure and every name in it checked: all entry points go through here, so
    no bad name gets as far as a file path or a command line. Parsed once per version of the file."""
    config_dir = Path(config_dir)
    check_name("preset", name, _show(config_dir / "presets"))
    return _parse_preset(name, config_dir, _file_stamp(config_dir / "presets" / f"{name}.yaml"))


@lru_cache(maxsize=None)
def _parse_preset(name: str, config_dir: Path, stamp) -> dict:
    presets = list_presets(config_dir)
    if name not in presets:
        raise SpecError(f"unknown preset {name!r}; allowed: {', '.join(presets)}")
    path = config_dir / "presets" / f"{name}.yaml"
    data = _read_yaml(path)
    shown = _show(path)
    unknown = set(data) - PRESET_KEYS
    if unknown:
        raise SpecError(f"{shown}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(PRESET_KEYS)}")
    for key in ("defaults", "experiments"):
        if not isinstance(data.get(key), dict):
            raise SpecError(f"{shown}: '{key}' must be a mapping")
    for key in ("methods", "ablations", "evaluation", "released"):
        if not isinstance(data.get(key) or {}, dict):
            raise SpecError(f"{shown}: '{key}' must be a mapping")
    for experiment, entry in data["experiments"].items():
        check_name("experiment", experiment, f"{shown}: experiments")
        if not isinstance(entry or {}, dict):
            raise SpecError(f"{shown}: experiments.{experiment} must be a mapping, got {entry!r}")
    for family, members in (data.get("ablations") or {}).items():
        check_name("ablation family", family, f"{shown}: ablations", FAMILY_PATTERN)
        if not (isinstance(members, list) and all(isinstance(m, str) for m in members)):
            raise SpecError(f"{shown}: ablations.{family} must be a list of experiment names, got {members!r}")
    return data


def _load_methods(config_dir: Path) -> dict:
    return _parse_methods(Path(config_dir), _file_stamp(Path(config_dir) / "methods.yaml"))


@lru_cache(maxsize=None)
def _parse_methods(config_dir: Path, stamp) -> dict:
    path = Path(config_dir) / "methods.yaml"
    methods = _read_yaml(path)
    for method, body in methods.items():
        check_name("method", method, _show(path))
        if not isinstance(body, dict):
            raise SpecError(f"{_show(path)}: method {method!r} must be a mapping, got {body!r}")
    return methods


def list_experiments(preset: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    return list(_load_preset(preset, Path(config_dir))["experiments"])


def _method_layers(method: str, config_dir: Path, seen: tuple = ()) -> list[tuple[str, dict]]:
    methods = _load_methods(config_dir)
    if not isinstance(method, str) or method not in methods:
        raise SpecError(f"config/methods.yaml: unknown method {method!r}; allowed: {', '.join(methods)}")
    if method in seen:
        raise SpecError(f"config/methods.yaml: method {method!r} inherits from itself")
    body = dict(methods[method])
    base = body.pop("base", None)
    layers = _method_layers(base, config_dir, seen + (method,)) if base else []
    return layers + [(f"methods.yaml:{method}", body)]


def _experiment_chain(preset: dict, preset_name: str, name: str, seen: tuple = ()) -> list[tuple[str, dict]]:
    """[(layer name, experiment entry)] from the root of the ``base:`` chain down to ``name``."""
    experiments = preset["experiments"]
    if not isinstance(name, str) or name not in experiments:
        raise SpecError(
            f"unknown experiment {name!r} in preset {preset_name!r}; allowed: {', '.join(experiments)}"
        )
    if name in seen:
        raise SpecError(f"preset {preset_name!r}: experiment {name!r} inherits from itself")
    entry = experiments[name] or {}
    unknown = set(entry) - EXPERIMENT_KEYS
    if unknown:
        raise SpecError(
            f"preset {preset_name!r}, experiment {name!r}: unknown key(s) {sorted(unknown)}; "
            f"allowed: {sorted(EXPERIMENT_KEYS)}"
        )
    chain = _experiment_chain(preset, preset_name, entry["base"], seen + (name,)) if "base" in entry else []
    return chain + [(f"{preset_name}:experiments.{name}", entry)]


def experiment_layers(preset: str, name: str, config_dir: Path = CONFIG_DIR) -> list[tuple[str, dict]]:
    """Every settings layer of an experiment, in merge order, as (where it is written, settings)."""
    config_dir = Path(config_dir)
    data = _load_preset(preset, config_dir)
    chain = _experiment_chain(data, preset, name)
    method = next((entry["method"] for _, entry in reversed(chain) if "method" in entry), None)
    if method is None:
        raise SpecError(f"preset {preset!r}, experiment {name!r}: no 'method' (here or in its base chain)")
    layers = _method_layers(method, config_dir)
    overrides = data.get("methods") or {}
    unknown = [m for m in overrides if m not in _load_methods(config_dir)]
    if unknown:  # a misspelt method here would be ignored without a word
        raise SpecError(f"{_show(config_dir / 'presets' / f'{preset}.yaml')}: methods: unknown method(s) {unknown}")
    layers.append((f"{preset}:defaults", data["defaults"]))
    if method in overrides:
        layers.append((f"{preset}:methods.{method}", overrides[method]))
    layers += [(where, entry.get("set") or {}) for where, entry in chain]
    return layers


def describe_layer(layer: str, config_dir: Path = CONFIG_DIR) -> str:
    """An experiment_layers() name as the file and the part of it: 'tiny:defaults' ->
    'config/presets/tiny.yaml, defaults', 'methods.yaml:fipo' -> 'config/methods.yaml, fipo'."""
    source, _, part = layer.partition(":")  # names cannot hold ':' (NAME_PATTERN)
    path = Path(config_dir) / (source if source == "methods.yaml" else f"presets/{source}.yaml")
    return f"{_show(path)}, {part}"


def _leaf_paths(value: Any, path: tuple) -> list[tuple]:
    if isinstance(value, dict) and value:
        return [leaf for key, sub in value.items() for leaf in _leaf_paths(sub, path + (key,))]
    return [path]


def _note_origins(origins: dict, current: dict, update: dict, layer: str, prefix: tuple = ()) -> None:
    """Record ``layer`` for every leaf ``update`` writes, mirroring deep_merge: a mapping over a mapping is
    merged key by key, anything else replaces the whole subtree (and so forgets its origins)."""
    for key, value in update.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            _note_origins(origins, current[key], value, layer, path)
            continue
        for old in [p for p in origins if p[: len(path)] == path]:
            del origins[old]
        origins.update(dict.fromkeys(_leaf_paths(value, path), layer))


@dataclasses.dataclass(frozen=True)
class Origins:
    """Which layer wrote each leaf of a merged spec last: the merged values alone cannot say whether a bad
    fipo.tau came from the preset's defaults or from one experiment, and that is what the user must edit."""

    layers: dict[tuple, str]  # key path -> experiment_layers() name
    config_dir: Path

    def _layers_under(self, path: tuple) -> list[str]:
        found = [layer for p, layer in self.layers.items() if p[: len(path)] == path]
        return list(dict.fromkeys(found))

    def note(self, *keys: str | tuple) -> str:
        """' (set in FILE, PART)' for the first key path (dotted, or a tuple when a key may hold a dot),
        '; KEY set in FILE, PART' for each further one written elsewhere; '' for keys no layer wrote (defaults)."""
        parts, first = [], None
        for i, key in enumerate(keys):
            path = key if isinstance(key, tuple) else tuple(key.split("."))
            key = ".".join(map(str, path))
            layers = self._layers_under(path)
            if i == 0:
                first = layers
            elif not layers or layers == first:
                continue
            if layers:
                text = " and ".join(describe_layer(layer, self.config_dir) for layer in layers)
                parts.append(f"set in {text}" if i == 0 else f"{key} set in {text}")
        return f" ({'; '.join(parts)})" if parts else ""

    def within(self, section: str, *fields: Any) -> str:
        """note() for fields of one section; the section itself when no field is named."""
        return self.note(*[(section, f) for f in fields] or [(section,)])


def merge_layers(layers: list[tuple[str, dict]], where: str, config_dir: Path = CONFIG_DIR) -> tuple[dict, Origins]:
    """Deep-merge experiment_layers() in order: the settings and the Origins of each leaf."""
    merged: dict = {}
    origins: dict[tuple, str] = {}
    for layer, settings in layers:
        if not isinstance(settings, dict):
            raise SpecError(
                f"{where}: settings must be a mapping, got {settings!r} ({describe_layer(layer, config_dir)})"
            )
        _note_origins(origins, merged, settings, layer)
        merged = deep_merge(merged, settings)
    return merged, Origins(origins, Path(config_dir))


def with_seed(exp: Experiment, seed: int | None, study: bool = False) -> Experiment:
    """``exp`` trained under ``seed`` (verl's data, data-loader and rollout seeds: ``trainer.seed``), named as its
    run (:func:`fipo.run_names.run_name`: ``fipo@seed1``, or ``fipo@study-seed1`` for the study's) so that the
    run's trackers and logs tell seeds apart. ``None``: ``exp`` itself, at the spec's seed."""
    if seed is None:
        return exp
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise SpecError(f"seed: must be a non-negative integer below 2**32, got {seed!r}")
    return dataclasses.replace(exp, name=run_name(exp.name, seed, study), trainer=dataclasses.replace(exp.trainer, seed=seed))


def load_experiment(preset: str, name: str, config_dir: Path = CONFIG_DIR) -> Experiment:
    """Resolve and validate one experiment. Raises SpecError naming the key, and the layer that wrote it,
    on any problem."""
    config_dir = Path(config_dir)
    layers = experiment_layers(preset, name, config_dir)
    where = f"preset {preset!r}, experiment {name!r}"
    merged, origins = merge_layers(layers, where, config_dir)
    unknown = sorted(set(merged) - set(SECTIONS) - {"engine"}, key=str)
    if unknown:
        raise SpecError(
            f"{where}: unknown section(s) {unknown}; allowed: {sorted(SECTIONS) + ['engine']}"
            f"{origins.note(*[(k,) for k in unknown])}"
        )
    sections = {
        key: build_section(cls, merged.get(key, {}), f"{where}: {key}", partial(origins.within, key))
        for key, cls in SECTIONS.items()
    }
    engine = merged.get("engine") or {}
    note = origins.note("engine")
    require(isinstance(engine, dict), f"{where}: engine", f"expected a mapping, got {engine!r}", note)
    engine = flatten(engine)
    for key in engine:
        owner, why = spec_key(key), refusal(key)
        require(owner is None, f"{where}: engine.{key}",
                 f"the spec's {owner} writes this verl key; set {owner} instead", note)
        require(why is None, f"{where}: engine.{key}", f"this verl key {why}", note)
    chain = _experiment_chain(_load_preset(preset, config_dir), preset, name)
    exp = Experiment(
        preset=preset,
        name=name,
        method=next(entry["method"] for _, entry in reversed(chain) if "method" in entry),
        description=chain[-1][1].get("description", ""),
        engine=engine,
        **sections,
    )
    validate_values(exp, where, origins)
    return exp


def parse_override(text: Any, source: str = "--override") -> tuple[str, Any]:
    """(key as written, value) of one Hydra override ``key=value``, read with Hydra's own parser (what verl
    will read); SpecError naming ``source`` for anything else (no '=', a sweep, a deletion)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    if not isinstance(text, str) or "=" not in text:
        raise SpecError(f"{source} {text!r}: expected KEY=VALUE (a verl Hydra override)")
    try:
        override = OverridesParser.create().parse_override(text)
    except HydraException as e:
        raise SpecError(f"{source} {text!r}: not a Hydra override: {e}") from None
    if override.is_sweep_override() or override.type == OverrideType.DEL:
        raise SpecError(f"{source} {text!r}: sweeps and deletions are not runs of one experiment; set a value")
    return override.get_key_element(), override.value()


def with_overrides(exp: Experiment, overrides: list[str] | tuple[str, ...], source: str = "--override") -> Experiment:
    """``exp`` with verl Hydra overrides applied the way verl would read them, then checked like the spec: an
    override of a key the spec writes (fipo.verl_keys.SPEC_KEYS, e.g. trainer.total_training_steps) sets that
    spec key; one of a key the spec computes or the workbench fixes is refused, naming what to set instead; any
    other key joins ``engine``. So every rule (types, ranges, the on-policy trap) and every fingerprint sees
    what verl gets, and nothing overrides a checked value behind the spec's back."""
    if not overrides:
        return exp
    sections = {name: {f.name: getattr(getattr(exp, name), f.name) for f in dataclasses.fields(cls)}
                for name, cls in SECTIONS.items()}
    engine = dict(exp.engine)
    for text in overrides:
        key, value = parse_override(text, source)
        owner, why = spec_key(key), refusal(key)
        if owner is not None:
            section_name, field_name = owner.split(".")
            sections[section_name][field_name] = value
        elif why is not None:
            raise SpecError(f"{source} {text!r}: this verl key {why}")
        else:
            engine[key] = value
    where = f"preset {exp.preset!r}, experiment {exp.name!r} with {source} {list(overrides)}"
    built = {name: build_section(cls, sections[name], f"{where}: {name}") for name, cls in SECTIONS.items()}
    result = dataclasses.replace(exp, engine=engine, **built)
    validate_values(result, where)
    return result


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: leaf} (a ``+`` key adds a whole node, so its value stays whole)."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not dotted.startswith("+"):  # a '+' key adds a whole node
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def load_all(preset: str, config_dir: Path = CONFIG_DIR) -> list[Experiment]:
    return [load_experiment(preset, name, config_dir) for name in list_experiments(preset, config_dir)]


def ablations(preset: str, config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """Ablation families of a preset (e.g. ablation_tau) -> the experiments each compares, baseline included."""
    data = _load_preset(preset, Path(config_dir))  # family names checked there (FAMILY_PATTERN)
    families = data.get("ablations") or {}
    known = set(data["experiments"])
    for family, members in families.items():
        bad = [m for m in members if m not in known]
        if bad:
            raise SpecError(f"preset {preset!r}: ablations.{family} names unknown experiment(s) {bad}")
    return {family: list(members) for family, members in families.items()}


def preset_info(preset: str, config_dir: Path = CONFIG_DIR) -> dict:
    """The preset's own keys: description and paper_table (2: the 32B setup, 3: the 7B one, absent: tiny)."""
    data = _load_preset(preset, Path(config_dir))
    return {"description": data.get("description", ""), "paper_table": data.get("paper_table")}


def preset_scale(preset: str, config_dir: Path = CONFIG_DIR) -> str | None:
    """"32b" or "7b" for a paper preset; None for a preset at no paper scale (tiny, the one-node and one-GPU
    presets), whose artifacts mark the paper's values as not comparable."""
    return PAPER_SCALES.get(preset_info(preset, config_dir).get("paper_table"))


def evaluation(preset: str, config_dir: Path = CONFIG_DIR) -> EvaluationSpec:
    """The preset's ``evaluation:`` section, validated like the experiment sections."""
    config_dir = Path(config_dir)
    where = f"preset {preset!r}: evaluation"
    section = _load_preset(preset, config_dir).get("evaluation") or {}
    # One layer, the section itself under its own key, so errors name it as they do experiment values.
    _, origins = merge_layers([(f"{preset}:evaluation", {"evaluation": section})], where, config_dir)
    note = partial(origins.within, "evaluation")
    spec = build_section(EvaluationSpec, section, where, note)
    for key, allowed in EVAL_CHOICES.items():
        values = getattr(spec, key)
        for value in values if isinstance(values, list) else [values]:
            message = f"{value!r} is not allowed; allowed: {', '.join(allowed)}"
            require(value in allowed, f"{where}.{key}", message, note(key))
    require(len(spec.benchmarks) > 0, f"{where}.benchmarks", "needs at least one benchmark", note("benchmarks"))
    for key in ("n", "max_tokens", "tensor_parallel_size"):
        require(getattr(spec, key) >= 1, f"{where}.{key}", "must be >= 1", note(key))
    require(spec.temperature >= 0, f"{where}.temperature", "must be >= 0", note("temperature"))
    require(0 < spec.top_p <= 1, f"{where}.top_p", "must be in (0, 1]", note("top_p"))
    return spec


def released(preset: str, config_dir: Path = CONFIG_DIR) -> Optional[ReleasedSpec]:
    """The preset's ``released:`` section, validated; None when the preset declares no released model."""
    config_dir = Path(config_dir)
    section = _load_preset(preset, config_dir).get("released")
    if section is None:
        return None
    where = f"preset {preset!r}: released"
    _, origins = merge_layers([(f"{preset}:released", {"released": section})], where, config_dir)
    note = partial(origins.within, "released")
    spec = build_section(ReleasedSpec, section, where, note)
    require(is_hub_id(spec.model), f"{where}.model", f"{spec.model!r} is not a Hugging Face hub id (owner/name)",
             note("model"))
    require(bool(HUB_REVISION.fullmatch(spec.revision)), f"{where}.revision",
             f"{spec.revision!r} is not a branch, tag or commit name", note("revision"))
    require(spec.paper_row in PAPER_ROWS, f"{where}.paper_row",
             f"{spec.paper_row!r} is not a row of the paper's Table 1; allowed: {', '.join(PAPER_ROWS)}",
             note("paper_row"))
    return spec
