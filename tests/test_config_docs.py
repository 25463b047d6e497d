"""config/README.md documents every key of the pipeline's config schema, with config/config.yaml's default."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def schema_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            keys += schema_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_config_key_is_documented_with_its_default():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", (ROOT / "config" / "README.md").read_text(), re.M))
    keys = schema_keys(schema)
    assert sorted(rows) == sorted(keys)
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        assert yaml.safe_load(rows[key]) == value, key
        node = schema
        for part in key.split("."):
            node = node["properties"][part]
        assert node.get("description"), f"{key} has no description in the schema"
