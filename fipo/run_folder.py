"""One training run's folder and its lifecycle: paths, lock, fingerprint, attempts, resume point, record.

``<results>/<preset>/runs/<experiment>/`` holds verl's checkpoints, the metrics of every attempt, the rollout
and token dumps, ``provenance.json`` (what the run is: its fingerprint) and, once verl exited 0, ``run.json``.

- **Lock.** One trainer per run folder, across processes and working directories: ``runs/.<experiment>.lock``
  (beside the folder, so that it survives moving the folder aside) is held with ``flock`` for as long as the
  trainer and verl run; a second trainer is refused with a message naming the holder.
- **Fingerprint.** A run is keyed on everything that determines it (:func:`run_provenance`): the rendered verl
  overrides with machine paths replaced by placeholders, the data files' and a local model's content, the
  project version, the project's code that runs inside verl for this run (:func:`training_code`) and the
  installed versions of the libraries that compute it (verl, torch, transformers, vLLM). A folder holding a run
  with another fingerprint is never resumed into: it is moved aside to
  ``<results>/<preset>/superseded/<experiment>-<time>-<fingerprint>/`` and the run starts fresh.
- **Attempts.** verl's ``file`` logger opens its JSONL with "wb": a resumed run would overwrite the steps logged
  before the crash. So every attempt logs to its own ``metrics.attempt-N.jsonl`` (created exclusively) and
  :meth:`RunFolder.merge_attempts` writes ``metrics.jsonl`` with each step exactly once, taken from the latest
  attempt that logged it (a resume from the checkpoint at step k re-runs the steps after k, and those re-runs
  are what the final model saw). Records with the same step (validation and training, or a resume's
  validation at its checkpoint step) are merged key by key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fipo.checkpoint_steps import checkpoint_steps, latest_checkpointed_step
from fipo.code_digest import code_digest
from fipo.determines import TRAIN, material
from fipo.files import MalformedLineError, read_jsonl, write_text_atomic
from fipo.folder_lock import folder_lock, FolderBusy, lock_path
from fipo.hydra_values import hydra_value
from fipo.integrations.cpu_run import CPU_SUPPORT_MODULE
from fipo.provenance import digest_of, file_digest, library_versions, short
from fipo.run_names import run_name

ATTEMPT_PATTERN = re.compile(r"^metrics\.attempt-(\d+)\.jsonl$")
PROVENANCE_FILE = "provenance.json"
RECORD_FILE = "run.json"
COMPLETED_FILE = "completed.json"
LOGGED_STEP_MARKER = "timing_s/step"  # verl logs it with every trained step's metrics


RunFolderBusy = FolderBusy  # another trainer holds the run folder's lock


@dataclass(frozen=True)
class RunFolder:
    """Where one run writes: checkpoints, the metrics JSONL (verl's file logger), dumps, records."""

    run_dir: Path

    # ---------------------------------------------------------------------------------- paths

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def token_dump(self) -> Path:
        return self.run_dir / "token_dump.jsonl"

    @property
    def tensorboard(self) -> Path:
        """verl's tensorboard logger's event files (TENSORBOARD_DIR), when trainer.loggers names it."""
        return self.run_dir / "tensorboard"

    @property
    def rollouts(self) -> Path:
        """verl's own rollout dumps (``trainer.rollout_data_dir``): one ``<step>.jsonl`` of decoded responses."""
        return self.run_dir / "rollouts"

    @property
    def length_stats(self) -> Path:
        """Per-step response-length quantiles computed from the rollout dumps (``python -m fipo lengths``)."""
        return self.run_dir / "length_stats.csv"

    @property
    def provenance(self) -> Path:
        return self.run_dir / PROVENANCE_FILE

    @property
    def record(self) -> Path:
        return self.run_dir / RECORD_FILE

    @property
    def completed(self) -> Path:
        """The completion record kept inside the folder: a pipeline removes its ``run.json`` before it reruns a
        job, and this one still says the run is finished (so it is not trained past its end)."""
        return self.run_dir / COMPLETED_FILE

    @property
    def lock_path(self) -> Path:
        return lock_path(self.run_dir)

    @property
    def superseded_dir(self) -> Path:
        """``<results>/<preset>/superseded/``: runs replaced by a run with another fingerprint."""
        return self.run_dir.parent.parent / "superseded"

    # ---------------------------------------------------------------------------------- lock

    def lock(self, what: str = "fipo train"):
        """Hold the folder's lock (fipo.folder_lock: non-blocking); yields the lock's file descriptor, which a child
        process that must keep the folder locked (verl) inherits. Refused with :class:`RunFolderBusy` naming the
        holder."""
        return folder_lock(self.run_dir, what)

    # ---------------------------------------------------------------------------------- fingerprint

    def recorded_fingerprint(self) -> str | None:
        if not self.provenance.is_file():
            return None
        try:
            return json.loads(self.provenance.read_text())["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return "unreadable"

    def claim(self, provenance: dict, log=print) -> str:
        """Make the folder hold the run ``provenance`` describes (call with the lock held). Returns "new" (an
        empty folder, provenance written), "resume" (the same run: verl resumes it) or "replaced" (another
        run, or an unlabelled one, was moved aside first)."""
        fingerprint = provenance["fingerprint"]
        recorded = self.recorded_fingerprint()
        if recorded == fingerprint:
            return "resume"
        outcome = "new"
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            moved = self.move_aside(recorded)
            what = f"fingerprint {short(recorded)}" if recorded else "no fingerprint (an older version's run)"
            log(f"[fipo] {self.run_dir} held another run ({what}); this one is {short(fingerprint)}. "
                f"Moved the old run to {moved} and starting from scratch.")
            outcome = "replaced"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.provenance, json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        return outcome

    def move_aside(self, recorded: str | None) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.superseded_dir / f"{self.run_dir.name}-{stamp}-{short(recorded) if recorded else 'unlabelled'}"
        suffix = 1
        while target.exists():
            suffix += 1
            target = target.with_name(f"{target.name.rsplit('~', 1)[0]}~{suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.run_dir), str(target))
        return target

    # ---------------------------------------------------------------------------------- attempts

    def attempt_files(self) -> list[Path]:
        found = [(int(m.group(1)), p) for p in self.run_dir.glob("metrics.attempt-*.jsonl")
                 if (m := ATTEMPT_PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def new_attempt(self) -> Path:
        """Create the next ``metrics.attempt-N.jsonl``, exclusively: two processes never log to one file."""
        files = self.attempt_files()
        number = int(ATTEMPT_PATTERN.match(files[-1].name).group(1)) + 1 if files else 1
        while True:
            path = self.run_dir / f"metrics.attempt-{number}.jsonl"
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                return path
            except FileExistsError:
                number += 1

    def merge_attempts(self) -> Path | None:
        """Write ``metrics.jsonl`` (atomically) from all attempts; returns its path, or None if nothing was logged."""
        merged: dict[int, dict] = {}
        for path in self.attempt_files():
            for step, data in read_steps(path).items():
                # Per key: a later attempt replaces what it re-ran, and a resume's validation record at the
                # checkpoint step adds to (not replaces) that step's training record.
                merged.setdefault(step, {}).update(data)
        if not merged:
            return None
        text = "".join(json.dumps({"step": step, "data": merged[step]}) + "\n" for step in sorted(merged))
        return write_text_atomic(self.metrics, text)

    # ---------------------------------------------------------------------------------- resume

    def latest_checkpoint(self) -> int | None:
        """verl's ``latest_checkpointed_iteration.txt``: None when absent; a clear error when unreadable."""
        return latest_checkpointed_step(self.checkpoints)

    def resume_point(self, overrides: list[str], log=print) -> list[str]:
        """Where this attempt resumes. verl saves a step's checkpoint before it logs that step's metrics, so a
        run stopped in between would resume after a step whose metrics are lost for good. Then resume from the
        checkpoint before it (or from scratch) and train that step again."""
        latest = self.latest_checkpoint()
        if latest is None:
            return overrides
        steps = read_steps(self.metrics) if self.metrics.is_file() else {}
        if LOGGED_STEP_MARKER in steps.get(latest, {}):
            return overrides
        earlier = [s for s in checkpoint_steps(self.checkpoints) if s < latest]
        # Quoted for Hydra: a run folder may lie under a path with a space, '#' or non-ASCII characters.
        resume = (["trainer.resume_mode=resume_path",
                   f"trainer.resume_from_path={hydra_value(str(self.checkpoints / f'global_step_{earlier[-1]}'))}"]
                  if earlier else ["trainer.resume_mode=disable"])
        log(f"[fipo] checkpoint {latest} was saved but its metrics were never logged: "
            f"{'resuming from step ' + str(earlier[-1]) if earlier else 'starting over'} to train step {latest} again")
        kept = [o for o in overrides if not o.startswith(("trainer.resume_mode=", "trainer.resume_from_path="))]
        return kept + resume

    # ---------------------------------------------------------------------------------- record

    def write_record(self, path, provenance: dict, command: str, wall_s: float) -> Path:
        """The completion record of a finished run, written atomically and only after verl exited 0, to
        :attr:`completed` and to ``path`` (the pipeline's ``run.json``; default :attr:`record`): its presence means
        the run is complete."""
        steps = read_steps(self.metrics) if self.metrics.is_file() else {}
        record = {"preset": provenance["preset"], "experiment": provenance["experiment"],
                  "fingerprint": provenance["fingerprint"], "spec_fingerprint": provenance["spec_fingerprint"],
                  "project_version": provenance["project_version"], "steps_logged": len(steps),
                  "last_step": max(steps, default=None), "wall_s": round(wall_s, 1), "command": command}
        text = json.dumps(record, indent=2) + "\n"
        write_text_atomic(self.completed, text)
        return write_text_atomic(path or self.record, text)

    def completion(self, fingerprint: str) -> dict | None:
        """The completion record of the run with ``fingerprint`` if that run finished here, else None."""
        try:
            record = json.loads(self.completed.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("fingerprint") == fingerprint else None


def run_folder(results_dir, preset: str, experiment: str, seed: int | None = None, study: bool = False) -> RunFolder:
    """The run of ``experiment`` in ``preset``: ``<results>/<preset>/runs/<run name>/`` (:func:`run_name`)."""
    return RunFolder(Path(results_dir) / preset / "runs" / run_name(experiment, seed, study))


def read_steps(path: Path) -> dict[int, dict]:
    """step -> merged metrics of one metrics JSONL. A torn last line (a crash mid-write) is skipped."""
    steps: dict[int, dict] = {}
    for number, record in read_jsonl(path, "metrics", skip_blank=True):
        if not isinstance(record, dict) or "step" not in record or not isinstance(record.get("data"), dict):
            raise MalformedLineError(path, number, "expected {'step': N, 'data': {...}}")
        steps.setdefault(int(record["step"]), {}).update(record["data"])
    return steps


# The verl plugin (the FIPO loss, its token dumps) computes a FIPO run; DAPO and GRPO use verl's own losses, and
# the plugin only registers the FIPO one for them, so a change to the FIPO loss does not retrain a baseline.
FIPO_LOSS_MODULE = "fipo.verl_plugin"


def training_code_modules(exp) -> list[str]:
    """The project's modules whose code runs inside verl and computes this run (each with every `fipo` module it
    imports): the FIPO loss plugin for a FIPO run, the CPU platform, rollout and sampler for a CPU run."""
    modules = [FIPO_LOSS_MODULE] if exp.policy.loss == "fipo" else []
    if exp.trainer.device == "cpu":
        modules.append(CPU_SUPPORT_MODULE)
    return modules


def training_code(exp) -> dict[str, str]:
    """{module: fipo.code_digest.code_digest(module)} for :func:`training_code_modules`: a fixed bug in the loss
    or the CPU rollout changes the runs it computes (comments and layout do not: syntax trees are hashed)."""
    return {module: code_digest(module) for module in training_code_modules(exp)}


def spec_fingerprint(exp, version: str) -> str:
    """What a run computes, from its spec alone: the settings declared to determine training
    (fipo.determines.material(exp, TRAIN): overrides are applied to the spec before, fipo.spec.with_overrides),
    the project version, and the code and libraries that compute it. Cheap enough for the pipeline's DAG, whose
    train jobs rerun when it changes (Snakemake's params trigger; changed inputs it sees by itself). The library
    versions are those of the process that asks: Snakemake's, which is the runs' own environment unless the
    pipeline runs with --use-conda (then a library upgrade is caught by `fipo train`'s full fingerprint)."""
    return digest_of(_spec_material(exp, version))


def _spec_material(exp, version: str) -> dict:
    return {"experiment": material(exp, TRAIN), "project_version": version, "code": training_code(exp),
            "libraries": library_versions()}


def run_provenance(exp, portable_overrides: list[str], data_files: dict[str, Path], model: dict, version: str) -> dict:
    """What identifies a run, and its fingerprint: :func:`spec_fingerprint` (so the DAG and `fipo train` change
    together), the verl overrides it renders to with machine paths replaced by placeholders
    (:func:`fipo.verl_command.portable_overrides`: a change to how a spec is rendered), the data files' content
    (dataset name -> file) and the model (its spec path and, for a local folder, its content digest)."""
    spec = _spec_material(exp, version)
    identity = {"spec_fingerprint": digest_of(spec), "overrides": portable_overrides,
                "data": {name: file_digest(path) for name, path in sorted(data_files.items())}, "model": model}
    # the spec fingerprint's version, code and libraries shown beside it (hashed once, through it)
    shown = {"preset": exp.preset, "experiment": exp.name, "project_version": version, "code": spec["code"],
             "libraries": spec["libraries"]}
    return {**shown, **identity, "fingerprint": digest_of(identity)}
