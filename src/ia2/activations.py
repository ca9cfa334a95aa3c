"""Capture every layer's self-attention output (after o_proj, before the residual add).

Two capture points (``CAPTURE_POINTS``): ``attn``, the self-attention block's output after o_proj (the paper's
and the default), and ``residual``, the tensor the layer adds to the residual stream. They are the same tensor
on Llama and Qwen2; on Gemma-2/3 a ``post_attention_layernorm`` sits between them and rescales every layer's
output, so ``residual`` weighs each layer's error by what it contributes rather than by its raw scale.

The hooks live only inside a ``with`` block and keep only the positions asked for, so a teacher
pass over a long ICL prompt never stores L x T x d activations.
"""

from __future__ import annotations

import re

import torch

_ATTN = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn$")
CAPTURE_POINTS = ("attn", "residual")


def _attention_names(model: torch.nn.Module) -> list[str]:
    """The module name of every decoder layer's self-attention block, in layer order (works through peft)."""
    found: dict[int, str] = {}
    for name, _ in model.named_modules():
        m = _ATTN.search(name)
        if m:
            found.setdefault(int(m.group(1)), name)
    if not found:
        raise ValueError("no decoder layers with a 'self_attn' module found in this model")
    return [found[i] for i in sorted(found)]


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention block of every decoder layer, in layer order (works through peft wrappers)."""
    return [model.get_submodule(name) for name in _attention_names(model)]


def capture_modules(model: torch.nn.Module, point: str = "attn") -> list[torch.nn.Module]:
    """Per layer, the module whose output is captured at ``point`` (see the module docstring)."""
    if point not in CAPTURE_POINTS:
        raise ValueError(f"unknown capture point '{point}' (choose one of {', '.join(CAPTURE_POINTS)})")
    if point == "attn":
        return attention_modules(model)
    out = []
    for name in _attention_names(model):
        layer = model.get_submodule(name.removesuffix(".self_attn"))  # the decoder layer
        # Gemma-2/3 ("sandwich" norms): post_attention_layernorm normalises the attention output, and the MLP has
        # its own pre_feedforward_layernorm. On Llama/Qwen2 post_attention_layernorm is the MLP's input norm, so the
        # attention output itself is what is added.
        sandwich = hasattr(layer, "pre_feedforward_layernorm") and hasattr(layer, "post_attention_layernorm")
        out.append(layer.post_attention_layernorm if sandwich else layer.self_attn)
    return out


class AttentionCapture:
    """Context manager: after each forward, ``outputs`` holds [B, L, P, d] at the selected positions.

    ``last`` selects the last ``last`` positions of every sequence (left-padded batches end together);
    ``point`` is the capture point (``attn`` or ``residual``).
    """

    def __init__(self, model: torch.nn.Module, last: int = 1, point: str = "attn"):
        self.modules = capture_modules(model, point)
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
