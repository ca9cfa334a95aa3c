"""Batched greedy decoding with the KV cache, optionally recording attention outputs.

Output positions are the last prompt token, then every generated token except the last: exactly the
positions whose logits produced the generated tokens. The same function serves the teacher pass,
generative evaluation and activation similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .activations import AttentionCapture
from .prompts import left_pad

STOP = "\n\n"


@dataclass
class Decoded:
    tokens: list[int]  # generated tokens, including the EOS / stop token that ended the answer
    acts: torch.Tensor | None = None  # [L, G, d] attention outputs at the output positions
    logprobs: torch.Tensor | None = None  # [G, V] full, or [G, k] with ``top_ids`` when top-k
    top_ids: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # [L + 1, G, d] residual stream: embeddings, each block's output
    # (the last one after the final norm, as transformers' hidden_states give it)


def _finished(tokenizer, toks: list[int], eos_ids: set[int], stop: str | None) -> bool:
    if toks[-1] in eos_ids:
        return True
    return bool(stop) and stop in tokenizer.decode(toks[-8:] if len(toks) > 8 else toks)


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(extra)
    return {i for i in ids if i is not None}


@torch.no_grad()
def greedy_decode(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, *,
                  stop: str | None = STOP, capture: bool = False, capture_point: str = "attn",
                  logprobs: str | int | None = None, use_cache: bool = True, hidden: bool = False) -> list[Decoded]:
    """Greedy-decode a batch of prompts (token ids). ``logprobs``: None, "full", or k for top-k.
    ``capture`` records every layer's attention output at ``capture_point`` (see ``activations``).
    ``hidden`` also records the residual stream at the output positions (``output_hidden_states``).

    ``use_cache=False`` recomputes the whole sequence at every step (the slow reference path).
    """
    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    batch = left_pad(prompts, tokenizer.pad_token_id).to(device)
    B = len(prompts)
    gen: list[list[int]] = [[] for _ in range(B)]
    acts: list[list[torch.Tensor]] = [[] for _ in range(B)]
    lps: list[list[torch.Tensor]] = [[] for _ in range(B)]
    tops: list[list[torch.Tensor]] = [[] for _ in range(B)]
    states: list[list[torch.Tensor]] = [[] for _ in range(B)]
    done = [False] * B
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    past = None
    step_ids, step_pos = ids, pos
    with AttentionCapture(model, last=1, point=capture_point) if capture else _nullcapture() as cap:
        for _ in range(max_new_tokens):
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                        cache=past, use_cache=use_cache, logits_to_keep=1, output_hidden_states=hidden)
            logits = out.logits[:, -1, :].float()
            nxt = logits.argmax(-1)
            layer_out = cap.outputs[:, :, -1, :].float() if capture else None  # [B, L, d]
            resid = torch.stack([h[:, -1, :] for h in out.hidden_states], 1).float() if hidden else None  # [B, L+1, d]
            lp = torch.log_softmax(logits, -1) if logprobs is not None else None
            for b in range(B):
                if done[b]:
                    continue
                gen[b].append(int(nxt[b]))
                if capture:
                    acts[b].append(layer_out[b].cpu())
                if hidden:
                    states[b].append(resid[b].cpu())
                if lp is not None:
                    if logprobs == "full":
                        lps[b].append(lp[b].cpu())
                    else:
                        v, i = lp[b].topk(int(logprobs))
                        lps[b].append(v.cpu())
                        tops[b].append(i.cpu())
                done[b] = _finished(tokenizer, gen[b], eos, stop)
            if all(done):
                break
            mask = torch.cat([mask, mask.new_ones((B, 1))], dim=1)
            new_pos = pos[:, -1:] + 1 if use_cache else None
            if use_cache:
                past = out.cache
                step_ids, step_pos, pos = nxt[:, None], new_pos, new_pos
            else:
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
                step_ids, step_pos = ids, pos
    results = []
    for b in range(B):
        results.append(Decoded(
            tokens=gen[b],
            acts=torch.stack(acts[b], dim=1) if capture else None,
            logprobs=torch.stack(lps[b]) if logprobs is not None else None,
            top_ids=torch.stack(tops[b]) if tops[b] else None,
            hidden=torch.stack(states[b], dim=1) if hidden else None,
        ))
    return results


class _nullcapture:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None
