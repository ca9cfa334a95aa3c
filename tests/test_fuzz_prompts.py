"""Property tests of prompt rendering: arbitrary text never crashes the renderer, the rendered query is
always the suffix of its ICL prompt (as text, and as tokens for a byte tokenizer), and a user task
renders whatever its columns hold (JSONL and CSV), with ``{`` and ``}`` in the data taken literally."""

from __future__ import annotations

import csv
import json
import string
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ia2.data import Example, _rows_to_examples, load_task_data
from ia2.prompts import DEMO_SEP, demonstration, encode, icl_prompt
from ia2.tasks import load_task_yaml
from ia2.tasks.spec import Source, Task

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_text = st.text()  # any code point, surrogates included
utf8_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # encodable as UTF-8
label = st.sampled_from(["0", "1"])
examples = st.builds(Example, query=any_text, answer=any_text)


@FUZZ
@given(demos=st.lists(examples, max_size=6), query=any_text)
def test_icl_prompt_is_demonstrations_then_query(demos, query):
    prompt = icl_prompt(demos, query)
    assert prompt.endswith(query)
    if not demos:
        assert prompt == query
        return
    head = prompt[: len(prompt) - len(query)]
    assert head.endswith(DEMO_SEP)
    assert head == DEMO_SEP.join(demonstration(d) for d in demos) + DEMO_SEP
    assert prompt.startswith(demos[0].query + demos[0].answer)


def _user_task(prompt: str, labels=("0", "1")) -> Task:
    return Task(name="fuzz", kind="single", source=Source(files={"eval": "x.jsonl"}, scheme="eval_only"),
                prompt=prompt, label_field="label", labels=tuple(labels),
                label_map={lab: i for i, lab in enumerate(labels)}, origin="fuzz.yaml")


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"text": any_text, "title": any_text, "label": label}),
                     min_size=1, max_size=6))
def test_task_rendering_of_arbitrary_column_text(rows):
    task = _user_task("Title: {title}\nText:{text}\nLabel:")
    exs = _rows_to_examples(task, rows, "digits", "fuzz.jsonl")
    assert len(exs) == len(rows)
    for ex, row in zip(exs, rows):
        assert ex.query == f"Title: {row['title']}\nText:{row['text']}\nLabel:"  # braces in data stay literal
        assert ex.answer == row["label"] and ex.label == int(row["label"])
    query = exs[-1].query
    assert icl_prompt(exs[:-1], query).endswith(query)


@FUZZ
@given(texts=st.lists(utf8_text, min_size=1, max_size=5), labels=st.lists(label, min_size=5, max_size=5))
def test_query_tokens_are_a_suffix_of_the_icl_prompt_tokens(texts, labels):
    tok = _tok()  # the tiny models' tokenizer: one token per byte, no merges
    task = _user_task("Text:{text}\nLabel:")
    exs = _rows_to_examples(task, [{"text": t, "label": lab} for t, lab in zip(texts, labels)], "digits", "f")
    query_ids = encode(tok, exs[-1].query)
    prompt_ids = encode(tok, icl_prompt(exs[:-1], exs[-1].query))
    assert prompt_ids[len(prompt_ids) - len(query_ids):] == query_ids
    assert tok.decode(prompt_ids[len(prompt_ids) - len(query_ids):]) == exs[-1].query


_TOK = []


def _tok():
    if not _TOK:
        from ia2.models import byte_tokenizer
        _TOK.append(byte_tokenizer())
    return _TOK[0]


# Literal template text as a user would type it in YAML (braces escaped by doubling them).
template_text = st.text(alphabet=string.ascii_letters + string.digits + " :;,.!?-_()[]{}<>#\n\t'\"", max_size=20)


@FILES
@given(before=template_text, after=template_text,
       rows=st.lists(st.fixed_dictionaries({"text": utf8_text, "label": label}), min_size=1, max_size=5),
       fmt=st.sampled_from(["jsonl", "csv"]))
def test_user_task_file_with_arbitrary_column_text(before, after, rows, fmt):
    esc = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
    prompt = esc(before) + "{text}" + esc(after)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if fmt == "jsonl":
            (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        else:
            with open(d / "eval.csv", "w", encoding="utf-8", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["text", "label"])
                w.writeheader()
                w.writerows(rows)
        spec = {"name": "fuzz", "data": {"eval": f"eval.{fmt}"}, "prompt": prompt, "answer": "{label}",
                "labels": ["0", "1"]}
        (d / "task.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
        task = load_task_yaml(d / "task.yaml")
        assert task.prompt == prompt
        td = load_task_data(task)
    got = sorted((e.query, e.answer) for e in td.eval)
    want = sorted((before + r["text"] + after, r["label"]) for r in rows)
    assert got == want
    for e in td.eval:
        assert icl_prompt(td.eval, e.query).endswith(e.query)
