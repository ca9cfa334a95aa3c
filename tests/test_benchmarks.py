"""The benchmark script runs end to end in --quick mode on the tiny model and writes its two reports.

Only the structure is checked: timings depend on the machine and are never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run.py"


def test_quick_benchmark_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    # One thread: on a shared 2-core machine, two OpenMP threads are several times slower for small ops.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--models", "tiny-llama"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r = json.loads((out / "benchmarks.json").read_text())
    assert r["quick"] is True and r["models_requested"] == ["tiny-llama"]
    for key in ("command", "machine", "load", "matmul", "models", "targets", "wall_s", "data"):
        assert key in r, key
    for key in ("cpu_model", "usable_cpus", "torch", "device", "torch_threads"):
        assert key in r["machine"], key
    assert r["matmul"]["limit_gflops"] > 0 and "fp32_best_gflops" in r["matmul"]

    m = r["models"]["tiny-llama"]
    for key in ("info", "threads", "teacher_single", "teacher_generative", "decode", "training", "evaluation",
                "adapters"):
        assert key in m, key
    assert set(m["teacher_single"]["by_n"]) == {"4", "8"}
    for v in m["teacher_single"]["by_n"].values():
        assert v["examples"] > 0 and v["examples_per_s"] > 0 and v["prompt_tokens_per_s"] > 0
    assert m["teacher_single"]["probes"]["tokens_identical"] is True
    d = m["decode"]
    for key in ("kv_s_per_token", "full_s_per_token", "speedup_for_G", "kv_tokens_generated"):
        assert key in d, key
    assert d["tokens_identical_on_overlap"] is True
    for obj in ("ia2", "sft"):
        t = m["training"][obj]
        assert {"micro4", "micro1", "speedup_batched"} <= set(t)
        for mb in ("micro4", "micro1"):
            assert {"examples_per_s", "gflops_6pt", "fraction_of_limit_6pt", "fraction_of_limit_lora"} <= set(t[mb])
    assert m["training"]["memory"]["peak_rss_training_mib"] > 0
    e = m["evaluation"]
    assert {"bs1", "bs16", "best_speedup", "ceiling_speedup"} <= set(e)
    assert e["bs16"]["top1_identical_to_bs1"] is True
    assert {"swap_s_per_adapter", "reload_s_per_adapter", "speedup"} <= set(m["adapters"])

    sweeps = r["sweeps"]
    if "skipped" not in sweeps:  # the data mirror is present
        for name in ("smoke", "sst2_n4"):
            s = sweeps[name]
            assert s["shared"]["units"] == s["unshared"]["units"] > 0
            # Shared: one teacher pass per (N, run) group; unshared: one per trained unit.
            assert s["shared"]["teacher_passes"] == s["shared"]["groups"]
            assert s["unshared"]["teacher_passes"] == s["unshared"]["trained_units"]
            assert s["teacher_passes_saved"] > 0

    names = {(t["target"], t["model"]) for t in r["targets"]}
    assert len(names) == 3 and all(isinstance(t["met"], bool) for t in r["targets"])

    md = (out / "BENCHMARKS.md").read_text()
    assert "python benchmarks/run.py" in md and "--quick" in md
    for heading in ("## Targets", "## Teacher targets, single token", "## Training", "## Evaluation", "## Sweeps"):
        assert heading in md, heading
    assert r["machine"]["cpu_model"] in md


def test_shape_model_keeps_the_shape_and_tokenizer_and_draws_new_weights(tmp_path):
    """benchmarks/shape_model.py: a folder ia2 loads as a model, with the source's config and tokenizer (here
    gzipped, as a small upload would carry it) and random weights."""
    import gzip

    import torch

    from ia2.models import load_model, tiny_model

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import shape_model
    finally:
        sys.path.pop(0)
    model, tok = tiny_model("tiny-llama")
    src = tmp_path / "src"
    model.config.save_pretrained(src)
    tok.save_pretrained(src)
    raw = (src / "tokenizer.json").read_bytes()
    (src / "tokenizer.json.gz").write_bytes(gzip.compress(raw))
    (src / "tokenizer.json").unlink()

    out = shape_model.build(src, tmp_path / "shape-tiny", seed=1)
    lm = load_model(str(out), device="cpu", dtype="fp32")
    assert (out / "tokenizer.json").read_bytes() == raw
    assert lm.tokenizer("a fine film")["input_ids"] == tok("a fine film")["input_ids"]
    ours, theirs = dict(lm.model.named_parameters()), dict(model.named_parameters())
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"], theirs["model.layers.0.self_attn.q_proj.weight"])
    with pytest.raises(SystemExit, match="config.json not found"):
        shape_model.build(tmp_path / "nowhere", tmp_path / "x")
