"""Cost estimates of a preset's runs (``python -m fipo plan``): GPU-hours, tokens generated and trained, peak memory
per GPU and disk, from the stated model below. Nothing here is measured: every number is an estimate, and every
assumption is a field of :class:`Assumptions` (printed with the estimates) or a row of :data:`MODELS`.

Per experiment, with N the model's parameter count and G = trainer.nnodes × trainer.n_gpus_per_node GPUs:

- Lengths. A response averages the paper's mean over the training run for the preset's model and the
  experiment's method where the paper reports one (:data:`PAPER_RESPONSE_LENGTHS`, at most
  data.max_response_length), else ``response_fraction`` × data.max_response_length (0.3 unless set; set, it applies
  to every experiment). A prompt averages min(``prompt_tokens``, data.max_prompt_length).
- Prompts generated per step. Without dynamic sampling, data.train_batch_size. With it (algorithm.filter_groups),
  train_batch_size / ``keep_fraction``: verl 0.9.1's v1 trainer keeps sampling until train_batch_size groups with
  mixed rewards are found, refilling every evicted group one prompt at a time (it sets data.gen_batch_size to 1
  under dynamic sampling, so the preset's gen_batch_size does not enter; the speculative surplus it discards at
  the end of a step is not counted).
- Update: (6N × ppo_epochs + 2N for the old log-probs + 2N for reference log-probs, only with a KL loss) FLOPs per
  trained token, train_batch_size × rollout.n sequences of prompt + response tokens per step, at ``mfu`` ×
  ``peak_flops`` per GPU (attention FLOPs and gradient-checkpointing recompute are left to the MFU).
- Rollout: generated tokens / (decode tokens/s per GPU of the model, :data:`MODELS`, × G).
- Validation: before training (validation.before_train), every validation.test_freq steps and at the last step
  (verl's rule); each samples validation.n responses per problem of data.val, decoded like the rollouts.
- Evaluation: once per run (``fipo eval`` of the selected checkpoint): evaluation.n samples per problem of each
  benchmark, averaging the paper's length at the end of the run (an upper estimate for evaluation.checkpoint: best
  when lengths grow) or ``response_fraction`` × evaluation.max_tokens, at most evaluation.max_tokens.
- Peak memory per GPU: fp32 weights and gradients (4 + 4 bytes per parameter) and Adam's two fp32 moments (8 bytes)
  sharded over the G GPUs by FSDP, less what fsdp_config.param_offload / optimizer_offload keep in host memory,
  plus vLLM's rollout.gpu_memory_utilization share of ``gpu_memory_gib``: both resident while the rollout runs.
  Activations and the CUDA context are not counted. A typical peak to budget, not ``fipo doctor``'s lower bound of
  what must fit (fipo/doctor/estimates.py): :attr:`Assumptions.memory_note` tells the user so.
- Checkpoints: verl saves the model and the optimizer (fp32 weights and Adam moments: 12 bytes per parameter) every
  trainer.save_freq steps and at the last step, and keeps them all unless trainer.max_actor_ckpt_to_keep is set.
- Rollout dumps (trainer.rollout_dump): every trained sequence's prompt and response as text,
  ``dump_bytes_per_token`` bytes per token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from fipo.data import SHIPPED_AIME_DIR, read_aime_jsonl
from fipo.spec import EvaluationSpec, Experiment, evaluation, list_experiments, load_experiment


class PlanError(ValueError):
    """A preset or experiment the cost model cannot estimate: names the key or model that is missing."""


@dataclass(frozen=True)
class ModelFacts:
    params: int  # parameter count
    decode_tokens_per_s: float  # vLLM decode throughput per GPU: an assumption, not a measurement
    source: str  # where the parameter count comes from


def _qwen2_source(layers: int, hidden: int, mlp: int, heads: str, vocab: int, embeddings: str, card: str) -> str:
    return (f"config.json on the Hugging Face hub: {layers} layers, hidden {hidden}, MLP {mlp}, {heads} attention "
            f"heads (Q/KV), vocab {vocab}, {embeddings} embeddings; model card: {card}")


# Parameter counts computed from each model's config.json (Qwen2: QKV bias, no other bias, SwiGLU MLP, two RMSNorms
# per layer and a final one; tests/test_plan.py recomputes them). Decode throughputs are assumed orders of magnitude
# for vLLM sampling thousands of multi-thousand-token responses on one H100-class GPU (not measured here; calibrate
# with a run's timing_s/gen and the tokens it generated, or pass --decode-tokens-per-s).
MODELS = {
    "Qwen/Qwen2.5-32B": ModelFacts(32_763_876_352, 1_000, _qwen2_source(
        64, 5120, 27648, "40/8", 152064, "untied", "32.5B")),
    "Qwen/Qwen2.5-Math-7B": ModelFacts(7_615_616_512, 4_000, _qwen2_source(
        28, 3584, 18944, "28/4", 152064, "untied", "7.61B (Qwen2.5-7B, the same architecture)")),
    "Qwen/Qwen2.5-Math-1.5B": ModelFacts(1_543_714_304, 12_000, _qwen2_source(
        28, 1536, 8960, "12/2", 151936, "tied", "1.54B")),
    "Qwen/Qwen2.5-0.5B-Instruct": ModelFacts(494_032_768, 20_000, _qwen2_source(
        24, 896, 4864, "14/2", 151936, "tied", "0.49B")),
}


@dataclass(frozen=True)
class PaperLength:
    """Mean response length (tokens) of training batches the paper reports for a model and method."""

    start: float  # early in the run
    end: float  # at the end of the run
    cite: str  # where in the paper, short: printed in the plan's rows
    source: str  # the paper's words (PAPER.md) and how start and end follow from them: printed under the table

    @property
    def run_mean(self) -> float:
        """The mean over the run's steps, which the cost is proportional to: growth from start to end taken as
        linear, so the midpoint (the final length would overstate a growing run)."""
        return (self.start + self.end) / 2


_PAPER_32B = ('PAPER.md §4, under Table 1 (the curves: Figures 1, 3): "Mean response length DAPO ≈ 4,000 tokens '
              '(plateau) vs FIPO > 10,000"')
_DAPO_32B = PaperLength(4_000, 4_000, "Fig. 1", f"32B DAPO: {_PAPER_32B}; the plateau taken as the level of the "
                        "whole run (the climb to it is not reported: this errs high)")
# The paper gives no starting length for FIPO: it is taken to leave DAPO's plateau, which it breaks through, and
# grow linearly to the 10,000 it passes. The shorter first steps (unreported) and "> 10,000" (a lower bound) err in
# opposite directions.
_FIPO_32B = PaperLength(_DAPO_32B.end, 10_000, "Fig. 1", f"32B FIPO: {_PAPER_32B}; from DAPO's plateau to 10,000, "
                        "taken as linear: the run's mean is the midpoint")
_BASELINES_7B = PaperLength(1_200, 1_200, "Fig. 6b", "PAPER.md §5, Figure 6(b), 7B (GRPO, DAPO and FIPO: "
                            'fipo.analysis.catalog): "mean response length (≈1200 tokens)"; one level for the '
                            "whole run")
# (preset, method) -> what the paper reports; the one table of paper lengths. Every experiment of a method (its
# ablations too) takes the method's run. Presets at no paper scale (1.5B, 0.5B) and runs the paper did not make
# (GRPO at 32B) have none: they fall back to response_fraction.
PAPER_RESPONSE_LENGTHS: dict[tuple[str, str], PaperLength] = {
    ("qwen2.5-32b", "dapo"): _DAPO_32B,
    ("qwen2.5-32b", "fipo"): _FIPO_32B,
    **{("qwen2.5-7b-math", method): _BASELINES_7B for method in ("grpo", "dapo", "fipo")},
}
DEFAULT_RESPONSE_FRACTION = 0.3  # mean response / max response length where the paper reports no length


@dataclass(frozen=True)
class ResponseLength:
    """The mean response length an estimate assumed, and what it came from."""

    train: float  # tokens per rollout and validation response, mean over the run
    evaluate: float  # tokens per evaluation sample, at most evaluation.max_tokens
    paper: Optional[PaperLength] = None  # the paper's value it used; None: the fraction rule
    fraction: Optional[float] = None  # of max_response_length (and evaluation.max_tokens), without a paper value
    capped: bool = False  # the paper's run mean is over the experiment's max_response_length


@dataclass(frozen=True)
class Assumptions:
    # mean response / max response length; None: the paper's length where it reports one, else
    # DEFAULT_RESPONSE_FRACTION. Set, it applies to every experiment.
    response_fraction: Optional[float] = None
    prompt_tokens: int = 200  # mean prompt, chat template and DAPO instruction included
    keep_fraction: float = 0.5  # share of groups that survive dynamic sampling (mixed rewards)
    mfu: float = 0.3  # model FLOPs utilisation of the update
    peak_flops: float = 989e12  # dense bf16 FLOP/s of one GPU (H100 SXM)
    gpu_memory_gib: float = 80.0  # memory of one GPU (H100 80 GB)
    decode_tokens_per_s: Optional[float] = None  # per GPU; None: the model's row of MODELS
    weight_bytes: int = 4  # per parameter: verl's FSDP actor keeps fp32 weights (fsdp_config.model_dtype)
    grad_bytes: int = 4  # fp32 gradients
    adam_bytes: int = 8  # Adam's two fp32 moments
    dump_bytes_per_token: float = 4.0  # rollout dumps: text, about 4 characters per token

    def lines(self, facts: dict[str, ModelFacts]) -> list[str]:
        """The assumptions, one sentence each, with the model rows the estimates used."""
        if self.response_fraction is None:
            response = ("mean response: the paper's mean over the training run where it reports one for the model "
                        "and method (the table's column and its notes), else "
                        f"{DEFAULT_RESPONSE_FRACTION:g} x max_response_length (assumed)")
        else:
            response = (f"mean response = {self.response_fraction:g} x max_response_length for every experiment "
                        "(set: the paper's lengths not used)")
        lines = [
            response,
            f"mean prompt = {self.prompt_tokens} tokens (AIME problems average 330-480 characters, data/aime/, "
            "plus the DAPO instruction and the chat template), at most max_prompt_length",
            f"dynamic sampling keeps {self.keep_fraction:g} of the groups: train_batch_size / {self.keep_fraction:g} "
            "prompts generated per step (verl 0.9.1 refills evicted groups one by one; data.gen_batch_size is not "
            "used)",
            "update: 6N FLOPs per trained token per PPO epoch + 2N for the old log-probs (+ 2N for reference "
            f"log-probs with a KL loss), at MFU {self.mfu:g} of {self.peak_flops / 1e12:g} TFLOP/s per GPU",
            f"memory: {self.weight_bytes} + {self.grad_bytes} + {self.adam_bytes} bytes per parameter (fp32 "
            "weights, gradients, Adam moments) sharded over all GPUs, less what is offloaded, + "
            f"gpu_memory_utilization x {self.gpu_memory_gib:g} GiB for vLLM; activations not counted",
            self.memory_note,
            f"checkpoints: {self.checkpoint_bytes} bytes per parameter (fp32 weights + Adam moments), one every "
            "save_freq steps and at the last step, all kept unless trainer.max_actor_ckpt_to_keep; rollout dumps "
            f"{self.dump_bytes_per_token:g} bytes per prompt + response token",
            "validation before training, every test_freq steps and at the last step, responses as long as the "
            "rollouts'; one evaluation per run (evaluation.n samples per benchmark problem, as long as the paper's "
            "at the end of the run, else the fraction x evaluation.max_tokens; at most evaluation.max_tokens)",
            "not modelled: waiting for the longest responses of a batch, weight sync, reward scoring, start-up",
        ]
        for path, model in facts.items():
            decode = self.decode_tokens_per_s or model.decode_tokens_per_s
            lines.append(f"{path}: N = {model.params:,} ({model.source}); decode {decode:,.0f} tokens/s per GPU "
                         "(assumed)")
        return lines

    @property
    def memory_note(self) -> str:
        """Why the peak memory differs from ``fipo doctor``'s (the other half: fipo.doctor.estimates.MEMORY_NOTE)."""
        return (f"peak memory vs fipo doctor: this is a typical peak to budget on an assumed {self.gpu_memory_gib:g} "
                "GiB GPU (FSDP states + vLLM's gpu_memory_utilization share of that GPU, both resident); `fipo "
                "doctor` prints a lower bound of what must fit on the real GPU instead, so its figure differs")

    @property
    def checkpoint_bytes(self) -> int:
        """Per parameter in a checkpoint: the model (fp32 weights) and the optimizer (Adam moments)."""
        return self.weight_bytes + self.adam_bytes


