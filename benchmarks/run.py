#!/usr/bin/env python
"""IA2 performance benchmarks: measured throughput of every expensive stage, as ratios taken in one run.

    python benchmarks/run.py --out docs/benchmarks [--quick] [--models smollm2-135m,tiny-llama]

Writes ``<out>/benchmarks.json`` (every raw number, the machine, the sizes used) and
``<out>/BENCHMARKS.md`` (the ratios, and whether each target is met). Sections, per model:

- matmul: the machine's fp32 ``torch.matmul`` throughput (bf16 too on a GPU) -- the physical limit;
- teacher_single: the real teacher pass (``ia2.targets.compute_targets``) on sst2 ICL prompts, N = 4, 8, 16;
- teacher_generative / decode: greedy decoding of G = 200 tokens with attention capture, KV cache
  versus full recomputation at every step (``greedy_decode(use_cache=False)``);
- training: ``ia2.train.train_stage`` with a LoRA adapter, IA2 and SFT objectives, micro_batch 4 versus 1;
- evaluation: ``score_single`` on sst2 queries, batch 16 / 32 versus 1; adapter swap on one base model
  (attach / detach) versus loading the base model again per adapter;
- memory: peak RSS of the training section (VmHWM, reset before it), CUDA peak where present;
- sweeps (tiny model): the smoke preset and sst2 N=4 (sft, ia2, ia2-then-sft x 3 lrs x 5 runs) through the
  normal Runner (teacher targets shared per (N, run)) versus a runner that rebuilds its group context and
  uses a fresh target cache for every unit; teacher passes are counted by wrapping
  ``ia2.targets.compute_targets``.

Sizes are chosen so that the full run on smollm2-135m and the tiny model fits in about 10 minutes on a
2-core CPU; where a slow reference path is measured on fewer items than the fast one, the JSON says so
and ratios are per item. ``--quick`` shrinks everything (seconds on the tiny model; used by a test).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import random
import resource
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
if "IA2_DATA_DIR" not in os.environ and (DEFAULT_DATA / "stanfordnlp" / "sst2").is_dir():
    os.environ["IA2_DATA_DIR"] = str(DEFAULT_DATA)

import torch  # noqa: E402

SCHEMA = 1
SWEEP_MODEL = "tiny-llama"


# --------------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    matmul_sizes: tuple[int, ...] = (1024, 2048)
    matmul_reps: int = 5
    teacher_ns: tuple[int, ...] = (4, 8, 16)
    teacher_examples: int | None = None  # per N: None = all train + dev examples of the run
    teacher_batch: int = 8  # compute_targets' default
    gen_tokens: int = 200  # G
    gen_batch: int = 4  # prompts decoded together in the generative teacher measurement
    full_tokens: int | None = None  # tokens decoded by full recomputation; None = gen_tokens
    train_epochs: int = 2  # of N = 4 training examples (one optimizer step of 4 per epoch)
    eval_queries: int = 500  # batched evaluation
    eval_queries_bs1: int = 500  # one query per forward
    eval_batches: tuple[int, ...] = (16, 32)
    adapters: int = 3


FULL = {
    "tiny-llama": Sizes(),
    # 30 layers on a 2-core CPU: the teacher pass is measured on 4 prompts per N, full recomputation on
    # 24 tokens (a lower bound of the G = 200 ratio, plus an estimate from timed forwards), and
    # evaluation on 96 / 32 queries.
    "smollm2-135m": Sizes(teacher_examples=4, full_tokens=24, eval_queries=96, eval_queries_bs1=32, adapters=2),
}
QUICK = {
    "tiny-llama": Sizes(matmul_sizes=(256, 512), matmul_reps=2, teacher_ns=(4, 8), teacher_examples=4, gen_tokens=16,
                        gen_batch=2, train_epochs=1, eval_queries=32, eval_queries_bs1=32, eval_batches=(16,),
                        adapters=2),
    "smollm2-135m": Sizes(matmul_sizes=(256, 512), matmul_reps=2, teacher_ns=(4,), teacher_examples=2, gen_tokens=8,
                          gen_batch=2, full_tokens=4, train_epochs=1, eval_queries=16, eval_queries_bs1=8,
                          eval_batches=(16,), adapters=1),
}
DEFAULT_SIZES = Sizes(teacher_examples=4, full_tokens=24, eval_queries=96, eval_queries_bs1=32, adapters=2)


def sizes_for(model: str, quick: bool) -> Sizes:
    table = QUICK if quick else FULL
    return table.get(model, QUICK["smollm2-135m"] if quick else DEFAULT_SIZES)


# --------------------------------------------------------------------------------------------------
# timing, machine, memory
# --------------------------------------------------------------------------------------------------
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device="cpu"):
    """(result, seconds) of one call."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import peft
    import transformers

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
        "host": platform.node(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


class LoadMonitor:
    """Samples, every ``every`` seconds, how many CPU cores OTHER processes keep busy (psutil), and the load average."""

    def __init__(self, every: float = 2.0):
        self.every, self.samples, self.loadavg = every, [], []
        self._stop = threading.Event()
        self._thread = None
        try:
            import psutil

            self._ps = psutil
            self._me = psutil.Process()
        except ImportError:
            self._ps = None

    def _loop(self):
        ps, n = self._ps, os.cpu_count() or 1
        ps.cpu_percent(None)
        self._me.cpu_percent(None)
        while not self._stop.wait(self.every):
            total = ps.cpu_percent(None) * n / 100  # busy cores, all processes
            mine = self._me.cpu_percent(None) / 100
            self.samples.append(max(0.0, total - mine))
            self.loadavg.append(os.getloadavg()[0])

    def __enter__(self):
        if self._ps is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict:
        s = self.samples
        return {"other_processes_busy_cores_mean": round(statistics.mean(s), 2) if s else None,
                "other_processes_busy_cores_max": round(max(s), 2) if s else None,
                "loadavg_1min_mean": round(statistics.mean(self.loadavg), 2) if self.loadavg else None,
                "samples": len(s)}


def idle_cpu_sample(seconds: float = 1.0) -> float | None:
    """Busy cores over ``seconds`` while this process sleeps (i.e. other processes' load)."""
    try:
        import psutil
    except ImportError:
        return None
    return round(psutil.cpu_percent(interval=seconds) * (os.cpu_count() or 1) / 100, 2)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return round(kib / 1024, 1) if kib is not None else None


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:  # no /proc: the lifetime maximum (KiB on Linux, bytes on macOS)
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kib //= 1024
    return round(kib / 1024, 1)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
@dataclass
class Data:
    pool: list
    eval: list
    source: str
    labels: tuple[str, ...] = ("0", "1")


_WORDS = ("the film is a quiet , funny and often moving story about love loss and the small things that keep "
          "people going ; its cast is wonderful but the script drags in the middle and the ending feels "
          "rushed , yet it remains one of the better dramas of the year").split()


def synthetic_data(n_pool: int = 2000, n_eval: int = 500) -> Data:
    """sst2-shaped examples (Text:...\\nLabel:0/1, 10-30 words) when the data mirror is absent."""
    from ia2.data import Example

    rng = random.Random(0)

    def ex(i):
        label = rng.randint(0, 1)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(10, 30)))
        return Example(f"Text:{words}\nLabel:", str(label), label=label, source_index=i)

    return Data([ex(i) for i in range(n_pool)], [ex(i) for i in range(n_eval)], "synthetic sst2-like text")


