"""Tests for ia2.metrics: hand-computed values, torchmetrics agreement, properties."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)

from ia2.metrics import (
    activation_norm_ratio,
    activation_similarity,
    adapter_overlap,
    asim_summary,
    confidence_records,
    ece_equal_mass,
    ece_standard,
    generative_accuracy,
    metrics_from_records,
    next_token_kl,
    paired_ttest,
    holm,
    reliability_bins,
    single_token_metrics,
    subspace_overlap,
)

# ---------------------------------------------------------------------------
# ece_standard
# ---------------------------------------------------------------------------


def test_ece_standard_hand_two_bins():
    # bin [0, .5): conf .25,.25 acc 0 -> .25 * 2/5; bin [.5, 1): conf mean .68333, acc 1 -> .31667 * 3/5
    conf = [0.25, 0.25, 0.55, 0.75, 0.75]
    corr = [0, 0, 1, 1, 1]
    assert ece_standard(conf, corr, n_bins=2) == pytest.approx(0.29, abs=1e-7)


def test_ece_standard_hand_fifteen_bins():
    # .3 and .31 share bin 4 ([.2667, .3333)): acc .5, conf .305; .9 alone in bin 13, wrong.
    expected = abs(0.5 - 0.305) * 2 / 3 + 0.9 / 3
    assert ece_standard([0.3, 0.31, 0.9], [1, 0, 0]) == pytest.approx(expected, abs=1e-7)
    assert expected == pytest.approx(0.43)


def test_ece_standard_perfect_and_worst():
    assert ece_standard([1.0, 1.0, 0.0], [1, 1, 0]) == 0.0
    assert ece_standard([1.0, 1.0], [0, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "conf, corr, n_bins, expected",
    [
        # 1.0 sits in its own bin (torchmetrics convention): |0-1|/2 + |1-.95|/2
        ([1.0, 0.95], [0, 1], 15, 0.525),
        # a value on an inner edge goes to the upper bin ([lo, hi)): .5*.5 + .4*.5
        ([0.5, 0.4], [1, 0], 2, 0.45),
        # 0 falls in the first bin together with .01
        ([0.0, 0.01], [1, 0], 15, 0.495),
    ],
)
def test_ece_standard_bin_edges_match_torchmetrics(conf, corr, n_bins, expected):
    ours = ece_standard(conf, corr, n_bins=n_bins)
    ref = binary_calibration_error(torch.tensor(conf), torch.tensor(corr), n_bins=n_bins, norm="l1")
    assert ours == pytest.approx(expected, abs=1e-6)
    assert ours == pytest.approx(float(ref), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n, c, temp", [(50, 3, 1.0), (400, 10, 3.0), (1000, 4, 0.3)])
def test_ece_standard_matches_torchmetrics_multiclass(seed, n, c, temp):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, c, generator=g) * temp, dim=-1)
    target = torch.randint(0, c, (n,), generator=g)
    ref = multiclass_calibration_error(probs, target, num_classes=c, n_bins=15, norm="l1")
    conf, pred = probs.max(dim=-1)
    ours = ece_standard(conf, pred == target)
    assert ours == pytest.approx(float(ref), abs=1e-6)


_EDGES = [float(x) for x in torch.linspace(0, 1, 16, dtype=torch.float32)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(_EDGES), st.floats(0.0, 1.0, width=32)),
            st.booleans(),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_ece_standard_matches_torchmetrics_binary_property(pairs):
    conf = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    corr = torch.tensor([int(p[1]) for p in pairs])
    ref = binary_calibration_error(conf, corr, n_bins=15, norm="l1")
    ours = ece_standard(conf, corr)
    assert 0.0 <= ours <= 1.0
    assert ours == pytest.approx(float(ref), abs=1e-6)


def test_ece_standard_validation():
    assert math.isnan(ece_standard([], []))
    with pytest.raises(ValueError):
        ece_standard([0.5, 1.2], [1, 0])
    with pytest.raises(ValueError):
        ece_standard([0.5], [1, 0])


# ---------------------------------------------------------------------------
# ece_equal_mass
# ---------------------------------------------------------------------------


def test_ece_equal_mass_hand_remainder_in_last_chunk():
    # sorted: .1(0) .2(1) | .7(1) .8(0) .9(1); size 5//2 = 2, last chunk takes 3
    conf = [0.9, 0.1, 0.8, 0.2, 0.7]
    corr = [1, 0, 0, 1, 1]
    expected = abs(0.5 - 0.15) * 2 / 5 + abs(2 / 3 - 0.8) * 3 / 5
    assert expected == pytest.approx(0.22)
    assert ece_equal_mass(conf, corr, n_bins=2) == pytest.approx(expected, abs=1e-9)


def test_ece_equal_mass_stable_sort_on_ties():
    # all ties: stable sort keeps [1,1] | [0,0] -> .5*.5 + .5*.5
    assert ece_equal_mass([0.5] * 4, [1, 1, 0, 0], n_bins=2) == pytest.approx(0.5)
    assert ece_equal_mass([0.5] * 4, [1, 0, 1, 0], n_bins=2) == pytest.approx(0.0)
    # Large enough that an unstable algorithm really reorders ties. Input interleaves
    # conf .5 and .6; within each value the first 150 (in input order) are correct.
    conf = np.where(np.arange(600) % 2 == 0, 0.5, 0.6)
    corr = np.zeros(600)
    corr[np.flatnonzero(conf == 0.5)[:150]] = 1
    corr[np.flatnonzero(conf == 0.6)[:150]] = 1
    # stable order: conf .5 -> 150 right, 150 wrong; conf .6 -> 150 right, 150 wrong
    sorted_corr = np.array(([1] * 150 + [0] * 150) * 2, dtype=float)
    sorted_conf = np.array([0.5] * 300 + [0.6] * 300)
    expected = sum(
        abs(sorted_corr[i : i + 40].mean() - sorted_conf[i : i + 40].mean()) * 40 / 600
        for i in range(0, 600, 40)
    )
    assert expected > 0.4  # a shuffled tie order would mix right/wrong and give far less
    assert ece_equal_mass(conf, corr) == pytest.approx(expected, abs=1e-9)


def test_ece_equal_mass_seventeen_examples_fifteen_bins():
    # 17 // 15 = 1: chunks 0..13 hold one example each, chunk 14 holds the last three.
    conf = np.arange(17) / 20
    corr = np.zeros(17)
    corr[14:] = 1
    rng = np.random.default_rng(0)
    perm = rng.permutation(17)  # input order must not matter (no ties)
    expected = (sum(i / 20 for i in range(14)) + abs(1 - np.mean([0.7, 0.75, 0.8])) * 3) / 17
    assert expected == pytest.approx(5.3 / 17)
    assert ece_equal_mass(conf[perm], corr[perm]) == pytest.approx(expected, abs=1e-9)


def test_ece_equal_mass_fewer_examples_than_bins():
    # one chunk per example: mean |correct - conf|
    assert ece_equal_mass([0.2, 0.6, 0.9], [0, 1, 0]) == pytest.approx((0.2 + 0.4 + 0.9) / 3)


def test_ece_equal_mass_differs_from_equal_width():
    conf = [0.55, 0.6, 0.65, 0.7]
    corr = [1, 1, 0, 0]
    # equal width (2 bins): all four in [.5, 1): |.5 - .625|
    assert ece_standard(conf, corr, n_bins=2) == pytest.approx(0.125)
    # equal mass: [.55, .6] acc 1 -> .425 * .5 ; [.65, .7] acc 0 -> .675 * .5
    assert ece_equal_mass(conf, corr, n_bins=2) == pytest.approx(0.55)


# ---------------------------------------------------------------------------
# reliability_bins
# ---------------------------------------------------------------------------


def test_reliability_bins_hand():
    bins = reliability_bins([0.1, 0.2, 0.7, 1.0], [0, 1, 1, 0], n_bins=2)
    assert len(bins) == 2
    assert bins[0] == {"lo": 0.0, "hi": 0.5, "count": 2, "acc": 0.5, "conf": pytest.approx(0.15)}
    # 1.0 folded into the last bin
    assert bins[1]["count"] == 2
    assert bins[1]["acc"] == 0.5
    assert bins[1]["conf"] == pytest.approx(0.85)


def test_reliability_bins_empty_bins_and_consistency_with_ece():
    g = torch.Generator().manual_seed(1)
    conf = torch.rand(300, generator=g) * 0.99
    corr = torch.rand(300, generator=g) < conf
    bins = reliability_bins(conf, corr)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 300
    ece = sum(abs(b["acc"] - b["conf"]) * b["count"] / 300 for b in bins if b["count"])
    assert ece == pytest.approx(ece_standard(conf, corr), abs=1e-9)
    few = reliability_bins([0.95], [1])
    assert sum(b["count"] == 0 for b in few) == 14
    assert math.isnan(few[0]["acc"]) and math.isnan(few[0]["conf"])


# ---------------------------------------------------------------------------
# single_token_metrics / records
# ---------------------------------------------------------------------------

LABEL_IDS = [2, 4]
PROBS = torch.tensor(
    [
        [0.05, 0.03, 0.62, 0.05, 0.20, 0.05],  # gold 0 (tok 2): top1 tok 2 -> correct; label [.62,.2]
        [0.50, 0.10, 0.10, 0.00, 0.30, 0.00],  # gold 1 (tok 4): top1 tok 0 outside label set -> wrong
        [0.10, 0.10, 0.30, 0.08, 0.42, 0.00],  # gold 0 (tok 2): top1 tok 4 other label -> wrong
    ]
)
GOLD = [0, 1, 0]


def test_single_token_metrics_hand():
    m = single_token_metrics(PROBS, LABEL_IDS, GOLD)
    assert m["n_eval"] == 3 and isinstance(m["n_eval"], int)
    assert m["acc"] == pytest.approx(1 / 3)
    # top1 .62 (bin 9, right), .5 (bin 7, wrong), .42 (bin 6, wrong): separate bins
    assert m["ece"] == pytest.approx((0.38 + 0.5 + 0.42) / 3, abs=1e-6)
    # V = 6 < 10 so top-10 renorm == top1 / 1; n=3 < 15 -> per-example chunks
    assert m["ece_paper"] == pytest.approx((0.38 + 0.5 + 0.42) / 3, abs=1e-6)
    # label argmax: 0 (right), 1 (right: .3 > .1), 1 (wrong)
    assert m["label_acc"] == pytest.approx(2 / 3)
    # label confs .62/.82 and .75 share bin 11 (both right); .42/.72 in bin 8 (wrong)
    assert m["label_ece"] == pytest.approx(((1 - 0.62 / 0.82) + (1 - 0.75) + 0.42 / 0.72) / 3, abs=1e-6)
    assert m["label_mass"] == pytest.approx((0.82 + 0.4 + 0.72) / 3, abs=1e-6)
    assert all(isinstance(v, float) for k, v in m.items() if k != "n_eval")


def test_confidence_records_fields_and_json_roundtrip():
    rec = confidence_records(PROBS, LABEL_IDS, torch.tensor(GOLD))
    assert rec["top1_id"] == [2, 0, 4]
    assert rec["correct"] == [True, False, False]
    assert rec["label_correct"] == [True, True, False]
    assert rec["gold"] == GOLD
    assert np.allclose(rec["label_probs"], [[0.62, 0.2], [0.1, 0.3], [0.3, 0.42]])
    assert np.allclose(rec["top1_prob"], [0.62, 0.5, 0.42])
    stored = json.loads(json.dumps(rec))
    assert metrics_from_records(stored) == single_token_metrics(PROBS, LABEL_IDS, GOLD)


def test_top10_renormalisation():
    row = torch.tensor([[0.5] + [0.05] * 9 + [0.025] * 2])  # top-10 sum .95
    rec = confidence_records(row, [0, 1], [0])
    assert rec["top10_renorm_conf"][0] == pytest.approx(0.5 / 0.95, abs=1e-6)
    assert rec["top1_prob"][0] == pytest.approx(0.5)
    m = single_token_metrics(row, [0, 1], [0])
    assert m["ece_paper"] == pytest.approx(1 - 0.5 / 0.95, abs=1e-6)
    assert m["ece"] == pytest.approx(0.5, abs=1e-6)


def test_label_renorm_is_division_not_softmax():
    # softmax over [.3, .1] would give conf ~.55; division gives .75
    probs = torch.tensor([[0.3, 0.1, 0.6]])
    rec = confidence_records(probs, [0, 1], [0])
    m = metrics_from_records(rec)
    assert m["label_acc"] == 1.0
    assert m["label_ece"] == pytest.approx(0.25, abs=1e-6)
    assert m["acc"] == 0.0  # full-vocab top1 is token 2, outside the label set
    assert m["label_mass"] == pytest.approx(0.4, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_single_token_metrics_agree_with_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    n, vocab = 200, 50
    probs = torch.softmax(torch.randn(n, vocab, generator=g) * 2, dim=-1)
    label_ids = [3, 17, 29, 41]
    gold = torch.randint(0, 4, (n,), generator=g)
    m = single_token_metrics(probs, label_ids, gold)
    lp = probs[:, label_ids]
    lp = lp / lp.sum(-1, keepdim=True)
    ref_label = multiclass_calibration_error(lp, gold, num_classes=4, n_bins=15, norm="l1")
    assert m["label_ece"] == pytest.approx(float(ref_label), abs=1e-6)
    assert m["label_acc"] == pytest.approx(float((lp.argmax(-1) == gold).float().mean()))
    # full vocab with label set == whole vocabulary: acc/ece are plain multiclass metrics
    gold_full = torch.tensor(label_ids)[gold]
    m_full = single_token_metrics(probs, list(range(vocab)), gold_full)
    ref_full = multiclass_calibration_error(probs, gold_full, num_classes=vocab, n_bins=15, norm="l1")
    assert m_full["ece"] == pytest.approx(float(ref_full), abs=1e-6)
    assert m_full["acc"] == m_full["label_acc"] == pytest.approx(m["acc"])
    assert m_full["label_mass"] == pytest.approx(1.0, abs=1e-5)
    assert m["acc"] == pytest.approx(float((probs.argmax(-1) == gold_full).float().mean()))


def test_single_token_metrics_validation():
    with pytest.raises(ValueError):
        single_token_metrics(PROBS, LABEL_IDS, [0, 1])  # wrong length
    with pytest.raises(ValueError):
        single_token_metrics(PROBS, LABEL_IDS, [0, 2, 0])  # gold out of label range
    with pytest.raises(ValueError):
        single_token_metrics(PROBS, [2, 99], GOLD)  # label id outside vocab


# ---------------------------------------------------------------------------
# generative_accuracy
# ---------------------------------------------------------------------------


def test_generative_accuracy():
    assert generative_accuracy(["a", "b", None, "d"], ["a", "x", "c", "d"]) == 0.5
    assert generative_accuracy([None], [None]) == 0.0
    assert math.isnan(generative_accuracy([], []))
    with pytest.raises(ValueError):
        generative_accuracy(["a"], ["a", "b"])


# ---------------------------------------------------------------------------
# activation similarity
# ---------------------------------------------------------------------------


def test_activation_similarity_hand():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    out = activation_similarity(a, b)
    assert out.shape == (1,)
    assert float(out[0]) == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-6)


def test_activation_similarity_properties():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 8, generator=g)
    extra = torch.randn(3, 2, 8, generator=g)
    b = torch.cat([2.5 * a, extra], dim=1)  # longer trace, scaled copy on shared positions
    assert torch.allclose(activation_similarity(a, b), torch.ones(3), atol=1e-6)
    assert torch.allclose(activation_similarity(b, a), torch.ones(3), atol=1e-6)
    assert torch.allclose(activation_similarity(a, -a), -torch.ones(3), atol=1e-6)
    half = activation_similarity(a.half(), b.bfloat16())
    assert half.dtype == torch.float32
    assert torch.allclose(half, torch.ones(3), atol=1e-2)
    with pytest.raises(ValueError):
        activation_similarity(a, torch.randn(2, 4, 8))


def test_norm_ratio_sees_the_scale_that_asim_cannot():
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(3, 4, 8, generator=g)
    shrunk = torch.cat([0.5 * teacher, torch.randn(3, 2, 8, generator=g)], dim=1)  # longer, truncated to 4
    assert torch.allclose(activation_similarity(teacher, shrunk), torch.ones(3), atol=1e-6)
    assert torch.allclose(activation_norm_ratio(teacher, shrunk), torch.full((3,), 0.5), atol=1e-6)
    # per position, then averaged: norms 1 and 3 against 2 and 2 give (0.5 + 1.5) / 2 per layer
    t = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    s = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    assert float(activation_norm_ratio(t, s)[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        activation_norm_ratio(teacher, torch.randn(2, 4, 8))


def test_next_token_kl_hand_values():
    p = torch.log(torch.tensor([0.5, 0.5, 0.0]))  # a zero-probability token of the teacher contributes nothing
    q = torch.log(torch.tensor([0.25, 0.5, 0.25]))
    assert next_token_kl(p, q) == pytest.approx(0.5 * math.log(2.0))
    assert next_token_kl(q, q) == pytest.approx(0.0, abs=1e-12)
    assert next_token_kl(q, p) == float("inf")  # the student gives 0 where the teacher does not
    with pytest.raises(ValueError):
        next_token_kl(q, q[:2])


def test_asim_summary():
    mean, per_layer = asim_summary([torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.5])])
    assert per_layer == pytest.approx([0.75, 0.5])
    assert mean == pytest.approx(0.625)
    m, pl = asim_summary([])
    assert math.isnan(m) and pl == []


# ---------------------------------------------------------------------------
# subspace overlap
# ---------------------------------------------------------------------------


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def test_subspace_overlap_self_and_orthogonal():
    g = torch.Generator().manual_seed(0)
    q = _orthonormal(64, 16, 1)
    ba = q[:, :8] @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    bb = q[:, 8:] @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    assert subspace_overlap(ba, ba) == pytest.approx(1.0, abs=1e-9)
    assert subspace_overlap(ba, bb) == pytest.approx(0.0, abs=1e-9)
    # same span, different basis
    bc = q[:, :8] @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    assert subspace_overlap(ba, bc) == pytest.approx(1.0, abs=1e-9)


def test_subspace_overlap_hand_partial():
    e = torch.eye(4)
    ba = torch.stack([e[0], e[1]], dim=1)  # span{e1, e2}
    bb = torch.stack([3 * e[0], e[2]], dim=1)  # span{e1, e3}
    assert subspace_overlap(ba, bb) == pytest.approx(0.5, abs=1e-9)


def test_subspace_overlap_column_scaling_invariance():
    g = torch.Generator().manual_seed(3)
    ba = torch.randn(32, 4, generator=g)
    bb = torch.randn(32, 4, generator=g)
    scale = torch.tensor([0.1, 2.0, -5.0, 30.0])
    base = subspace_overlap(ba, bb)
    assert 0.0 < base < 1.0
    assert subspace_overlap(ba * scale, bb) == pytest.approx(base, abs=1e-6)
    assert subspace_overlap(ba, bb * scale) == pytest.approx(base, abs=1e-6)
    assert subspace_overlap(ba, bb) == pytest.approx(subspace_overlap(bb, ba), abs=1e-9)


def test_subspace_overlap_zero_matrix_is_nan():
    assert math.isnan(subspace_overlap(torch.zeros(16, 4), torch.randn(16, 4)))
    assert math.isnan(subspace_overlap(torch.randn(16, 4), torch.zeros(16, 4)))
    with pytest.raises(ValueError):
        subspace_overlap(torch.randn(16, 4), torch.randn(16, 2))


def test_adapter_overlap():
    e = torch.eye(4)
    b1 = torch.stack([e[0], e[1]], dim=1)
    b2 = torch.stack([e[0], e[2]], dim=1)
    state_a = {
        "m.l0.q_proj.lora_A.weight": torch.randn(2, 4),
        "m.l0.q_proj.lora_B.weight": b1,
        "m.l1.q_proj.lora_B.weight": b1,
        "m.l2.q_proj.lora_B.weight": torch.zeros(4, 2),
        "m.l3.q_proj.lora_B.weight": b1,  # only in a
    }
    state_b = {
        "m.l0.q_proj.lora_A.weight": torch.randn(2, 4),
        "m.l0.q_proj.lora_B.weight": b1,
        "m.l1.q_proj.lora_B.weight": b2,
        "m.l2.q_proj.lora_B.weight": b1,
    }
    out = adapter_overlap(state_a, state_b)
    pm = out["per_module"]
    assert set(pm) == {"m.l0.q_proj.lora_B.weight", "m.l1.q_proj.lora_B.weight", "m.l2.q_proj.lora_B.weight"}
    assert pm["m.l0.q_proj.lora_B.weight"] == pytest.approx(1.0)
    assert pm["m.l1.q_proj.lora_B.weight"] == pytest.approx(0.5)
    assert math.isnan(pm["m.l2.q_proj.lora_B.weight"])
    assert out["mean"] == pytest.approx(0.75)
    assert math.isnan(adapter_overlap({}, {})["mean"])


# ---------------------------------------------------------------------------
# paired t-test
# ---------------------------------------------------------------------------


def test_paired_ttest_hand():
    a = [1.0, 2.0, 3.0, 4.0]
    b = [0.0, 0.0, 0.0, 1.0]
    # diffs 1,2,3,3: mean 2.25, sample var 2.75/3, t = mean / (sd / sqrt(4))
    t_hand = 2.25 / (math.sqrt(2.75 / 3) / 2)
    out = paired_ttest(a, b)
    assert out["n"] == 4
    assert out["mean_diff"] == pytest.approx(2.25)
    assert out["t"] == pytest.approx(t_hand)
    assert out["p"] == pytest.approx(2 * stats.t.sf(t_hand, df=3))
    assert paired_ttest(b, a)["t"] == pytest.approx(-t_hand)


def test_holm_steps_down_and_keeps_order_and_nan():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04); NaN is no test and no family member
    assert holm([0.04, float("nan"), 0.01, 0.03]) == pytest.approx([0.06, float("nan"), 0.03, 0.06], nan_ok=True)
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_paired_ttest_degenerate_returns_nan():
    one = paired_ttest([1.0], [0.5])
    assert one["n"] == 1 and math.isnan(one["t"]) and math.isnan(one["p"])
    assert one["mean_diff"] == pytest.approx(0.5)
    const = paired_ttest([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # all diffs 1 -> zero variance
    assert math.isnan(const["t"]) and math.isnan(const["p"]) and const["mean_diff"] == 1.0
    empty = paired_ttest([], [])
    assert empty["n"] == 0 and math.isnan(empty["mean_diff"])
    with pytest.raises(ValueError):
        paired_ttest([1.0, 2.0], [1.0])


def test_zero_label_mass_gives_uniform_label_confidence():
    probs = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.7, 0.1, 0.2]])
    m = single_token_metrics(probs, [0, 1, 2], [1, 1])
    # row 0: no label mass -> conf 1/3, argmax picks label 0 (wrong); row 1: conf .875, right
    assert m["label_acc"] == 0.5
    assert m["label_mass"] == pytest.approx(0.4, abs=1e-6)
    assert m["label_ece"] == pytest.approx((1 / 3 + (1 - 0.875)) / 2, abs=1e-6)
