"""Capture every layer's self-attention output (after o_proj, before the residual add).

The hooks live only inside a ``with`` block and keep only the positions asked for, so a teacher
pass over a long ICL prompt never stores L x T x d activations.
"""

from __future__ import annotations

import re

import torch

_ATTN = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn$")


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention block of every decoder layer, in layer order (works through peft wrappers)."""
    found = {}
    for name, module in model.named_modules():
        m = _ATTN.search(name)
        if m:
            found.setdefault(int(m.group(1)), module)
    if not found:
        raise ValueError("no decoder layers with a 'self_attn' module found in this model")
    return [found[i] for i in sorted(found)]


class AttentionCapture:
    """Context manager: after each forward, ``outputs`` holds [B, L, P, d] at the selected positions.

    ``last`` selects the last ``last`` positions of every sequence (left-padded batches end together).
    """

    def __init__(self, model: torch.nn.Module, last: int = 1):
        self.modules = attention_modules(model)
        self.last = last
        self._per_layer: list[torch.Tensor | None] = [None] * len(self.modules)
        self._handles: list = []

    def _hook(self, idx: int):
        def fn(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            self._per_layer[idx] = out[:, -self.last:, :]
        return fn

    def __enter__(self) -> "AttentionCapture":
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def outputs(self) -> torch.Tensor:
        return torch.stack(self._per_layer, dim=1)  # [B, L, P, d]