def load_data() -> Data:
    from ia2.data import load_task_data
    from ia2.errors import IA2Error
    from ia2.tasks import get_task

    try:
        td = load_task_data(get_task("sst2"), "digits")
        return Data(td.pool, td.eval, f"sst2 from the mirror at {os.environ.get('IA2_DATA_DIR') or 'the hub'}")
    except (IA2Error, OSError, ValueError) as e:
        print(f"  sst2 unavailable ({type(e).__name__}); using synthetic text", flush=True)
        return synthetic_data()


# --------------------------------------------------------------------------------------------------
# FLOP accounting
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dims:
    layers: int
    d: int
    vocab: int
    linear_params: int  # weights of every Linear inside the decoder layers (q,k,v,o,gate,up,down)
    total_params: int

    def fwd_flops(self, seq_len: int, logits_kept: int) -> float:
        """2 * linear_params * T  +  2 * L * d * T^2 (causal QK^T and AV)  +  2 * d * V * logits_kept (LM head)."""
        t = seq_len
        return 2.0 * self.linear_params * t + 2.0 * self.layers * self.d * t * t + 2.0 * self.d * self.vocab * logits_kept


def model_dims(model) -> Dims:
    cfg = model.config.get_text_config()
    lin = sum(m.weight.numel() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}" and "lora_" not in n)
    return Dims(cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, lin,
                sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------
def bench_matmul(sizes: Sizes) -> dict:
    out = {}
    dtypes = [("fp32", torch.float32, "cpu")]
    if torch.cuda.is_available():
        dtypes = [("fp32", torch.float32, "cuda"), ("bf16", torch.bfloat16, "cuda")]
    for name, dtype, device in dtypes:
        per = {}
        for n in sizes.matmul_sizes:
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)
            torch.matmul(a, b)  # warm-up
            reps = max(1, sizes.matmul_reps)
            inner = 1 if n >= 1024 else 8
            best = min(timed(lambda: [torch.matmul(a, b) for _ in range(inner)], device)[1] for _ in range(reps))
            per[str(n)] = round(2.0 * n ** 3 * inner / best / 1e9, 2)
        out[name] = {"device": device, "gflops_by_size": per, "best_gflops": max(per.values()),
                     "threads": torch.get_num_threads(),
                     "how": f"torch.matmul of n x n, best of {sizes.matmul_reps}, FLOPs = 2 n^3"}
    if not torch.cuda.is_available():  # also at 1 thread and at every usable thread count (contention favours fewer)
        n, base = sizes.matmul_sizes[-1], torch.get_num_threads()
        a, b = torch.randn(n, n), torch.randn(n, n)
        by_threads = {}
        for th in sorted({1, base, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else base}):
            torch.set_num_threads(th)
            torch.matmul(a, b)
            best = min(timed(lambda: torch.matmul(a, b))[1] for _ in range(max(1, sizes.matmul_reps)))
            by_threads[str(th)] = round(2.0 * n ** 3 / best / 1e9, 2)
        torch.set_num_threads(base)
        out["fp32"]["gflops_by_threads"] = {"size": n, **by_threads}
        out["fp32"]["best_gflops"] = max(out["fp32"]["best_gflops"], *by_threads.values())
    return out


def combine_matmul(start: dict, end: dict) -> dict:
    """Measured at the start and at the end of the run: the limit is the best of both."""
    out = {"start": start, "end": end}
    for k in ("fp32", "bf16"):
        if k in start:
            out[f"{k}_best_gflops"] = max(start[k]["best_gflops"], end[k]["best_gflops"])
    out["limit_gflops"] = out.get("bf16_best_gflops", out["fp32_best_gflops"])
    out["limit_dtype"] = "bf16" if "bf16_best_gflops" in out else "fp32"
    out["how"] = start["fp32"]["how"]
    return out


def apply_limit(results: dict) -> None:
    """Fractions of the matmul limit, filled in once the limit is known (end of the run)."""
    lim = results["matmul"]["limit_gflops"]
    for m in results["models"].values():
        for v in m["teacher_single"]["by_n"].values():
            v["fraction_of_limit"] = round(v["achieved_gflops"] / lim, 4)
        m["training"]["limit_gflops"] = lim
        for obj in ("ia2", "sft"):
            for k, v in m["training"][obj].items():
                if k.startswith("micro"):
                    v["fraction_of_limit_6pt"] = round(v["gflops_6pt"] / lim, 4)
                    v["fraction_of_limit_lora"] = round(v["gflops_lora"] / lim, 4)
        e = m["evaluation"]
        for k, v in e.items():
            if k.startswith("bs"):
                v["fraction_of_limit"] = round(v["achieved_gflops"] / lim, 4)
        # Batching can at best bring batch-1 evaluation up to the matmul limit.
        e["ceiling_speedup"] = round(lim / e["bs1"]["achieved_gflops"], 2)


def _teacher_split(pool_size: int, n: int, limit: int | None):
    from ia2.data import RunSplit, make_split

    split = make_split(pool_size, n, run=0)
    if limit is not None and limit < len(split.train) + len(split.dev):
        split = RunSplit(split.run, split.train[:limit], [], split.demo_pool, split.demos[:limit])
    return split


