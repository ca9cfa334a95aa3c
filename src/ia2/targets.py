"""Teacher targets: the frozen base model's greedy ICL response and attention outputs, cached on disk.

For each training and dev example: the ICL prompt built from the other N-1 training examples, greedy
decoding with the KV cache (G = 1 for single-token tasks, up to G_max stopping at EOS or a blank
line), and every layer's self-attention output at the output positions. Computed once per
(model, task, label format, N, run, G_max, capture point) and reused by every method, learning rate and weight.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import __version__, distributed
from .data import Example, RunSplit
from .generation import greedy_decode
from .io import atomic_path, without_defaults, write_json
from .prompts import check_length, encode, icl_prompt, length_batches

PROMPT_FORMAT = "raw-v1"  # bump when prompt rendering changes: old caches then stop matching


@dataclass(frozen=True)
class TargetKey:
    """Everything that determines the targets. Its hash names the cache file; it is never parsed back."""

    model: str
    task: str
    label_format: str
    n: int
    run: int
    g_max: int
    logprobs: str  # "full" or "top{k}"
    prompt_format: str = PROMPT_FORMAT
    version: str = __version__
    dev_split: str = "reference"
    capture: str = "attn"  # where the attention outputs are taken (activations.CAPTURE_POINTS)

    def as_dict(self) -> dict:
        """The key's fields, less those added later that hold their default: caches written before them keep
        their names and still match."""
        return without_defaults(asdict(self), _ADDED_KEY_FIELDS)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:20]


_ADDED_KEY_FIELDS = {"dev_split": "reference", "capture": "attn"}


@dataclass
class TeacherExample:
    query_ids: list[int]  # the query WITHOUT demonstrations (what the student sees)
    tokens: list[int]  # y_icl, the teacher's greedy response
    acts: torch.Tensor  # [L, G, d] fp32
    logprobs: torch.Tensor  # [G, V] or [G, k]
    top_ids: torch.Tensor | None  # [G, k] when top-k


@dataclass
class Targets:
    key: TargetKey
    train: list[TeacherExample]
    dev: list[TeacherExample]
    reused: bool = False
    prompts_sha256: str | None = None  # of the ICL prompts' token ids: demonstrations and their answers included


def prompts_digest(icl: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(icl).encode()).hexdigest()


def teacher_prompts(tokenizer, pool: list[Example], split: RunSplit) -> tuple[list[list[int]], list[list[int]]]:
    """(ICL prompt ids, query ids) for the training examples followed by the dev examples."""
    icl, queries = [], []
    for i, p in enumerate(split.train):
        icl.append(encode(tokenizer, icl_prompt([pool[d] for d in split.demos[i]], pool[p].query)))
        queries.append(encode(tokenizer, pool[p].query))
    for j, p in enumerate(split.dev):
        icl.append(encode(tokenizer, icl_prompt([pool[d] for d in split.dev_demos(j)], pool[p].query)))
        queries.append(encode(tokenizer, pool[p].query))
    return icl, queries


def compute_targets(model, tokenizer, key: TargetKey, pool: list[Example], split: RunSplit,
                    batch_size: int = 8) -> Targets:
    """The teacher pass: batched greedy decoding with the KV cache, attention outputs recorded."""
    icl, queries = teacher_prompts(tokenizer, pool, split)
    for ids in icl:
        check_length(model, len(ids) + key.g_max, f"an ICL prompt of task '{key.task}' (N={key.n}) plus {key.g_max} answer tokens")
    lp_mode: str | int = "full" if key.logprobs == "full" else int(key.logprobs.removeprefix("top"))
    stop = None if key.g_max == 1 else "\n\n"
    out: list[TeacherExample | None] = [None] * len(icl)
    for idx in length_batches([len(x) for x in icl], batch_size):
        decoded = greedy_decode(model, tokenizer, [icl[i] for i in idx], key.g_max, stop=stop,
                                capture=True, capture_point=key.capture, logprobs=lp_mode)
        for i, d in zip(idx, decoded):
            out[i] = TeacherExample(queries[i], d.tokens, d.acts, d.logprobs, d.top_ids)
    n = len(split.train)
    return Targets(key, out[:n], out[n:],  # type: ignore[arg-type]
                   prompts_sha256=prompts_digest(icl))


class TargetCache:
    """Safetensors + JSON per key under ``root``; content is checked against the request on load."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def paths(self, key: TargetKey) -> tuple[Path, Path]:
        h = key.digest()
        return self.root / f"{h}.safetensors", self.root / f"{h}.json"

    def save(self, t: Targets) -> None:
        tensors, meta_ex = {}, []
        for role, exs in (("train", t.train), ("dev", t.dev)):
            for i, e in enumerate(exs):
                tensors[f"{role}.{i}.acts"] = e.acts.contiguous()
                tensors[f"{role}.{i}.logprobs"] = e.logprobs.contiguous()
                if e.top_ids is not None:
                    tensors[f"{role}.{i}.top_ids"] = e.top_ids.contiguous()
                meta_ex.append({"role": role, "i": i, "query_ids": e.query_ids, "tokens": e.tokens})
        st, js = self.paths(t.key)
        with atomic_path(st) as tmp:
            save_file(tensors, str(tmp))
        sha = hashlib.sha256(st.read_bytes()).hexdigest()
        write_json(js, {"key": asdict(t.key), "sha256": sha, "examples": meta_ex,
                        "n_train": len(t.train), "n_dev": len(t.dev), "prompts_sha256": t.prompts_sha256})

    def load(self, key: TargetKey, expected_queries: list[list[int]],
             expected_prompts: list[list[int]] | None = None) -> tuple[Targets | None, str]:
        """(targets, "") when valid; (None, reason) when absent, corrupt or not matching the request.

        ``expected_prompts`` (the ICL prompts) also catches changed demonstrations or answers, e.g. a user task
        whose label words were edited, which leave the queries as they were; caches written before the prompts
        were recorded are checked on their queries only."""
        st, js = self.paths(key)
        if not st.exists() or not js.exists():
            return None, "absent"
        try:
            meta = json.loads(js.read_text())
            if without_defaults(meta["key"], _ADDED_KEY_FIELDS) != key.as_dict():
                return None, "cache key differs from the request"
            if hashlib.sha256(st.read_bytes()).hexdigest() != meta["sha256"]:
                return None, "cache file is corrupt (checksum mismatch)"
            queries = [m["query_ids"] for m in meta["examples"]]
            if queries != expected_queries:
                return None, "cached queries differ from the requested ones (data or tokenizer changed)"
            if expected_prompts is not None and meta.get("prompts_sha256") not in (None,
                                                                                   prompts_digest(expected_prompts)):
                return None, "cached ICL prompts differ from the requested ones (demonstrations or answers changed)"
            tensors = load_file(str(st))
            train, dev = [], []
            for m in meta["examples"]:
                p = f"{m['role']}.{m['i']}."
                ex = TeacherExample(m["query_ids"], m["tokens"], tensors[p + "acts"], tensors[p + "logprobs"],
                                    tensors.get(p + "top_ids"))
                if ex.acts.dim() != 3 or ex.acts.shape[1] != len(ex.tokens) or ex.logprobs.shape[0] != len(ex.tokens):
                    return None, "cached tensors do not match their token lists"
                (train if m["role"] == "train" else dev).append(ex)
        except Exception as e:  # noqa: BLE001 — any unreadable cache is recomputed, never trusted
            return None, f"cache unreadable ({type(e).__name__})"
        return Targets(key, train, dev, reused=True, prompts_sha256=meta.get("prompts_sha256")), ""


def get_targets(model, tokenizer, key: TargetKey, pool: list[Example], split: RunSplit,
                cache: TargetCache | None, batch_size: int = 8, log=print, collective: bool = False) -> Targets:
    """Load matching targets from the cache, or compute and store them; says which in ``log``.

    ``collective``: the model is sharded over processes, so either all of them load (the main process
    found a valid cache entry) or all of them compute together; only the main process writes the cache.
    """
    if cache is not None:
        icl, queries = teacher_prompts(tokenizer, pool, split)
        main = not collective or distributed.is_main()
        found, why = cache.load(key, queries, icl) if main else (None, "absent")
        if collective and distributed.agree(found is not None) and found is None:
            found, why = cache.load(key, queries, icl)  # written by the main process, already verified there
        if found is not None:
            log(f"teacher targets reused from cache ({key.task}, N={key.n}, run {key.run})")
            return found
        if why != "absent":
            log(f"teacher targets recomputed: {why}")
    t = compute_targets(model, tokenizer, key, pool, split, batch_size)
    if cache is not None and (not collective or distributed.is_main()):
        cache.save(t)
    return t