@dataclass(frozen=True)
class Estimate:
    experiment: str
    gpus: int
    steps: int
    rollout_gpu_hours: float
    update_gpu_hours: float
    eval_gpu_hours: float  # validation during training + the evaluation after it
    generated_tokens: float  # training rollouts (responses)
    trained_tokens: float  # prompt + response tokens through the update, all epochs
    peak_memory_gib: float  # per GPU
    checkpoints: int  # kept at the end of the run
    checkpoint_bytes: float  # all kept checkpoints
    dump_bytes: float
    response: Optional[ResponseLength] = None  # None for a total of several runs

    @property
    def gpu_hours(self) -> float:
        return self.rollout_gpu_hours + self.update_gpu_hours + self.eval_gpu_hours

    @property
    def wall_days(self) -> float:
        return self.gpu_hours / self.gpus / 24


def model_facts(path: str) -> ModelFacts:
    if path not in MODELS:
        raise PlanError(f"model.path {path!r} has no parameter count and decode throughput in fipo.plan.MODELS; "
                        f"known: {', '.join(MODELS)}")
    return MODELS[path]


def event_count(total_steps: int, every: int, at_start: bool = False) -> int:
    """How often verl does something every ``every`` steps and at the last step (+ once before step 1)."""
    return total_steps // every + (1 if total_steps % every else 0) + (1 if at_start else 0)