def bench_teacher_single(lm, data: Data, sz: Sizes, dims: Dims) -> dict:
    """The real teacher pass (compute_targets, G = 1) per N, plus probes: batch 1 and no KV cache."""
    from ia2.generation import greedy_decode
    from ia2.prompts import length_batches
    from ia2.targets import TargetKey, compute_targets, teacher_prompts

    tok, model, dev = lm.tokenizer, lm.model, lm.device
    out: dict = {"by_n": {}}
    for n in sz.teacher_ns:
        split = _teacher_split(len(data.pool), n, sz.teacher_examples)
        icl, _ = teacher_prompts(tok, data.pool, split)
        key = TargetKey(lm.fingerprint, "sst2", "digits", n, 0, 1, "full")
        targets, secs = timed(lambda: compute_targets(model, tok, key, data.pool, split, sz.teacher_batch), dev)
        n_ex = len(targets.train) + len(targets.dev)
        toks = sum(len(x) for x in icl)
        flops = sum(dims.fwd_flops(len(x), 1) for x in icl)
        out["by_n"][str(n)] = {
            "examples": n_ex, "demonstrations": n - 1, "prompt_tokens": toks, "mean_prompt_tokens": round(toks / n_ex, 1),
            "batch_size": sz.teacher_batch, "seconds": round(secs, 3), "examples_per_s": round(n_ex / secs, 3),
            "prompt_tokens_per_s": round(toks / secs, 1), "achieved_gflops": round(flops / secs / 1e9, 2),
            "generated_tokens_per_s": round(n_ex / secs, 3)}

    # Probes on the first N: one prompt per forward, and G = 1 without building a KV cache.
    n = sz.teacher_ns[0]
    split = _teacher_split(len(data.pool), n, sz.teacher_examples)
    icl, _ = teacher_prompts(tok, data.pool, split)

    def run(batch: int, use_cache: bool):
        res = [None] * len(icl)
        for idx in length_batches([len(x) for x in icl], batch):
            for i, d in zip(idx, greedy_decode(model, tok, [icl[i] for i in idx], 1, stop=None, capture=True,
                                               logprobs="full", use_cache=use_cache)):
                res[i] = d
        return res

    ref, t_batched = timed(lambda: run(sz.teacher_batch, True), dev)
    one, t_one = timed(lambda: run(1, True), dev)
    nocache, t_nocache = timed(lambda: run(sz.teacher_batch, False), dev)
    same = all(a.tokens == b.tokens == c.tokens for a, b, c in zip(ref, one, nocache))
    max_diff = max(float((a.acts - c.acts).abs().max()) for a, c in zip(ref, nocache))
    out["probes"] = {
        "n": n, "examples": len(icl),
        f"batch{sz.teacher_batch}_kv_s": round(t_batched, 3), "batch1_kv_s": round(t_one, 3),
        f"batch{sz.teacher_batch}_no_cache_s": round(t_nocache, 3),
        "batching_speedup": round(t_one / t_batched, 2),
        "no_cache_speedup_for_g1": round(t_batched / t_nocache, 3),
        "tokens_identical": same, "acts_max_abs_diff_no_cache": max_diff,
        "note": "greedy_decode with G=1, capture and full log-probs, as compute_targets calls it"}
    return out


def _gen_prompts(lm, data: Data, k: int) -> list[list[int]]:
    from ia2.targets import teacher_prompts

    split = _teacher_split(len(data.pool), 4, max(k, 1))
    icl, _ = teacher_prompts(lm.tokenizer, data.pool, split)
    return icl[:k]


def _generative_prompts(lm, data: Data, k: int) -> tuple[list[list[int]], str]:
    """GSM8K N = 4 ICL prompts (3 worked solutions + a question) from the mirror: the real generative
    teacher input. Falls back to sst2-shaped prompts when the mirror is absent."""
    try:
        from ia2.data import load_task_data
        from ia2.tasks import get_task

        gsm = load_task_data(get_task("gsm8k"))
        from ia2.targets import teacher_prompts

        icl, _ = teacher_prompts(lm.tokenizer, gsm.pool, _teacher_split(len(gsm.pool), 4, max(k, 1)))
        return icl[:k], "gsm8k N=4 ICL prompts"
    except Exception:  # noqa: BLE001 — no mirror: the benchmark still runs on synthetic prompts
        return _gen_prompts(lm, data, k), "sst2-shaped N=4 ICL prompts (gsm8k mirror absent)"


def _batched_full_estimate(model, dev, prompts, dec, kv_secs) -> dict:
    """Full recomputation of the whole batch at every step, estimated from timed forwards at the first and
    last sequence lengths (step cost grows ~linearly with length; trapezoid over the steps)."""
    from ia2.activations import AttentionCapture
    from ia2.prompts import left_pad

    steps = max(len(d.tokens) for d in dec)
    seqs = [p + d.tokens[:-1] for p, d in zip(prompts, dec)]

    def fwd(extra):
        batch = left_pad([s[:len(p) + extra] for s, p in zip(seqs, prompts)], 0).to(dev)
        with torch.no_grad(), AttentionCapture(model, last=1):
            model(**batch.model_inputs(), use_cache=False, logits_to_keep=1)

    fwd(0)
    t_first = min(timed(lambda: fwd(0), dev)[1] for _ in range(2))
    t_last = min(timed(lambda: fwd(steps - 1), dev)[1] for _ in range(2))
    est = steps * (t_first + t_last) / 2
    return {"steps": steps, "forward_s_first": round(t_first, 4), "forward_s_last": round(t_last, 4),
            "estimated_seconds": round(est, 3), "kv_seconds": round(kv_secs, 3),
            "speedup_estimated": round(est / kv_secs, 2)}


