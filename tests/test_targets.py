"""Teacher targets: shapes for single-token and generative tasks, the disk cache round trip, and
mismatch detection (SPEC section 2, "ICL targets"). Tiny random models, synthetic pools, no data mirror."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TEST_DEVICE
import torch

from ia2.data import Example, make_split
from ia2.models import load_model
from ia2.prompts import encode, encode_answer, icl_prompt
from ia2.targets import TargetCache, TargetKey, compute_targets, get_targets, teacher_prompts

WORDS = ["good", "bad", "a fine film", "dull and slow", "great fun", "a mess", "touching", "tedious", "bright",
         "flat"]


pytestmark = pytest.mark.usefixtures("one_thread")


def fresh(kind: str = "tiny-llama"):
    return load_model(kind, device=TEST_DEVICE, dtype=torch.float32)


def pool(prefix: str = "Text:") -> list[Example]:
    return [Example(f"{prefix}{w}\nLabel:", str(i % 2), label=i % 2) for i, w in enumerate(WORDS)]


def key(**kw) -> TargetKey:
    base = dict(model="tiny-llama:seed0:float32", task="sst2", label_format="digits", n=4, run=0, g_max=1,
                logprobs="full")
    base.update(kw)
    return TargetKey(**base)


def assert_same_targets(a, b):
    assert a.key == b.key
    assert len(a.train) == len(b.train) and len(a.dev) == len(b.dev)
    for x, y in zip(a.train + a.dev, b.train + b.dev):
        assert x.query_ids == y.query_ids
        assert x.tokens == y.tokens
        assert torch.equal(x.acts, y.acts)
        assert torch.equal(x.logprobs, y.logprobs)
        assert (x.top_ids is None) == (y.top_ids is None)
        if x.top_ids is not None:
            assert torch.equal(x.top_ids, y.top_ids)


def o_proj_last(model, ids: list[int]) -> torch.Tensor:
    """[L, d]: every layer's o_proj output at the last position of a plain forward (independent hooks)."""
    mods = [m for n, m in model.named_modules() if n.endswith("self_attn.o_proj")]
    assert len(mods) == model.config.num_hidden_layers
    got = {}
    hs = [m.register_forward_hook(lambda mod, a, out, i=i: got.__setitem__(i, out)) for i, m in enumerate(mods)]
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        for h in hs:
            h.remove()
    return torch.stack([got[i][0, -1] for i in range(len(mods))]), logits


# --- shapes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tiny-llama", "tiny-gemma"])
def test_single_token_targets_have_one_position(kind):
    lm = fresh(kind)
    p, split = pool(), make_split(len(WORDS), 4, 0)
    t = compute_targets(lm.model, lm.tokenizer, key(g_max=1), p, split, batch_size=4)
    assert len(t.train) == 4 and len(t.dev) == 2 and not t.reused
    L, d, V = lm.num_layers, lm.model.config.hidden_size, len(lm.tokenizer)
    icl, queries = teacher_prompts(lm.tokenizer, p, split)
    for i, (e, prompt) in enumerate(zip(t.train + t.dev, icl)):
        assert len(e.tokens) == 1
        assert e.acts.shape == (L, 1, d) and e.acts.dtype == torch.float32
        assert e.logprobs.shape == (1, V) and e.top_ids is None
        # the student's query has no demonstrations; the teacher prompt has the other N-1 examples
        pos = (split.train + split.dev)[i]
        demos = split.demos[i] if i < 4 else split.dev_demos(i - 4)
        assert len(demos) == 3 and pos not in demos
        assert e.query_ids == encode(lm.tokenizer, p[pos].query)
        assert prompt == encode(lm.tokenizer, icl_prompt([p[j] for j in demos], p[pos].query))
        # the recorded position is the last prompt token: o_proj outputs there, and its argmax is the token
        want, logits = o_proj_last(lm.model, prompt)
        torch.testing.assert_close(e.acts[:, 0], want, atol=1e-5, rtol=1e-4)
        assert e.tokens == [int(logits.argmax())]
        torch.testing.assert_close(e.logprobs[0], torch.log_softmax(logits, -1), atol=1e-5, rtol=1e-4)


class _Script:
    """Steer the model's greedy choice: after input token a, strongly prefer token b (a -> b).

    A forward pre-hook reads each row's last input token; a hook on lm_head adds a large bonus to the
    scripted next token. Works with and without the KV cache and in left-padded batches.
    """

    def __init__(self, model, rules: dict[int, int]):
        self.rules, self.last = rules, None
        self.handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                        model.get_output_embeddings().register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.last = ids[:, -1].tolist()

    def _post(self, module, args, out):
        out = out.clone()
        for b, t in enumerate(self.last):
            if t in self.rules:
                out[b, -1, self.rules[t]] += 1e4
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def _byte(tok, ch: str) -> int:
    ids = encode_answer(tok, ch)
    assert len(ids) == 1
    return ids[0]


