"""Pool / eval construction, per-run splits and the SPEC sanity anchor (SPEC section 2)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from ia2.data import (
    EVAL_SIZE,
    POOL_SIZE,
    icl_demos_for_eval,
    load_rows,
    load_task_data,
    make_split,
    shuffle_permutation,
    task_available,
)
from ia2.errors import IA2Error
from ia2.tasks import REGISTRY


def hf_shuffle(n: int, seed: int = 42) -> list[int]:
    """The row order ``datasets.Dataset.shuffle(seed)`` produces, computed by datasets itself."""
    return datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=seed)["i"]


# --------------------------------------------------------------------------- shuffling


@pytest.mark.parametrize("n", [1, 2, 7, 288, 1000, 2290])
def test_shuffle_permutation_matches_datasets(n):
    assert shuffle_permutation(n, 42).tolist() == hf_shuffle(n, 42)


def test_shuffle_permutation_other_seed():
    assert shuffle_permutation(500, 7).tolist() == hf_shuffle(500, 7)
    assert shuffle_permutation(500, 7).tolist() != shuffle_permutation(500, 42).tolist()


# --------------------------------------------------------------------------- pool / eval sets


def test_sst2_pool_and_eval_are_hub_shuffles(data_dir):
    td = load_task_data(REGISTRY["sst2"])
    assert td.notes == []
    n_train = len(load_rows("stanfordnlp/sst2", "default", "train"))
    n_val = len(load_rows("stanfordnlp/sst2", "default", "validation"))
    assert [e.source_index for e in td.pool] == hf_shuffle(n_train)[:POOL_SIZE]
    assert [e.source_index for e in td.eval] == hf_shuffle(n_val)[:EVAL_SIZE]


def test_sanity_anchor_sst2_n4_run0(data_dir):
    td = load_task_data(REGISTRY["sst2"])
    assert td.pool[0].query.startswith("Text:klein , charming in comedies like american pie and dead-on in election ,")
    split = make_split(len(td.pool), 4, 0)
    assert split.train[0] == 405
    assert td.pool[split.train[0]].query.startswith("Text:showcase the canadian 's inane ramblings")
    assert len(split.dev) == 2
    assert sorted(split.demos[0]) == sorted(split.train[1:])


def test_one_split_tail_strategytf(data_dir):
    td = load_task_data(REGISTRY["strategytf"])
    order = hf_shuffle(len(load_rows("wics/strategy-qa", "default", "test")))
    assert [e.source_index for e in td.eval] == order[-EVAL_SIZE:]
    assert [e.source_index for e in td.pool] == order[:-EVAL_SIZE][:POOL_SIZE]


def test_one_split_tail_finsen_filters_before_shuffling(data_dir):
    td = load_task_data(REGISTRY["finsen"])
    rows = load_rows("takala/financial_phrasebank", "sentences_50agree", "train")
    kept = [i for i, r in enumerate(rows) if r["label"] != 1]
    order = [kept[j] for j in hf_shuffle(len(kept))]
    assert [e.source_index for e in td.eval] == order[-EVAL_SIZE:]
    assert [e.source_index for e in td.pool] == order[:-EVAL_SIZE]


def test_mirror_fallback_notes(data_dir):
    assert load_task_data(REGISTRY["sst2"]).notes == []
    agnews = load_task_data(REGISTRY["agnews"])
    assert any("'train'" in n and "'test'" in n and "carved" in n for n in agnews.notes), agnews.notes
    bbc = load_task_data(REGISTRY["bbcnews"])
    assert any("'all'" in n for n in bbc.notes), bbc.notes
    gsm8ks = load_task_data(REGISTRY["gsm8ks"])
    assert any("'p2'" in n for n in gsm8ks.notes), gsm8ks.notes


def test_agnews_eval_is_first_500_of_shuffled_test_and_pool_is_disjoint(data_dir):
    td = load_task_data(REGISTRY["agnews"])
    test_rows = load_rows("fancyzhx/ag_news", "default", "test")
    order = hf_shuffle(len(test_rows))
    assert [e.source_index for e in td.eval] == order[:EVAL_SIZE]
    expected = datasets.Dataset.from_list(test_rows).shuffle(seed=42).select(range(EVAL_SIZE))
    assert [e.query for e in td.eval] == [f"Text:{t}\nLabel:" for t in expected["text"]]
    assert [e.label for e in td.eval] == expected["label"]
    # the carved pool never overlaps the evaluation set
    assert [e.source_index for e in td.pool] == order[EVAL_SIZE:EVAL_SIZE + POOL_SIZE]
    assert not {e.source_index for e in td.pool} & {e.source_index for e in td.eval}


def test_loading_is_deterministic(data_dir):
    a = load_task_data(REGISTRY["sciq_remap"])
    b = load_task_data(REGISTRY["sciq_remap"])
    assert a.pool == b.pool and a.eval == b.eval


def test_missing_mirror_split_is_a_clear_error(data_dir):
    task = REGISTRY["qasc_remap"]
    if (data_dir / "allenai" / "qasc").exists():
        pytest.skip("the mirror has QASC now")
    with pytest.raises(IA2Error) as e:
        load_task_data(task)
    assert "qasc_remap" in str(e.value) and "allenai/qasc" in str(e.value)
    assert task_available(task) is False
    assert task_available(REGISTRY["sst2"]) is True


# --------------------------------------------------------------------------- per-run splits


@pytest.mark.parametrize("pool_size, n, run", [(2000, 4, 0), (2000, 16, 3), (2000, 200, 1), (10, 1, 0), (9, 6, 2)])
def test_make_split_partitions_the_pool(pool_size, n, run):
    s = make_split(pool_size, n, run)
    n_dev = min(48, n // 2)
    assert s.run == run
    assert len(s.train) == n and len(s.dev) == n_dev
    assert len(s.demo_pool) == pool_size - n - n_dev
    everything = s.train + s.dev + s.demo_pool
    assert sorted(everything) == list(range(pool_size))  # disjoint and covering
    assert all(isinstance(x, int) for x in everything)
    assert len(s.demos) == n
    for i, d in enumerate(s.demos):
        assert sorted(d) == sorted(p for j, p in enumerate(s.train) if j != i)
    for j in range(n_dev):
        assert s.dev_demos(j) == s.demos[j]


def test_make_split_follows_the_reference_rng():
    """Positions from RandomState(run).shuffle, then one rng.shuffle per training example's demos."""
    n, run = 6, 5
    rng = np.random.RandomState(run)
    positions = list(range(100))
    rng.shuffle(positions)
    s = make_split(100, n, run)
    assert s.train == positions[:n] and s.dev == positions[n:n + 3] and s.demo_pool == positions[n + 3:]
    for i in range(n):
        others = [p for j, p in enumerate(positions[:n]) if j != i]
        rng.shuffle(others)
        assert s.demos[i] == others


