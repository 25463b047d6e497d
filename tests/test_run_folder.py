"""A run folder's lifecycle (fipo.run_folder): metrics across crashes and resumes, where an attempt resumes,
the lock, the fingerprint that decides between resuming and starting over, file modes, and a verl child
that dies with its wrapper."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from fipo.files import write_text_atomic
from fipo.run_folder import RunFolder, RunFolderBusy, read_steps

BASE = ["trainer.total_training_steps=4", "trainer.resume_mode=auto"]


def write(path, records, torn=False):
    text = "".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in records)
    path.write_text(text + ('{"step": 9, "da' if torn else ""))


# ------------------------------------------------------------------------------------ attempts and metrics


def test_attempts_are_numbered_created_exclusively_and_merged_step_by_step(tmp_path):
    run = RunFolder(tmp_path)
    first = run.new_attempt()
    assert first.name == "metrics.attempt-1.jsonl" and first.exists()
    # attempt 1: validation at step 0, steps 1-4, crash while writing step 5 (checkpoint at step 2)
    write(first, [(0, {"val": 0.1}), (1, {"loss": 1.0}), (2, {"loss": 2.0}), (3, {"loss": 3.0}), (4, {"loss": 4.0})],
          torn=True)
    second = run.new_attempt()
    assert second.name == "metrics.attempt-2.jsonl"
    # attempt 2 resumes from step 2: validates at step 2, re-runs 3 and 4, goes on to 5
    write(second, [(2, {"val": 0.2}), (3, {"loss": 3.5}), (4, {"loss": 4.5}), (5, {"loss": 5.5})])
    lines = [json.loads(line) for line in run.merge_attempts().read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4, 5]  # each step exactly once, in order
    by_step = {r["step"]: r["data"] for r in lines}
    assert by_step[2] == {"loss": 2.0, "val": 0.2}  # the resume's validation adds to the step's record
    assert by_step[3] == {"loss": 3.5} and by_step[4] == {"loss": 4.5}  # re-runs win


def test_a_new_attempt_never_reuses_a_file_another_process_created(tmp_path):
    run = RunFolder(tmp_path)
    taken = [run.new_attempt() for _ in range(3)]
    assert len(set(taken)) == 3
    (tmp_path / "metrics.attempt-7.jsonl").write_text("")  # made by someone else meanwhile
    assert run.new_attempt().name == "metrics.attempt-8.jsonl"


def test_attempt_10_sorts_after_attempt_9(tmp_path):
    for n in (1, 2, 9, 10):
        write(tmp_path / f"metrics.attempt-{n}.jsonl", [(1, {"attempt": n})])
    merged = RunFolder(tmp_path).merge_attempts()
    assert json.loads(merged.read_text())["data"] == {"attempt": 10}


def test_nothing_logged_writes_nothing(tmp_path):
    assert RunFolder(tmp_path).merge_attempts() is None and not (tmp_path / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------ resume point


def make_run(tmp_path, checkpoints, latest, logged):
    run = RunFolder(tmp_path / "run")
    for step in checkpoints:
        (run.checkpoints / f"global_step_{step}" / "actor").mkdir(parents=True)
    if latest is not None:
        (run.checkpoints / "latest_checkpointed_iteration.txt").write_text(str(latest))
    records = [{"step": 0, "data": {"val-core/x/acc/mean@4": 0.5}}]
    records += [{"step": s, "data": {"timing_s/step": 1.0, "actor/entropy": 0.1}} for s in logged]
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_a_fresh_or_cleanly_checkpointed_run_resumes_as_verl_decides(tmp_path):
    assert RunFolder(tmp_path / "new").resume_point(BASE) == BASE
    assert make_run(tmp_path, [1, 2], 2, [1, 2]).resume_point(BASE) == BASE


def test_a_checkpoint_without_its_metrics_is_trained_again_from_the_one_before(tmp_path):
    run = make_run(tmp_path, [1, 2], 2, [1])
    assert run.resume_point(BASE, log=lambda m: None) == [
        "trainer.total_training_steps=4", "trainer.resume_mode=resume_path",
        f"trainer.resume_from_path={run.checkpoints / 'global_step_1'}"]


def test_the_resume_path_reaches_hydra_intact_under_an_odd_folder(tmp_path):
    """CI's smoke run lies under 'résultats #1': an unquoted resume path stopped Hydra's lexer at the space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    odd = tmp_path / "résultats #1" / "it's ${x}"
    odd.mkdir(parents=True)
    run = make_run(odd, [1, 2], 2, [1])
    overrides = run.resume_point(BASE, log=lambda m: None)
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    # As verl reads it: Hydra's value, then OmegaConf's resolution (which turns '\${' back into '${').
    resolved = OmegaConf.create({k.replace(".", "_"): v for k, v in parsed.items()})
    assert resolved.trainer_resume_from_path == str(run.checkpoints / "global_step_1")
    assert resolved.trainer_resume_mode == "resume_path"