@pytest.mark.parametrize("ending", ["blank-line", "eos", "g_max"])
def test_generative_targets_stop_at_blank_line_or_eos(ending):
    lm = fresh()
    tok = lm.tokenizer
    a, b, c, nl, colon = (_byte(tok, x) for x in ("a", "b", "c", "\n", ":"))
    rules = {colon: a, a: b, b: c, c: nl, nl: nl}  # after "Label:" -> "abc\n\n..."
    expected = [a, b, c, nl, nl]
    if ending == "eos":
        rules[c] = tok.eos_token_id
        expected = [a, b, c, tok.eos_token_id]
    if ending == "g_max":
        rules[c] = c  # "abccccc...": never stops by itself
        expected = [a, b] + [c] * 8
    script = _Script(lm.model, rules)
    try:
        p, split = pool(), make_split(len(WORDS), 4, 0)
        t = compute_targets(lm.model, tok, key(g_max=10, logprobs="top5"), p, split, batch_size=3)
    finally:
        script.remove()
    L, d = lm.num_layers, lm.model.config.hidden_size
    for e in t.train + t.dev:
        assert e.tokens == expected
        G = len(e.tokens)
        assert e.acts.shape == (L, G, d)
        assert e.logprobs.shape == (G, 5) and e.top_ids.shape == (G, 5)
        assert e.top_ids[:, 0].tolist() == e.tokens  # the greedy token is the teacher's top-1
    if ending == "blank-line":
        assert tok.decode(expected).endswith("\n\n")


# --- the cache ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def computed():
    """Targets for one key, computed once (single-token and top-k generative)."""
    lm = fresh()
    p, split = pool(), make_split(len(WORDS), 4, 0)
    single = compute_targets(lm.model, lm.tokenizer, key(), p, split)
    gen = compute_targets(lm.model, lm.tokenizer, key(g_max=4, logprobs="top5"), p, split)
    return lm, p, split, single, gen


def _queries(lm, p, split):
    return teacher_prompts(lm.tokenizer, p, split)[1]


@pytest.mark.parametrize("which", ["single", "generative"])
def test_cache_round_trip_is_exact(computed, tmp_path, which):
    lm, p, split, single, gen = computed
    t = single if which == "single" else gen
    cache = TargetCache(tmp_path)
    cache.save(t)
    loaded, why = cache.load(t.key, _queries(lm, p, split))
    assert why == "" and loaded is not None
    assert loaded.reused and not t.reused
    assert_same_targets(loaded, t)


def test_get_targets_reuses_and_flags_reused(computed, tmp_path, monkeypatch):
    lm, p, split, single, _ = computed
    cache, logs = TargetCache(tmp_path), []
    first = get_targets(lm.model, lm.tokenizer, single.key, p, split, cache, log=logs.append)
    assert not first.reused and logs == []  # absent: computed silently
    assert all(path.exists() for path in cache.paths(single.key))
    assert_same_targets(first, single)  # deterministic teacher pass

    import ia2.targets as targets_mod

    def boom(*a, **kw):
        raise AssertionError("targets recomputed although the cache matches")

    monkeypatch.setattr(targets_mod, "compute_targets", boom)
    again = get_targets(lm.model, lm.tokenizer, single.key, p, split, cache, log=logs.append)
    assert again.reused
    assert_same_targets(again, single)
    assert len(logs) == 1 and "reused" in logs[0]


def _recomputes(lm, p, split, cache, k, fragment: str):
    logs = []
    t = get_targets(lm.model, lm.tokenizer, k, p, split, cache, log=logs.append)
    assert not t.reused
    assert len(logs) == 1 and logs[0].startswith("teacher targets recomputed") and fragment in logs[0], logs
    # the fresh targets replaced the bad cache entry
    found, why = cache.load(k, _queries(lm, p, split))
    assert found is not None and why == ""
    return t


def test_a_different_key_is_never_reused(computed, tmp_path):
    lm, p, split, single, _ = computed
    cache = TargetCache(tmp_path)
    cache.save(single)
    q = _queries(lm, p, split)
    for other in (key(run=1), key(n=5), key(g_max=2), key(model="tiny-gemma:seed0:float32"), key(logprobs="top5"),
                  key(prompt_format="raw-v0"), key(version="0.0.0"), key(dev_split="stratified"),
                  key(capture="residual")):
        assert other.digest() != single.key.digest()
        found, why = cache.load(other, q)
        assert found is None and why == "absent"
    # a file found under the requested name but written for another key is detected by its content
    other = key(run=1)
    for src, dst in zip(cache.paths(single.key), cache.paths(other)):
        shutil.copy(src, dst)
    found, why = cache.load(other, q)
    assert found is None and "key differs" in why
    _recomputes(lm, p, split, cache, other, "key differs")


def test_a_cache_written_before_a_key_field_existed_still_matches(computed, tmp_path):
    """Key fields added later (dev_split, capture) are left out of the name and of the check at their default, so
    caches written before them are still found and reused."""
    lm, p, split, single, _ = computed
    cache = TargetCache(tmp_path)
    cache.save(single)
    js = cache.paths(single.key)[1]
    meta = json.loads(js.read_text())
    for k in ("dev_split", "capture"):
        del meta["key"][k]
    js.write_text(json.dumps(meta))
    found, why = cache.load(single.key, _queries(lm, p, split))
    assert why == "" and found is not None and found.reused
    meta["key"]["capture"] = "residual"  # not the default: another key, never reused
    js.write_text(json.dumps(meta))
    assert cache.load(single.key, _queries(lm, p, split))[0] is None


def test_a_corrupt_byte_is_detected(computed, tmp_path):
    lm, p, split, single, _ = computed
    cache = TargetCache(tmp_path)
    cache.save(single)
    st, _ = cache.paths(single.key)
    data = bytearray(st.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the tensor data
    st.write_bytes(bytes(data))
    found, why = cache.load(single.key, _queries(lm, p, split))
    assert found is None and "corrupt" in why
    t = _recomputes(lm, p, split, cache, single.key, "corrupt")
    assert_same_targets(t, single)


def test_an_unreadable_cache_is_recomputed(computed, tmp_path):
    lm, p, split, single, _ = computed
    cache = TargetCache(tmp_path)
    cache.save(single)
    _, js = cache.paths(single.key)
    js.write_text("{not json")
    found, why = cache.load(single.key, _queries(lm, p, split))
    assert found is None and "unreadable" in why
    _recomputes(lm, p, split, cache, single.key, "unreadable")


def test_tensors_not_matching_their_tokens_are_detected(computed, tmp_path):
    lm, p, split, _, gen = computed
    cache = TargetCache(tmp_path)
    cache.save(gen)
    _, js = cache.paths(gen.key)
    meta = json.loads(js.read_text())
    meta["examples"][0]["tokens"] = meta["examples"][0]["tokens"][:-1]  # G no longer matches acts [L, G, d]
    js.write_text(json.dumps(meta))
    found, why = cache.load(gen.key, _queries(lm, p, split))
    assert found is None and "do not match" in why
    _recomputes(lm, p, split, cache, gen.key, "do not match")


def test_changed_query_ids_are_detected(computed, tmp_path):
    lm, p, split, single, _ = computed
    cache = TargetCache(tmp_path)
    cache.save(single)
    q = _queries(lm, p, split)
    changed = [list(x) for x in q]
    changed[-1][-2] += 1
    found, why = cache.load(single.key, changed)
    assert found is None and "queries differ" in why
    found, why = cache.load(single.key, q[:-1])  # one example fewer
    assert found is None and "queries differ" in why
    # through get_targets: same key, but the data changed (another prompt prefix)
    p2 = pool(prefix="Review:")
    t = _recomputes(lm, p2, split, cache, single.key, "queries differ")
    assert t.train[0].query_ids == encode(lm.tokenizer, p2[split.train[0]].query)


def test_changed_demonstration_answers_are_detected(computed, tmp_path):
    """Same queries, other answers in the demonstrations (e.g. a user task's label words edited): the ICL prompts
    differ, so the cached targets are stale; a cache written before the prompts were recorded is still read."""
    lm, p, split, single, _ = computed
    cache = TargetCache(tmp_path)
    cache.save(single)
    relabelled = [Example(e.query, "yes" if e.answer == "1" else "no", label=e.label) for e in p]
    assert _queries(lm, relabelled, split) == _queries(lm, p, split)
    t = _recomputes(lm, relabelled, split, cache, single.key, "ICL prompts differ")
    assert t.prompts_sha256 != single.prompts_sha256
    js = cache.paths(single.key)[1]
    meta = json.loads(js.read_text())
    meta["prompts_sha256"] = None  # as written before this check existed
    js.write_text(json.dumps(meta))
    found, why = cache.load(single.key, _queries(lm, p, split), teacher_prompts(lm.tokenizer, p, split)[0])
    assert why == "" and found is not None
