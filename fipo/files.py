"""Files that survive crashes: written whole or not at all, and JSONL read past a write a crash tore.

Every writer of a file another step consumes (datasets, metrics, records, summaries, figures, tables) goes
through :func:`atomic_write`; every reader of an append-only JSONL log through :func:`read_jsonl`; a JSON file
whose damage must be reported as such (not as a library's traceback) through :func:`read_json`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``: readers see the old
    file or the whole new one, and a failure leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600 whatever the umask: give it the mode open() would have given it.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def current_umask() -> int:
    """The process's umask (read and restored: there is no call that only reads it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class MalformedLineError(ValueError):
    """A line inside a JSONL file (not a torn last one) that is not valid JSON, or not the expected record."""

    def __init__(self, path, line: int, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


def read_jsonl(path, what: str = "JSONL", skip_blank: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each line. A torn last line (a crash mid-write) is skipped; an invalid line
    elsewhere raises :class:`MalformedLineError` naming the file and line."""
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if skip_blank and not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return  # the write the crash interrupted
            raise MalformedLineError(path, number, f"malformed {what} line") from None
        yield number, record


class MalformedJSONError(ValueError):
    """A JSON file that does not parse: its path, and the line and column where parsing stopped."""

    def __init__(self, path, line: int, column: int, reason: str):
        self.path, self.line, self.column, self.reason = path, line, column, reason
        super().__init__(f"{path}:{line}:{column}: {reason}")


def read_json(path, hint: str = "") -> Any:
    """The content of JSON file ``path``; :class:`MalformedJSONError` (path, line, column, and ``hint``: what
    to do about it) when it is not valid JSON, or not UTF-8 text."""
    data = Path(path).read_bytes()
    suffix = f"; {hint}" if hint else ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise MalformedJSONError(path, line, column, f"not UTF-8 text (byte {data[err.start]:#04x}){suffix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedJSONError(path, err.lineno, err.colno, f"not valid JSON ({err.msg}){suffix}") from None
