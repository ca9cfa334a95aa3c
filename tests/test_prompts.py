"""Prompt assembly, tokenisation bookkeeping and the single-token label check."""

from __future__ import annotations

import pytest
import torch

from ia2.data import Example
from ia2.errors import IA2Error
from ia2.prompts import (
    check_length,
    demonstration,
    encode,
    encode_answer,
    icl_prompt,
    label_token_ids,
    left_pad,
    length_batches,
)


def _ex(text: str, label: str) -> Example:
    return Example(query=f"Text:{text}\nLabel:", answer=label)


def test_icl_prompt_format():
    demos = [_ex("good", "1"), _ex("bad", "0")]
    assert demonstration(demos[0]) == "Text:good\nLabel:1"
    assert icl_prompt(demos, "Text:meh\nLabel:") == "Text:good\nLabel:1\n\nText:bad\nLabel:0\n\nText:meh\nLabel:"
    assert icl_prompt([], "Text:meh\nLabel:") == "Text:meh\nLabel:"


def test_encode_bos_only_on_prompts(tiny_lm, tiny_gemma):
    for lm in (tiny_lm, tiny_gemma):
        tok = lm.tokenizer
        ids = encode(tok, "Label:")
        ans = encode_answer(tok, "1")
        assert len(ans) == 1 and tok.decode(ans) == "1"
        assert tok.bos_token_id not in ans
        if lm is tiny_gemma:
            assert ids[0] == tok.bos_token_id and len(ids) == len("Label:") + 1
        else:
            assert tok.bos_token_id not in ids and len(ids) == len("Label:")
        # appending answer ids to prompt ids gives the concatenated text (nothing lost or added)
        assert tok.decode(ids + ans, skip_special_tokens=True) == "Label:1"


def test_label_token_ids_digits_are_single_tokens(tiny_lm):
    tok = tiny_lm.tokenizer
    ids = label_token_ids(tok, ("0", "1", "2", "3"), "agnews")
    assert ids == [encode_answer(tok, d)[0] for d in "0123"]
    assert len(set(ids)) == 4


def test_label_token_ids_refuses_multi_token_label(tiny_lm):
    with pytest.raises(IA2Error) as e:
        label_token_ids(tiny_lm.tokenizer, (" negative", " positive"), "sst2")
    msg = str(e.value)
    assert "sst2" in msg and "' negative'" in msg


def test_label_token_ids_refuses_duplicate_tokens(tiny_lm):
    with pytest.raises(IA2Error, match="sst2"):
        label_token_ids(tiny_lm.tokenizer, ("1", "1"), "sst2")


def test_left_pad_layout():
    b = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert b.input_ids.dtype == torch.long
    assert set(b.model_inputs()) == {"input_ids", "attention_mask", "position_ids"}


@pytest.mark.parametrize("max_batch, max_tokens", [(3, None), (2, None), (8, 20), (1, None)])
def test_length_batches_cover_each_index_once(max_batch, max_tokens):
    lengths = [5, 1, 9, 3, 3, 7, 2, 8]
    batches = length_batches(lengths, max_batch, max_tokens)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_batch
        if max_tokens and len(b) > 1:
            assert max(lengths[i] for i in b) * len(b) <= max_tokens
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first


def test_check_length_refuses_over_context(tiny_lm):
    check_length(tiny_lm.model, 2048, "prompt")
    with pytest.raises(IA2Error, match="2049"):
        check_length(tiny_lm.model, 2049, "ICL prompt")