def bench_generative(lm, data: Data, sz: Sizes, dims: Dims) -> tuple[dict, dict]:
    """Teacher-style decoding of G tokens (capture + top-64 log-probs), and KV cache vs full recomputation."""
    from ia2.activations import AttentionCapture
    from ia2.generation import greedy_decode

    tok, model, dev, G = lm.tokenizer, lm.model, lm.device, sz.gen_tokens
    prompts, prompt_source = _generative_prompts(lm, data, sz.gen_batch)
    dec, secs = timed(lambda: greedy_decode(model, tok, prompts, G, stop=None, capture=True, logprobs=64), dev)
    gen = [len(d.tokens) for d in dec]
    teacher = {
        "prompts": len(prompts), "prompt_tokens": [len(p) for p in prompts], "G": G, "tokens_generated": gen,
        "stopped_early_at_eos": sum(g < G for g in gen), "seconds": round(secs, 3),
        "examples_per_s": round(len(prompts) / secs, 3), "generated_tokens_per_s": round(sum(gen) / secs, 2),
        "note": f"{prompt_source}, stop=None (only EOS stops), capture=True, logprobs=top-64 as the generative teacher"}
    teacher["full_recompute_batched"] = _batched_full_estimate(model, dev, prompts, dec, secs)

    # One prompt: KV cache vs recomputing the whole sequence at every step.
    p = prompts[0]
    kv, t_kv = timed(lambda: greedy_decode(model, tok, [p], G, stop=None, capture=True, use_cache=True)[0], dev)
    g_full = min(sz.full_tokens or G, G)
    full, t_full = timed(lambda: greedy_decode(model, tok, [p], g_full, stop=None, capture=True, use_cache=False)[0], dev)
    n_kv, n_full = len(kv.tokens), len(full.tokens)
    kv_tok, full_tok = t_kv / n_kv, t_full / n_full
    # Estimate of full recomputation over all n_kv steps: step cost grows ~linearly with the sequence
    # length, so time = n_kv * mean(cost at length P, cost at length P + n_kv - 1) (trapezoid).
    seq = torch.tensor([p + kv.tokens[:-1]], device=dev)

    def fwd(length):  # one full-recomputation step: forward over `length` tokens, attention captured
        with torch.no_grad(), AttentionCapture(model, last=1):
            x = seq[:, :length]
            return model(input_ids=x, attention_mask=torch.ones_like(x),
                         position_ids=torch.arange(length, device=dev)[None], use_cache=False, logits_to_keep=1)

    fwd(len(p))  # warm-up
    t_first = min(timed(lambda: fwd(len(p)), dev)[1] for _ in range(2))
    t_last = min(timed(lambda: fwd(seq.shape[1]), dev)[1] for _ in range(2))
    est_full = n_kv * (t_first + t_last) / 2
    overlap = min(n_kv, n_full)
    decode = {
        "G": G, "prompt_tokens": len(p), "kv_tokens_generated": n_kv, "kv_seconds": round(t_kv, 3),
        "kv_s_per_token": round(kv_tok, 5), "full_tokens_measured": n_full, "full_seconds": round(t_full, 3),
        "full_s_per_token": round(full_tok, 5),
        "speedup_measured": round(full_tok / kv_tok, 2),
        "speedup_measured_is_lower_bound": n_full < n_kv,
        "full_forward_s_at_prompt_len": round(t_first, 4), "full_forward_s_at_final_len": round(t_last, 4),
        "full_seconds_estimated_for_G": round(est_full, 3),
        "speedup_estimated_for_G": round(est_full / t_kv, 2),
        "tokens_identical_on_overlap": kv.tokens[:overlap] == full.tokens[:overlap],
        "acts_max_abs_diff_on_overlap": float((kv.acts[:, :overlap] - full.acts[:, :overlap]).abs().max()),
        "eos_stopped_early": n_kv < G}
    decode["speedup_for_G"] = decode["speedup_measured"] if n_full >= n_kv else decode["speedup_estimated_for_G"]
    # Decoding one token per step is memory-bound: B prompts per step cost little more than one.
    teacher["tokens_per_s_vs_batch1_kv"] = round(teacher["generated_tokens_per_s"] / (n_kv / t_kv), 2)
    return teacher, decode


def _student_sets(lm, data: Data):
    """Teacher targets of sst2 N = 4, run 0 (4 train, 2 dev) as StudentExamples: ICL labels and ground truth."""
    from ia2.data import make_split
    from ia2.methods import StudentExample
    from ia2.prompts import encode_answer
    from ia2.targets import TargetKey, compute_targets

    split = make_split(len(data.pool), 4, run=0)
    key = TargetKey(lm.fingerprint, "sst2", "digits", 4, 0, 1, "full")
    t = compute_targets(lm.model, lm.tokenizer, key, data.pool, split)

    def build(exs, positions, labels):
        out = []
        for e, p in zip(exs, positions):
            target = e.tokens if labels == "icl" else encode_answer(lm.tokenizer, data.pool[p].answer)
            out.append(StudentExample(e.query_ids, target, e.acts, e.logprobs, e.top_ids))
        return out

    return {lab: (build(t.train, split.train, lab), build(t.dev, split.dev, lab)) for lab in ("icl", "gt")}