def test_the_first_checkpoint_without_its_metrics_starts_over(tmp_path):
    out = make_run(tmp_path, [2], 2, []).resume_point(BASE, log=lambda m: None)
    assert out == ["trainer.total_training_steps=4", "trainer.resume_mode=disable"]


@pytest.mark.parametrize("content", ["", "  \n", "step 3", "-1", "²"])
def test_an_unreadable_checkpoint_marker_names_the_file(tmp_path, content):
    run = make_run(tmp_path, [1], None, [1])
    marker = run.checkpoints / "latest_checkpointed_iteration.txt"
    marker.write_text(content)
    with pytest.raises(ValueError, match="latest_checkpointed_iteration.txt: expected the step number"):
        run.resume_point(BASE)


# ------------------------------------------------------------------------------------ lock


def test_one_trainer_per_run_folder(tmp_path):
    run = RunFolder(tmp_path / "runs" / "fipo")
    with run.lock("trainer one"):
        with pytest.raises(RunFolderBusy) as err:
            with run.lock("trainer two"):
                pass
        message = str(err.value)
        assert str(run.run_dir) in message and "trainer one" in message and f"pid {os.getpid()}" in message
        # another process (another working directory) is refused too
        code = ("import sys; from pathlib import Path; from fipo.run_folder import RunFolder, RunFolderBusy\n"
                f"try:\n  RunFolder(Path({str(run.run_dir)!r})).lock().__enter__()\n"
                "except RunFolderBusy as e:\n  print(e); sys.exit(3)\n")
        out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
        assert out.returncode == 3 and "trainer one" in out.stdout, out.stderr
    with run.lock("trainer two"):  # released at exit
        pass


def test_the_lock_survives_moving_the_folder_aside(tmp_path):
    run = RunFolder(tmp_path / "runs" / "fipo")
    assert run.lock_path.parent == run.run_dir.parent


# ------------------------------------------------------------------------------------ fingerprint


def provenance(fingerprint):
    return {"preset": "tiny", "experiment": "fipo", "fingerprint": fingerprint, "spec_fingerprint": "s" * 64,
            "project_version": "0"}


def test_the_same_run_resumes_another_is_moved_aside_never_resumed_into(tmp_path):
    run = RunFolder(tmp_path / "tiny" / "runs" / "fipo")
    assert run.claim(provenance("a" * 64), log=lambda m: None) == "new"
    (run.checkpoints / "global_step_4").mkdir(parents=True)
    assert run.claim(provenance("a" * 64), log=lambda m: None) == "resume"
    assert (run.checkpoints / "global_step_4").is_dir()
    messages = []
    assert run.claim(provenance("b" * 64), log=messages.append) == "replaced"
    assert not run.checkpoints.exists() and run.recorded_fingerprint() == "b" * 64
    (moved,) = run.superseded_dir.iterdir()
    assert moved.name.startswith("fipo-") and moved.name.endswith("-" + "a" * 12)
    assert (moved / "checkpoints" / "global_step_4").is_dir()  # kept, named
    assert str(moved) in messages[0] and "from scratch" in messages[0]


def test_a_folder_from_before_fingerprints_is_not_resumed_into(tmp_path):
    run = RunFolder(tmp_path / "tiny" / "runs" / "fipo")
    (run.checkpoints / "global_step_2").mkdir(parents=True)
    assert run.claim(provenance("c" * 64), log=lambda m: None) == "replaced"
    (moved,) = run.superseded_dir.iterdir()
    assert moved.name.endswith("-unlabelled") and (moved / "checkpoints" / "global_step_2").is_dir()


def test_files_follow_the_umask(tmp_path):
    previous = os.umask(0o002)
    try:
        path = write_text_atomic(tmp_path / "shared.txt", "x")
        assert path.stat().st_mode & 0o777 == 0o664
        os.umask(0o077)
        assert write_text_atomic(tmp_path / "private.txt", "x").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


# ------------------------------------------------------------------------------------ verl dies with its wrapper


def test_the_trainer_child_dies_when_its_wrapper_is_killed(tmp_path):
    """The wrapper starts its child as fipo.training does (own session, parent-death signal); kill -9 of the
    wrapper must not leave the child running (a rerun would start a second trainer beside it)."""
    wrapper = (
        "import os, subprocess, sys, time\n"
        "from fipo.training import _die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True,\n"
        "                         preexec_fn=_die_with_parent(os.getpid()))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", wrapper], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(process.stdout.readline()))
    assert child.is_running()
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    child.wait(timeout=30)  # raises psutil.TimeoutExpired if the child outlived its wrapper
    assert not psutil.pid_exists(child.pid) or child.status() == psutil.STATUS_ZOMBIE


