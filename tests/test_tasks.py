"""Built-in task rendering on real mirror rows (SPEC section 3) and user task YAML files."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from ia2.data import load_rows, load_task_data
from ia2.errors import IA2Error
from ia2.prompts import demonstration
from ia2.tasks import REGISTRY, eval_tasks_for, get_task, load_task_yaml
from ia2.tasks.transforms import REMAP_KEYS, TRANSFORMS

SPEC_TASKS = {
    "sst2": "single", "finsen": "single", "poems": "single", "strategytf": "single",
    "agnews": "single", "bbcnews": "single", "sciq_remap": "single", "qasc_remap": "single",
    "gsm8k": "generative", "gsm8ks": "generative", "hmath_algebra": "generative", "sciq_gen": "generative",
}
SPEC_OOD = {  # SPEC section 3, source -> out-of-distribution evaluation tasks
    "sst2": ("finsen", "poems"), "finsen": ("sst2", "poems"), "agnews": ("bbcnews",),
    "sciq_remap": ("qasc_remap",), "gsm8k": ("gsm8ks",),
}


def _data(name: str, label_format: str = "digits"):
    return load_task_data(REGISTRY[name], label_format)


def _raw(hf_id: str, config: str, split: str, ex) -> dict:
    return load_rows(hf_id, config, split)[ex.source_index]


# --------------------------------------------------------------------------- registry


def test_registry_has_exactly_the_twelve_spec_tasks():
    assert len(REGISTRY) == 12
    assert {name: t.kind for name, t in REGISTRY.items()} == SPEC_TASKS


def test_ood_pairs_follow_the_spec():
    for name, task in REGISTRY.items():
        assert task.ood == SPEC_OOD.get(name, ()), name
    assert [t.name for t in eval_tasks_for(REGISTRY["sst2"])] == ["sst2", "finsen", "poems"]


def test_eval_only_tasks_and_generation_lengths():
    eval_only = {n for n, t in REGISTRY.items() if t.eval_only}
    assert eval_only == {"poems", "bbcnews", "qasc_remap", "gsm8ks"}
    assert REGISTRY["hmath_algebra"].max_new_tokens == 400
    for name in ("gsm8k", "gsm8ks", "sciq_gen"):
        assert REGISTRY[name].max_new_tokens == 200


def test_get_task_unknown_name_lists_valid_tasks():
    with pytest.raises(IA2Error) as e:
        get_task("sst3")
    assert "sst3" in str(e.value) and "sst2" in str(e.value)


def test_remap_keys_and_label_sets():
    assert REMAP_KEYS == ("apple", "Friday", "banana", "Saturday", "Thursday", "Sunday", "Wednesday", "Monday")
    assert REGISTRY["sciq_remap"].labels == REMAP_KEYS[:4]
    assert REGISTRY["qasc_remap"].labels == REMAP_KEYS
    for name in ("sst2", "finsen", "poems", "strategytf"):
        assert REGISTRY[name].labels == ("0", "1")
    for name in ("agnews", "bbcnews"):
        assert REGISTRY[name].labels == ("0", "1", "2", "3")


# --------------------------------------------------------------------------- single-token tasks


def test_sst2_render(data_dir):
    td = _data("sst2")
    ex = td.pool[0]
    row = _raw("stanfordnlp/sst2", "default", "train", ex)
    assert row["sentence"].startswith("klein , charming in comedies like american pie")
    assert ex.query == f"Text:{row['sentence']}\nLabel:"
    assert ex.answer == str(row["label"]) == "1"
    assert demonstration(ex) == f"Text:{row['sentence']}\nLabel:1"  # no space before the label
    assert (len(td.pool), len(td.eval)) == (2000, 500)
    # eval rows come from the validation split
    ev = td.eval[0]
    vrow = _raw("stanfordnlp/sst2", "default", "validation", ev)
    assert ev.query == f"Text:{vrow['sentence']}\nLabel:" and ev.answer == str(vrow["label"])


def test_sst2_word_labels(data_dir):
    td = _data("sst2", "words")
    ex = td.pool[0]
    assert ex.answer == " positive" and ex.label == 1
    assert demonstration(ex).endswith("\nLabel: positive")
    assert {e.answer for e in td.eval} == {" negative", " positive"}
    assert all(e.answer == (" negative", " positive")[e.label] for e in td.eval)


def test_word_label_sets():
    assert REGISTRY["sst2"].label_strings("words") == (" negative", " positive")
    assert REGISTRY["finsen"].label_strings("words") == (" negative", " positive")
    assert REGISTRY["poems"].label_strings("words") == (" negative", " positive")
    assert REGISTRY["strategytf"].label_strings("words") == (" false", " true")
    assert REGISTRY["agnews"].label_strings("words") == (" World", " Sports", " Business", " Tech")
    assert REGISTRY["bbcnews"].label_strings("words") == (" World", " Sports", " Business", " Tech")
    assert REGISTRY["sst2"].label_strings("digits") == ("0", "1")
    with pytest.raises(IA2Error, match="sciq_remap"):
        REGISTRY["sciq_remap"].label_strings("words")
    with pytest.raises(IA2Error, match="emoji"):
        REGISTRY["sst2"].label_strings("emoji")
    with pytest.raises(IA2Error):
        REGISTRY["gsm8k"].label_strings()


def test_finsen_drops_neutral_and_maps_labels(data_dir):
    td = _data("finsen")
    rows = load_rows("takala/financial_phrasebank", "sentences_50agree", "train")
    kept = [r for r in rows if r["label"] != 1]
    assert len(td.pool) + len(td.eval) == len(kept) and len(td.eval) == 500
    for ex in td.pool + td.eval:
        row = rows[ex.source_index]
        assert row["label"] in (0, 2)  # neutral (1) never appears
        assert ex.answer == {0: "0", 2: "1"}[row["label"]]
        assert ex.query == f"Text:{row['sentence']}\nLabel:"
    assert {ex.answer for ex in td.eval} == {"0", "1"}


def test_poems_is_eval_only_with_labels_0_1(data_dir):
    td = _data("poems")
    assert td.pool == [] and len(td.eval) == 288
    rows = load_rows("google-research-datasets/poem_sentiment", "default", "train")
    assert sum(r["label"] in (0, 1) for r in rows) == 288
    for ex in td.eval:
        row = rows[ex.source_index]
        assert row["label"] in (0, 1) and ex.answer == str(row["label"])
        assert ex.query == f"Text:{row['verse_text']}\nLabel:"
    assert len({ex.source_index for ex in td.eval}) == 288


def test_strategytf_render(data_dir):
    td = _data("strategytf")
    assert (len(td.pool), len(td.eval)) == (2290 - 500, 500)
    rows = load_rows("wics/strategy-qa", "default", "test")
    for ex in td.pool[:50] + td.eval[:50]:
        row = rows[ex.source_index]
        assert isinstance(row["answer"], bool)
        assert ex.query == f"Question:{row['question']}\nAnswer:"
        assert ex.answer == ("1" if row["answer"] else "0")
    words = _data("strategytf", "words")
    assert {e.answer for e in words.eval} == {" false", " true"}


def test_agnews_render(data_dir):
    td = _data("agnews")
    ex = td.eval[0]
    row = _raw("fancyzhx/ag_news", "default", "test", ex)
    assert ex.query == f"Text:{row['text']}\nLabel:"
    assert ex.answer == str(row["label"]) and row["label"] in range(4)
    assert {e.answer for e in td.eval} == {"0", "1", "2", "3"}
    assert _data("agnews", "words").eval[0].answer == (" World", " Sports", " Business", " Tech")[row["label"]]


def test_bbcnews_cut_and_label_folding(data_dir):
    td = _data("bbcnews")
    assert td.pool == [] and len(td.eval) == 500
    rows = load_rows("SetFit/bbc-news", "default", "all")
    fold = {"entertainment": 0, "politics": 0, "sport": 1, "business": 2, "tech": 3}
    n_cut = 0
    for ex in td.eval:
        row = rows[ex.source_index]
        assert ex.query.startswith("Text:") and ex.query.endswith("\nLabel:")
        text = ex.query[len("Text:"):-len("\nLabel:")]
        assert 0 < len(text) <= 256
        assert row["text"].startswith(text)
        if len(row["text"]) > 256:
            n_cut += 1
            # cut at a word boundary: the original continues with whitespace right after the cut
            assert row["text"][len(text)].isspace(), (text[-30:], row["text"][len(text):len(text) + 10])
            assert len(text) > 200  # not cut far earlier than needed
        else:
            assert text == row["text"]
        assert ex.label == fold[row["label_text"]]
        assert ex.answer == str(fold[row["label_text"]])
    assert n_cut > 0
    assert {e.answer for e in td.eval} == {"0", "1", "2", "3"}


def test_sciq_remap_options(data_dir):
    td = _data("sciq_remap")
    config, split = "default", "test"  # the mirror lacks validation; see test_data for the note
    rows = load_rows("allenai/sciq", config, split)
    ex = td.eval[0]
    row = rows[ex.source_index]
    m = re.fullmatch(r"Question:(.*)\nChoices:\n\[apple\](.*)\n\[Friday\](.*)\n\[banana\](.*)\n\[Saturday\](.*)\n\nAnswer:",
                     ex.query, re.S)
    assert m, ex.query
    assert m.group(1) == row["question"]
    options = list(m.groups()[1:])
    assert sorted(options) == sorted([row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]])
    assert options.count(row["correct_answer"]) == 1
    assert options[ex.label] == row["correct_answer"]
    assert ex.answer == ("apple", "Friday", "banana", "Saturday")[ex.label]
    # the label points at the correct option for every example, and the order is not fixed
    for e in td.eval + td.pool:
        r = rows[e.source_index]
        block = e.query.split("\nChoices:\n", 1)[1].rsplit("\n\nAnswer:", 1)[0]
        opts = [line.split("]", 1)[1] for line in block.split("\n")]
        assert len(opts) == 4 and opts[e.label] == r["correct_answer"]
    counts = Counter(e.label for e in td.eval)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 80


def test_sciq_remap_order_is_seeded_per_row():
    fn = TRANSFORMS["sciq_choices"]
    row = {"question": "q", "correct_answer": "C", "distractor1": "d1", "distractor2": "d2", "distractor3": "d3"}
    a, b = fn(row, 7, {}), fn(row, 7, {})
    assert a["choices"] == b["choices"] and a["label"] == b["label"]
    labels = {fn(row, i, {})["label"] for i in range(40)}
    assert labels == {0, 1, 2, 3}


def test_qasc_choices_transform_on_hub_schema_row():
    row = {"id": "x", "question": "What do plants need?", "answerKey": "C",
           "choices": {"text": ["rocks", "salt", "sunlight", "sand", "oil", "glass", "iron", "ice"],
                       "label": list("ABCDEFGH")}}
    out = TRANSFORMS["qasc_choices"](row, 0, {})
    assert out["label"] == 2
    assert out["choices"] == ("[apple]rocks\n[Friday]salt\n[banana]sunlight\n[Saturday]sand\n"
                              "[Thursday]oil\n[Sunday]glass\n[Wednesday]iron\n[Monday]ice")
    assert REGISTRY["qasc_remap"].prompt.format(**out).endswith("[Monday]ice\n\nAnswer:")
    assert TRANSFORMS["qasc_choices"]({**row, "answerKey": "Z"}, 0, {}) is None


# --------------------------------------------------------------------------- generative tasks


def _last_boxed(text: str) -> str:
    start = text.rindex("\\boxed{") + len("\\boxed{")
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]


def test_gsm8k_render(data_dir):
    td = _data("gsm8k")
    assert (len(td.pool), len(td.eval)) == (2000, 500)
    for ex, split in ((td.pool[0], "train"), (td.eval[0], "test")):
        row = _raw("openai/gsm8k", "main", split, ex)
        assert ex.query == f"Question:{row['question']}\nAnswer:"
        assert ex.answer == row["answer"]  # the full solution
        assert ex.gold == row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    assert all(e.gold is not None and re.fullmatch(r"-?\d+(\.\d+)?", e.gold) for e in td.eval)


def test_gsm8ks_render(data_dir):
    td = _data("gsm8ks")
    assert td.pool == [] and len(td.eval) == 500
    ex = td.eval[0]
    row = _raw("apple/GSM-Symbolic", "p2", "test", ex)
    assert ex.query == f"Question:{row['question']}\nAnswer:"
    assert ex.answer == row["answer"]
    assert ex.gold == row["answer"].rsplit("####", 1)[1].strip().replace(",", "")


def test_hmath_algebra_render(data_dir):
    td = _data("hmath_algebra")
    assert (len(td.pool), len(td.eval)) == (1744, 500)
    for ex, split in ((td.pool[0], "train"), (td.eval[0], "test"), (td.eval[1], "test")):
        row = _raw("EleutherAI/hendrycks_math", "algebra", split, ex)
        assert ex.query == f"Question:{row['problem']}\nAnswer:"
        assert ex.answer == row["solution"]
        expected = "".join(_last_boxed(row["solution"]).split()).replace("\\dfrac", "\\frac")
        assert ex.gold == expected
    assert sum(e.gold is None for e in td.eval) == 0


def test_sciq_gen_render(data_dir):
    td = _data("sciq_gen")
    ex = td.eval[0]
    row = _raw("allenai/sciq", "default", "test", ex)
    assert ex.query == f"Question:{row['question']}\nAnswer:"
    assert ex.answer == f"{row['support']}\n#### {row['correct_answer']}"
    assert ex.gold == row["correct_answer"].strip().lower()


# --------------------------------------------------------------------------- user task YAML


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a different directory, so relative data paths must resolve against the YAML."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def test_user_classification_task_jsonl_and_csv(tmp_path, elsewhere):
    _write(tmp_path / "task" / "data" / "train.jsonl",
           '{"review": "great fun", "stars": 1}\n{"review": "dull", "stars": 0}\n{"review": "ok", "stars": "1"}\n')
    _write(tmp_path / "task" / "data" / "eval.csv", "review,stars\nawful,0\n\"loved it, truly\",1\n")
    y = _write(tmp_path / "task" / "mine.yaml",
               "name: mine\n"
               "data: {train: data/train.jsonl, eval: data/eval.csv}\n"
               'prompt: "Review:{review}\\nStars:"\n'
               'answer: "{stars}"\n'
               'labels: ["0", "1"]\n'
               'word_labels: [" bad", " good"]\n')
    task = get_task(str(y))
    assert task.kind == "single" and task.label_field == "stars" and task.labels == ("0", "1")
    td = load_task_data(task)
    by_query = {e.query: e for e in td.pool}
    assert set(by_query) == {"Review:great fun\nStars:", "Review:dull\nStars:", "Review:ok\nStars:"}
    assert by_query["Review:great fun\nStars:"].answer == "1"
    assert by_query["Review:dull\nStars:"].answer == "0" and by_query["Review:dull\nStars:"].label == 0
    assert by_query["Review:ok\nStars:"].answer == "1"
    ev = {e.query: e.answer for e in td.eval}
    assert ev == {"Review:awful\nStars:": "0", "Review:loved it, truly\nStars:": "1"}
    words = load_task_data(task, "words")
    assert {e.query: e.answer for e in words.eval}["Review:awful\nStars:"] == " bad"


def test_user_generative_task_eval_only(tmp_path, elsewhere):
    _write(tmp_path / "qa.jsonl",
           '{"q": "2+2?", "work": "2+2=4", "result": "4"}\n{"q": "3*3?", "work": "3*3=9", "result": "9"}\n')
    y = _write(tmp_path / "gen.yml",
               "name: arith\n"
               "data: {eval: qa.jsonl}\n"
               'prompt: "Q:{q}\\nA:"\n'
               'answer: "{work}\\n#### {result}"\n'
               "parser: number\n"
               "max_new_tokens: 32\n")
    task = get_task(str(y))
    assert task.kind == "generative" and task.eval_only and task.max_new_tokens == 32
    td = load_task_data(task)
    assert td.pool == []
    got = {e.query: (e.answer, e.gold) for e in td.eval}
    assert got == {"Q:2+2?\nA:": ("2+2=4\n#### 4", "4"), "Q:3*3?\nA:": ("3*3=9\n#### 9", "9")}


def test_user_generative_default_parser_is_exact(tmp_path):
    _write(tmp_path / "e.jsonl", '{"q": "capital of France?", "a": " Paris "}\n')
    y = _write(tmp_path / "t.yaml", 'name: cap\ndata: {eval: e.jsonl}\nprompt: "Q:{q}\\nA:"\nanswer: "{a}"\n')
    task = load_task_yaml(y)
    assert task.parser == "exact"
    assert load_task_data(task).eval[0].gold == "Paris"


BASE_YAML = {
    "name": "name: t\n",
    "data": "data: {eval: e.jsonl}\n",
    "prompt": 'prompt: "X:{x}\\nY:"\n',
    "answer": 'answer: "{y}"\n',
    "labels": 'labels: ["0", "1"]\n',
}


@pytest.mark.parametrize("field", ["name", "data", "prompt", "answer"])
def test_user_task_missing_field_is_named(tmp_path, field):
    _write(tmp_path / "e.jsonl", '{"x": "a", "y": "1"}\n')
    y = _write(tmp_path / "t.yaml", "".join(v for k, v in BASE_YAML.items() if k != field))
    with pytest.raises(IA2Error) as e:
        load_task_yaml(y)
    assert "missing" in str(e.value) and field in str(e.value) and "t.yaml" in str(e.value)


def test_user_task_unknown_field_is_named(tmp_path):
    _write(tmp_path / "e.jsonl", '{"x": "a", "y": "1"}\n')
    y = _write(tmp_path / "t.yaml", "".join(BASE_YAML.values()) + "lables: [a]\n")
    with pytest.raises(IA2Error) as e:
        load_task_yaml(y)
    assert "lables" in str(e.value)


@pytest.mark.parametrize("extra, needle", [
    ("parser: nonsense\n", "nonsense"),
    ("word_labels: [\" no\"]\n", "word_labels"),
])
def test_user_task_bad_values(tmp_path, extra, needle):
    _write(tmp_path / "e.jsonl", '{"x": "a", "y": "1"}\n')
    base = dict(BASE_YAML)
    if needle == "nonsense":
        base.pop("labels")  # generative
    y = _write(tmp_path / "t.yaml", "".join(base.values()) + extra)
    with pytest.raises(IA2Error, match=needle):
        load_task_yaml(y)


def test_user_task_data_errors_name_the_column_or_label(tmp_path):
    y = _write(tmp_path / "t.yaml", "".join(BASE_YAML.values()))
    _write(tmp_path / "e.jsonl", '{"x": "a", "y": "1"}\n{"z": "b", "y": "0"}\n')
    with pytest.raises(IA2Error) as e:
        load_task_data(load_task_yaml(y))
    assert "'x'" in str(e.value) and "row 2" in str(e.value)
    _write(tmp_path / "e.jsonl", '{"x": "a", "y": "1"}\n{"x": "b", "y": "maybe"}\n')
    with pytest.raises(IA2Error, match="maybe"):
        load_task_data(load_task_yaml(y))
    _write(tmp_path / "e.jsonl", '{"x": "a"}\n')
    with pytest.raises(IA2Error, match="'y'"):
        load_task_data(load_task_yaml(y))


def test_user_generative_answer_column_missing_is_named(tmp_path):
    _write(tmp_path / "e.jsonl", '{"q": "hi", "a": "there"}\n')
    y = _write(tmp_path / "t.yaml",
               'name: g\ndata: {eval: e.jsonl}\nprompt: "Q:{q}\\nA:"\nanswer: "{a}\\n#### {final}"\nparser: after_hashes\n')
    with pytest.raises(IA2Error, match="'final'"):
        load_task_data(load_task_yaml(y))


def test_user_task_missing_files(tmp_path):
    with pytest.raises(IA2Error, match="not found"):
        get_task(str(tmp_path / "nope.yaml"))
    y = _write(tmp_path / "t.yaml", "".join(BASE_YAML.values()))
    with pytest.raises(IA2Error, match="e.jsonl"):
        load_task_data(load_task_yaml(y))
    y2 = _write(tmp_path / "t2.yaml", "".join(BASE_YAML.values()).replace("{eval: e.jsonl}", "{train: e.jsonl}"))
    with pytest.raises(IA2Error, match="eval"):
        load_task_yaml(y2)
