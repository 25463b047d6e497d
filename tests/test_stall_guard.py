"""The progress-based hang guard (fipo/stall_guard.py): slow work that keeps writing runs to its end, however long;
work that stops writing is reported after the stall limit, whatever it did before."""

import subprocess
import sys
import time

import pytest

from fipo.stall_guard import Stalled, snapshot, wait_while_progressing


def child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_process_that_keeps_writing_outlives_the_limit_many_times(tmp_path):
    writer = child(f"import time, pathlib\nfor i in range(12):\n"
                   f"    pathlib.Path({str(tmp_path)!r}, 'step%d' % i).write_text('x'); time.sleep(0.25)")
    start = time.monotonic()
    assert wait_while_progressing(writer, [tmp_path], stall_s=1.0, poll_s=0.1) == 0
    assert time.monotonic() - start >= 2.5  # three times the limit, never a second without a new file


def test_a_process_that_stops_writing_is_reported_after_the_limit(tmp_path):
    sleeper = child(f"import time, pathlib\npathlib.Path({str(tmp_path)!r}, 'started').write_text('x')\n"
                    f"time.sleep(0.5)\npathlib.Path({str(tmp_path)!r}, 'started').write_text('xy')\ntime.sleep(60)")
    start = time.monotonic()
    try:
        with pytest.raises(Stalled, match=r"^nothing written for 1 s \(after \d+ s\)$") as stalled:
            wait_while_progressing(sleeper, [tmp_path], stall_s=1.0, poll_s=0.1)
        assert sleeper.poll() is None  # still running (so reported before its 60 s were up): stopping it is the caller's decision
        assert time.monotonic() - start >= 1.4 and stalled.value.stall_s == 1.0  # its last write, then the limit
    finally:
        sleeper.kill()
        sleeper.wait()


def test_no_limit_waits_for_the_exit_code(tmp_path):
    assert wait_while_progressing(child("import sys, time; time.sleep(0.3); sys.exit(3)"), [tmp_path], None) == 3


def test_a_rewrite_of_the_same_size_counts_and_a_missing_folder_is_empty(tmp_path):
    assert snapshot([tmp_path / "not yet"]) == (0, 0, 0)
    (tmp_path / "sub").mkdir()
    report = tmp_path / "sub" / "result.json"
    report.write_text("{}")
    first = snapshot([tmp_path, tmp_path / "not yet"])
    assert first[:2] == (1, 2)
    time.sleep(0.01)
    report.write_text("[]")  # same size, later
    assert snapshot([tmp_path])[2] > first[2]