def test_the_spec_fingerprint_follows_every_setting_but_not_prose():
    import dataclasses

    from fipo.spec import load_experiment, with_overrides
    from fipo.run_folder import spec_fingerprint

    exp = load_experiment("tiny", "fipo")
    base = spec_fingerprint(exp, "1")
    assert spec_fingerprint(exp, "1") == base
    assert spec_fingerprint(dataclasses.replace(exp, description="reworded"), "1") == base
    assert spec_fingerprint(dataclasses.replace(exp, fipo=dataclasses.replace(exp.fipo, tau=2.0)), "1") != base
    assert spec_fingerprint(with_overrides(exp, ["trainer.total_training_steps=2"]), "1") != base
    assert spec_fingerprint(exp, "2") != base  # another project version


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the fipo package that training_code digests instead of the real one, to edit freely."""
    import functools
    import shutil

    import fipo.run_folder
    from fipo.code_digest import PACKAGE_DIR, code_digest

    copy = tmp_path / "fipo"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fipo.run_folder, "code_digest", functools.partial(code_digest, root=copy))
    return copy


def _append(path, text):
    path.write_text(path.read_text() + text)


def test_a_change_to_the_code_that_computes_a_run_changes_its_fingerprint(package_copy):
    """The FIPO loss's code keys FIPO runs only; the CPU support's keys every CPU run; comments key none."""
    import dataclasses

    from fipo.spec import load_experiment
    from fipo.run_folder import spec_fingerprint, training_code_modules

    tiny_fipo, tiny_dapo = load_experiment("tiny", "fipo"), load_experiment("tiny", "dapo")
    gpu_fipo, gpu_dapo = load_experiment("qwen2.5-32b", "fipo"), load_experiment("qwen2.5-32b", "dapo")
    assert training_code_modules(tiny_fipo) == ["fipo.verl_plugin", "fipo.integrations.verl_cpu"]
    assert training_code_modules(tiny_dapo) == ["fipo.integrations.verl_cpu"]
    assert training_code_modules(gpu_fipo) == ["fipo.verl_plugin"] and training_code_modules(gpu_dapo) == []
    runs = (tiny_fipo, tiny_dapo, gpu_fipo, gpu_dapo)

    def prints():
        return [spec_fingerprint(exp, "v") for exp in runs]

    before = prints()
    assert len(set(before)) == 4
    _append(package_copy / "loss.py", "\n# a comment is no change\n")
    assert prints() == before
    # fipo.loss is reached from the plugin through an import, not named: a fixed bug there retrains FIPO runs
    _append(package_copy / "loss.py", "\n_FIXED = 1\n")
    after_loss = prints()
    assert [a != b for a, b in zip(after_loss, before)] == [True, False, True, False]
    _append(package_copy / "integrations" / "verl_cpu.py", "\n_FIXED = 1\n")
    after_cpu = prints()
    assert [a != b for a, b in zip(after_cpu, after_loss)] == [True, True, False, False]
    _append(package_copy / "analysis" / "plotting.py", "\n_FIXED = 1\n")  # reached by no training
    assert prints() == after_cpu
    assert spec_fingerprint(dataclasses.replace(gpu_dapo, description="x"), "v") == after_cpu[3]


def test_a_library_upgrade_changes_every_runs_fingerprint(monkeypatch, tmp_path):
    import fipo.run_folder
    from fipo.spec import load_experiment
    from fipo.provenance import TRAINING_LIBRARIES, library_versions
    from fipo.run_folder import run_provenance, spec_fingerprint

    exp = load_experiment("qwen2.5-32b", "dapo")
    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows")
    installed = library_versions()
    assert set(installed) == set(TRAINING_LIBRARIES) and installed["torch"] and installed["verl"]

    def provenance():
        return run_provenance(exp, ["x=1"], {"train": data}, {"path": "m", "sha256": None}, "v")

    before = provenance()
    assert before["libraries"] == installed and before["code"] == {}
    assert before == provenance() and before["spec_fingerprint"] == spec_fingerprint(exp, "v")
    monkeypatch.setattr(fipo.run_folder, "library_versions", lambda: {**installed, "verl": "99.0"})
    after = provenance()
    assert after["libraries"]["verl"] == "99.0"
    assert after["fingerprint"] != before["fingerprint"] and after["spec_fingerprint"] != before["spec_fingerprint"]


def test_a_file_system_without_flock_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = RunFolder(tmp_path / "runs" / "fipo")
    with run.lock("trainer one"):
        pass
    assert "does not support flock" in capsys.readouterr().err
