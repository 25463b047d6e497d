"""A hang guard that measures progress, not total time: a child process is stopped when the folders it writes to
have not changed for a while.

A limit on total time fails healthy work on a slow or busy machine (a tiny training on 2 busy cores took longer
than its 900 s after its last checkpoint) and, set generously, waits long on a real hang. What a hung trainer or
benchmark does not do is write: a training writes a metrics line, a rollout dump and a checkpoint every step, and
the device check rewrites its JSON after every check. So the guard watches the files under the given folders
(their number, sizes and modification times) and gives up only after ``stall_s`` seconds in which none of them
changed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path


class Stalled(Exception):
    """The process wrote nothing under the watched folders for ``stall_s`` seconds (it is still running)."""

    def __init__(self, stall_s: float, elapsed_s: float):
        super().__init__(f"nothing written for {stall_s:.0f} s (after {elapsed_s:.0f} s)")
        self.stall_s, self.elapsed_s = stall_s, elapsed_s


def snapshot(folders: Iterable[Path]) -> tuple[int, int, int]:
    """(files, total bytes, newest modification time in ns) of every file under ``folders``; a folder that does not
    exist (yet) counts as empty. Files that vanish while the folder is read are skipped."""
    count = size = newest = 0
    pending = [Path(f) for f in folders]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                    continue
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            count, size, newest = count + 1, size + stat.st_size, max(newest, stat.st_mtime_ns)
    return count, size, newest


def wait_while_progressing(process: subprocess.Popen, folders: Iterable[Path], stall_s: float | None,
                           poll_s: float = 2.0) -> int:
    """``process.wait()``, raising :class:`Stalled` once nothing under ``folders`` has changed for ``stall_s``
    seconds (None: no limit). The caller decides what to do with the still running process."""
    if stall_s is None:
        return process.wait()
    folders = [Path(f) for f in folders]
    start = last_change = time.monotonic()
    seen = snapshot(folders)
    while True:
        try:
            return process.wait(timeout=min(poll_s, stall_s))
        except subprocess.TimeoutExpired:
            pass
        now, current = time.monotonic(), snapshot(folders)
        if current != seen:
            seen, last_change = current, now
        elif now - last_change >= stall_s:
            raise Stalled(stall_s, now - start)
