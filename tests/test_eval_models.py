"""`fipo eval --model` takes a local folder or a Hugging Face hub id: the hub id's snapshot in the Hugging Face cache
is evaluated exactly as a local folder (keyed on its content). Offline here: the cache is built by hand, laid out as
huggingface_hub lays it out (refs/main -> a commit, snapshots/<commit>/ of links into blobs/)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fipo.eval.models import is_hub_id, resolve_model
from fipo.provenance import folder_digest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root: Path, repo: str, model_dir: Path) -> Path:
    """``model_dir``'s files as the cached snapshot of hub model ``repo`` at ``main``; the snapshot folder."""
    cache = root / f"models--{repo.replace('/', '--')}"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(COMMIT)
    snapshot, blobs = cache / "snapshots" / COMMIT, cache / "blobs"
    blobs.mkdir()
    for i, file in enumerate(sorted(p for p in model_dir.rglob("*") if p.is_file())):
        target = snapshot / file.relative_to(model_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blobs / f"blob{i}")
        target.symlink_to(os.path.relpath(blobs / f"blob{i}", target.parent))
    return snapshot


def offline(cache: Path) -> dict:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def fipo(*args, env):
    return subprocess.run([sys.executable, "-m", "fipo", *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("text, expected", [
    ("QwenPilot/FIPO_32B", True), ("Qwen/Qwen2.5-Math-7B", True), ("results/tiny/base_model", False),
    ("/abs/model", False), ("model", False), ("../model", False), ("a/..", False), ("-a/b", False), ("a/b c", False),
])
def test_hub_ids_are_owner_slash_name(text, expected):
    assert is_hub_id(text) is expected


def test_a_folder_is_itself_and_anything_else_must_be_a_hub_id(tmp_path):
    assert resolve_model(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="--revision 'v1' applies to a Hugging Face hub id"):
        resolve_model(str(tmp_path), "v1")
    with pytest.raises(FileNotFoundError, match="model folder not found: .*/missing/model .*not a Hugging Face hub id"):
        resolve_model(str(tmp_path / "missing" / "model"))


def test_a_hub_model_is_fetched_from_the_cache_and_evaluated_like_its_folder(tiny_world, tmp_path):
    cache = tmp_path / "hub"
    snapshot = fake_hub_cache(cache, "Org/Tiny", tiny_world["model"])
    record = tmp_path / "released" / "model.json"
    out = fipo("fetch-model", "Org/Tiny", "--record", str(record), env=offline(cache))
    assert out.returncode == 0, out.stderr
    assert json.loads(record.read_text()) == {"model": "Org/Tiny", "revision": "main", "commit": COMMIT,
                                              "path": str(snapshot)}
    out = fipo("eval", "--model", "Org/Tiny", "--revision", "main", "--benchmark", "tiny-test", "--backend", "hf",
               "--n", "2", "--max-tokens", "8", "--data-dir", str(tiny_world["data"]), "--out", str(tmp_path / "eval"),
               env=offline(cache))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["model"] == str(snapshot)  # the commit it read
    assert summary["model_sha256"] == folder_digest(tiny_world["model"])  # the same key as the folder itself


def test_a_hub_model_neither_cached_nor_downloadable_fails_in_one_line(tmp_path):
    from fipo.data import prepare_aime

    prepare_aime(tmp_path / "data")
    (tmp_path / "hub").mkdir()
    out = fipo("eval", "--model", "Org/Missing", "--benchmark", "aime2024", "--backend", "hf",
               "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "eval"), env=offline(tmp_path / "hub"))
    assert out.returncode == 2 and out.stderr.startswith("fipo: error: model Org/Missing (revision main)")
    assert "hf download Org/Missing" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "eval").exists()
    out = fipo("fetch-model", "results/tiny/base_model", env=offline(tmp_path / "hub"))
    assert out.returncode == 2 and "is not a Hugging Face hub id" in out.stderr