def problem_count(dataset: str) -> int:
    """Problems of a validation or evaluation set (the shipped AIME files)."""
    if not dataset.startswith("aime"):
        raise PlanError(f"no problem count for dataset {dataset!r}: fipo plan knows the AIME sets only")
    return len(read_aime_jsonl(SHIPPED_AIME_DIR / f"{dataset}.jsonl"))


def engine_value(exp: Experiment, key: str, default):
    """A verl key the experiment sets in its engine section, else ``default`` (verl's own default)."""
    value = exp.engine.get(key)
    return default if value is None else value


VERL_GPU_MEMORY_UTILIZATION = 0.5  # verl 0.9.1's default rollout.gpu_memory_utilization


def peak_memory_gib(exp: Experiment, params: int, a: Assumptions) -> float:
    gpus = exp.trainer.nnodes * exp.trainer.n_gpus_per_node
    offload = "actor_rollout_ref.actor.fsdp_config."
    per_param = (0 if engine_value(exp, offload + "param_offload", False) else a.weight_bytes + a.grad_bytes) + (
        0 if engine_value(exp, offload + "optimizer_offload", False) else a.adam_bytes)
    vllm = engine_value(exp, "actor_rollout_ref.rollout.gpu_memory_utilization", VERL_GPU_MEMORY_UTILIZATION)
    return per_param * params / gpus / 2**30 + vllm * a.gpu_memory_gib


