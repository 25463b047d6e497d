"""Where a training attempt resumes (fipo.training.resume_point): verl checkpoints a step before it logs the
step's metrics, so a run stopped in between must train that step again rather than lose its metrics."""

import json

from fipo.training import resume_point
from fipo.verl_command import RunPaths

BASE = ["trainer.total_training_steps=4", "trainer.resume_mode=auto"]


def make_run(tmp_path, checkpoints, latest, logged):
    run = RunPaths(tmp_path / "run")
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
    assert resume_point(RunPaths(tmp_path / "new"), BASE) == BASE
    assert resume_point(make_run(tmp_path, [1, 2], 2, [1, 2]), BASE) == BASE


def test_a_checkpoint_without_its_metrics_is_trained_again_from_the_one_before(tmp_path):
    run = make_run(tmp_path, [1, 2], 2, [1])
    out = resume_point(run, BASE)
    assert out == ["trainer.total_training_steps=4", "trainer.resume_mode=resume_path",
                   f"trainer.resume_from_path={run.checkpoints / 'global_step_1'}"]


def test_the_first_checkpoint_without_its_metrics_starts_over(tmp_path):
    out = resume_point(make_run(tmp_path, [2], 2, []), BASE)
    assert out == ["trainer.total_training_steps=4", "trainer.resume_mode=disable"]
