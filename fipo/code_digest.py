"""Fingerprints of the project's code that makes an artifact.

A figure is redone when its notebook changes (Snakemake sees the file) and also when any `fipo` module the
notebook imports, directly or through other modules, changes: a fixed bug in a confidence interval must redo every
table that prints one. `code_digest` follows the `fipo` imports of a notebook or a module (static: every
`import fipo...` / `from fipo... import` / relative import statement anywhere in the source, also inside
functions) and hashes each reached module's syntax tree, so comments and blank lines do not count as a change
and a module the artifact never imports does not either.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path

PACKAGE = "fipo"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(name: str, root: Path = PACKAGE_DIR) -> Path | None:
    """The source file of module ``name`` (``fipo.x.y``) in the package at ``root``, or None when there is none."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = Path(root).joinpath(*name.split(".")[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def notebook_source(path: Path) -> str:
    """A notebook's code cells as one Python source; IPython's `%magic` and `!shell` lines left out."""
    try:
        cells = json.loads(Path(path).read_text())["cells"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a readable notebook ({e})") from e
    lines = []
    for cell in cells:
        if cell.get("cell_type") == "code":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            lines += [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def imported_modules(tree: ast.AST, module: str, is_package: bool, root: Path = PACKAGE_DIR) -> set[str]:
    """Names of the `fipo` modules an import statement of ``tree`` may load (``module``: the importing module's
    name, for relative imports). Parent packages are included: importing fipo.a.b runs fipo/a/__init__.py."""
    found: set[str] = set()
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # `from fipo.analysis import catalog` imports the module fipo.analysis.catalog
            found |= {f"{base}.{alias.name}" for alias in node.names}
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {name for name in with_parents if module_file(name, root) is not None}


def _module_tree(path: Path) -> tuple[str, ast.AST]:
    """(ast.dump, tree) of a source file, parsed once per version of the file (Snakemake asks once per job)."""
    stat = path.stat()
    return _parsed(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=None)
def _parsed(path: Path, mtime_ns: int, size: int) -> tuple[str, ast.AST]:
    source = path.read_text()
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"{path}: cannot be parsed ({e.msg}, line {e.lineno})") from e
    return ast.dump(tree), tree


def _is_notebook(start: str | Path) -> bool:
    return str(start).endswith(".ipynb")


def _notebook_tree(path: Path) -> ast.AST:
    try:
        return ast.parse(notebook_source(path), filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"{path}: a code cell cannot be parsed ({e.msg})") from e


def module_closure(start: str | Path, root: Path = PACKAGE_DIR, notebook: ast.AST | None = None) -> dict[str, Path]:
    """Every `fipo` module reachable by imports from ``start`` (a module name or a notebook path): name -> file.
    ``notebook``: the notebook's parsed code, when the caller has it already."""
    if _is_notebook(start):
        tree = notebook if notebook is not None else _notebook_tree(Path(start))
        pending = imported_modules(tree, "__notebook__", is_package=False, root=root)
        reached: dict[str, Path] = {}
    else:
        if module_file(start, root) is None:
            raise ValueError(f"{start}: not a module of the {PACKAGE} package")
        parts = str(start).split(".")  # importing it runs its parent packages too
        pending, reached = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}, {}
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        file = module_file(name, root)
        reached[name] = file
        pending |= _module_imports(file, name, root) - reached.keys()
    return dict(sorted(reached.items()))


def _module_imports(file: Path, name: str, root: Path) -> frozenset[str]:
    """:func:`imported_modules` of one module file, found once per version of the file: a dry run of the pipeline
    asks for the closures of about 70 jobs, which share most of their modules."""
    stat = file.stat()
    return _imports_of_version(file, stat.st_mtime_ns, stat.st_size, name, Path(root))


@lru_cache(maxsize=None)
def _imports_of_version(file: Path, mtime_ns: int, size: int, name: str, root: Path) -> frozenset[str]:
    _, tree = _parsed(file, mtime_ns, size)
    return frozenset(imported_modules(tree, name, file.name == "__init__.py", root))


def code_digest(start: str | Path, root: Path = PACKAGE_DIR) -> str:
    """sha256 over the syntax trees of every `fipo` module ``start`` reaches (and the notebook's own code cells,
    for a notebook): equal exactly when none of that code changed beyond comments and layout."""
    h, notebook = hashlib.sha256(), None
    if _is_notebook(start):
        notebook = _notebook_tree(Path(start))  # parsed once: hashed here, its imports followed below
        h.update(ast.dump(notebook).encode() + b"\n")
    for name, file in module_closure(start, root, notebook).items():
        h.update(name.encode() + b"\0" + _module_tree(file)[0].encode() + b"\n")
    return h.hexdigest()