def response_length(exp: Experiment, ev: EvaluationSpec, a: Assumptions) -> ResponseLength:
    """The mean response length of ``exp``'s rollouts and of its evaluation: the paper's where it reports one and
    ``a`` sets no fraction, else the fraction rule."""
    paper = PAPER_RESPONSE_LENGTHS.get((exp.preset, exp.method)) if a.response_fraction is None else None
    if paper is None:
        fraction = DEFAULT_RESPONSE_FRACTION if a.response_fraction is None else a.response_fraction
        return ResponseLength(fraction * exp.data.max_response_length, fraction * ev.max_tokens, fraction=fraction)
    return ResponseLength(min(paper.run_mean, exp.data.max_response_length), min(paper.end, ev.max_tokens), paper,
                          capped=paper.run_mean > exp.data.max_response_length)


def estimate(exp: Experiment, ev: EvaluationSpec, a: Assumptions = Assumptions(),
             facts: Optional[ModelFacts] = None) -> Estimate:
    """The cost of one experiment under ``a``; ``facts``: the model's row of MODELS unless given."""
    if exp.trainer.device != "cuda":
        raise PlanError(f"preset {exp.preset!r} trains on the {exp.trainer.device.upper()} (trainer.device: "
                        f"{exp.trainer.device}): fipo plan estimates GPU presets only")
    facts = facts or model_facts(exp.model.path)
    n_params, steps = facts.params, exp.trainer.total_training_steps
    gpus = exp.trainer.nnodes * exp.trainer.n_gpus_per_node
    decode = a.decode_tokens_per_s or facts.decode_tokens_per_s
    d = exp.data
    lengths = response_length(exp, ev, a)
    response = lengths.train
    prompt = min(a.prompt_tokens, d.max_prompt_length)
    prompts_generated = d.train_batch_size / (a.keep_fraction if exp.algorithm.filter_groups else 1.0)
    generated = steps * prompts_generated * exp.rollout.n * response
    sequences = steps * d.train_batch_size * exp.rollout.n
    tokens = sequences * (prompt + response)  # one pass over the trained sequences
    reference = 2 * n_params if exp.policy.kl_loss_coef > 0 else 0  # verl builds a reference model for a KL loss
    update_flops = tokens * (6 * n_params * exp.policy.ppo_epochs + 2 * n_params + reference)
    validations = event_count(steps, exp.validation.test_freq, exp.validation.before_train)
    val_tokens = validations * sum(problem_count(v) for v in d.val) * exp.validation.n * response
    eval_tokens = sum(problem_count(b) for b in ev.benchmarks) * ev.n * lengths.evaluate
    saves = event_count(steps, exp.trainer.save_freq)
    keep = engine_value(exp, "trainer.max_actor_ckpt_to_keep", None)
    kept = saves if keep is None or keep <= 0 else min(saves, keep)
    return Estimate(
        experiment=exp.name, gpus=gpus, steps=steps,
        rollout_gpu_hours=generated / decode / 3600,
        update_gpu_hours=update_flops / (a.mfu * a.peak_flops) / 3600,
        eval_gpu_hours=(val_tokens + eval_tokens) / decode / 3600,
        generated_tokens=generated, trained_tokens=tokens * exp.policy.ppo_epochs,
        peak_memory_gib=peak_memory_gib(exp, n_params, a),
        checkpoints=kept, checkpoint_bytes=kept * a.checkpoint_bytes * n_params,
        dump_bytes=tokens * a.dump_bytes_per_token if exp.trainer.rollout_dump else 0.0,
        response=lengths,
    )


