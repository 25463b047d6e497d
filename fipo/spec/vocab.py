"""The spec's vocabularies: the values a setting may take where they are a closed list, and the rules for names.

Data only: the schema (``fipo.spec.schema``) and the rules (``fipo.spec.rules``) check values against them, and
the rest of the workbench reads them from here.
"""

from __future__ import annotations

import re

from fipo.checkpoint_steps import SELECTIONS
from fipo.eval import BENCHMARKS
from fipo.eval.metrics import UNANSWERED_RULES
from fipo.eval.sampling import BACKENDS
from fipo.eval.scoring import SCORERS

# Preset, method and experiment names become folder names (results/<preset>/runs/<experiment>), Snakemake
# wildcards and words of shell commands: letters, digits, '.', '_' and '-' only, and never a leading '.' or '-'
# (no '..', nothing a command line would take for an option).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Ablation families become Snakemake rule names, which must be Python identifiers.
FAMILY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# A run folder's name is <experiment>@study-seed<N> and its lock file .<that>.lock: 100 characters leave room
# under the 255 bytes a file name may have, with the paths Snakemake's logs and benchmarks add.
MAX_NAME_LENGTH = 100

# The rows of the paper's Table 1 a released model can be compared with (the numbers themselves are
# fipo.analysis.paper.TABLE1; tests/test_released.py keeps the two in step).
PAPER_ROWS = ("dapo", "fipo")
# verl 0.9.1's trackers (verl.utils.tracking.Tracking) that this project passes through and documents
LOGGERS = ("console", "file", "tensorboard", "wandb", "mlflow", "swanlab")

EVAL_CHOICES = {"benchmarks": BENCHMARKS, "checkpoint": SELECTIONS, "backend": BACKENDS, "scorer": SCORERS,
                "cons_unanswered": UNANSWERED_RULES}

PAPER_SCALES = {2: "32b", 3: "7b"}  # a preset's paper_table (the paper's table of its settings) -> its scale

CHOICES = {
    "policy.loss": ("vanilla", "fipo"),
    "policy.loss_agg_mode": (
        "token-mean",
        "token-sum",
        "seq-mean-token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum-norm",
    ),
    "fipo.safety_mode": ("reset", "clamp"),
    "policy.lr_scheduler": ("constant", "cosine"),
    "algorithm.filter_metric": ("acc", "score", "seq_reward", "seq_final_reward"),
    "algorithm.adv_estimator": ("grpo",),
    "reward.manager": ("dapo", "naive"),
    "rollout.engine": ("vllm", "sglang", "hf"),
    "trainer.device": ("cuda", "cpu"),
}
