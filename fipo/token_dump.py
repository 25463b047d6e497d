"""Bounded per-token dumps of FIPO's internals (Δlogp, Future-KL, influence weight f, advantage), for the
per-token influence notebook. Off by default.

Each record holds the worker's loss-call counter, the global step and, for a few responses, their token ids, prompt
group (uid) and per-token values. A verl policy loss is given neither ids nor step: they come from the actor's
micro-batch (:mod:`fipo.integrations.verl_micro_batch`), null where it could not be read. Every worker process
writes its own file (``<stem>.rank<RANK>.jsonl``) so that concurrent writers never interleave.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch


class TokenDumper:
    def __init__(self, path: str, every: int, responses: int, max_tokens: int, max_bytes: int):
        if every <= 0 or responses <= 0 or max_tokens <= 0 or max_bytes <= 0:
            raise ValueError("token dump: every, responses, max_tokens and max_bytes must all be > 0")
        base = Path(path)
        rank = os.environ.get("RANK")
        self.path = base if rank is None else base.with_name(f"{base.stem}.rank{rank}{base.suffix or '.jsonl'}")
        self.every, self.responses, self.max_tokens, self.max_bytes = every, responses, max_tokens, max_bytes
        self.calls = 0

    def maybe_dump(self, context: Optional[Callable[[], object]] = None, **tensors: torch.Tensor) -> bool:
        """Write one record on every ``every``-th call while the file is under its size bound. ``context``
        (called on dump calls only) returns the micro-batch view with token ids, steps and uids, or None."""
        self.calls += 1
        if self.calls % self.every:
            return False
        record = self._record(context() if context is not None else None, **tensors)
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        size = self.path.stat().st_size if self.path.exists() else 0
        if size + len(line) > self.max_bytes:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(line)  # one write per record: a crash leaves whole lines only (or a last partial one)
        return True

    def _record(self, view, *, log_ratio, future_kl, influence_weights, advantages, mask) -> dict:
        mask = mask.to(torch.bool)
        rows = torch.nonzero(mask.any(dim=-1)).flatten()[: self.responses].tolist()
        responses = []
        for row in rows:
            keep = mask[row]
            n = min(int(keep.sum()), self.max_tokens)

            def values(t, n=n, keep=keep, row=row):
                return [round(float(v), 6) for v in t[row][keep][:n].float().cpu()]

            responses.append(
                {
                    "row": row,
                    "uid": view.uids[row] if view else None,
                    "global_step": view.global_steps[row] if view else None,
                    "length": int(keep.sum()),
                    "token_ids": [int(t) for t in view.responses[row][keep][:n]] if view else None,
                    "log_ratio": values(log_ratio),
                    "future_kl": values(future_kl),
                    "influence_weight": values(influence_weights),
                    "advantage": values(advantages),
                }
            )
        steps = {r["global_step"] for r in responses} - {None}
        step = steps.pop() if len(steps) == 1 else None
        return {"call": self.calls, "global_step": step, "time": time.time(), "pid": os.getpid(), "responses": responses}
