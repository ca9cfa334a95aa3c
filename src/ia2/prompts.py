"""Rendering prompts and tokenising them with exact position bookkeeping.

Answers are appended as token ids, never re-tokenised together with the query, so the tokens the
student is trained on are exactly the tokens the teacher produced after the same query tokens.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from .data import Example
from .errors import IA2Error

DEMO_SEP = "\n\n"


def demonstration(ex: Example) -> str:
    return ex.query + ex.answer


def icl_prompt(demos: list[Example], query: str) -> str:
    """Demonstrations joined by a blank line, a blank line, then the query (SPEC section 2)."""
    if not demos:
        return query
    return DEMO_SEP.join(demonstration(d) for d in demos) + DEMO_SEP + query


def encode(tokenizer, text: str) -> list[int]:
    """Prompt token ids with the tokenizer's own special tokens (e.g. BOS for Gemma)."""
    return list(tokenizer(text).input_ids)


def encode_answer(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def label_token_ids(tokenizer, labels: tuple[str, ...], task_name: str) -> list[int]:
    """Each label must be exactly one token, and labels must be distinct tokens."""
    ids = []
    for lab in labels:
        toks = encode_answer(tokenizer, lab)
        if len(toks) != 1:
            pieces = [tokenizer.decode([t]) for t in toks]
            raise IA2Error(f"task '{task_name}': label {lab!r} is {len(toks)} tokens for this model {pieces}, not one",
                           "use another label format (--label-format words/digits) or a model whose tokenizer keeps it whole")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise IA2Error(f"task '{task_name}': two labels map to the same token", "use distinct labels")
    return ids


_ALIASES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {label ids: aliases}


def label_aliases(tokenizer, label_ids: list[int]) -> list[set[int]]:
    """For each label token, every vocabulary token that decodes to the same string once stripped.

    SPEC: the prediction is the top-1 token *stripped*, so ` 1` counts as the label `1`.
    """
    per_tok = _ALIASES.setdefault(tokenizer, {})
    key = tuple(label_ids)
    if key not in per_tok:
        wanted = {tokenizer.decode([t]).strip(): i for i, t in enumerate(label_ids)}
        out = [{t} for t in label_ids]
        for tok_id in range(len(tokenizer)):
            text = tokenizer.decode([tok_id]).strip()
            if text in wanted:
                out[wanted[text]].add(tok_id)
        per_tok[key] = out
    return per_tok[key]


def context_limit(model) -> int | None:
    cfg = model.config.get_text_config()
    return getattr(cfg, "max_position_embeddings", None)


def check_length(model, n_tokens: int, what: str) -> None:
    """Never truncate demonstrations silently: a prompt over the context window is an error."""
    limit = context_limit(model)
    if limit is not None and n_tokens > limit:
        raise IA2Error(f"{what} is {n_tokens} tokens, longer than the model's context of {limit}",
                       "use a smaller --n (fewer demonstrations) or a model with a longer context")


@dataclass
class Batch:
    """Left-padded token ids; every sequence ends at column T-1, so 'the last k positions' is well defined."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device))

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def left_pad(seqs: list[list[int]], pad_id: int) -> Batch:
    """Pad on the left with position ids counted from each sequence's first real token."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, pos)


def length_batches(lengths: list[int], max_batch: int, max_tokens: int | None = None) -> list[list[int]]:
    """Group indices of similar length (longest first) so padding stays small; order within is stable."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= max_batch or (max_tokens and width * (len(cur) + 1) > max_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches
