"""Training tests on tiny random models: aligned positions, the IA2 loss, batching, early stopping,
stage chaining, adapter-only updates and determinism (SPEC section 2).

Self-contained: every test builds its own private tiny model (``load_model("tiny-llama")`` takes well
under a second once transformers is imported), so attaching adapters never touches shared fixtures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TEST_DEVICE
import torch
import torch.nn.functional as F

from ia2.activations import AttentionCapture
from ia2.adapters import AdapterConfig, attach, detach, trainable_state
from ia2.data import Example
from ia2.generation import greedy_decode
from ia2.methods import Objective, StudentExample, get_method, make_batch, stage_objective
from ia2.methods.objectives import ia2_loss, relative_layer_weights
from ia2.models import load_model
from ia2.prompts import encode, icl_prompt
from ia2.train import TrainConfig, train_stage

KINDS = ("tiny-llama", "tiny-gemma")  # without / with a BOS token
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAVE_SST2 = (DATA / "stanfordnlp" / "sst2" / "default" / "train.jsonl").exists()
HAVE_GSM8K = (DATA / "openai" / "gsm8k" / "main" / "train.jsonl").exists()

QUERIES = ["Text:a fine film\nLabel:", "Text:dull\nLabel:",
           "Text:an overlong, tedious and thoroughly muddled story\nLabel:", "Text:great fun\nLabel:"]
DEMOS = [Example("Text:loved every minute of it\nLabel:", "1"), Example("Text:a waste of time\nLabel:", "0"),
         Example("Text:witty and warm, a charming piece of cinema\nLabel:", "1"),
         Example("Text:the plot never comes together\nLabel:", "0")]


pytestmark = pytest.mark.usefixtures("one_thread")


def fresh(kind: str = "tiny-llama"):
    return load_model(kind, device=TEST_DEVICE, dtype=torch.float32)


def teacher(lm, prompts: list[list[int]], g: int):
    """Teacher pass as the targets use it: greedy decode with the KV cache, attention outputs recorded."""
    return greedy_decode(lm.model, lm.tokenizer, prompts, g, stop=None, capture=True, logprobs="full")


def icl_ids(lm, query: str, k: int = 3) -> list[int]:
    return encode(lm.tokenizer, icl_prompt(DEMOS[:k], query))


def teacher_examples(lm, gs: list[int], k: int = 3) -> list[StudentExample]:
    """Student examples (query without demonstrations) with targets from a teacher WITH k demonstrations."""
    tok = lm.tokenizer
    prompts = [icl_ids(lm, q, k) for q in QUERIES[:len(gs)]]
    decoded = teacher(lm, prompts, max(gs))
    return [StudentExample(encode(tok, q), d.tokens[:g], d.acts[:, :g], d.logprobs[:g])
            for q, d, g in zip(QUERIES, decoded, gs)]


def o_proj_outputs(model, input_ids: list[int], last: int) -> torch.Tensor:
    """[L, last, d]: each layer's o_proj output at the last positions, via hooks independent of AttentionCapture."""
    mods = [m for n, m in model.named_modules() if n.endswith("self_attn.o_proj")]
    assert len(mods) == model.config.num_hidden_layers
    got: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, a, out, i=i: got.__setitem__(i, out)) for i, m in enumerate(mods)]
    try:
        model(input_ids=torch.tensor([input_ids]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([got[i][0, -last:].float() for i in range(len(mods))])


def randomise_lora(pm, std: float = 0.05, seed: int = 1) -> None:
    """LoRA B starts at zero; give it values so every LoRA parameter gets a gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def base_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- 1. aligned positions ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("g", [1, 5])
def test_teacher_and_student_output_positions_hold_the_same_tokens(kind, g):
    lm = fresh(kind)
    tok = lm.tokenizer
    # k=4 demonstrations make the ICL prompt longer than tiny-gemma's sliding window (64 tokens).
    prompt = icl_ids(lm, QUERIES[0], k=4)
    query = encode(tok, QUERIES[0])
    if kind == "tiny-gemma":
        assert prompt[0] == query[0] == tok.bos_token_id
        assert prompt.count(tok.bos_token_id) == query.count(tok.bos_token_id) == 1
    else:
        assert tok.bos_token_id not in prompt and tok.bos_token_id not in query
    assert len(prompt) > 64
    assert query[-1] == prompt[-1]  # the last query token is the last ICL-prompt token

    d = teacher(lm, [prompt], g)[0]
    y = d.tokens
    assert len(y) == g and d.acts.shape == (lm.num_layers, g, lm.model.config.hidden_size)

    # Teacher output positions: last prompt token, then y[:-1]. A full (no-cache) forward over
    # prompt + y[:-1] gives the same attention outputs at its last g positions, and those positions'
    # logits produced y: the captured positions are exactly these.
    seq = prompt + y[:-1]
    assert seq[-g:] == [prompt[-1]] + y[:-1]
    with torch.no_grad():
        with AttentionCapture(lm.model, last=g) as cap:
            logits = lm.model(input_ids=torch.tensor([seq])).logits[0, -g:]
        full = cap.outputs[0]
    torch.testing.assert_close(d.acts, full, atol=1e-5, rtol=1e-4)
    assert logits.argmax(-1).tolist() == y

    # Student: query + y[:-1], left padded inside a batch of examples of other lengths.
    others = [StudentExample(encode(tok, QUERIES[2]), [65, 66]), StudentExample(encode(tok, QUERIES[1]), [67] * 7)]
    ex = StudentExample(query, y)
    batch = make_batch([others[0], ex, others[1]], tok.pad_token_id, TEST_DEVICE)
    row = batch.inputs["input_ids"][1].tolist()
    assert row[-g:] == [query[-1]] + y[:-1]
    assert row[-g:] == seq[-g:]  # same token at every aligned output position
    w = batch.width
    assert w == max(g, 2, 7)
    assert batch.mask[1].tolist() == [False] * (w - g) + [True] * g
    assert batch.targets[1, -g:].tolist() == y
    assert int(batch.lengths[1]) == g
    # the real tokens of the row are exactly query + y[:-1], preceded by padding
    n_real = int(batch.inputs["attention_mask"][1].sum())
    assert row[-n_real:] == query + y[:-1]
    assert batch.inputs["position_ids"][1, -n_real:].tolist() == list(range(n_real))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_demo_teacher_activations_equal_student_activations(kind):
    """Teacher prompt == student query: the recorded teacher activations must equal the student's at
    the aligned positions (batched, left padded on both sides, adapter attached with B = 0)."""
    lm = fresh(kind)
    tok = lm.tokenizer
    queries = [encode(tok, q) for q in QUERIES[:3]]
    decoded = teacher(lm, queries, 6)  # batched decode with left padding and the KV cache
    gs = [6, 1, 3]
    exs = [StudentExample(q, d.tokens[:g], d.acts[:, :g]) for q, d, g in zip(queries, decoded, gs)]
    torch.manual_seed(0)
    pm = attach(lm.model, AdapterConfig())
    try:
        batch = make_batch(exs, tok.pad_token_id, TEST_DEVICE)
        with torch.no_grad(), AttentionCapture(pm, last=batch.width) as cap:
            pm(**batch.inputs)
        acts = cap.outputs
        for b, (ex, g) in enumerate(zip(exs, gs)):
            torch.testing.assert_close(acts[b, :, -g:], ex.acts, atol=1e-5, rtol=0)
            # and one at a time
            with torch.no_grad(), AttentionCapture(pm, last=g) as one:
                pm(input_ids=torch.tensor([ex.query_ids + ex.target_ids[:-1]]))
            torch.testing.assert_close(one.outputs[0], ex.acts, atol=1e-5, rtol=0)
        with torch.no_grad():
            loss = Objective("ia2", "icl").per_example(pm, batch)
        assert float(loss.max()) < 1e-9
    finally:
        detach(pm)


@pytest.mark.parametrize("kind", KINDS)
def test_residual_capture_is_what_each_layer_adds_to_the_residual_stream(kind):
    """--ia2-capture residual: on Gemma-3 the post-attention norm's output (not o_proj's), on Llama o_proj's;
    the teacher (greedy decode) and the student (through peft) read the same tensor."""
    lm = fresh(kind)
    ids = encode(lm.tokenizer, QUERIES[2])
    with torch.no_grad(), AttentionCapture(lm.model, last=3, point="residual") as cap:
        lm.model(input_ids=torch.tensor([ids]))
    o = o_proj_outputs(lm.model, ids, 3)
    expected = o
    if kind == "tiny-gemma":
        with torch.no_grad():
            expected = torch.stack([layer.post_attention_layernorm(o[i])
                                    for i, layer in enumerate(lm.model.model.layers)])
        assert not torch.allclose(expected, o, atol=1e-3)
    torch.testing.assert_close(cap.outputs[0].float(), expected, atol=1e-5, rtol=1e-5)
    queries = [encode(lm.tokenizer, q) for q in QUERIES[:2]]
    decoded = greedy_decode(lm.model, lm.tokenizer, queries, 3, stop=None, capture=True, capture_point="residual")
    exs = [StudentExample(q, d.tokens, d.acts) for q, d in zip(queries, decoded)]
    pm = attach(lm.model, AdapterConfig())
    try:
        batch = make_batch(exs, lm.tokenizer.pad_token_id, TEST_DEVICE)
        with torch.no_grad():
            assert float(Objective("ia2", "icl", capture="residual").per_example(pm, batch).max()) < 1e-9
            if kind == "tiny-gemma":  # the same targets read at o_proj: a different tensor, a real loss
                assert float(Objective("ia2", "icl").per_example(pm, batch).min()) > 1e-6
    finally:
        detach(pm)


# --- 2. the IA2 loss by hand ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_ia2_loss_is_sum_over_layers_of_per_layer_mse(kind):
    """The paper's loss, and --ia2-loss relative: each layer's MSE over the teacher's mean square of that layer."""
    lm = fresh(kind)
    exs = teacher_examples(lm, [4, 1, 6])
    w = relative_layer_weights(exs)
    all_acts = torch.cat([e.acts.float() for e in exs], dim=1)  # [L, sum G, d]
    assert len(w) == lm.num_layers
    torch.testing.assert_close(torch.tensor(w), 1 / all_acts.pow(2).mean(dim=(1, 2)), rtol=1e-5, atol=0)
    torch.manual_seed(0)
    pm = attach(lm.model, AdapterConfig())
    try:
        randomise_lora(pm)
        batch = make_batch(exs, lm.tokenizer.pad_token_id, TEST_DEVICE)
        with torch.no_grad():
            per_ex = Objective("ia2", "icl").per_example(pm, batch)
            relative = stage_objective(get_method("ia2").stages[0], "gt", 0.0, None, w).per_example(pm, batch)
            with AttentionCapture(pm, last=batch.width) as cap:
                pm(**batch.inputs)
            direct = ia2_loss(cap.outputs, batch)
        assert per_ex.dtype == torch.float32 and per_ex.shape == (3,)
        torch.testing.assert_close(direct, per_ex, atol=0, rtol=1e-6)
        assert not torch.allclose(relative, per_ex)
        for i, ex in enumerate(exs):
            g = len(ex.target_ids)
            with torch.no_grad():
                student = o_proj_outputs(pm, ex.query_ids + ex.target_ids[:-1], g)  # [L, g, d]
            per_layer = [F.mse_loss(student[l], ex.acts[l].float()) for l in range(lm.num_layers)]
            by_hand = sum(per_layer)
            assert float(by_hand) > 1e-8  # the teacher saw demonstrations: a real, non-zero loss
            torch.testing.assert_close(per_ex[i], by_hand, atol=1e-9, rtol=1e-5)
            # equivalently: MSE over all elements times L
            torch.testing.assert_close(per_ex[i], F.mse_loss(student, ex.acts.float()) * lm.num_layers,
                                       atol=1e-9, rtol=1e-5)
            torch.testing.assert_close(relative[i], sum(m * wl for m, wl in zip(per_layer, w)), atol=1e-9, rtol=1e-5)
        # an SFT stage never carries layer weights
        assert stage_objective(get_method("sft").stages[0], "gt", 0.0, None, w).layer_weights is None
    finally:
        detach(pm)


# --- 3. an IA2 step lowers the MSE -----------------------------------------------------------------

@pytest.mark.parametrize("g", [1, 4])
def test_ia2_adam_step_lowers_mse(g):
    lm = fresh()
    ex = teacher_examples(lm, [g], k=4)
    torch.manual_seed(0)
    pm = attach(lm.model, AdapterConfig())
    try:
        obj = Objective("ia2", "icl")
        batch = make_batch(ex, lm.tokenizer.pad_token_id, TEST_DEVICE)
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-2)
        before = obj.per_example(pm, batch).mean()
        before.backward()
        opt.step()
        with torch.no_grad():
            after = obj.per_example(pm, batch).mean()
        assert float(before.detach()) > 0
        assert float(after) < float(before.detach())
    finally:
        detach(pm)


# --- 4. batched == one at a time -------------------------------------------------------------------

OBJECTIVES = [Objective("ia2", "icl"), Objective("sft", "icl"), Objective("kd", "icl"),
              Objective("ia2+sft", "icl", ce_weight=0.3), Objective("kd", "icl", kd_top_k=8)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("obj", OBJECTIVES, ids=lambda o: f"{o.name}-top{o.kd_top_k}")
def test_batched_losses_and_gradients_equal_single_examples(kind, obj):
    lm = fresh(kind)
    # lengths differ in query and target; the G=1 example with a short query has padding inside
    # the batch's output window
    exs = teacher_examples(lm, [1, 9, 3])
    exs = [exs[1], exs[0], exs[2]]
    torch.manual_seed(0)
    pm = attach(lm.model, AdapterConfig())
    try:
        randomise_lora(pm)
        pad = lm.tokenizer.pad_token_id
        params = {n: p for n, p in pm.named_parameters() if p.requires_grad}
        pm.zero_grad(set_to_none=True)
        batched = obj.per_example(pm, make_batch(exs, pad, TEST_DEVICE))
        batched.mean().backward()
        g_batch = {n: p.grad.clone() for n, p in params.items()}
        pm.zero_grad(set_to_none=True)
        singles = []
        for ex in exs:
            loss = obj.per_example(pm, make_batch([ex], pad, TEST_DEVICE))
            (loss.sum() / len(exs)).backward()
            singles.append(loss.detach())
        singles = torch.cat(singles)
        assert torch.isfinite(batched).all() and (singles > 0).all()
        torch.testing.assert_close(batched.detach(), singles, atol=1e-5, rtol=1e-5)
        for n, p in params.items():
            torch.testing.assert_close(g_batch[n], p.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{n}: {m}")
        assert any(float(g.abs().max()) > 0 for n, g in g_batch.items() if "lora_A" in n)
    finally:
        detach(pm)


# --- 5. restore the best dev loss ------------------------------------------------------------------

def _run_with_states(objective, train, dev, cfg, kind="tiny-llama"):
    lm = fresh(kind)
    torch.manual_seed(0)
    pm = attach(lm.model, AdapterConfig())
    states, curve = [], []

    def on_check(entry):
        curve.append(entry)
        states.append(trainable_state(pm))

    log = train_stage(pm, objective, train, dev, cfg, lm.tokenizer.pad_token_id, on_check=on_check)
    final = trainable_state(pm)
    detach(pm)
    return log, curve, states, final


def _sft_examples(lm, queries, target: str):
    tok = lm.tokenizer
    return [StudentExample(encode(tok, q), list(tok(target, add_special_tokens=False).input_ids)) for q in queries]


def test_restore_best_with_a_rising_dev_loss():
    lm = fresh()
    # Training pushes towards answer "1" at a high learning rate; the dev set wants "0" for the same
    # queries. Its loss first falls (check 3 is the best), then rises to the end.
    train = _sft_examples(lm, QUERIES, "1")
    dev = _sft_examples(lm, QUERIES[:2], "0")
    cfg = TrainConfig(lr=7e-2, batch_size=2, max_epochs=8, patience=100, early_stop="best")
    log, curve, states, final = _run_with_states(Objective("sft", "gt"), train, dev, cfg)
    devs = [c["dev_loss"] for c in curve]
    best = min(range(len(devs)), key=devs.__getitem__)
    assert 0 < best < len(devs) - 1 and devs[-1] > devs[best], devs
    assert log.best_dev == devs[best] and log.best_step == curve[best]["step"]
    assert states_equal(final, states[best])
    assert not states_equal(final, states[-1])

    cfg_last = TrainConfig(lr=7e-2, batch_size=2, max_epochs=8, patience=100, early_stop="last")
    log2, curve2, states2, final2 = _run_with_states(Objective("sft", "gt"), train, dev, cfg_last)
    assert [c["dev_loss"] for c in curve2] == devs  # same seed, same trajectory
    assert states_equal(final2, states2[-1])
    assert not states_equal(final2, states2[best])


class _ScriptedDev(Objective):
    """The real training loss, but scripted dev losses (dev checks run without gradients)."""

    def per_example(self, model, batch):
        if torch.is_grad_enabled():
            return super().per_example(model, batch)
        return torch.full((len(batch.examples),), _ScriptedDev.script.pop(0))


def test_restore_best_picks_the_middle_check_and_patience_stops():
    lm = fresh()
    train = _sft_examples(lm, QUERIES, "1")
    dev = _sft_examples(lm, QUERIES[:1], "0")  # one dev example: one scripted value per check
    _ScriptedDev.script = [5.0, 4.0, 3.0, 3.5, 3.0, 6.0, 1.0, 0.5]
    cfg = TrainConfig(lr=1e-2, batch_size=1, max_epochs=50, patience=3, eval_every=2)
    log, curve, states, final = _run_with_states(_ScriptedDev("sft", "gt"), train, dev, cfg)
    # checks 3, 4 (not strictly better) and 5 are bad: stop after the 6th check
    assert [c["dev_loss"] for c in curve] == [5.0, 4.0, 3.0, 3.5, 3.0, 6.0]
    assert log.stopped == "patience"
    assert log.best_dev == 3.0 and log.best_step == curve[2]["step"] == 6
    assert states_equal(final, states[2])
    assert not states_equal(final, states[-1])


# --- 6, 7, 9: the pipeline on sst2 (data mirror) ----------------------------------------------------

needs_sst2 = pytest.mark.skipif(not HAVE_SST2, reason=f"dataset mirror not found at {DATA}")


def _unit(method: str, **kw):
    from ia2.config import Unit

    base = dict(model="tiny-llama", task="sst2", label_format="digits", eval_tasks=("sst2",), n=4, run=0,
                method=method, lr=1e-2, ce_weight=0.5 if method == "ia2+sft" else None, max_epochs=2,
                g_max=1, limit_eval=4, asim_examples=2)
    base.update(kw)
    return Unit(**base)


def _runner(root: Path, logs: list | None = None):
    from ia2.pipeline import Runner
    from ia2.store import Store

    return Runner(Store(root), device=TEST_DEVICE, dtype=torch.float32,
                  log=(logs.append if logs is not None else (lambda *a: None)))


@pytest.fixture
def mirror(monkeypatch):
    if not HAVE_SST2:
        pytest.skip(f"dataset mirror not found at {DATA}")
    monkeypatch.setenv("IA2_DATA_DIR", str(DATA))
    return DATA


@pytest.fixture
def stage_spy(monkeypatch):
    """Wrap pipeline.train_stage: record objective, trainable names and adapter state around each stage."""
    import ia2.pipeline as pipeline

    real = pipeline.train_stage
    calls: list[dict] = []

    def spy(model, objective, train, dev, cfg, pad_id, on_check=None):
        entry = {"objective": objective, "cfg": cfg, "before": trainable_state(model),
                 "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
                 "params": [p for p in model.parameters() if p.requires_grad]}
        entry["log"] = real(model, objective, train, dev, cfg, pad_id, on_check)
        entry["after"] = trainable_state(model)
        calls.append(entry)
        return entry["log"]

    monkeypatch.setattr(pipeline, "train_stage", spy)
    return calls


@pytest.fixture
def adam_spy(monkeypatch):
    real = torch.optim.Adam
    made: list = []

    class RecordingAdam(real):
        def __init__(self, params, *a, **kw):
            super().__init__(params, *a, **kw)
            made.append({"opt": self, "state_at_start": len(self.state),
                         "params": [p for g in self.param_groups for p in g["params"]],
                         "lr": self.param_groups[0]["lr"]})

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    return made


def test_ia2_then_sft_continues_the_same_adapter_with_a_fresh_adam(mirror, tmp_path, stage_spy, adam_spy):
    runner = _runner(tmp_path / "store")
    rec = runner.run_unit(_unit("ia2-then-sft", lr=3e-2))
    assert rec["status"] == "done", rec["error"]
    assert [c["objective"].name for c in stage_spy] == ["ia2", "sft"]
    assert stage_spy[0]["objective"].labels == "icl" and stage_spy[1]["objective"].labels == "gt"
    ia2_stage, sft_stage = stage_spy
    # the IA2 stage trained the adapter (LoRA B starts at zero) ...
    assert any("lora_B" in n and float(v.abs().max()) == 0 for n, v in ia2_stage["before"].items())
    assert not states_equal(ia2_stage["before"], ia2_stage["after"])
    # ... and SFT starts from exactly those (restored-best) weights, not re-initialised ones
    assert states_equal(sft_stage["before"], ia2_stage["after"])
    assert not states_equal(sft_stage["after"], sft_stage["before"])
    assert all(a is b for a, b in zip(ia2_stage["params"], sft_stage["params"]))  # the same adapter tensors
    # one fresh Adam per stage, empty at the start, same learning rate, over the same adapter tensors
    assert len(adam_spy) == 2 and adam_spy[0]["opt"] is not adam_spy[1]["opt"]
    assert [a["state_at_start"] for a in adam_spy] == [0, 0]
    assert adam_spy[0]["lr"] == adam_spy[1]["lr"] == 3e-2
    assert all(a is b for a, b in zip(adam_spy[0]["params"], adam_spy[1]["params"]))
    assert len(adam_spy[0]["opt"].state) > 0  # the first one did take steps
    assert [s["objective"] for s in rec["train"]["stages"]] == ["ia2", "sft"]


METHODS6 = ["sft", "kd", "ia2", "ia2+sft", "ia2-then-sft", "sft-then-ia2"]


@pytest.fixture(scope="module")
def shared_runner(tmp_path_factory):
    """One runner (one model, one group context, targets computed once) for all six methods: the base
    model must also stay bit-identical from one unit to the next."""
    if not HAVE_SST2:
        pytest.skip(f"dataset mirror not found at {DATA}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_DATA_DIR", str(DATA))
        yield _runner(tmp_path_factory.mktemp("methods") / "store")


@pytest.mark.parametrize("method", METHODS6)
def test_each_method_trains_only_adapter_parameters(shared_runner, stage_spy, method):
    from safetensors.torch import load_file

    runner = shared_runner
    lm = runner.model("tiny-llama")
    base_before = base_state(lm.model)
    rec = runner.run_unit(_unit(method))
    assert rec["status"] == "done", rec["error"]
    # stages as registered
    assert [c["objective"].name for c in stage_spy] == [s.objective for s in get_method(method).stages]
    # only LoRA parameters were trainable
    for c in stage_spy:
        assert c["trainable"] and all("lora_" in n for n in c["trainable"]), c["trainable"]
    # base weights are bit-identical and the base model is clean again
    base = runner.lm.model
    assert not any("lora_" in n for n, _ in base.named_parameters())
    assert not any(p.requires_grad for p in base.parameters())
    assert states_equal(base_state(base), base_before)
    # at least one LoRA parameter changed (B was all zero at the start)
    first, last = stage_spy[0]["before"], stage_spy[-1]["after"]
    assert not states_equal(first, last)
    assert all(float(v.abs().max()) == 0 for n, v in first.items() if "lora_B" in n)
    assert any(float(v.abs().max()) > 0 for n, v in last.items() if "lora_B" in n)
    saved = load_file(str(runner.store.root / rec["adapter"] / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert any("lora_B" in k and float(v.abs().max()) > 0 for k, v in saved.items())
    # the saved adapter is the final (restored) state
    final = {k.replace(".default", ""): v for k, v in last.items()}
    for k, v in saved.items():
        assert torch.equal(v, final[k]), k
    # what the frozen base computed for this unit (teacher targets, ICL activations for asim) came
    # from the clean base, never through the attached adapter (peft injects into the base modules)
    from ia2.targets import compute_targets

    ctx = runner.ctx
    t = ctx.targets()
    clean = compute_targets(base, lm.tokenizer, t.key, ctx.pool, ctx.split)
    for a, b in zip(t.train + t.dev, clean.train + clean.dev):
        assert a.tokens == b.tokens and torch.equal(a.acts, b.acts)
    for a, b in zip(ctx.base_icl_acts("sst2"), ctx.asim_acts(base, "sst2", with_demos=True)):
        assert torch.equal(a, b)


def _strip_timing(rec: dict) -> dict:
    rec = json.loads(json.dumps(rec))
    rec.pop("timing", None)
    rec.pop("machine", None)
    for s in (rec.get("train") or {}).get("stages", []):
        s.pop("seconds", None)
    return rec


@pytest.mark.parametrize("unit_kw", [
    dict(method="ia2-then-sft"),
    pytest.param(dict(method="ia2+sft", task="gsm8k", eval_tasks=("gsm8k",), n=3, g_max=6, max_epochs=1, limit_eval=2,
                      asim_examples=1),
                 marks=pytest.mark.skipif(not HAVE_GSM8K, reason="gsm8k not in the mirror")),
], ids=["sst2-ia2-then-sft", "gsm8k-ia2+sft"])
def test_same_unit_twice_is_bit_identical(mirror, tmp_path, unit_kw):
    from safetensors.torch import load_file

    unit = _unit(**unit_kw)
    recs, adapters = [], []
    for i in range(2):
        runner = _runner(tmp_path / f"store{i}")
        runner.model(unit.model)
        torch.manual_seed(1000 + i)  # whatever the global RNG state, the unit seeds itself
        rec = runner.run_unit(unit)
        assert rec["status"] == "done", rec["error"]
        assert rec["timing"]["targets_reused"] is False  # a fresh store computes its own targets
        recs.append(_strip_timing(rec))
        adapters.append(load_file(str(runner.store.root / rec["adapter"] / "adapter_model.safetensors")))
    assert recs[0]["results"] == recs[1]["results"]
    assert recs[0]["predictions"] == recs[1]["predictions"]
    assert recs[0]["train"] == recs[1]["train"]
    assert recs[0] == recs[1]
    assert states_equal(adapters[0], adapters[1])
