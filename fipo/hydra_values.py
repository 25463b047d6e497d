"""Python values written as Hydra override syntax that Hydra and OmegaConf read back unchanged."""

from __future__ import annotations

import re
from typing import Any

# Written bare only when Hydra reads it back as this very string (not a number, bool, null or interpolation).
_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_./+-]*")
_BARE_KEYWORDS = {"true", "false", "null", "none", "inf", "nan"}


def hydra_value(value: Any) -> str:
    """A Python value as Hydra override syntax that Hydra and OmegaConf read back unchanged (any path works:
    spaces, non-ASCII, ``#``, quotes, backslashes, ``${``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _BARE.fullmatch(text) and text.lower() not in _BARE_KEYWORDS:
        return text
    return hydra_quote(text)


def hydra_quote(text: str) -> str:
    """A single-quoted Hydra string. OmegaConf reads ``${`` as an interpolation: ``\\${`` is a literal one
    (backslashes right before it double). Hydra, inside quotes, escapes the quote and doubles the backslashes
    that precede a quote or the closing quote."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return "'" + text + "'"
