"""Scoring: single-token next-token distributions and generative answers, batched (left padding)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import metrics
from .data import Example
from .generation import greedy_decode
from .prompts import label_aliases, left_pad, length_batches
from .tasks import Task
from .tasks.parsers import cut_at_stop, get_parser


@dataclass
class EvalResult:
    metrics: dict
    records: dict = field(default_factory=dict)  # per-example predictions, for reliability plots


def _merge(into: dict, part: dict, order: list[int], n: int) -> None:
    for k, vals in part.items():
        slot = into.setdefault(k, [None] * n)
        for i, v in zip(order, vals):
            slot[i] = v


@torch.no_grad()
def next_token_probs_batches(model, tokenizer, prompts: list[list[int]], batch_size: int = 16,
                             max_tokens: int = 16384):
    """Yield (indices, probs [b, V] fp32) for prompts grouped by length; logits only at the last position."""
    device = next(model.parameters()).device
    for idx in length_batches([len(p) for p in prompts], batch_size, max_tokens):
        batch = left_pad([prompts[i] for i in idx], tokenizer.pad_token_id).to(device)
        logits = model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1, :].float()
        yield idx, torch.softmax(logits, dim=-1)


def score_single(model, tokenizer, prompts: list[list[int]], label_ids: list[int], gold: list[int],
                 batch_size: int = 16) -> EvalResult:
    """acc, ece, ece_paper and the label-set metrics from one forward pass per query."""
    records: dict = {}
    # A top-1 token that equals the label once stripped (e.g. " 1" for "1") is a correct prediction.
    aliases = label_aliases(tokenizer, label_ids)
    for idx, probs in next_token_probs_batches(model, tokenizer, prompts, batch_size):
        part = metrics.confidence_records(probs, label_ids, [gold[i] for i in idx], aliases)
        _merge(records, part, idx, len(prompts))
    return EvalResult(metrics.metrics_from_records(records), records)


def score_generative(model, tokenizer, prompts: list[list[int]], task: Task, golds: list[str | None],
                     batch_size: int = 8, max_new_tokens: int | None = None) -> EvalResult:
    """Greedy decoding to the stop string, parsed by the task's parser, exact match."""
    parse = get_parser(task.parser)
    max_new = max_new_tokens or task.max_new_tokens
    preds: list[str | None] = [None] * len(prompts)
    texts: list[str] = [""] * len(prompts)
    for idx in length_batches([len(p) for p in prompts], batch_size):
        outs = greedy_decode(model, tokenizer, [prompts[i] for i in idx], max_new)
        for i, o in zip(idx, outs):
            texts[i] = cut_at_stop(tokenizer.decode(o.tokens, skip_special_tokens=True))
            preds[i] = parse(texts[i])
    acc = metrics.generative_accuracy(preds, golds)
    nan = None
    return EvalResult({"acc": acc, "ece": nan, "ece_paper": nan, "label_acc": nan, "label_ece": nan,
                       "n_eval": len(prompts)},
                      {"prediction": preds, "gold": golds, "text": texts})


def evaluate(model, tokenizer, task: Task, queries: list[list[int]], examples: list[Example],
             label_ids: list[int] | None, batch_size: int = 16, max_new_tokens: int | None = None) -> EvalResult:
    if task.kind == "single":
        return score_single(model, tokenizer, queries, label_ids, [e.label for e in examples], batch_size)
    return score_generative(model, tokenizer, queries, task, [e.gold for e in examples],
                            max(1, batch_size // 2), max_new_tokens)
