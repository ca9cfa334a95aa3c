"""Evaluation metrics for IA2: accuracy, calibration, activation similarity, adapter overlap.

Everything here is a pure function of numbers already computed (probabilities,
predictions, activations, adapter weights), so metrics can be recomputed later
from stored predictions without re-running a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

__all__ = [
    "ece_standard",
    "ece_equal_mass",
    "reliability_bins",
    "confidence_records",
    "metrics_from_records",
    "single_token_metrics",
    "generative_accuracy",
    "activation_similarity",
    "asim_summary",
    "subspace_overlap",
    "adapter_overlap",
    "paired_ttest",
    "holm",
]

ArrayLike = Sequence[float] | Sequence[bool] | np.ndarray | torch.Tensor

TOP_K_PAPER = 10
"""Number of top tokens over which the paper-style confidence is renormalised."""


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _to_numpy(x: ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    """Bring tensors / lists to a flat numpy array so all metrics share one code path."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence, got shape {arr.shape}")
    return arr


def _check_calibration_inputs(
    confidences: ArrayLike, correct: ArrayLike, n_bins: int, conf_dtype: Any = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert (equal-width binning passes float32, as torchmetrics bins in float32)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = _to_numpy(confidences, conf_dtype)
    corr = _to_numpy(correct, np.float64)
    if conf.shape != corr.shape:
        raise ValueError(f"confidences {conf.shape} and correct {corr.shape} differ in length")
    if conf.size and (np.isnan(conf).any() or conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidences must lie in [0, 1] and contain no NaN")
    return conf, corr


def _equal_width_bin_index(conf32: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index per example, reproducing torchmetrics' bucketing bit for bit.

    torchmetrics (1.9) uses float32 ``linspace(0, 1, n_bins + 1)`` edges and
    ``bucketize(right=True) - 1``: bin b holds ``edges[b] <= c < edges[b+1]``, so
    0 falls in the first bin and a confidence of exactly 1.0 gets an extra bin of
    its own (index ``n_bins``). Using the same float32 edges keeps values on a
    boundary in the same bin as the reference implementation.
    """
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    idx = torch.bucketize(torch.from_numpy(conf32), edges, right=True) - 1
    return idx.numpy()


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------


def ece_standard(confidences: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins, identical to torchmetrics' L1 ECE.

    Reproduces ``torchmetrics.functional.classification.{binary,multiclass}_calibration_error``
    (``norm="l1"``) so numbers are comparable with the published standard:
    ``ECE = sum_b |acc_b - conf_b| * n_b / n`` over equal-width bins on [0, 1].

    Binning convention (that of torchmetrics 1.9, which we match exactly): bins are
    half-open ``[lo, hi)``, the first bin includes 0, and a confidence of exactly 1.0
    sits in its own extra bin. Confidences are cast to float32 before binning, as
    torchmetrics does. Returns NaN for empty input.
    """
    conf, corr = _check_calibration_inputs(confidences, correct, n_bins, np.float32)
    n = conf.size
    if n == 0:
        return float("nan")
    idx = _equal_width_bin_index(conf, n_bins)
    # |acc_b - conf_b| * n_b / n == |sum_b(correct) - sum_b(conf)| / n  (empty bins give 0)
    conf_sum = np.bincount(idx, weights=conf.astype(np.float64), minlength=n_bins + 1)
    acc_sum = np.bincount(idx, weights=corr, minlength=n_bins + 1)
    return float(np.abs(acc_sum - conf_sum).sum() / n)


def ece_equal_mass(confidences: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """ECE with equal-mass (adaptive) bins, the variant reported by the IA2 paper.

    Examples are sorted by confidence (stable sort, so ties keep their input order
    and the result is deterministic) and cut into ``n_bins`` consecutive chunks of
    ``n // n_bins`` examples; the last chunk also takes the remainder.
    ``ECE = sum_chunks |mean(correct) - mean(conf)| * size / n``.

    If ``n < n_bins`` a chunk size of ``n // n_bins`` would be 0, so each example
    becomes its own chunk (ECE = mean |correct - conf|). Returns NaN for empty input.
    """
    conf, corr = _check_calibration_inputs(confidences, correct, n_bins)
    n = conf.size
    if n == 0:
        return float("nan")
    order = np.argsort(conf, kind="stable")
    conf, corr = conf[order], corr[order]
    if n < n_bins:
        return float(np.abs(corr - conf).mean())
    size = n // n_bins
    starts = [b * size for b in range(n_bins)]
    ends = starts[1:] + [n]
    total = 0.0
    for s, e in zip(starts, ends):
        total += abs(corr[s:e].sum() - conf[s:e].sum())  # == |acc - conf| * size
    return float(total / n)


def reliability_bins(
    confidences: ArrayLike, correct: ArrayLike, n_bins: int = 15
) -> list[dict[str, float]]:
    """Per-bin accuracy and confidence for drawing a reliability diagram.

    Same equal-width bins as :func:`ece_standard`, except that confidences of
    exactly 1.0 are folded into the last bin (so the diagram has exactly
    ``n_bins`` bars). Every bin is returned; empty bins have ``count=0`` and NaN
    ``acc``/``conf`` so plotting libraries simply skip them.
    """
    conf, corr = _check_calibration_inputs(confidences, correct, n_bins, np.float32)
    idx = _equal_width_bin_index(conf, n_bins) if conf.size else np.zeros(0, dtype=np.int64)
    idx = np.minimum(idx, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf.astype(np.float64), minlength=n_bins)
    acc_sum = np.bincount(idx, weights=corr, minlength=n_bins)
    out = []
    for b in range(n_bins):
        c = int(counts[b])
        out.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": c,
                "acc": float(acc_sum[b] / c) if c else float("nan"),
                "conf": float(conf_sum[b] / c) if c else float("nan"),
            }
        )
    return out


# ---------------------------------------------------------------------------
# single-token classification metrics
# ---------------------------------------------------------------------------


def _gold_list(gold: Sequence[int] | torch.Tensor, n: int, n_labels: int) -> list[int]:
    """Normalise gold indices to a list of ints and check they index the label set."""
    g = gold.detach().cpu().tolist() if isinstance(gold, torch.Tensor) else [int(x) for x in gold]
    if len(g) != n:
        raise ValueError(f"got {len(g)} gold labels for {n} examples")
    if any(not 0 <= x < n_labels for x in g):
        raise ValueError(f"gold indices must lie in [0, {n_labels})")
    return [int(x) for x in g]


def confidence_records(
    probs: torch.Tensor, label_ids: Sequence[int], gold: Sequence[int] | torch.Tensor,
    aliases: Sequence[set[int]] | None = None,
) -> dict[str, list]:
    """Per-example predictions/confidences, in JSON-friendly lists, from next-token probabilities.

    Storing these (rather than only the summary numbers) lets metrics be recomputed
    with :func:`metrics_from_records` and reliability diagrams be drawn later.

    Args:
        probs: ``[n, V]`` full-vocabulary next-token probabilities (cast to fp32).
        label_ids: token id of each label string; defines the label set.
        gold: per example, index into ``label_ids`` of the gold label.

    Returns keys: ``top1_id``, ``top1_prob`` (full-vocab top-1), ``top10_renorm_conf``
    (top-1 divided by the sum of the top-10 probabilities), ``label_probs`` (``[n, K]``
    raw probabilities of the label tokens), ``gold``, ``correct`` (full-vocab argmax is
    the gold label's token; a top-1 outside the label set is wrong) and
    ``label_correct`` (argmax over the label set is gold).
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be [n, V], got shape {tuple(probs.shape)}")
    label_ids = [int(t) for t in label_ids]
    if not label_ids:
        raise ValueError("label_ids is empty")
    n, vocab = probs.shape
    if any(not 0 <= t < vocab for t in label_ids):
        raise ValueError(f"label_ids must lie in [0, {vocab})")
    g = _gold_list(gold, n, len(label_ids))

    p = probs.detach().cpu().to(torch.float32)
    top1_prob, top1_id = p.max(dim=-1)
    topk = p.topk(min(TOP_K_PAPER, vocab), dim=-1).values
    top10_conf = top1_prob / topk.sum(dim=-1)
    label_probs = p[:, label_ids]
    # argmax of the renormalised label probs == argmax of the raw ones (positive scale)
    label_pred = label_probs.argmax(dim=-1)
    # ``aliases[k]``: every token that counts as label k (e.g. " 1" for "1" once stripped); default: the label token.
    accepted = aliases if aliases is not None else [{t} for t in label_ids]
    correct = [int(t) in accepted[x] for t, x in zip(top1_id.tolist(), g)]
    g_t = torch.tensor(g, dtype=torch.long)
    return {
        "top1_id": top1_id.tolist(),
        "top1_prob": top1_prob.tolist(),
        "top10_renorm_conf": top10_conf.tolist(),
        "label_probs": label_probs.tolist(),
        "gold": g,
        "correct": correct,
        "label_correct": (label_pred == g_t).tolist(),
    }


def _label_confidence(label_probs: np.ndarray) -> np.ndarray:
    """Top-1 confidence after renormalising over the label set (plain division by the sum).

    If every label token has probability 0 the renormalisation is undefined; the
    model expresses no preference among labels, so confidence is taken as uniform 1/K.
    """
    k = label_probs.shape[1]
    mass = label_probs.sum(axis=1)
    top = label_probs.max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(mass > 0, top / np.where(mass > 0, mass, 1.0), 1.0 / k)
    return np.clip(conf, 0.0, 1.0)


def metrics_from_records(records: Mapping[str, Sequence[Any]]) -> dict[str, float | int]:
    """Summary metrics from stored :func:`confidence_records` output (see :func:`single_token_metrics`)."""
    correct = np.asarray(records["correct"], dtype=np.float64)
    label_correct = np.asarray(records["label_correct"], dtype=np.float64)
    top1 = np.asarray(records["top1_prob"], dtype=np.float64)
    top10 = np.asarray(records["top10_renorm_conf"], dtype=np.float64)
    n = int(correct.size)
    if n == 0:
        nan = float("nan")
        return {"acc": nan, "ece": nan, "ece_paper": nan, "label_acc": nan,
                "label_ece": nan, "label_mass": nan, "n_eval": 0}
    label_probs = np.asarray(records["label_probs"], dtype=np.float64).reshape(n, -1)
    return {
        "acc": float(correct.mean()),
        "ece": ece_standard(top1, correct),
        "ece_paper": ece_equal_mass(top10, correct),
        "label_acc": float(label_correct.mean()),
        "label_ece": ece_standard(_label_confidence(label_probs), label_correct),
        "label_mass": float(label_probs.sum(axis=1).mean()),
        "n_eval": n,
    }


def single_token_metrics(
    probs: torch.Tensor, label_ids: Sequence[int], gold: Sequence[int] | torch.Tensor
) -> dict[str, float | int]:
    """Accuracy and calibration of single-token label prediction.

    Two views are reported because they answer different questions: full-vocabulary
    metrics (``acc``, ``ece``, ``ece_paper``) judge the model as it would actually
    generate, where putting mass outside the label set is an error; label-set metrics
    (``label_acc``, ``label_ece``) judge only its ranking among the allowed labels,
    and ``label_mass`` says how much probability those labels receive at all.

    Returns ``acc``, ``ece`` (15-bin torchmetrics ECE of the full-vocab top-1
    probability), ``ece_paper`` (equal-mass ECE of top-1 renormalised over the top-10
    tokens), ``label_acc``, ``label_ece`` (ECE of the label-set renormalised top-1),
    ``label_mass`` (mean label-set probability) and ``n_eval``.
    """
    return metrics_from_records(confidence_records(probs, label_ids, gold))


# ---------------------------------------------------------------------------
# generative accuracy
# ---------------------------------------------------------------------------


def generative_accuracy(predictions: Sequence[str | None], golds: Sequence[str | None]) -> float:
    """Exact-match accuracy of already-normalised generations.

    A ``None`` prediction (nothing could be parsed) is always wrong, even against a
    ``None`` gold. Returns NaN for empty input.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions vs {len(golds)} golds")
    if not predictions:
        return float("nan")
    hits = sum(p is not None and p == g for p, g in zip(predictions, golds))
    return hits / len(predictions)


# ---------------------------------------------------------------------------
# activation similarity
# ---------------------------------------------------------------------------


def _aligned_fp32(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``[L, G, d]`` traces checked and cut to their common first positions, in fp32 on ``a``'s device."""
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"expected [L, G, d] tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"layer/hidden dims differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    g = min(a.shape[1], b.shape[1])
    if g == 0:
        raise ValueError("no positions to compare (a sequence length is 0)")
    a32 = a[:, :g].to(torch.float32)
    return a32, b[:, :g].to(device=a32.device, dtype=torch.float32)


def activation_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-layer cosine similarity between two activation traces, averaged over positions.

    ``a``: ``[L, G1, d]``, ``b``: ``[L, G2, d]``. Both are truncated to their first
    ``min(G1, G2)`` positions so traces of different lengths (e.g. generations that
    stop at different times) can be compared. Computed in fp32 so bf16/fp16 inputs
    do not lose precision in the dot products. Returns ``[L]`` (fp32).
    """
    a32, b32 = _aligned_fp32(a, b)
    return F.cosine_similarity(a32, b32, dim=-1).mean(dim=1)


def activation_norm_ratio(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per-layer ``||student|| / ||teacher||`` of two ``[L, G, d]`` traces, averaged over positions.

    asim is a cosine and cannot see scale: a student that points the right way with shorter vectors (what an
    MSE fit does when its target varies with something it cannot see, such as the demonstrations) has asim
    near 1 and a ratio below 1. Same truncation and precision as :func:`activation_similarity`. Returns ``[L]``.
    """
    t, s = _aligned_fp32(teacher, student)
    return (s.norm(dim=-1) / t.norm(dim=-1).clamp_min(1e-12)).mean(dim=1)


def next_token_kl(teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor) -> float:
    """KL(teacher || student) in nats between two full next-token log-prob vectors ``[V]`` (fp64)."""
    if teacher_logprobs.shape != student_logprobs.shape or teacher_logprobs.ndim != 1:
        raise ValueError(f"expected two [V] log-prob vectors, got {tuple(teacher_logprobs.shape)} and "
                         f"{tuple(student_logprobs.shape)}")
    t, s = teacher_logprobs.double(), student_logprobs.double().to(teacher_logprobs.device)
    p = t.exp()
    terms = torch.where(p > 0, p * (t - s), torch.zeros_like(p))  # 0 * log 0 = 0, also where t is -inf
    return float(terms.sum().clamp_min(0.0))


def asim_summary(per_example: Sequence[torch.Tensor]) -> tuple[float, list[float]]:
    """Average per-example ``[L]`` similarities over examples (per layer), then over layers.

    Returns ``(mean, per_layer)``; ``(nan, [])`` when there are no examples.
    """
    if len(per_example) == 0:
        return float("nan"), []
    stacked = torch.stack([t.detach().cpu().to(torch.float64) for t in per_example])
    per_layer = stacked.mean(dim=0)
    return float(per_layer.mean()), [float(x) for x in per_layer]


# ---------------------------------------------------------------------------
# adapter subspace overlap
# ---------------------------------------------------------------------------


def subspace_overlap(b_a: torch.Tensor, b_b: torch.Tensor) -> float:
    """Overlap of the column spaces of two LoRA ``B`` matrices, in [0, 1].

    ``U`` = left singular vectors of each ``[out, r]`` matrix (first ``k = min(out, r)``
    columns); overlap = ``||U_a^T U_b||_F^2 / k``: 1 for the same subspace, 0 for
    orthogonal ones, and invariant to any invertible mixing of B's columns (so to
    per-column scaling).

    Returns NaN if either matrix is all zeros: PEFT initialises ``B`` at zero, so an
    untrained adapter has no column space and its singular vectors are arbitrary.
    (Rank-deficient but non-zero matrices have the same issue for the null
    directions; trained LoRA B matrices are full rank in practice.)
    """
    if b_a.ndim != 2 or b_a.shape != b_b.shape:
        raise ValueError(f"expected two [out, r] matrices of equal shape, got "
                         f"{tuple(b_a.shape)} and {tuple(b_b.shape)}")
    a64 = b_a.detach().cpu().to(torch.float64)
    b64 = b_b.detach().cpu().to(torch.float64)
    if not torch.any(a64 != 0) or not torch.any(b64 != 0):
        return float("nan")
    k = min(a64.shape)
    u_a = torch.linalg.svd(a64, full_matrices=False).U[:, :k]
    u_b = torch.linalg.svd(b64, full_matrices=False).U[:, :k]
    return float((u_a.T @ u_b).pow(2).sum() / k)


def adapter_overlap(
    state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """Subspace overlap for every ``lora_B`` weight present in both adapter state dicts.

    Returns ``{"mean": float, "per_module": {key: float}}``; the mean skips NaN
    modules (zero B) and is NaN if no module has a defined overlap.
    """
    keys = sorted(k for k in state_a if "lora_B" in k and k in state_b)
    per_module = {k: subspace_overlap(state_a[k], state_b[k]) for k in keys}
    finite = [v for v in per_module.values() if not math.isnan(v)]
    mean = float(np.mean(finite)) if finite else float("nan")
    return {"mean": mean, "per_module": per_module}


# ---------------------------------------------------------------------------
# significance
# ---------------------------------------------------------------------------


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Paired t-test of ``a`` vs ``b`` (e.g. per-seed scores of two methods).

    ``t > 0`` means ``a`` is larger. Returns NaN ``t``/``p`` instead of raising or
    warning when the test is undefined: fewer than two pairs, or all differences
    equal (zero variance). ``mean_diff`` is ``mean(a - b)`` (NaN when empty).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D of equal length, got {x.shape} and {y.shape}")
    n = int(x.size)
    d = x - y
    mean_diff = float(d.mean()) if n else float("nan")
    if n < 2 or np.all(d == d[0]):
        return {"t": float("nan"), "p": float("nan"), "n": n, "mean_diff": mean_diff}
    res = stats.ttest_rel(x, y)
    return {"t": float(res.statistic), "p": float(res.pvalue), "n": n, "mean_diff": mean_diff}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order in and out).

    A report tests one comparison on every table; read one at a time, some of those
    p-values fall under 0.05 by chance. Holm controls the family-wise error without
    Bonferroni's full cost. NaN p-values (undefined tests) stay NaN and do not count
    towards the family size.
    """
    idx = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    m, out, running = len(idx), [float("nan")] * len(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
