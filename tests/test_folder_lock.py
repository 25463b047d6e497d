"""fipo.folder_lock: one writer per folder, across processes; a killed holder leaves the folder free."""

import errno
import fcntl
import os
import re
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from fipo.folder_lock import FolderBusy, folder_lock, lock_path

REPO = Path(__file__).resolve().parent.parent

# Holds the lock until it is killed; says so on stdout once it holds it.
HOLDER = """
import sys, time
from fipo.folder_lock import folder_lock
with folder_lock(sys.argv[1], sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


@contextmanager
def held_by_another_process(folder, what="the holder"):
    """A process that holds ``folder``'s lock for the body of the ``with`` and is then killed with SIGKILL (which
    gives it no chance to unlock: the kernel drops its flock). Yields its Popen."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), what], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert proc.stdout.readline() == "locked\n", "the holder process died before it held the lock"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def busy_pattern(folder, what, pid) -> str:
    """What FolderBusy says: the folder, the holder's description and the lock file."""
    host = re.escape(socket.gethostname())
    return (rf"^{re.escape(str(folder))} is in use by {re.escape(what)} \(pid {pid} on {host}, "
            rf"since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d, working directory {re.escape(str(REPO))}\); wait for it to "
            rf"finish or stop it \(lock: {re.escape(str(lock_path(folder)))}\)$")


def test_a_second_writer_is_refused_naming_the_holder_until_the_holder_is_killed(tmp_path):
    folder = tmp_path / "out"
    with held_by_another_process(folder, "fipo eval of m on tiny-test") as holder:
        with pytest.raises(FolderBusy, match=busy_pattern(folder, "fipo eval of m on tiny-test", holder.pid)):
            with folder_lock(folder, "second"):
                pytest.fail("the second writer ran")
    # SIGKILLed: no cleanup ran in the holder, yet the folder is free, and the lock file now names this process
    with folder_lock(folder, "third"):
        assert lock_path(folder).read_text().startswith(f"third (pid {os.getpid()} on ")


def test_a_holder_in_this_process_refuses_another_from_it_too(tmp_path):
    """flock belongs to the open file, not the process: a nested lock of the same folder is refused, not granted
    twice (and not a deadlock)."""
    with folder_lock(tmp_path / "out", "outer"):
        with pytest.raises(FolderBusy, match=busy_pattern(tmp_path / "out", "outer", os.getpid())):
            with folder_lock(tmp_path / "out", "inner"):
                pass


def test_the_lock_file_lies_beside_the_folder_and_is_released_on_exit_and_on_error(tmp_path, monkeypatch):
    folder = tmp_path / "results" / "eval" / "model"
    assert lock_path(folder) == tmp_path / "results" / "eval" / ".model.lock"
    monkeypatch.chdir(tmp_path)
    assert lock_path(".") == tmp_path.parent / f".{tmp_path.name}.lock"  # `--out .` names the folder it means
    assert lock_path("results/eval/model/..") == tmp_path / "results" / ".eval.lock"

    with folder_lock(folder, "first") as fd:
        assert isinstance(fd, int)
        assert not folder.exists()  # the lock makes its parent, never the folder: that is the writer's to make
        assert lock_path(folder).read_text().startswith(f"first (pid {os.getpid()} on {socket.gethostname()}, since ")
    with pytest.raises(KeyError):
        with folder_lock(folder, "second"):
            raise KeyError("the writer failed")
    with folder_lock(folder, "third"):  # neither the normal exit nor the error left it locked
        pass


def test_without_flock_it_warns_and_goes_on(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    warnings, ran = [], []
    with folder_lock(tmp_path / "out", "writer", warn=warnings.append):
        ran.append(True)
    assert ran == [True]
    [warning] = warnings
    assert f"cannot lock {lock_path(tmp_path / 'out')} (No locks available)" in warning
    assert "does not support flock" in warning and str(tmp_path / "out") in warning


def test_the_default_warning_is_one_stderr_line(tmp_path, monkeypatch, capsys):
    def unsupported(fd, operation):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with folder_lock(tmp_path / "out", "writer"):
        pass
    err = capsys.readouterr().err
    assert err.startswith("[fipo] warning: cannot lock ") and err.count("\n") == 1


def test_folder_busy_is_a_runtime_error_and_not_a_value_error():
    assert issubclass(FolderBusy, RuntimeError) and not issubclass(FolderBusy, ValueError)


def test_a_holder_that_has_not_written_its_name_yet_is_still_refused_with_a_message(tmp_path):
    folder = tmp_path / "out"
    path = lock_path(folder)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a holder between its flock and its write
        with pytest.raises(FolderBusy, match="in use by another process \\(it has not written its name"):
            with folder_lock(folder, "second"):
                pass
    finally:
        os.close(fd)
