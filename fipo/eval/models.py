"""What ``fipo eval --model`` names: a local Hugging Face folder (a converted run checkpoint, the tiny model) or a
Hugging Face hub id such as ``QwenPilot/FIPO_32B``, which is resolved to its snapshot folder in the Hugging Face
cache (downloaded there first when missing). The evaluation itself always reads a local folder: it is keyed on
the folder's content (:func:`fipo.eval.runner.evaluation_key`), so a hub model is evaluated exactly like a run's
checkpoint, and its recorded path (``.../models--owner--name/snapshots/<commit>``) names the commit it read.

Before a backend loads a folder, :func:`check_model_folder` parses its JSON files: transformers, tokenizers and
vLLM report a damaged one (a copy or download cut short, an edit gone wrong) as a traceback from deep inside the
loader, or as an error that leaves out the file or the place in it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from fipo.files import MalformedJSONError, read_json

# owner/name as the hub spells repositories; nothing a shell or a path could take for something else
HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# a branch, tag or commit of a hub repository
HUB_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
# The JSON files of a Hugging Face folder that transformers, tokenizers or vLLM read when they load the model or its
# tokenizer (each a JSON object); other JSON files in the folder (provenance.json, reports) are the project's.
MODEL_JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json", "vocab.json", "preprocessor_config.json",
                    "model.safetensors.index.json", "pytorch_model.bin.index.json")
DAMAGED_HINT = "the model folder is damaged: copy, download or convert it again"
JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}  # else a number


class ModelFolderError(MalformedJSONError):
    """A JSON file of a model folder that does not parse or is not a JSON object (a ValueError)."""


def is_hub_id(text: str) -> bool:
    return bool(HUB_MODEL_ID.fullmatch(text)) and ".." not in text


def resolve_model(model: str, revision: Optional[str] = None, download: bool = True) -> Path:
    """The local folder of ``model``: itself when it is a folder, else the hub snapshot of ``model`` at
    ``revision`` (default: the hub's ``main``) in the Hugging Face cache, downloaded there first when ``download``
    (huggingface_hub falls back to the cached snapshot when the hub cannot be reached or HF_HUB_OFFLINE=1).
    Raises FileNotFoundError naming the model and what to do."""
    path = Path(model)
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"--revision {revision!r} applies to a Hugging Face hub id, but {model} is a local folder")
        return path
    if not is_hub_id(model):
        raise FileNotFoundError(f"model folder not found: {model} (and it is not a Hugging Face hub id owner/name)")
    return hub_snapshot(model, revision, download)


def hub_snapshot(model: str, revision: Optional[str] = None, download: bool = True) -> Path:
    """The folder of hub model ``model`` at ``revision`` in the Hugging Face cache (see :func:`resolve_model`)."""
    if not is_hub_id(model):
        raise ValueError(f"{model!r} is not a Hugging Face hub id (owner/name)")
    if revision is not None and not HUB_REVISION.fullmatch(revision):
        raise ValueError(f"revision {revision!r} is not a branch, tag or commit name")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=not download))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"model {model} (revision {revision or 'main'}) is neither a local folder nor in the Hugging Face cache, "
            f"and could not be downloaded ({err}); on a machine with internet: hf download {model}"
            f"{f' --revision {revision}' if revision else ''} (with the same HF_HOME), or pass a local copy"
        ) from None
    except HfHubHTTPError as err:  # no such repository or revision, a gated model without a token
        raise FileNotFoundError(f"model {model} (revision {revision or 'main'}): the Hugging Face hub refused it "
                                f"({type(err).__name__}: {err})") from None


def check_model_folder(folder) -> None:
    """Parse the JSON files the loaders will read (:data:`MODEL_JSON_FILES`, those present): a damaged one is
    refused with :class:`ModelFolderError` naming the file, line and column, before any loader sees it."""
    for name in MODEL_JSON_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            content = read_json(path, DAMAGED_HINT)
        except MalformedJSONError as err:
            raise ModelFolderError(err.path, err.line, err.column, err.reason) from None
        if not isinstance(content, dict):
            found = JSON_KINDS.get(type(content), "a number")
            raise ModelFolderError(path, 1, 1, f"expected a JSON object, found {found}; {DAMAGED_HINT}")