def bench_training(lm, data: Data, sz: Sizes, dims: Dims) -> dict:
    from ia2.adapters import AdapterConfig, attach, detach
    from ia2.methods import Objective
    from ia2.train import TrainConfig, train_stage

    sets = _student_sets(lm, data)
    pad = lm.tokenizer.pad_token_id
    cuda = lm.device.type == "cuda"
    out: dict = {"formula": {
        "forward": "2*P_lin*T + 2*L*d*T^2 + 2*d*V*K per sequence (P_lin: Linear weights of the decoder layers; "
                   "T: real tokens; K: positions whose logits are computed)",
        "train_6pt": "3 x forward per training sequence (= 2PT forward + 4PT backward, the usual 6PT)",
        "train_lora": "2 x forward per training sequence (frozen weights need no weight gradients: "
                      "forward + input-gradient backward; LoRA's own FLOPs are negligible)",
        "dev": "1 x forward per dev sequence (dev checks are inside the timed loop)"},
        "dims": dataclasses.asdict(dims)}

    def run(objective: Objective, micro: int, epochs: int):
        labels = "icl" if objective.name != "sft" else "gt"
        train, dev = sets[labels]
        torch.manual_seed(0)
        pm = attach(lm.model, AdapterConfig())
        try:
            cfg = TrainConfig(lr=1e-3, batch_size=4, micro_batch=micro, max_epochs=epochs, patience=10**6, seed=0)
            log, secs = timed(lambda: train_stage(pm, objective, train, dev, cfg, pad), lm.device)
        finally:
            lm.model = detach(pm)
        keep = lambda e: len(e.target_ids) if objective.needs_logits else 1  # noqa: E731
        lens = lambda e: len(e.query_ids) + len(e.target_ids) - 1  # noqa: E731
        fwd_train = sum(dims.fwd_flops(lens(e), keep(e)) for e in train) * log.epochs
        fwd_dev = sum(dims.fwd_flops(lens(e), keep(e)) for e in dev) * len(log.curve)
        ex = len(train) * log.epochs
        f6, fl = 3 * fwd_train + fwd_dev, 2 * fwd_train + fwd_dev
        return {"micro_batch": micro, "epochs": log.epochs, "optimizer_steps": log.steps, "dev_checks": len(log.curve),
                "train_examples_processed": ex, "train_tokens": sum(lens(e) for e in train) * log.epochs,
                "seconds": round(secs, 3), "examples_per_s": round(ex / secs, 3),
                "gflops_6pt": round(f6 / secs / 1e9, 3), "gflops_lora": round(fl / secs / 1e9, 3)}

    run(Objective("ia2", "icl"), 4, 1)  # warm-up (autograd, peft, allocator)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_mib()
    reset_ok = reset_peak_rss()
    for name in ("ia2", "sft"):
        obj = Objective(name, "icl" if name == "ia2" else "gt")
        res = {f"micro{m}": run(obj, m, sz.train_epochs) for m in (4, 1)}
        res["speedup_batched"] = round(res["micro4"]["examples_per_s"] / res["micro1"]["examples_per_s"], 2)
        out[name] = res
    out["memory"] = {"rss_before_training_mib": rss_before, "peak_rss_training_mib": peak_rss_mib(),
                     "peak_is_training_only": reset_ok,
                     "how": "VmHWM after resetting it (/proc/self/clear_refs 5) before the timed training runs"
                            if reset_ok else "lifetime ru_maxrss / VmHWM (could not reset)",
                     "cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None}
    return out


def bench_evaluation(lm, data: Data, sz: Sizes, dims: Dims) -> dict:
    from ia2.evaluate import score_single
    from ia2.prompts import encode, label_token_ids

    tok = lm.tokenizer
    n = min(sz.eval_queries, len(data.eval))
    n1 = min(sz.eval_queries_bs1, n)
    queries = [encode(tok, e.query) for e in data.eval[:n]]
    gold = [e.label for e in data.eval[:n]]
    lids = label_token_ids(tok, data.labels, "sst2")
    score_single(lm.model, tok, queries[:2], lids, gold[:2], batch_size=2)  # warm-up
    res, t1 = timed(lambda: score_single(lm.model, tok, queries[:n1], lids, gold[:n1], batch_size=1), lm.device)
    out: dict = {"queries_batched": n, "queries_bs1": n1, "mean_query_tokens": round(sum(map(len, queries)) / n, 1),
                 "bs1": {"seconds": round(t1, 3), "queries_per_s": round(n1 / t1, 2),
                         "achieved_gflops": round(sum(dims.fwd_flops(len(q), 1) for q in queries[:n1]) / t1 / 1e9, 2)}}
    ref = res.records["top1_id"]
    best = 0.0
    for bs in sz.eval_batches:
        r, t = timed(lambda: score_single(lm.model, tok, queries, lids, gold, batch_size=bs), lm.device)
        qps = n / t
        out[f"bs{bs}"] = {"seconds": round(t, 3), "queries_per_s": round(qps, 2),
                          "speedup_vs_bs1": round(qps / out["bs1"]["queries_per_s"], 2),
                          "top1_identical_to_bs1": r.records["top1_id"][:n1] == ref,
                          "achieved_gflops": round(sum(dims.fwd_flops(len(q), 1) for q in queries) / t / 1e9, 2)}
        best = max(best, out[f"bs{bs}"]["speedup_vs_bs1"])
    out["best_speedup"] = best
    return out


def bench_adapters(lm, sz: Sizes) -> dict:
    from ia2.adapters import AdapterConfig, attach, detach
    from ia2.models import load_model

    k = sz.adapters
    cfg = AdapterConfig()
    t_swap = []
    for i in range(k):
        def swap():
            torch.manual_seed(i)
            pm = attach(lm.model, cfg)
            lm.model = detach(pm)
        t_swap.append(timed(swap, lm.device)[1])
    t_reload = []
    for i in range(k):
        def reload():
            fresh = load_model(lm.name, lm.device, lm.model.dtype)
            torch.manual_seed(i)
            detach(attach(fresh.model, cfg))
            return fresh
        fresh, t = timed(reload, lm.device)
        t_reload.append(t)
        del fresh
        gc.collect()
    swap_s, reload_s = statistics.mean(t_swap), statistics.mean(t_reload)
    return {"adapters": k, "swap_s_per_adapter": round(swap_s, 4), "reload_s_per_adapter": round(reload_s, 4),
            "speedup": round(reload_s / swap_s, 1),
            "note": "overhead per adapter only (attach + detach on the loaded base, versus load_model + attach + "
                    "detach); the evaluation itself costs the same either way"}


def bench_threads(lm, data: Data) -> dict:
    """One teacher-sized forward (2 ICL prompts, N = 4) at 1 thread and at every usable thread count."""
    from ia2.prompts import left_pad

    if lm.device.type != "cpu":
        return {"skipped": "not on CPU"}
    prompts = _gen_prompts(lm, data, 2)
    batch = left_pad(prompts, lm.tokenizer.pad_token_id).model_inputs()
    base = torch.get_num_threads()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = {"default_threads": base, "usable_threads": usable, "prompts": len(prompts),
           "tokens": int(batch["attention_mask"].sum())}
    try:
        for th in sorted({1, base, usable}):
            torch.set_num_threads(th)
            with torch.no_grad():
                lm.model(**batch, logits_to_keep=1)
                out[f"forward_s_threads{th}"] = round(timed(lambda: lm.model(**batch, logits_to_keep=1))[1], 4)
    finally:
        torch.set_num_threads(base)
    out["speedup_1_thread_vs_default"] = round(out[f"forward_s_threads{base}"] / out["forward_s_threads1"], 2)
    out["speedup_1_thread_vs_all"] = round(out[f"forward_s_threads{usable}"] / out["forward_s_threads1"], 2)
    return out


def bench_model(name: str, data: Data, sz: Sizes, log) -> dict:
    from ia2.models import load_model

    lm, t_load = timed(lambda: load_model(name))
    dims = model_dims(lm.model)
    out: dict = {"info": {"load_s": round(t_load, 2), "device": str(lm.device), "dtype": str(lm.model.dtype),
                          "fingerprint": lm.fingerprint, **dataclasses.asdict(dims)},
                 "sizes": dataclasses.asdict(sz)}
    with torch.no_grad():  # warm-up
        lm.model(input_ids=torch.tensor([[1, 2, 3, 4]], device=lm.device), logits_to_keep=1)
    steps = [("threads", lambda: bench_threads(lm, data)),
             ("teacher_single", lambda: bench_teacher_single(lm, data, sz, dims)),
             ("generative", lambda: bench_generative(lm, data, sz, dims)),
             ("training", lambda: bench_training(lm, data, sz, dims)),
             ("evaluation", lambda: bench_evaluation(lm, data, sz, dims)),
             ("adapters", lambda: bench_adapters(lm, sz))]
    for key, fn in steps:
        log(f"  {name}: {key} ...")
        res, secs = timed(fn)
        if key == "generative":
            out["teacher_generative"], out["decode"] = res
        else:
            out[key] = res
        out.setdefault("section_seconds", {})[key] = round(secs, 1)
    return out


# --------------------------------------------------------------------------------------------------
# sweeps: target sharing
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def count_teacher_passes():
    """Wrap ia2.targets.compute_targets (what get_targets calls) to count passes and their seconds."""
    import ia2.targets as targets_mod

    real = targets_mod.compute_targets
    stats = {"passes": 0, "seconds": 0.0}

    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            stats["passes"] += 1
            stats["seconds"] += time.perf_counter() - t0

    targets_mod.compute_targets = wrapper
    try:
        yield stats
    finally:
        targets_mod.compute_targets = real


def _run_sweep(cfg, root: Path, share: bool) -> dict:
    from ia2.pipeline import Runner, run_units
    from ia2.store import Store
    from ia2.targets import TargetCache

    class NoShareRunner(Runner):
        """Every unit rebuilds its group context and gets an empty target cache: no target reuse at all."""

        def run_unit(self, unit):
            self._k = getattr(self, "_k", 0) + 1
            self.cache = TargetCache(self.store.root / "targets" / f"unit{self._k}")
            self.ctx = None
            return super().run_unit(unit)

    store = Store(root)
    runner = (Runner if share else NoShareRunner)(store, log=lambda msg: None)
    units = cfg.units()
    runner.model(units[0].model)  # the model load is not part of the comparison
    with count_teacher_passes() as tp:
        stats, secs = timed(lambda: run_units(units, store, runner, resume=False))
    trained = sum(1 for u in units if u.method not in ("zero-shot", "icl"))
    return {"units": len(units), "trained_units": trained, "groups": len({u.group for u in units}),
            "wall_s": round(secs, 2), "teacher_passes": tp["passes"], "teacher_s": round(tp["seconds"], 2),
            "status": stats}


def bench_sweeps(quick: bool, teacher_n4_s_per_example: dict, log) -> dict:
    from ia2.config import RunConfig
    from ia2.data import task_available
    from ia2.presets import preset_config
    from ia2.tasks import get_task

    needed = ("sst2", "finsen", "poems")
    missing = [t for t in needed if not task_available(get_task(t))]
    if missing:
        return {"skipped": f"data for {', '.join(missing)} not found (set IA2_DATA_DIR to the mirror)"}
    smoke = preset_config("smoke")
    sst2 = RunConfig(models=[SWEEP_MODEL], tasks=["sst2"], eval_tasks=["sst2"], n=[4], runs=[0, 1, 2, 3, 4],
                     methods=["sft", "ia2", "ia2-then-sft"], lrs=[1e-4, 3e-4, 1e-3], limit_eval=50, max_epochs=3,
                     asim_examples=10)
    if quick:
        smoke = smoke.replace(runs=[0], lrs=[1e-3], limit_eval=4, max_epochs=1, asim_examples=2,
                              methods=["zero-shot", "sft", "ia2"])
        sst2 = sst2.replace(runs=[0], lrs=[1e-3], limit_eval=4, max_epochs=1, asim_examples=2, methods=["sft", "ia2"])
    out = {}
    for name, cfg in (("smoke", smoke), ("sst2_n4", sst2)):
        log(f"  sweep {name}: {len(cfg.units())} units, shared then unshared ...")
        with tempfile.TemporaryDirectory(prefix="ia2-bench-") as tmp:
            shared = _run_sweep(cfg, Path(tmp) / "shared", True)
            unshared = _run_sweep(cfg, Path(tmp) / "unshared", False)
        res = {"config": {k: v for k, v in cfg.to_dict().items() if k != "adapter"}, "shared": shared,
               "unshared": unshared, "speedup": round(unshared["wall_s"] / shared["wall_s"], 2),
               "teacher_passes_saved": unshared["teacher_passes"] - shared["teacher_passes"]}
        # What the saved passes would cost on the bigger models (measured teacher s/example at N = 4 x
        # examples per pass: N train + N//2 dev).
        per_pass = 4 + 4 // 2
        res["estimated_teacher_s_saved"] = {m: round(res["teacher_passes_saved"] * per_pass * s, 1)
                                            for m, s in teacher_n4_s_per_example.items()}
        out[name] = res
    return out


# --------------------------------------------------------------------------------------------------
# targets, markdown
# --------------------------------------------------------------------------------------------------
def evaluate_targets(results: dict) -> list[dict]:
    rows = []
    for name, m in results["models"].items():
        d = m["decode"]
        rows.append({"target": "KV-cache decode vs full recomputation, per token, G=200", "model": name,
                     "threshold": 10.0, "value": d["speedup_for_G"], "met": d["speedup_for_G"] >= 10.0,
                     "how": ("measured" if not d["speedup_measured_is_lower_bound"] else
                             f"estimated (measured lower bound {d['speedup_measured']}x over "
                             f"{d['full_tokens_measured']} tokens)") + f", G={d['G']}, {d['kv_tokens_generated']} tokens"})
        fb = m["teacher_generative"].get("full_recompute_batched")
        if fb:
            tg = m["teacher_generative"]
            rows.append({"target": "generative teacher targets (batched, KV cache) vs full recomputation", "model": name,
                         "threshold": 10.0, "value": fb["speedup_estimated"], "met": fb["speedup_estimated"] >= 10.0,
                         "how": f"{tg['note'].split(',')[0]}, batch {tg['prompts']}, {fb['steps']} steps; full "
                                f"recomputation estimated from timed forwards at the first and last length"})
        e = m["evaluation"]
        rows.append({"target": "evaluation batched vs one query per forward", "model": name, "threshold": 5.0,
                     "value": e["best_speedup"], "met": e["best_speedup"] >= 5.0,
                     "how": f"{e['queries_batched']} queries batched, {e['queries_bs1']} at batch 1; batch 1 already "
                            f"runs at {100 * e['bs1']['fraction_of_limit']:.0f}% of the matmul limit, so at most "
                            f"{e['ceiling_speedup']}x is possible here"})
    return rows


def _fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x == 0 or abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _thread_note(r: dict) -> str:
    """Where the run used fewer threads than the machine has cores, the limit at that thread count too."""
    mm, th = r["matmul"], r["machine"]["torch_threads"]
    if "bf16_best_gflops" in mm or th >= (r["machine"]["usable_cpus"] or 1):
        return ""
    vals = []
    for part in (mm["start"]["fp32"], mm["end"]["fp32"]):
        vals += [v for k, v in part.get("gflops_by_threads", {}).items() if k == str(th)]
        if part.get("threads") == th:
            vals += list(part["gflops_by_size"].values())
    if not vals:
        return ""
    best = max(vals)
    return (f" This run used {th} thread(s) (`--threads`); the matmul best at {th} thread(s) is {best:.1f} GFLOP/s, "
            f"{100 * best / mm['limit_gflops']:.0f}% of the limit above. Every '% of matmul' below is relative to "
            f"the limit above ({mm['limit_gflops']:.1f} GFLOP/s).")


def render_markdown(r: dict) -> str:
    mi, mm = r["machine"], r["matmul"]
    load = r["load"]
    contended = load.get("contended")
    md = [f"# IA2 benchmarks{' (quick mode)' if r['quick'] else ''}", "",
          f"Produced by `{r['command']}` on {r['finished'][:19]} (UTC), in {r['wall_s']:.0f} s.", "",
          f"Machine: {mi['cpu_model']}, {mi['usable_cpus']} usable CPUs, torch {mi['torch']} "
          f"({mi['torch_threads']} threads), transformers {mi['transformers']}, peft {mi['peft']}, "
          f"device {mi['device']}{' (' + mi['gpu'] + ')' if mi.get('gpu') else ''}.", "",
          f"Load from other processes: {_fmt(load.get('other_processes_busy_cores_mean'))} busy cores on average "
          f"(max {_fmt(load.get('other_processes_busy_cores_max'))}), load average "
          f"{_fmt(load.get('loadavg_start'))} at start / {_fmt(load.get('loadavg_end'))} at end. "
          + ("**The machine was contended: absolute numbers are low and noisy; ratios taken in the same run "
             "are more robust, but still affected.**" if contended else "The machine was not contended."), "",
          f"Physical limit: fp32 matmul {mm['fp32_best_gflops']:.1f} GFLOP/s"
          + (f", bf16 {mm['bf16_best_gflops']:.1f} GFLOP/s" if "bf16_best_gflops" in mm else "")
          + f" ({mm['how']}, measured at the start and the end of the run, best kept; GFLOP/s by size at "
            f"the start {mm['start']['fp32']['gflops_by_size']}, at the end {mm['end']['fp32']['gflops_by_size']}"
          + (f"; by thread count at the start {mm['start']['fp32']['gflops_by_threads']}"
             if "gflops_by_threads" in mm["start"]["fp32"] else "")
          + (f", at the end {mm['end']['fp32']['gflops_by_threads']}" if "gflops_by_threads" in mm["end"]["fp32"] else "")
          + ")." + _thread_note(r), "",
          "## Targets", "",
          _table(["target", "model", "value", "threshold", "met", "how"],
                 [[t["target"], t["model"], f"{t['value']:.1f}x", f">= {t['threshold']:.0f}x", t["met"], t["how"]]
                  for t in r["targets"]]), ""]

    models = r["models"]
    md += ["## Teacher targets, single token (compute_targets, G = 1)", "",
           _table(["model", "N", "examples", "mean prompt tokens", "s", "examples/s", "prompt tokens/s", "GFLOP/s",
                   "% of matmul"],
                  [[n, k, v["examples"], v["mean_prompt_tokens"], v["seconds"], v["examples_per_s"],
                    v["prompt_tokens_per_s"], v["achieved_gflops"], f"{100 * v['fraction_of_limit']:.0f}"]
                   for n, m in models.items() for k, v in m["teacher_single"]["by_n"].items()]), "",
           "Probes (same prompts, `greedy_decode` as the teacher calls it), and one forward at 1 thread vs the "
           "default thread count:", "",
           _table(["model", "N", "examples", "batched vs batch 1", "no KV cache for G=1 (speedup)", "tokens identical",
                   "forward s, 1 thread", "forward s, all usable threads", "threads used by the run"],
                  [[n, p["n"], p["examples"], f"{p['batching_speedup']}x", f"{p['no_cache_speedup_for_g1']}x",
                    p["tokens_identical"], th.get("forward_s_threads1"),
                    th.get(f"forward_s_threads{th.get('usable_threads')}"), th.get("default_threads")]
                   for n, m in models.items() for p in [m["teacher_single"]["probes"]] for th in [m["threads"]]]), "",
           "## Teacher targets, generative, and KV cache vs full recomputation", "",
           _table(["model", "prompts (one batch)", "G", "tokens generated", "stopped at EOS", "s", "examples/s",
                   "generated tokens/s", "tokens/s vs one prompt (KV)"],
                  [[n, t["prompts"], t["G"], sum(t["tokens_generated"]), t["stopped_early_at_eos"], t["seconds"],
                    t["examples_per_s"], t["generated_tokens_per_s"], f"{t['tokens_per_s_vs_batch1_kv']}x"]
                   for n, m in models.items() for t in [m["teacher_generative"]]]), "",
           "Prompts: " + "; ".join(sorted({f"{n}: {m['teacher_generative']['note']}" for n, m in models.items()}))
           + " (as in the generative teacher pass).", "",
           _table(["model", "prompt tokens", "KV tokens", "KV s/token", "full tokens measured", "full s/token",
                   "speedup measured", "speedup for G (est.)", "tokens identical"],
                  [[n, d["prompt_tokens"], d["kv_tokens_generated"], d["kv_s_per_token"], d["full_tokens_measured"],
                    d["full_s_per_token"], f"{d['speedup_measured']}x", f"{d['speedup_estimated_for_G']}x",
                    d["tokens_identical_on_overlap"]] for n, m in models.items() for d in [m["decode"]]]), "",
           "Full recomputation for G tokens is estimated as G x mean(forward time at the prompt length, at prompt + G); "
           "where fewer tokens were measured, the measured ratio is a lower bound (the per-token cost of full "
           "recomputation grows with length). One prompt is the worst case for the KV cache: a one-token step reads "
           "every weight for one token (memory-bound), while a full-recomputation step is compute-bound and costs "
           "B times more for B prompts; the batched teacher's tokens/s gain over one prompt is in the table above.", "",
           "## Training (train_stage, LoRA r=8 on q,k,o; sst2 N=4, 4 train + 2 dev examples)", "",
           _table(["model", "objective", "micro_batch", "examples", "s", "examples/s", "GFLOP/s (6PT)",
                   "% of matmul (6PT)", "GFLOP/s (LoRA 4PT)", "% of matmul (LoRA)", "batched speedup"],
                  [[n, obj, v["micro_batch"], v["train_examples_processed"], v["seconds"], v["examples_per_s"],
                    v["gflops_6pt"], f"{100 * v['fraction_of_limit_6pt']:.1f}", v["gflops_lora"],
                    f"{100 * v['fraction_of_limit_lora']:.1f}",
                    f"{m['training'][obj]['speedup_batched']}x" if mb == "micro4" else ""]
                   for n, m in models.items() for obj in ("ia2", "sft")
                   for mb, v in m["training"][obj].items() if mb.startswith("micro")]), "",
           "FLOPs: forward = 2·P_lin·T + 2·L·d·T² + 2·d·V·K per sequence (P_lin = decoder Linear weights, T = real "
           "tokens, K = positions with logits); training = 3 x forward (the usual 6PT) or 2 x forward (LoRA: "
           "frozen weights need no weight gradients); dev checks = 1 x forward. Limit = fp32 matmul above.", "",
           "Peak memory (RSS, training section): " + ", ".join(
               f"{n}: {m['training']['memory']['peak_rss_training_mib']} MiB "
               f"(before training {m['training']['memory']['rss_before_training_mib']} MiB, so training added "
               f"{m['training']['memory']['peak_rss_training_mib'] - m['training']['memory']['rss_before_training_mib']:.0f}"
               " MiB)"
               + (f", CUDA {m['training']['memory']['cuda_max_allocated_mib']} MiB"
                  if m['training']['memory']['cuda_max_allocated_mib'] is not None else "")
               for n, m in models.items()) + ".", "",
           "## Evaluation (score_single on sst2 queries without demonstrations)", "",
           _table(["model", "batch", "queries", "s", "queries/s", "GFLOP/s", "% of matmul", "speedup vs batch 1",
                   "top-1 identical"],
                  [[n, 1, m["evaluation"]["queries_bs1"], m["evaluation"]["bs1"]["seconds"],
                    m["evaluation"]["bs1"]["queries_per_s"], m["evaluation"]["bs1"]["achieved_gflops"],
                    f"{100 * m['evaluation']['bs1']['fraction_of_limit']:.0f}", "1x", ""] for n, m in models.items()]
                  + [[n, k.removeprefix("bs"), m["evaluation"]["queries_batched"], v["seconds"], v["queries_per_s"],
                      v["achieved_gflops"], f"{100 * v['fraction_of_limit']:.0f}", f"{v['speedup_vs_bs1']}x",
                      v["top1_identical_to_bs1"]]
                     for n, m in models.items() for k, v in m["evaluation"].items()
                     if k.startswith("bs") and k != "bs1"]), "",
           "Ceiling: batching can at most lift batch-1 throughput to the matmul limit: "
           + ", ".join(f"{n}: {m['evaluation']['ceiling_speedup']}x" for n, m in models.items()) + ".", "",
           _table(["model", "adapters", "swap (attach/detach) s", "reload base s", "speedup"],
                  [[n, a["adapters"], a["swap_s_per_adapter"], a["reload_s_per_adapter"], f"{a['speedup']}x"]
                   for n, m in models.items() for a in [m["adapters"]]]), ""]
    sw = r.get("sweeps")
    md += ["## Sweeps: teacher targets shared per (N, run) vs recomputed per unit", ""]
    if not sw:
        md += ["Not run.", ""]
    elif "skipped" in sw:
        md += [f"Skipped: {sw['skipped']}.", ""]
    else:
        md += [_table(["sweep", "units", "groups", "shared: s", "shared: teacher passes (s)", "unshared: s",
                       "unshared: teacher passes (s)", "speedup", "est. teacher s saved on other models"],
                      [[k, v["shared"]["units"], v["shared"]["groups"], v["shared"]["wall_s"],
                        f"{v['shared']['teacher_passes']} ({v['shared']['teacher_s']})", v["unshared"]["wall_s"],
                        f"{v['unshared']['teacher_passes']} ({v['unshared']['teacher_s']})",
                        f"{v['speedup']}x", ", ".join(f"{m}: {s}" for m, s in v["estimated_teacher_s_saved"].items())]
                       for k, v in sw.items()]), "",
               f"Sweeps run on {SWEEP_MODEL} (limit_eval, max_epochs, asim_examples as in the JSON). 'Unshared' rebuilds "
               "the group context and uses an empty target cache for every unit; teacher passes are counted by "
               "wrapping ia2.targets.compute_targets. On the tiny model a teacher pass is cheap, so most of the "
               "difference is the rebuilt group context (data, evaluation prompts, the base model's ICL activations); "
               "the last column multiplies the saved passes by the measured N=4 teacher seconds per example x 6 "
               "examples per pass.", ""]
    md += [f"Data: {r['data']['source']}; `load_task_data` takes {r['data']['load_s']} s the first time and "
           f"{r['data']['load_again_s']} s again with the rows already in memory (paid by every new group context).", "",
           "Raw numbers: `benchmarks.json` beside this file.", ""]
    return "\n".join(md)


# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/benchmarks", help="output folder (benchmarks.json, BENCHMARKS.md)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a fast check, not a measurement")
    ap.add_argument("--models", default="smollm2-135m,tiny-llama", help="comma-separated model presets")
    ap.add_argument("--no-sweeps", action="store_true", help="skip the sweep section")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--render", metavar="JSON", help="only re-render BENCHMARKS.md from an existing benchmarks.json")
    args = ap.parse_args(argv)
    if args.render:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "BENCHMARKS.md").write_text(render_markdown(json.loads(Path(args.render).read_text())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)  # noqa: E731
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv_used)
    torch.manual_seed(0)

    load = {"loadavg_start": round(os.getloadavg()[0], 2), "other_busy_cores_start": idle_cpu_sample()}
    results: dict = {"schema": SCHEMA, "command": command, "quick": args.quick, "started": started,
                     "models_requested": models, "machine": machine_info()}
    with LoadMonitor() as mon:
        log("matmul ...")
        mm_sizes = sizes_for(models[0] if models else SWEEP_MODEL, args.quick)
        mm_start = bench_matmul(mm_sizes)
        data, t_data = timed(load_data)
        _, t_again = timed(load_data)  # rows are cached in memory by now: what every new group context pays
        results["data"] = {"source": data.source, "load_s": round(t_data, 2), "load_again_s": round(t_again, 2)}
        results["models"] = {}
        for name in models:
            log(f"model {name} ...")
            results["models"][name] = bench_model(name, data, sizes_for(name, args.quick), log)
            gc.collect()
        if not args.no_sweeps:
            log("sweeps ...")
            per_ex = {n: m["teacher_single"]["by_n"]["4"]["seconds"] / m["teacher_single"]["by_n"]["4"]["examples"]
                      for n, m in results["models"].items() if "4" in m["teacher_single"]["by_n"]}
            results["sweeps"] = bench_sweeps(args.quick, per_ex, log)
        log("matmul again ...")
        results["matmul"] = combine_matmul(mm_start, bench_matmul(mm_sizes))
        apply_limit(results)
    load.update(mon.summary())
    load["loadavg_end"] = round(os.getloadavg()[0], 2)
    load["other_busy_cores_end"] = idle_cpu_sample()
    busy = [x for x in (load.get("other_processes_busy_cores_mean"), load["other_busy_cores_start"],
                        load["other_busy_cores_end"]) if x is not None]
    load["contended"] = bool(busy) and max(busy) > 0.25 * (results["machine"]["usable_cpus"] or 1)
    results["load"] = load
    # The training sections reset the kernel's peak counter: the run's peak is the largest peak seen.
    results["peak_rss_process_mib"] = max([peak_rss_mib()] + [m["training"]["memory"]["peak_rss_training_mib"]
                                                              for m in results["models"].values()])
    results["targets"] = evaluate_targets(results)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
    (out_dir / "benchmarks.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "BENCHMARKS.md").write_text(render_markdown(results))
    log(f"wrote {out_dir / 'benchmarks.json'} and {out_dir / 'BENCHMARKS.md'} in {results['wall_s']:.0f} s")
    for t in results["targets"]:
        log(f"  {t['target']} [{t['model']}]: {t['value']:.1f}x (>= {t['threshold']:.0f}x) -> "
            f"{'met' if t['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
