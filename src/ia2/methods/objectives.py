"""The training objectives. Each maps a student batch to per-example losses (fp32).

Per-example means then a batch mean: a batch of B gives the same loss as accumulating B single
examples, whatever their lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..activations import AttentionCapture
from ..prompts import left_pad


@dataclass
class StudentExample:
    """One training example as the student sees it: the query without demonstrations and a target."""

    query_ids: list[int]
    target_ids: list[int]  # teacher-forced answer tokens (y_icl or ground truth)
    acts: torch.Tensor | None = None  # [L, G, d] teacher attention outputs aligned with target_ids
    logprobs: torch.Tensor | None = None  # [G, V] or [G, k] teacher next-token log-probs
    top_ids: torch.Tensor | None = None  # [G, k] when top-k


@dataclass
class StudentBatch:
    inputs: dict
    mask: torch.Tensor  # [B, G] true at each example's output positions (right-aligned)
    targets: torch.Tensor  # [B, G] target token ids (0 where masked)
    lengths: torch.Tensor  # [B] number of output positions per example
    examples: list[StudentExample]

    @property
    def width(self) -> int:
        return self.mask.shape[1]


def make_batch(examples: list[StudentExample], pad_id: int, device) -> StudentBatch:
    """Feed query + target[:-1]; the output positions are the last len(target) positions (left padding)."""
    seqs = [e.query_ids + e.target_ids[:-1] for e in examples]
    batch = left_pad(seqs, pad_id).to(device)
    g = max(len(e.target_ids) for e in examples)
    mask = torch.zeros((len(examples), g), dtype=torch.bool)
    targets = torch.zeros((len(examples), g), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.target_ids)
        mask[i, g - k:] = True
        targets[i, g - k:] = torch.tensor(e.target_ids)
    lengths = mask.sum(1)
    return StudentBatch(batch.model_inputs(), mask.to(device), targets.to(device), lengths.to(device), examples)


def _right_align(tensors: list[torch.Tensor], g: int, dim: int, device) -> torch.Tensor:
    """Stack variable-length tensors along ``dim``, right-aligned in a width-g zero tensor."""
    out = []
    for t in tensors:
        pad = g - t.shape[dim]
        if pad:
            shape = list(t.shape)
            shape[dim] = pad
            t = torch.cat([t.new_zeros(shape), t], dim=dim)
        out.append(t)
    return torch.stack(out).to(device=device, dtype=torch.float32)


def forward(model, batch: StudentBatch, want_acts: bool, want_logits: bool, capture: str = "attn"):
    """One student forward; returns (acts [B, L, G, d] at ``capture`` or None, logits [B, G, V] or None)."""
    keep = batch.width if want_logits else 1
    if want_acts:
        with AttentionCapture(model, last=batch.width, point=capture) as cap:
            out = model(**batch.inputs, logits_to_keep=keep)
            acts = cap.outputs
    else:
        out = model(**batch.inputs, logits_to_keep=keep)
        acts = None
    return acts, (out.logits if want_logits else None)


def ia2_loss(acts: torch.Tensor, batch: StudentBatch, layer_weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Sum over layers of the per-layer MSE (mean over positions and d), per example, in fp32; with
    ``layer_weights`` a weighted sum."""
    target = _right_align([e.acts for e in batch.examples], batch.width, dim=1, device=acts.device)
    sq = (acts.float() - target).pow(2)  # [B, L, G, d]
    sq = sq * batch.mask[:, None, :, None]
    d = acts.shape[-1]
    per_layer = sq.sum(dim=(2, 3)) / (batch.lengths[:, None] * d)  # [B, L]
    if layer_weights is not None:
        per_layer = per_layer * torch.tensor(layer_weights, device=per_layer.device, dtype=per_layer.dtype)
    return per_layer.sum(dim=1)


def relative_layer_weights(examples: list[StudentExample]) -> tuple[float, ...]:
    """1 / the teacher's mean square attention output per layer (over the examples' positions and d), for the
    ``relative`` IA2 loss. The plain sum lets layers with large outputs dominate: on Gemma-3, whose post-attention
    norm rescales every layer's output before the residual add, the mean squares span three orders of magnitude."""
    sq = torch.stack([e.acts.float().pow(2).sum(dim=(1, 2)) for e in examples]).sum(0)  # [L]
    count = sum(e.acts.shape[1] * e.acts.shape[2] for e in examples)
    ms = (sq / count).clamp_min(1e-12)
    return tuple((1.0 / ms).tolist())


def ce_loss(logits: torch.Tensor, batch: StudentBatch) -> torch.Tensor:
    """Mean cross-entropy over each example's answer tokens."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    nll = -lp.gather(-1, batch.targets[..., None]).squeeze(-1) * batch.mask
    return nll.sum(1) / batch.lengths


def kd_loss(logits: torch.Tensor, batch: StudentBatch, top_k: int | None = None) -> torch.Tensor:
    """KL(teacher || student) of next-token distributions at the output positions, mean per example.

    With top-k, the teacher's k most likely tokens are kept and both distributions are renormalised
    over them.
    """
    s_lp = torch.log_softmax(logits.float(), dim=-1)  # [B, G, V]
    t_lp = _right_align([e.logprobs for e in batch.examples], batch.width, dim=0, device=logits.device)
    if batch.examples[0].top_ids is not None or top_k:
        if batch.examples[0].top_ids is not None:
            ids = _right_align([e.top_ids.float() for e in batch.examples], batch.width, 0, logits.device).long()
        else:
            t_lp, ids = t_lp.topk(top_k, dim=-1)
        if top_k:
            t_lp, ids = t_lp[..., :top_k], ids[..., :top_k]
        t_lp = torch.log_softmax(t_lp, dim=-1)
        s_lp = torch.log_softmax(s_lp.gather(-1, ids), dim=-1)
    kl = (t_lp.exp() * (t_lp - s_lp)).sum(-1) * batch.mask
    return kl.sum(1) / batch.lengths


@dataclass(frozen=True)
class Objective:
    """A loss over a student batch. ``labels``: which answer tokens are teacher-forced."""

    name: str
    labels: str  # "icl" or "gt"
    ce_weight: float = 0.0  # joint objective only
    kd_top_k: int | None = None
    layer_weights: tuple[float, ...] | None = None  # IA2 objectives: per-layer loss weights (None: plain sum)
    capture: str = "attn"  # IA2 objectives: the capture point, the same as the teacher targets'

    @property
    def needs_acts(self) -> bool:
        return self.name in ("ia2", "ia2+sft")

    @property
    def needs_logits(self) -> bool:
        return self.name != "ia2"

    def per_example(self, model, batch: StudentBatch, through_output: bool = False) -> torch.Tensor:
        """Per-example losses. ``through_output`` (sharded training): FSDP gathers a layer's weights for
        backward when the gradient reaches that layer's output, so the IA2 loss, which reads attention outputs
        inside the layers, also gets a zero-weighted path through the logits to reach every layer's output."""
        acts, logits = forward(model, batch, self.needs_acts, self.needs_logits or through_output, self.capture)
        if self.name == "ia2":
            loss = ia2_loss(acts, batch, self.layer_weights)
            return loss + 0.0 * logits.float().sum(dim=(1, 2)) if through_output else loss
        if self.name == "sft":
            return ce_loss(logits, batch)
        if self.name == "kd":
            return kd_loss(logits, batch, self.kd_top_k)
        if self.name == "ia2+sft":
            w = self.ce_weight
            return (1 - w) * ia2_loss(acts, batch, self.layer_weights) + w * ce_loss(logits, batch)
        raise ValueError(f"unknown objective {self.name}")
