"""The pipeline on real clusters brought up on this machine (`make test-cluster`, marker `cluster`, not in `make test`):

* Slurm: a one-node cluster from Debian's packages (scripts/local_slurm.sh up) runs a slice of the smoke
  pipeline through workflow/profiles/slurm and the snakemake executor plugin: data, one 2-step tiny training, its
  conversion and evaluation, one figure. The jobs carry the resources the rules declare (read back from scontrol
  and sacct), every one is in sacct, the rule logs are where the README says, and a training job cancelled with
  scancel mid-run is submitted again and resumes from its checkpoint.
* Ray: a head and a second Ray node (separate raylets, resources split between them) run a 2-step tiny verl
  training with trainer.nnodes=2 through the pipeline's train.ray_address; Ray's state API shows where its
  workers ran.

Nothing here is skipped: without the cluster these tests fail, naming what is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SLURM = ROOT / "scripts" / "local_slurm.sh"
REPORTS = Path(os.environ.get("FIPO_CLUSTER_REPORT_DIR", tempfile.gettempdir())) / "fipo-cluster-tests"


def report(name: str, text: str) -> None:
    """What a test observed (sacct listing, Ray placement), kept for the record under $FIPO_CLUSTER_REPORT_DIR."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / name).write_text(text)
    print(text)