def plan(preset: str, experiments: Optional[list[str]] = None, a: Assumptions = Assumptions()) -> list[Estimate]:
    """Estimates for the preset's experiments (all of them unless named), in the preset's order."""
    names = experiments or list_experiments(preset)
    ev = evaluation(preset)
    return [estimate(load_experiment(preset, name), ev, a) for name in names]


# ------------------------------------------------------------------------------------------- rendering


def _count(x: float) -> str:
    """3 significant figures with a decimal suffix: 1234567 -> '1.23 M'."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {suffix}"
    return f"{x:.3g}"


def _bytes(x: float) -> str:
    for suffix, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {suffix}"
    return f"{x:.0f} B" if x else "0"


def _hours(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


HEADER = ["experiment", "GPUs", "GPU-hours: total (rollout / update / validation+eval)", "wall days",
          "mean response tokens (from)", "tokens generated", "tokens trained", "peak memory per GPU",
          "checkpoints kept", "rollout dumps"]
MEMORY, CHECKPOINTS = HEADER.index("peak memory per GPU"), HEADER.index("checkpoints kept")


def _response(e: Estimate, notes: list[PaperLength]) -> str:
    """The row's mean response and what it came from; a paper value by its note's number in ``notes``."""
    r = e.response
    if r is None:
        return "-"
    if r.paper is None:
        return f"{r.train:,.0f} ({r.fraction:g} x max_response_length)"
    if r.paper not in notes:
        notes.append(r.paper)
    capped = ", capped at max_response_length" if r.capped else ""
    return f"{r.train:,.0f} (paper {r.paper.cite} [{notes.index(r.paper) + 1}]{capped})"


def _row(name: str, e: Estimate, a: Assumptions, notes: list[PaperLength]) -> list[str]:
    over = " (over the GPU's)" if e.peak_memory_gib > a.gpu_memory_gib else ""
    per_checkpoint = e.checkpoint_bytes / e.checkpoints if e.checkpoints else 0
    return [name, str(e.gpus),
            f"{_hours(e.gpu_hours)} ({_hours(e.rollout_gpu_hours)} / {_hours(e.update_gpu_hours)} / "
            f"{_hours(e.eval_gpu_hours)})",
            f"{e.wall_days:.3g}", _response(e, notes), _count(e.generated_tokens), _count(e.trained_tokens),
            f"{e.peak_memory_gib:.1f} GiB{over}",
            f"{e.checkpoints} x {_bytes(per_checkpoint)} = {_bytes(e.checkpoint_bytes)}", _bytes(e.dump_bytes)]


def total(estimates: list[Estimate]) -> Estimate:
    """The runs one after another on the same GPUs: sums, and the largest peak memory."""
    summed = {f: sum(getattr(e, f) for e in estimates) for f in (
        "steps", "rollout_gpu_hours", "update_gpu_hours", "eval_gpu_hours", "generated_tokens", "trained_tokens",
        "checkpoints", "checkpoint_bytes", "dump_bytes")}
    return Estimate(experiment="total", gpus=max(e.gpus for e in estimates),
                    peak_memory_gib=max(e.peak_memory_gib for e in estimates), **summed)


def render(preset: str, estimates: list[Estimate], a: Assumptions = Assumptions()) -> str:
    """A Markdown table, one row per experiment and a total, every number labelled as an estimate, then the paper's
    response lengths the rows used and the assumptions."""
    exp = load_experiment(preset, estimates[0].experiment)
    nodes, per_node = exp.trainer.nnodes, exp.trainer.n_gpus_per_node
    layout = f"{nodes} node{'s' if nodes > 1 else ''} x {per_node} GPU{'s' if per_node > 1 else ''}"
    lines = [f"Cost ESTIMATES for preset {preset} ({exp.model.path}, {layout}, {exp.trainer.total_training_steps} "
             "steps): computed from the assumptions below by fipo/plan.py, not measured.", ""]
    notes: list[PaperLength] = []
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_row(e.experiment, e, a, notes)) + " |" for e in estimates]
    if len(estimates) > 1:
        row = _row(f"total ({len(estimates)} runs, one after another)", total(estimates), a, notes)
        row[MEMORY] = row[MEMORY].replace(" GiB", " GiB (max)", 1)
        row[CHECKPOINTS] = row[CHECKPOINTS].split(" = ")[-1]
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", "Mean response lengths from the paper (an experiment takes its method's run; its evaluation "
                      "samples take the length at the end of the run, at most evaluation.max_tokens):"]
        lines += [f"- [{i}] {p.run_mean:,.0f} tokens over the run, {p.end:,.0f} at its end. {p.source}"
                  for i, p in enumerate(notes, 1)]
    facts = {exp.model.path: model_facts(exp.model.path)}
    lines += ["", "Assumptions (all estimates; change them with the options of `python -m fipo plan`):"]
    lines += [f"- {line}" for line in a.lines(facts)]
    return "\n".join(lines) + "\n"


def with_overrides(a: Assumptions, **values) -> Assumptions:
    """``a`` with the values that are not None replaced (the command line's options)."""
    return dataclasses.replace(a, **{k: v for k, v in values.items() if v is not None})

