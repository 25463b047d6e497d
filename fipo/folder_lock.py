"""One writer per folder: a ``flock`` on a lock file beside the folder, held for as long as the writer works.

``<parent>/.<name>.lock`` lies beside the folder, not inside it, so that the lock outlives moving or deleting the
folder (a writer replacing a half-made folder still holds it) and never shows up among the folder's files. The
lock is taken without waiting: a second writer is refused at once with :class:`FolderBusy`, which names the
holder the lock file describes ("what (pid N on HOST, since TIME, working directory DIR)"). The kernel drops a
``flock`` when its holder dies, even by SIGKILL, so a crashed writer never leaves the folder locked; the
description it leaves behind is overwritten by the next holder.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


def lock_path(folder) -> Path:
    """The lock file of ``folder``: ``<parent>/.<name>.lock``. Made absolute first (without following links) so
    that ``.`` or ``a/..`` name the folder they mean, not an empty name."""
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}.lock"


def holder_description(what: str) -> str:
    """What the lock file says about its holder, for the message of the writer it refuses."""
    return (f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}, "
            f"working directory {os.getcwd()})")


def _warn(message: str) -> None:
    print(f"[fipo] warning: {message}", file=sys.stderr)


@contextmanager
def folder_lock(folder, what: str, warn: Callable[[str], None] = _warn) -> Iterator[int]:
    """Hold ``folder``'s lock for the body of the ``with``; yields the lock's file descriptor (a child process
    that must keep the folder locked can inherit it with ``pass_fds``). ``what`` says who holds it, e.g. the
    command. Raises :class:`FolderBusy` when another process holds it. On a file system without ``flock``
    (some Lustre and NFS mounts) ``warn`` says so and the body runs unlocked: refusing would make the command
    unusable there."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, folder, path, warn)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder_description(what) + "\n").encode(), 0)
        yield fd
    finally:
        os.close(fd)  # releases the lock unless a child process still holds the descriptor


def _acquire(fd: int, folder, path: Path, warn: Callable[[str], None]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderBusy(f"{folder} is in use by {_holder(path)}; wait for it to finish or stop it "
                         f"(lock: {path})") from None
    except OSError as err:
        warn(f"cannot lock {path} ({err.strerror}): this file system does not support flock, so a second "
             f"writer to {folder} would not be refused")


def _holder(path: Path) -> str:
    """The holder's description; empty between its flock and its write, or unreadable: say so."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (it has not written its name into the lock file yet)"


def held_locks(root, depth: int = 5) -> list[str]:
    """The holders of the folder locks held now below ``root`` (lock files up to ``depth`` folders down: run
    folders, evaluations, conversions, the tiny model; not verl's checkpoints). Each lock is tried without
    waiting and let go at once. Meant for a moment when no writer of ours should be running, such as a
    pipeline's start when no other Snakemake of it is alive: a held lock is then a job that outlived its
    Snakemake (killed alone), and starting the same job again would make two writers."""
    held = []
    root = Path(root)
    for level in range(depth):
        for path in sorted(root.glob("/".join(["*"] * level + [".*.lock"]))):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(_holder(path))
            except OSError:  # no flock here: nothing to learn
                pass
            finally:
                os.close(fd)
    return held