def test_stratified_dev_split_balances_labels_and_keeps_training_examples():
    labels = [i % 2 for i in range(200)]
    for run in range(20):
        ref = make_split(200, 4, run)
        strat = make_split(200, 4, run, dev_split="stratified", labels=labels)
        assert strat.train == ref.train and strat.demos == ref.demos  # same examples and demonstrations
        assert sorted(labels[p] for p in strat.dev) == [0, 1]  # one of each, whatever the shuffle gave
        assert sorted(strat.train + strat.dev + strat.demo_pool) == list(range(200))
    # some run of the reference split has a single-label dev set (why the option exists)
    assert any(len({labels[p] for p in make_split(200, 4, run).dev}) == 1 for run in range(20))
    # more dev examples than labels: round-robin, in shuffled order within each label
    labels3 = [i % 3 for i in range(200)]
    s = make_split(200, 12, 3, dev_split="stratified", labels=labels3)
    dev_labels = [labels3[p] for p in s.dev]
    assert len(dev_labels) == 6 and len(set(dev_labels[:3])) == 3 and dev_labels[3:] == dev_labels[:3]


def test_stratified_dev_split_needs_labels():
    with pytest.raises(IA2Error, match="needs a label"):
        make_split(100, 4, 0, dev_split="stratified")
    with pytest.raises(IA2Error, match="needs a label"):
        make_split(100, 4, 0, dev_split="stratified", labels=[None] * 100)
    with pytest.raises(IA2Error, match="unknown dev split"):
        make_split(100, 4, 0, dev_split="balanced")


def test_make_split_deterministic_and_run_dependent():
    assert make_split(2000, 8, 2) == make_split(2000, 8, 2)
    assert make_split(2000, 8, 0).train != make_split(2000, 8, 1).train
    assert make_split(2000, 100, 0).dev == make_split(2000, 100, 0).dev
    assert len(make_split(2000, 100, 0).dev) == 48


def test_make_split_demo_cap():
    s = make_split(500, 10, 0, max_demos=3)
    for i, d in enumerate(s.demos):
        assert len(d) == 3 and len(set(d)) == 3
        assert set(d) <= set(s.train) - {s.train[i]}


def test_make_split_rejects_impossible_n():
    with pytest.raises(IA2Error, match="N=8"):
        make_split(10, 8, 0)  # 8 train + 4 dev > 10
    with pytest.raises(IA2Error):
        make_split(10, 0, 0)
    make_split(12, 8, 0)  # exactly fits


def test_icl_demos_for_eval():
    pool = list(range(100, 160))
    a = icl_demos_for_eval(pool, 20, 5, run=0)
    assert a == icl_demos_for_eval(pool, 20, 5, run=0)
    assert a != icl_demos_for_eval(pool, 20, 5, run=1)
    assert len(a) == 20
    for d in a:
        assert len(d) == 5 and len(set(d)) == 5 and set(d) <= set(pool)
    with pytest.raises(IA2Error):
        icl_demos_for_eval(pool[:3], 2, 4, run=0)


def test_single_label_dev_set_is_noted():
    from ia2.data import Example, RunSplit, single_label_dev_note

    pool = [Example(f"q{i}", " negative" if i % 2 else " positive", label=i % 2) for i in range(6)]
    one = RunSplit(0, [0, 2], [1, 3], [4, 5], [[2], [0]])  # dev: two negatives
    note = single_label_dev_note("sst2", one, pool)
    assert note.startswith("sst2: the dev set of run 0 (2 example(s)) has the single label ' negative'")
    assert single_label_dev_note("sst2", RunSplit(1, [0, 2], [1, 2], [4, 5], [[2], [0]]), pool) is None
    assert single_label_dev_note("sst2", RunSplit(2, [0, 1], [], [2], [[1], [0]]), pool) is None
    gen = [Example("q", "42", gold="42"), Example("q", "42", gold="42")]
    assert single_label_dev_note("gsm8k", RunSplit(0, [0], [1], [], [[]]), gen) is None  # no labels to collapse to
