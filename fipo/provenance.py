"""Content fingerprints: what identifies a result independently of where it lies.

A run is keyed on its rendered verl command (machine paths replaced by placeholders), the content of its
data files and model, the project version, the project's code that runs inside verl for it and the versions of
the libraries that compute it (:func:`fipo.run_folder.run_provenance`); a checkpoint or a model folder on the
content of its files; an evaluation on its model's content and its settings. Paths never enter a fingerprint:
moving a results folder keeps every result, and rewriting a folder in place (a retrained checkpoint) changes it.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
# Files that are not part of a model's identity: caches, lock files, our own markers.
_IGNORED_NAMES = {".lock", "provenance.json"}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def digest_of(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(path) -> str:
    """sha256 over every regular file below ``path`` (relative name and content), in sorted order. Hidden files
    (temporary files of an atomic write, ``.lock``) are not part of the content."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or file.name in _IGNORED_NAMES:
            continue
        h.update(relative.as_posix().encode() + b"\0" + file_digest(file).encode() + b"\n")
    return h.hexdigest()


@lru_cache(maxsize=1)
def project_version() -> str:
    try:
        return metadata.version("fipo-workbench")
    except metadata.PackageNotFoundError:  # run from a source tree without installation
        return "unknown"


# The libraries whose code computes a run: the trainer, the tensors, the model code and the GPU rollout.
TRAINING_LIBRARIES = ("verl", "torch", "transformers", "vllm")


@lru_cache(maxsize=None)
def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, None where it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def library_versions(names=TRAINING_LIBRARIES) -> dict[str, str | None]:
    return {name: package_version(name) for name in names}


def short(digest: str) -> str:
    """The first 12 hex digits: what names and tables show."""
    return digest[:12]
