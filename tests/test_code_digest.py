"""fipo.code_digest: which modules an artifact's code reaches, and when their digest changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fipo.analysis import catalog
from fipo.code_digest import code_digest, module_closure


def package(root: Path, files: dict[str, str]) -> Path:
    """A package `fipo` below ``root`` with the given modules (relative path -> source)."""
    pkg = root / "fipo"
    for relative, source in {"__init__.py": "", **files}.items():
        (pkg / relative).parent.mkdir(parents=True, exist_ok=True)
        (pkg / relative).write_text(source)
    return pkg


def notebook(path: Path, *cells: str) -> Path:
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": c, "metadata": {}} for c in cells]
                               + [{"cell_type": "markdown", "source": "import fipo.never", "metadata": {}}]}))
    return path


@pytest.fixture
def tree(tmp_path):
    return package(tmp_path, {
        "a/__init__.py": "",
        "a/b.py": "from . import c\nfrom ..d import thing\n",  # relative imports, one level and two
        "a/c.py": "def f():\n    import fipo.e  # inside a function: still code the module runs\n",
        "d.py": "thing = 1\nimport os, json  # not ours\n",
        "e.py": "from fipo.a import b  # a cycle\n",
        "unused.py": "x = 1\n",
    })


def test_the_closure_follows_absolute_relative_and_function_level_imports_and_parent_packages(tree):
    assert set(module_closure("fipo.a.b", tree)) == {"fipo", "fipo.a", "fipo.a.b", "fipo.a.c", "fipo.d", "fipo.e"}
    assert set(module_closure("fipo.d", tree)) == {"fipo", "fipo.d"}


def test_a_notebook_reaches_what_its_code_cells_import_not_its_markdown_or_magics(tree, tmp_path):
    nb = notebook(tmp_path / "n.ipynb", "%matplotlib inline\n!ls\nfrom fipo.a import c\n", "x = 1")
    assert set(module_closure(nb, tree)) == {"fipo", "fipo.a", "fipo.a.c", "fipo.e", "fipo.a.b", "fipo.d"}


def test_the_digest_changes_with_the_code_of_a_reached_module_only(tree, tmp_path):
    nb = notebook(tmp_path / "n.ipynb", "from fipo import d")
    before = code_digest(nb, tree)
    (tree / "unused.py").write_text("x = 2\n")  # not reached
    (tree / "d.py").write_text((tree / "d.py").read_text() + "\n# a comment\n\n")  # no change to the code
    assert code_digest(nb, tree) == before
    (tree / "d.py").write_text("thing = 2\n")
    changed = code_digest(nb, tree)
    assert changed != before
    notebook(nb, "from fipo import d\n# a comment in the notebook")
    assert code_digest(nb, tree) == changed
    notebook(nb, "from fipo import d\nprint(d.thing)")
    assert code_digest(nb, tree) != changed


def test_every_artifacts_notebook_reaches_the_analysis_code_it_imports():
    for art in catalog.ARTIFACTS.values():
        reached = module_closure(catalog.notebook_path(art.id))
        assert {"fipo.analysis.catalog", "fipo.tables", "fipo.eval.metrics"} <= set(reached), art.id
        assert "fipo.loss" not in reached and "fipo.training" not in reached, art.id
    assert "fipo.analysis.tokens" in module_closure(catalog.notebook_path("influence"))
    assert "fipo.analysis.tokens" not in module_closure(catalog.notebook_path("fig01"))
    assert "fipo.analysis.study" in module_closure("fipo.cli")  # imported inside cmd_study_report


def test_bad_starts_are_named(tmp_path):
    (tmp_path / "bad.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="bad.ipynb: not a readable notebook"):
        code_digest(tmp_path / "bad.ipynb")
    with pytest.raises(ValueError, match="fipo.nope: not a module of the fipo package"):
        code_digest("fipo.nope")
    broken = package(tmp_path / "p", {"x.py": "def (:\n"})
    with pytest.raises(ValueError, match=r"x.py: cannot be parsed .* line 1"):
        code_digest("fipo.x", broken)