def processes_with(ray_dir: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["environ"]):
        try:
            if (p.info["environ"] or {}).get("RAY_TMPDIR") == ray_dir:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def stop_processes(ray_dir: str) -> None:
    """Stop what this test started (found by its private RAY_TMPDIR), never Ray processes of anyone else."""
    procs = processes_with(ray_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


# ============================================================================================ Slurm

SMOKE_TARGETS = ("influence",)  # the figure; the evaluation is named by path below
STATUS_DELAY = ["--slurm-init-seconds-before-status-checks", "2"]  # the one setting that differs from the profile


def slurm_is_up() -> bool:
    return subprocess.run([str(LOCAL_SLURM), "status"], capture_output=True).returncode == 0


def planned_jobs(dry_run: str) -> dict[str, dict]:
    """rule -> {'resources': {...}, 'threads': n, 'log': path} from `snakemake -n` output."""
    jobs = {}
    for block in dry_run.split("\n\n"):
        rule = re.search(r"^rule (\w+):$", block, re.M)
        if not rule or "jobid:" not in block:
            continue
        resources = re.search(r"^\s*resources: (.*)$", block, re.M)
        items = dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {}
        threads = re.search(r"^\s*threads: (\d+)$", block, re.M)
        log = re.search(r"^\s*log: (.*)$", block, re.M)
        jobs[rule.group(1)] = {"resources": items, "threads": int(threads.group(1)) if threads else 1,
                               "log": log.group(1) if log else None}
    return jobs


def sacct_jobs(run_uuid: str) -> list[dict]:
    fields = "JobID,JobName,Comment,Partition,Account,State,ExitCode,ReqCPUS,ReqMem,Timelimit,NNodes,Elapsed,Submit"
    out = subprocess.run(["sacct", "-X", "-P", "--name", run_uuid, "-o", fields, "--starttime", "now-1days"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.strip().splitlines()]
    return [dict(zip(rows[0], row)) for row in rows[1:]]


def scontrol_job(jobid: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def train_job_running() -> str | None:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        jobid, comment = line.split("|", 1)
        if comment.startswith("rule_train_"):
            return jobid
    return None


def step_logged(run: Path, step: int) -> bool:
    """The current attempt has logged the training metrics of ``step`` (verl checkpoints a step before it logs
    it; a run stopped in between retrains that step from scratch by design: fipo.run_folder.resume_point)."""
    attempts = sorted(run.glob("metrics.attempt-*.jsonl"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not attempts:
        return False
    for line in attempts[-1].read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step") == step and "actor/entropy" in record.get("data", {}):
            return True
    return False


def minutes(timelimit: str) -> int:
    """sacct/scontrol time limit ([D-]HH:MM:SS) in minutes."""
    days, _, clock = timelimit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    if not slurm_is_up():
        pytest.fail("no local Slurm cluster: `scripts/local_slurm.sh up` (as root) or `make test-cluster`")
    root = tmp_path_factory.mktemp("slurm")
    ray_dir = tempfile.mkdtemp(prefix="fipo-slurm-ray-", dir="/tmp")
    results, data = root / "results", root / "data"
    paths = root / "paths.yaml"
    paths.write_text(yaml.safe_dump({"results_dir": str(results), "data_dir": str(data)}))
    summary = results / "tiny" / "eval" / "fipo" / "tiny-test" / "summary.json"
    cmd = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/slurm", *STATUS_DELAY,
           *SMOKE_TARGETS, str(summary), "--configfile", "config/smoke.yaml", str(paths)]
    env = {**os.environ, "RAY_TMPDIR": ray_dir}
    plan = subprocess.run([*cmd, "-n"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]

    start = time.monotonic()
    log_path = root / "snakemake.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        run = results / "tiny" / "runs" / "fipo"
        marker = run / "checkpoints" / "latest_checkpointed_iteration.txt"
        cancelled, scontrol, deadline = None, None, time.monotonic() + 1800
        try:
            while cancelled is None:  # cancel the training job once its first step is checkpointed and logged
                assert process.poll() is None, log_path.read_text()[-5000:]
                assert time.monotonic() < deadline, "the training job reached no checkpoint in 30 minutes"
                jobid = train_job_running()
                if jobid and scontrol is None:
                    scontrol = scontrol_job(jobid)
                if jobid and marker.is_file() and marker.read_text().strip() == "1" and step_logged(run, 1):
                    subprocess.run(["scancel", jobid], check=True)
                    cancelled = jobid
                time.sleep(0.5)
            code = process.wait(timeout=1800)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                process.wait(timeout=120)
    text = log_path.read_text()
    assert code == 0, text[-6000:]
    wall = time.monotonic() - start
    run_uuid = re.search(r"SLURM run ID: (\S+)", text).group(1)
    jobs = sacct_jobs(run_uuid)
    listing = subprocess.run(["sacct", "-X", "--name", run_uuid, "--starttime", "now-1days", "-o",
                              "JobID,Comment%34,Partition,Account,State,ExitCode,ReqCPUS,ReqMem,Timelimit,Elapsed"],
                             capture_output=True, text=True).stdout
    report("slurm_sacct.txt", f"{' '.join(cmd[2:])}\nwall {wall:.0f} s, scancel of job {cancelled}\n{listing}")
    leftovers = [p.pid for p in processes_with(ray_dir)]
    yield {"plan": planned_jobs(plan.stdout), "jobs": jobs, "cancelled": cancelled, "scontrol": scontrol,
           "results": results, "data": data, "run": run, "log": text, "cmd": cmd, "env": env, "leftovers": leftovers}
    stop_processes(ray_dir)
    shutil.rmtree(ray_dir, ignore_errors=True)


def rule_of(job: dict) -> str:
    comment = job["Comment"]
    assert comment.startswith("rule_"), job
    return re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", comment).group(1)


def test_every_job_ran_on_slurm_and_is_in_sacct(slurm_run):
    jobs = slurm_run["jobs"]
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(rule_of(job), []).append(job)
    assert set(by_rule) == set(slurm_run["plan"]) - {"influence"}, (by_rule.keys(), slurm_run["plan"].keys())
    for rule, runs in by_rule.items():
        assert runs[-1]["State"] == "COMPLETED" and runs[-1]["ExitCode"] == "0:0", (rule, runs)
    trains = by_rule["train"]
    assert [j["State"].split()[0] for j in trains] == ["CANCELLED", "COMPLETED"], trains
    assert trains[0]["JobID"] == slurm_run["cancelled"]


def test_jobs_carry_the_resources_the_rules_declare(slurm_run):
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    for job in slurm_run["jobs"]:
        rule = rule_of(job)
        declared = slurm_run["plan"][rule]
        resources = declared["resources"]
        partition = profile.get("set-resources", {}).get(rule, {}).get("slurm_partition") \
            or profile["default-resources"]["slurm_partition"]
        assert job["Partition"] == partition, (rule, job)
        assert job["ReqMem"] == f"{resources['mem_mb']}M", (rule, job["ReqMem"], resources)
        assert minutes(job["Timelimit"]) == int(resources["runtime"]), (rule, job["Timelimit"], resources)
        assert int(job["ReqCPUS"]) == declared["threads"], (rule, job["ReqCPUS"], declared)
        assert int(job["NNodes"]) == int(resources.get("nodes", 1)), (rule, job)
    # the running training job as the controller saw it
    sc, train = slurm_run["scontrol"], slurm_run["plan"]["train"]
    assert sc is not None, "never saw the training job running"
    assert sc["Partition"] == "gpu" and sc["NumCPUs"] == str(train["threads"]) and sc["NumNodes"] == "1"
    assert sc["MinMemoryNode"] == f"{train['resources']['mem_mb']}M"
    assert minutes(sc["TimeLimit"]) == int(train["resources"]["runtime"])


def test_logs_land_where_the_readme_says(slurm_run):
    readme = (ROOT / "README.md").read_text()
    assert "| `results/logs/`, `results/benchmarks/` | one log per job;" in readme
    results = slurm_run["results"]
    for rule, declared in slurm_run["plan"].items():
        if declared["log"] is None:
            continue
        log = Path(declared["log"])
        assert log.is_relative_to(results / "logs"), (rule, log)
        assert log.is_file() and log.stat().st_size > 0, (rule, log)
    # the plugin keeps Slurm's own output of a failed (here: cancelled) job, and drops that of successful ones
    kept = ROOT / ".snakemake" / "slurm_logs" / "rule_train" / "tiny_fipo" / f"{slurm_run['cancelled']}.log"
    assert kept.is_file(), kept
    assert f"*** JOB {slurm_run['cancelled']} ON " in kept.read_text() and "CANCELLED AT" in kept.read_text()


def test_cancelled_training_was_resubmitted_and_resumed_from_its_checkpoint(slurm_run):
    from fipo.run_folder import read_steps

    run = slurm_run["run"]
    attempts = sorted(run.glob("metrics.attempt-*.jsonl"))
    assert len(attempts) == 2, attempts
    first, resumed = read_steps(attempts[0]), read_steps(attempts[1])
    assert "actor/entropy" in first[1]  # step 1 was trained and checkpointed before the cancel
    assert "actor/entropy" not in resumed.get(1, {})  # the second job did not train step 1 again
    assert "actor/entropy" in resumed.get(2, {}) or "actor/entropy" in first.get(2, {})
    record = json.loads((run / "run.json").read_text())
    assert record["last_step"] == 2
    assert sorted(read_steps(run / "metrics.jsonl")) == [0, 1, 2]
    train_log = (slurm_run["results"] / "logs" / "tiny" / "train" / "fipo.log").read_text()
    assert "(resume)" in train_log, train_log[:3000]
    assert slurm_run["leftovers"] == []  # scancel took the whole verl tree down, and so did the finished jobs


def test_nothing_left_to_do_after_the_slurm_run(slurm_run):
    out = subprocess.run([*slurm_run["cmd"], "-n"], cwd=ROOT, env=slurm_run["env"], capture_output=True, text=True,
                         timeout=300)
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-3000:]


# ============================================================================================ Ray, two nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_config(target: Path) -> Path:
    """The spec folder with the tiny preset on two nodes of one (logical) GPU each. It also drops the preset's
    ray_init sizes (num_cpus, num_gpus, include_dashboard), which ray.init refuses when it joins a running
    cluster: there the cluster's nodes say what they have."""
    shutil.copytree(ROOT / "config", target)
    preset = target / "presets" / "tiny.yaml"
    spec = yaml.safe_load(preset.read_text())
    engine = spec["defaults"]["engine"]
    engine.pop("ray_kwargs", None)
    for key in [k for k in engine if k.startswith("+ray_kwargs.ray_init.")]:
        engine.pop(key)
    spec["defaults"]["trainer"]["nnodes"] = 2
    preset.write_text(yaml.safe_dump(spec, sort_keys=False))
    return target


RAY = str(Path(sys.executable).with_name("ray"))
STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_nodes
nodes = list_nodes(address=sys.argv[1], detail=True)
actors = list_actors(address=sys.argv[1], detail=True, limit=10000)
print(json.dumps({
    "nodes": [{"node_id": n.node_id, "is_head_node": n.is_head_node, "state": n.state,
               "resources_total": n.resources_total} for n in nodes],
    "actors": [{"class_name": a.class_name, "name": a.name, "state": a.state, "node_id": a.node_id,
                "pid": a.pid, "job_id": a.job_id} for a in actors],
}))
"""


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head and a second Ray node on this machine: separate raylets, each with 8 logical CPUs and one
    logical GPU (the tiny preset's CPU platform asks Ray for GPUs), a custom resource naming each node, a private
    RAY_TMPDIR, token authentication with a token of this test's own (RAY_AUTH_TOKEN; nothing in ~/.ray)."""
    ray_dir = tempfile.mkdtemp(prefix="fipo-ray2-", dir="/tmp")
    token = uuid.uuid4().hex
    env = {**os.environ, "RAY_TMPDIR": ray_dir, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    for key in ("VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM", "VERL_ENGINE_DEVICE", "VERL_FILE_LOGGER_PATH"):
        env.pop(key, None)  # the nodes get nothing of verl's: the job brings what it needs (runtime_env)
    port, dashboard = free_port(), free_port()
    head = [RAY, "start", "--head", f"--port={port}", "--num-cpus=8", "--num-gpus=1",
            '--resources={"fipo_head": 1}', "--include-dashboard=true", f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            "--disable-usage-stats"]
    second = [RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=8", "--num-gpus=1",
              '--resources={"fipo_second": 1}', f"--dashboard-agent-listen-port={free_port()}",
              f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
    start = time.monotonic()
    try:
        for cmd in (head, second):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, (cmd, out.stdout[-3000:], out.stderr[-3000:])
        bring_up = time.monotonic() - start
        yield {"address": f"127.0.0.1:{port}", "env": env, "ray_dir": ray_dir, "bring_up_s": bring_up,
               "commands": (head, second)}
    finally:
        stop_processes(ray_dir)  # by pid: `ray stop` would stop every Ray on the machine
        shutil.rmtree(ray_dir, ignore_errors=True)


def ray_state(cluster) -> dict:
    out = subprocess.run([sys.executable, "-c", STATE_QUERY, cluster["address"]], env=cluster["env"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_node_run(ray_cluster, slurm_run, tmp_path_factory):
    """The Slurm run's data and base model copied in, as a finished pipeline leaves them (its build is the Slurm
    test's; here it would keep both Ray nodes idle for about 100 s): the run trains on two nodes."""
    root = tmp_path_factory.mktemp("ray2")
    config = two_node_config(root / "config")
    results, data = root / "results", root / "data"
    shutil.copytree(slurm_run["data"], data)
    shutil.copytree(slurm_run["results"] / "tiny" / "base_model", results / "tiny" / "base_model")
    paths = root / "paths.yaml"
    paths.write_text(yaml.safe_dump({"results_dir": str(results), "data_dir": str(data),
                                     "train": {"ray_address": ray_cluster["address"]}}))
    record = results / "tiny" / "runs" / "fipo" / "run.json"
    cmd = [sys.executable, "-m", "snakemake", "--cores", "all", str(record),
           "--configfile", "config/smoke.yaml", str(paths)]
    env = {**ray_cluster["env"], "FIPO_CONFIG_DIR": str(config)}
    before = ray_state(ray_cluster)
    assert len([n for n in before["nodes"] if n["state"] == "ALIVE"]) == 2, before["nodes"]
    start = time.monotonic()
    samples = []
    with open(root / "snakemake.log", "w") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while process.poll() is None and time.monotonic() - start < 1800:
                if (results / "tiny" / "runs" / "fipo" / "checkpoints").is_dir():  # mid-training
                    samples.append(ray_state(ray_cluster))
                    time.sleep(5)
                else:
                    time.sleep(1)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                process.wait(timeout=120)
    wall = time.monotonic() - start
    after = ray_state(ray_cluster)
    text = (root / "snakemake.log").read_text()
    assert code == 0, text[-6000:] + (results / "logs" / "tiny" / "train" / "fipo.log").read_text()[-6000:]
    assert not re.search(r"^(local)?rule tiny_(data|model):", text, re.M), text[-3000:]  # taken as built
    heads = {n["node_id"] for n in after["nodes"] if n["resources_total"].get("fipo_head")}
    lines = [f"{'class':<52} {'name':<28} {'state':<8} node"]
    new_jobs_actors = [a for a in after["actors"] if a["job_id"] not in {b["job_id"] for b in before["actors"]}]
    for a in sorted(new_jobs_actors, key=lambda a: (a["class_name"], a["name"] or "")):
        where = "head" if a["node_id"] in heads else "second"
        lines.append(f"{a['class_name']:<52} {a['name'] or '-':<28} {a['state']:<8} {where} ({a['node_id'][:8]})")
    report("ray_placement.txt", f"bring-up {ray_cluster['bring_up_s']:.0f} s, pipeline {wall:.0f} s\n"
           f"nodes: {json.dumps(after['nodes'], indent=1)}\n" + "\n".join(lines) + "\n")
    return {"results": results, "before": before, "after": after, "samples": samples, "actors": new_jobs_actors,
            "heads": heads, "log": text, "cmd": cmd, "env": env}


def test_two_node_training_finishes_with_workers_on_both_nodes(two_node_run):
    run = two_node_run["results"] / "tiny" / "runs" / "fipo"
    record = json.loads((run / "run.json").read_text())
    assert "trainer.nnodes=2" in record["command"] and "+ray_kwargs.ray_init.address=" in record["command"]
    nodes = {n["node_id"] for n in two_node_run["after"]["nodes"] if n["state"] == "ALIVE"}
    assert len(nodes) == 2
    workers = [a for a in two_node_run["actors"] if a["class_name"].endswith("WorkerDict")]
    assert len(workers) == 2, two_node_run["actors"]  # nnodes × n_gpus_per_node FSDP workers
    assert {a["node_id"] for a in workers} == nodes  # one on each node
    servers = [a for a in two_node_run["actors"] if a["class_name"] == "HFRolloutServer"]
    assert servers, two_node_run["actors"]
    # seen while it ran too, not only in the record of dead actors
    live = {a["node_id"] for s in two_node_run["samples"] for a in s["actors"]
            if a["class_name"].endswith("WorkerDict") and a["state"] == "ALIVE"}
    assert live == nodes, live


def test_two_node_training_logs_its_metrics_in_the_run_folder(two_node_run):
    """verl's TaskRunner (and its file logger) runs in a process of the Ray cluster: the run's environment
    (VERL_FILE_LOGGER_PATH, and the CPU platform for the tiny preset) must reach it through the job's runtime_env."""
    from fipo.run_folder import read_steps

    run = two_node_run["results"] / "tiny" / "runs" / "fipo"
    assert sorted(read_steps(run / "metrics.jsonl")) == [0, 1, 2]
    assert json.loads((run / "run.json").read_text())["last_step"] == 2


def test_the_doctor_counts_the_ray_clusters_nodes_and_gpus(ray_cluster):
    """`fipo doctor --ray-address` asks Ray itself: two alive nodes of one GPU each are too few for the 32B preset's
    16 × 8, and the failure names what the cluster has and how to grow it."""
    out = subprocess.run(
        [sys.executable, "-m", "fipo", "doctor", "--preset", "qwen2.5-32b", "--experiment", "fipo", "--stage", "train",
         "--ray-address", ray_cluster["address"]],
        cwd=ROOT, env=ray_cluster["env"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    (line,) = [line for line in out.stdout.splitlines() if line.split()[:2] == ["FAIL", "gpus"]]
    assert f"Ray cluster at {ray_cluster['address']} has 0 node(s) with >= 8 GPUs (" in line
    assert line.count(": 1,") + line.count(": 1)") == 2, line  # each node and its one GPU, in Ray's view
    assert f"join 16 more node(s): ray start --address={ray_cluster['address']} --num-gpus=8" in out.stdout
