"""benchmarks/device_check.py: its CPU run (--cpu --small) as CI can run it, that its checks fail on a wrong
implementation, and the parts of its CUDA path that can run without a GPU (event timing against fake events, the
target's verdict, the summary of a CUDA report)."""

import copy
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fipo.future_kl import future_kl
from fipo.loss import fipo_policy_loss
from fipo.stall_guard import Stalled, wait_while_progressing

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "device_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


dc = load_script()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One CPU run as the device tool would start it: from another folder, nothing on PYTHONPATH; with Triton's
    interpreter, so the Triton backend's checks run too (on a GPU they run compiled)."""
    folder = tmp_path_factory.mktemp("device_check")
    out = folder / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TRITON_INTERPRET": "1"}
    proc = run_script([sys.executable, str(SCRIPT), "--cpu", "--small", "--out", str(out)], folder, env)
    return proc, json.loads(out.read_text()) if out.exists() else None


# The script prints a line and rewrites its JSON after every check; the longest step on a CPU (building and sampling
# the tiny model) takes under a minute on an idle 2-core machine. A hang guard, not a speed requirement: a busy
# machine makes a step slower but still lets it finish.
STALL_S = 300


def run_script(cmd: list[str], folder: Path, env: dict) -> subprocess.CompletedProcess:
    """``cmd`` in ``folder`` with its output in files there (the guard watches them with the JSON), stopped if
    nothing there changes for STALL_S seconds."""
    with open(folder / "stdout.txt", "w") as stdout, open(folder / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(cmd, cwd=folder, env=env, stdout=stdout, stderr=stderr, text=True)
        try:
            code = wait_while_progressing(process, [folder], STALL_S)
        except Stalled as stalled:
            process.kill()
            process.wait()
            pytest.fail(f"{cmd[-5:]}: {stalled}; output so far:\n{(folder / 'stdout.txt').read_text()[-3000:]}")
    return subprocess.CompletedProcess(cmd, code, (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text())


def test_cpu_small_run_passes_every_check_and_records_every_field(cpu_run):
    proc, report = cpu_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["complete"] is True and report["schema"] == 1
    assert report["device"]["type"] == "cpu" and report["plan"] == "small"
    assert report["torch"] == torch.__version__
    assert Path(report["fipo"]["path"]) == REPO / "fipo"  # the checkout's package, found without PYTHONPATH
    assert isinstance(report["seed"], int) and report["elapsed_s"] > 0

    assert set(report["checks"]) == set(dc.CHECK_NAMES)
    for name, check in report["checks"].items():
        assert check["status"] == "pass", (name, {k: v for k, v in check.items() if k != "cases"})
    quantities = {"future_kl": {"future_kl"}, "future_kl_triton": {"future_kl"},
                  "fipo_loss": {"future_kl", "f", "loss_mat", "value", "grad"}}
    assert report["checks"]["future_kl_triton.float32"]["backend"] == "triton"
    assert report["checks"]["future_kl.float32"]["backend"] == "torch"
    assert report["future_kl_auto_backend"] == "torch"  # auto never takes the interpreter
    for kind in quantities:
        for dtype in ("float32", "bfloat16"):
            check = report["checks"][f"{kind}.{dtype}"]
            assert check["cases_run"] > 0 and check["cases_failed"] == 0
            assert set(check["worst"]) == quantities[kind]
            assert 0 <= check["max_err_over_tol"] <= 1 and 0 <= check["max_abs_err"] < 1
            assert {c["L"] for c in check["cases"]} >= {1, dc.SMALL.long_case[1]}  # length 1 and the long case
        edges = report["checks"][f"{kind}.edge_cases"]["cases"]
        assert {(c["case"], c["dtype"]) for c in edges} >= {
            ("empty mask", "float32"), ("empty mask", "bfloat16"), ("length 1", "float32"), ("length 1", "bfloat16")
        }

    hf = report["checks"]["hf_backend.tiny"]
    assert all(hf["conditions"].values()) and len(hf["conditions"]) == 5
    assert hf["logits_vs_cpu"]["status"] == "not run: the device is the CPU"
    assert hf["samples"] == hf["prompts"] * hf["n"] > 0

    fkl = report["timings"]["future_kl"]
    expected_rows = [(b, n, d, "torch") for b, n in dc.SMALL.timing_shapes for d in ("float32", "bfloat16")]
    assert [(r["B"], r["L"], r["dtype"], r["backend"]) for r in fkl["rows"]] == expected_rows  # Triton: CUDA only
    for row in fkl["rows"]:
        itemsize = 4 if row["dtype"] == "float32" else 2
        assert row["bytes"] == row["B"] * row["L"] * (itemsize + 1 + 4)
        for part in ("op", "copy", "isolated_call"):
            assert row[part]["median_s"] > 0 and row[part]["clock"] == "host perf_counter"
            assert row[part]["queued_ahead"] == "not run: no CUDA"
        assert row["bandwidth_ratio"] == pytest.approx(row["op_GBps"] / row["copy_GBps"])
        assert row["graph"] == {"status": "not run: no CUDA"}
        assert row["traffic"]["aten_ops"] > 1 and row["traffic"]["bytes"] > row["traffic"]["minimum_bytes"]
        assert row["traffic"]["ratio_bound"] == pytest.approx(row["bytes"] / row["traffic"]["bytes"])
    assert fkl["large_copy"]["GBps"] > 0
    loss_rows = report["timings"]["loss"]["rows"]
    assert [(r["B"], r["L"]) for r in loss_rows] == list(dc.SMALL.timing_shapes)
    for row in loss_rows:
        assert row["ratio"] == pytest.approx(row["fipo"]["median_s"] / row["vanilla"]["median_s"])
    assert report["target"]["status"] == "not run: no CUDA" and "ratio" not in report["target"]

    assert report["summary"] == {"passed": 10, "failed": 0, "errors": 0, "skipped": 0}
    assert "summary: 10 passed, 0 failed, 0 errors, 0 skipped" in proc.stdout


# Where the device check runs, torch may be all there is (Triton with it on a GPU): the script as started there,
# with numpy, pandas and transformers unimportable as if not installed (torch itself does without numpy: it warns).
TORCH_ONLY = ("numpy", "pandas", "transformers")
NOT_INSTALLED = f"""
import runpy, sys
from pathlib import Path

# Each finder of sys.meta_path, finding nothing of the blocked packages: an import of one fails and
# importlib.util.find_spec says None (torch._dynamo asks), as where they are not installed. (Their package
# metadata stays visible: what trusted it would then fail to import them, and this test would say so.)
class NotInstalled:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {TORCH_ONLY!r}:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)

assert not set({TORCH_ONLY!r}) & set(sys.modules), "imported before the script"
sys.meta_path[:] = [NotInstalled(finder) for finder in sys.meta_path]
sys.argv = sys.argv[1:]  # the script and its arguments, as if it were run itself
sys.path[0] = str(Path(sys.argv[0]).parent)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_cpu_small_run_with_torch_alone(tmp_path):
    """Without TRITON_INTERPRET: Triton's interpreter is numpy's (on a GPU, Triton compiles and needs none), and
    the interpreted kernels (with step (d)) are what makes the other run slow: this one takes a tenth of its time."""
    out = tmp_path / "x.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    proc = run_script([sys.executable, "-c", NOT_INSTALLED, str(SCRIPT), "--cpu", "--small", "--out", str(out)],
                      tmp_path, env)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["complete"] is True and report["numpy"] == "missing"
    assert Path(report["fipo"]["path"]) == REPO / "fipo"
    expected = {name: "pass" for name in dc.CHECK_NAMES} | {"hf_backend.tiny": "skipped: transformers missing"}
    for name in ("future_kl_triton.float32", "future_kl_triton.bfloat16", "future_kl_triton.edge_cases"):
        expected[name] = "skipped: no CUDA (TRITON_INTERPRET=1 runs the Triton kernel on the CPU)"
    assert {name: check["status"] for name, check in report["checks"].items()} == expected
    assert report["timings"]["loss"]["host_statistics"] == "torch (numpy missing: slower)"
    assert all(row["fipo"]["median_s"] > 0 for row in report["timings"]["loss"]["rows"])
    assert report["summary"] == {"passed": 6, "failed": 0, "errors": 0, "skipped": 4}


def test_the_loss_host_statistics_without_numpy_are_numpy_s():
    """fipo.loss's official-code diagnostics in torch (where numpy is missing) give numpy's numbers exactly, on
    values at each bound and bin edge as well."""
    from fipo.loss import OFFICIAL_BOUND_TOLERANCE, OFFICIAL_MINI_RATIO, _official_host_statistics
    from fipo.loss import _official_host_statistics_torch

    g = gen()
    batch, length, low, high = 4, 3000, 0.8, 1.2
    ratio = torch.exp(torch.randn(batch, length, generator=g) * 2.5)  # every bin, and below the mini ratio
    edges = torch.tensor([2.0, 3.0, 4.0, 10.0, 10.7, OFFICIAL_MINI_RATIO])  # float32(10.7) < 10.7: a float64 edge
    ratio[:, :6] = edges
    ratio[:, 6:12] = torch.nextafter(edges, torch.zeros(()))
    weight = low + (high - low) * torch.rand(batch, length, generator=g)
    weight[:, :4] = torch.tensor([low, high, high - OFFICIAL_BOUND_TOLERANCE, low + OFFICIAL_BOUND_TOLERANCE])
    advantages = torch.randn(batch, 1, generator=g).expand(batch, length).clone()
    advantages[0], advantages[1] = -1.0, 1.0  # both signs whatever the draw
    advantages[2, ::3] = 0.0
    one_token = torch.zeros(batch, length, dtype=torch.bool)
    one_token[1, 5] = True
    masks = {"random": torch.rand(batch, length, generator=g) < 0.7, "empty": torch.zeros_like(one_token),
             "negative only": advantages < 0, "positive only": advantages > 0, "one token": one_token}
    for c in (3.0, 10.0, 10.7):
        for name, mask in masks.items():
            args = (ratio, weight, advantages, mask, low, high, c)
            assert _official_host_statistics_torch(*args) == _official_host_statistics(*args), (name, c)


def test_without_cuda_or_the_interpreter_the_triton_checks_say_skipped(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dc.skipped(torch.device("cpu"))["status"].startswith("skipped: no CUDA")
    assert dc.timed_backends(torch.device("cpu")) == ["torch"]


def test_the_triton_traffic_is_counted_by_construction():
    t = dc.kernel_traffic("triton", 64, 20480, 4)
    tiles = 20  # 20480 / 1024
    assert t["bytes"] == 64 * 20480 * (2 * 5 + 4) + 64 * tiles * 12
    assert dc.kernel_traffic("torch", 64, 20480, 4) is None


def gen():
    return torch.Generator().manual_seed(torch.seed() % 2**32)


def test_future_kl_check_fails_on_a_wrong_half_life(monkeypatch):
    monkeypatch.setattr(dc, "future_kl", lambda delta, mask, tau, **kw: future_kl(delta, mask, tau * 1.01, **kw))
    result = dc.check_future_kl(torch.float32, dc.SMALL, torch.device("cpu"), gen())
    assert result["status"] == "fail" and result["max_err_over_tol"] > 1


def test_loss_check_fails_on_a_wrong_influence_weight_bound(monkeypatch):
    def wrong(old, log_prob, adv, mask, p):
        return fipo_policy_loss(old, log_prob, adv, mask, dataclasses.replace(p, f_clip_high=p.f_clip_high + 0.01))

    monkeypatch.setattr(dc, "fipo_policy_loss", wrong)
    result = dc.check_fipo_loss(torch.float32, dc.SMALL, torch.device("cpu"), gen())
    assert result["status"] == "fail" and result["worst"]["f"]["max_err_over_tol"] > 1


def test_loss_check_fails_on_a_gradient_one_percent_off(monkeypatch):
    def wrong_gradient(old, log_prob, adv, mask, p):
        out = fipo_policy_loss(old, log_prob, adv, mask, p)
        scaled = out.loss_mat.detach() + (out.loss_mat - out.loss_mat.detach()) * 1.01  # same value
        return dataclasses.replace(out, loss_mat=scaled)

    monkeypatch.setattr(dc, "fipo_policy_loss", wrong_gradient)
    result = dc.check_fipo_loss(torch.float32, dc.SMALL, torch.device("cpu"), gen())
    assert result["status"] == "fail"
    assert result["worst"]["grad"]["max_err_over_tol"] > 1 and result["worst"]["loss_mat"]["max_err_over_tol"] <= 1


class FakeEvent:
    """torch.cuda.Event on the host clock, with a GPU that 'reaches' an event ``lag`` seconds after it is
    recorded: query() says whether it has been reached, as the real one does."""

    log: list = []
    lag = 0.0

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self):
        self.t = time.perf_counter()
        FakeEvent.log.append("record")

    def query(self):
        return time.perf_counter() - self.t >= FakeEvent.lag

    def synchronize(self):
        pass

    def elapsed_time(self, end):  # milliseconds, as CUDA's
        return (end.t - self.t) * 1e3


@pytest.fixture
def fake_cuda(monkeypatch):
    FakeEvent.log = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    def spin(cycles):  # a GPU at 2 GHz, as seen from the host
        FakeEvent.log.append(("sleep", cycles))
        time.sleep(cycles / 2e9)

    monkeypatch.setattr(torch.cuda, "_sleep", spin)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.delitem(dc._SPIN_RATE, "cuda:0", raising=False)  # calibrated against the fake events
    return torch.device("cuda", 0)


def test_spin_calibration_against_fake_events(fake_cuda):
    FakeEvent.lag = 0.0
    cycles = dc.spin_cycles(fake_cuda, 0.01)
    assert 1 <= cycles <= 2e7  # 10 ms at 2 GHz at most: the host's overhead around the 0.5 ms spin only lowers it
    assert dc.spin_cycles(fake_cuda, 0.02) == pytest.approx(2 * cycles, rel=1e-6)  # measured once


def test_device_info_of_a_cuda_device(monkeypatch):
    props = type("Props", (), {"name": "NVIDIA H200", "major": 9, "minor": 0, "multi_processor_count": 132,
                               "total_memory": 143 * 2**30, "L2_cache_size": 60 * 2**20})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    info = dc.device_info(torch.device("cuda", 0))
    assert info["type"] == "cuda" and info["name"] == "NVIDIA H200" and info["capability"] == "9.0"
    assert info["multiprocessors"] == 132 and info["memory_GiB"] == 143 and info["L2_bytes"] == 60 * 2**20
    assert info["tf32_matmul"] is torch.backends.cuda.matmul.allow_tf32
    assert dc.default_out_path(info).name == "device_check_nvidia-h200.json"


@pytest.mark.parametrize("lag, expected_ahead", [(10.0, "4/4"), (0.0, "0/4")])
def test_cuda_timing_path_against_fake_events(fake_cuda, lag, expected_ahead):
    FakeEvent.lag = lag
    calls = []

    def fn():
        calls.append(FakeEvent.log[-1] if FakeEvent.log else None)  # what happened just before the call
        time.sleep(0.002)

    flush = torch.zeros(16, dtype=torch.uint8)
    result = dc.time_call(fn, fake_cuda, repeats=4, warmup=2, flush=flush)
    assert result["clock"] == "CUDA events" and result["queued_ahead"] == expected_ahead
    assert 0.0015 < result["median_s"] < 0.05  # event milliseconds converted to seconds
    sleeps = [e for e in FakeEvent.log if isinstance(e, tuple)][2:]  # after the two of the calibration
    assert len(sleeps) == 4 and all(cycles >= 1 for _, cycles in sleeps)
    assert calls[-4:] == ["record"] * 4  # each timed call follows its start event, which follows the spin
    assert FakeEvent.log[-3:] == [("sleep", sleeps[-1][1]), "record", "record"]

    idle = dc.time_call(fn, fake_cuda, repeats=3, warmup=1, flush=flush, queue_ahead=False)
    assert idle["queued_ahead"] == "off: GPU idle before each call"
    assert len([e for e in FakeEvent.log if isinstance(e, tuple)]) == 2 + 4  # no spin without queue_ahead


def cuda_like(report):
    """The CPU report dressed as a CUDA run at the target shape (what only a GPU run would produce)."""
    report = copy.deepcopy(report)
    report["device"] = {"type": "cuda", "name": "NVIDIA H200"}
    for row in report["timings"]["future_kl"]["rows"]:
        row["B"], row["L"] = dc.FULL.target_shape
        row["graph"] = {"status": "ran", "median_s": row["op"]["median_s"] / 4,
                        "bandwidth_ratio": row["bandwidth_ratio"] * 4}
    return report


@pytest.mark.parametrize("ratio, status", [(0.7, "met"), (0.1, "not met")])
def test_target_verdict_and_summary_of_a_cuda_report(cpu_run, capsys, ratio, status):
    report = cuda_like(cpu_run[1])
    row = next(r for r in report["timings"]["future_kl"]["rows"] if r["dtype"] == "float32")
    row["bandwidth_ratio"] = ratio
    target = dc.judge_target(report["timings"]["future_kl"], dc.FULL, torch.device("cuda", 0))
    assert target["status"] == status and target["ratio"] == ratio
    assert target["ratio_bound_by_traffic"] == row["traffic"]["ratio_bound"]
    assert target["graph_ratio"] == row["graph"]["bandwidth_ratio"]
    if status == "not met":
        assert "Triton" in target["why"] and f"{row['traffic']['aten_ops']} aten ops" in target["why"]
        assert "not timed here: triton missing" in target["why"]  # the dressed CPU report has no Triton row
    else:
        assert target["why"] == ""
    report["target"] = target
    dc.print_summary(report, Path("x.json"))
    printed = capsys.readouterr().out
    assert f": {status.upper()} (ratio {ratio:.1%})" in printed
    assert f"{row['graph']['bandwidth_ratio']:.1%}" in printed


def test_the_target_is_judged_on_the_backend_production_runs(cpu_run):
    report = cuda_like(cpu_run[1])
    fkl = report["timings"]["future_kl"]
    torch_row = next(r for r in fkl["rows"] if r["dtype"] == "float32")
    kernel_row = {**copy.deepcopy(torch_row), "backend": "triton", "bandwidth_ratio": 0.62}
    kernel_row["traffic"] = {**dc.kernel_traffic("triton", *dc.FULL.target_shape, 4), "ratio_bound": 0.64}
    fkl["rows"].append(kernel_row)
    torch_row["bandwidth_ratio"] = 0.2
    fkl["auto_backend"] = "triton"
    target = dc.judge_target(fkl, dc.FULL, torch.device("cuda", 0))
    assert target["backend"] == "triton" and target["status"] == "met" and target["ratio"] == 0.62
    assert target["ratio_by_backend"] == {"torch": 0.2, "triton": 0.62}
    fkl["auto_backend"] = "torch"  # the kernel failed its first-use check on this GPU: torch is what runs
    target = dc.judge_target(fkl, dc.FULL, torch.device("cuda", 0))
    assert target["backend"] == "torch" and target["status"] == "not met"


def test_small_plan_on_cuda_does_not_claim_the_target():
    rows = {"rows": [{"B": 4, "L": 2048, "dtype": "float32"}]}
    assert dc.judge_target(rows, dc.SMALL, torch.device("cuda", 0))["status"].startswith("not run: --small")


def test_default_output_path_names_the_device():
    assert dc.default_out_path({"type": "cuda", "name": "NVIDIA H200"}) == (
        REPO / "benchmarks" / "results" / "device_check_nvidia-h200.json"
    )
    assert dc.default_out_path({"type": "cpu", "name": "x86_64"}).name == "device_check_cpu.json"


def test_json_keeps_non_finite_numbers_valid(tmp_path):
    dc.write_json(tmp_path / "r.json", {"a": math.nan, "b": [math.inf, 1.0], "c": torch.tensor([2.0])})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": "nan", "b": ["inf", 1.0], "c": [2.0]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_and_without_cpu_flag_it_refuses(capsys):
    assert dc.main(["--out", "/nonexistent/never-written.json"]) == 2
    assert "--cpu" in capsys.readouterr().err
