"""What the actor sees that a verl 0.9.1 policy loss is not given: the response token ids and the global step.

verl calls a registered policy loss with padded log-prob, advantage and mask tensors only
(``verl.workers.utils.losses.ppo_loss`` selects those three fields before the call). The micro-batch the actor is
training on — a ``TensorDict`` with ``responses`` (token ids) and ``global_steps`` (set by the trainer on every
batch) — is a local variable of the engine's forward step, one or two frames above the loss
(``verl/workers/engine/fsdp/transformer_impl.py`` ``forward_step``: ``micro_batch``).

Options considered, none of which forks or patches verl:
* verl's own rollout dumps (``trainer.rollout_data_dir``): decoded text and the step, but nothing that ties a
  response to the loss's rows, so Δlogp and f could not be put on its tokens;
* a custom trainer or worker class: ``main_ppo`` picks its workers itself, so this means a second entry point;
* reading the micro-batch from the calling frame (this module): read-only, no copy of verl code, engine
  independent as long as an engine keeps the micro-batch in a local variable. It is looked up by type and
  content (a ``TensorDict`` with ``responses`` whose rows match the loss's), not by variable name.

If it is not found (another engine, a future verl), the token dump still carries the per-token values, with
``token_ids`` and ``global_step`` set to null, and :func:`find` says why once per process.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["MicroBatchView", "find"]

log = logging.getLogger(__name__)
# Frames between the loss and the engine's forward step: ppo_loss, forward_step (+ wrappers). Generous.
MAX_DEPTH = 12
_warned = False


@dataclass(frozen=True)
class MicroBatchView:
    responses: torch.Tensor  # (rows, response_length) token ids, aligned with the loss's tensors
    global_steps: list[Optional[int]]  # per row
    uids: list[Optional[str]]  # per row: the prompt group (responses to one prompt share it)


def find(rows: int, response_length: int, start_depth: int = 2) -> Optional[MicroBatchView]:
    """The micro-batch of the calling actor, or None (with one warning per process saying why)."""
    frame = sys._getframe(start_depth)
    for _ in range(MAX_DEPTH):
        if frame is None:
            break
        for value in frame.f_locals.values():
            view = _view(value, rows, response_length)
            if view is not None:
                return view
        frame = frame.f_back
    _warn_once(f"no micro-batch with `responses` for {rows} rows within {MAX_DEPTH} frames of the policy loss")
    return None


def _view(value, rows: int, response_length: int) -> Optional[MicroBatchView]:
    if type(value).__name__ != "TensorDict" or "responses" not in value.keys():
        return None
    try:
        responses = value["responses"]
        if getattr(responses, "is_nested", False):
            responses = responses.to_padded_tensor(0)
        if responses.dim() != 2 or responses.shape[0] != rows:
            return None
        responses = responses[:, :response_length]
        steps = _per_row(value, "global_steps", rows)
        uids = _per_row(value, "uid", rows)
    except (KeyError, RuntimeError, TypeError, ValueError):
        return None
    return MicroBatchView(
        responses.detach().cpu(), [None if s is None else int(s) for s in steps], [None if u is None else str(u) for u in uids]
    )


def _per_row(value, key: str, rows: int) -> list:
    if key not in value.keys():
        return [None] * rows
    item = value.get(key)
    data = item.tolist() if hasattr(item, "tolist") else getattr(item, "data", item)
    if not isinstance(data, list):
        data = [data] * rows
    if len(data) != rows:
        return [None] * rows
    return data


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("FIPO token dump: %s; dumping per-token values without token ids or global step", message)
