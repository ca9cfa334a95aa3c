"""Tests for hyper-parameter selection, ``ia2 report`` and ``ia2 analyze``.

Selection is tested on hand-made records (fast, exact); the report and analyses end to end on a
small real store built once per module with the tiny random model and the local data mirror.
"""

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import TEST_DEVICE

from ia2.config import Unit
from ia2.errors import IA2Error
from ia2.report import build_tables, compare, summarise, summary_markdown
from ia2.select import done_rows, select, variant

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --- hand-made records ---------------------------------------------------------------------------------
def record(method, lr, run, dev_loss, dev_acc, acc, *, w=None, status="done", ece=0.1, max_epochs=50,
           evals=("sst2", "finsen"), dev_split="reference"):
    """A store record with one result row per eval task; ``acc`` may be a per-eval-task dict."""
    unit = Unit(model="m", task="sst2", label_format="digits", eval_tasks=tuple(evals), n=4, run=run,
                method=method, lr=lr, ce_weight=w, max_epochs=max_epochs, dev_split=dev_split)
    accs = acc if isinstance(acc, dict) else {e: acc for e in evals}
    rows = [{"uid": unit.uid(), "model": "m", "task": "sst2", "eval_task": e, "ood": e != "sst2",
             "label_format": "digits", "method": method, "n": 4, "run": run, "lr": lr, "ce_weight": w,
             "labels": "gt" if lr is not None else None, "acc": accs[e], "ece": ece, "ece_paper": ece,
             "label_acc": accs[e], "label_ece": ece, "label_mass": 1.0, "n_eval": 10, "asim": None,
             "asim_layers": None, "dev_loss": dev_loss, "dev_acc": dev_acc} for e in evals]
    return {"uid": unit.uid(), "unit": unit.to_dict(), "status": status, "results": rows, "predictions": {}}


def chosen(records, rule, method="sft", eval_task="sst2"):
    sels = [s for s in select(done_rows(records), rule) if s.method == method and s.eval_task == eval_task]
    assert len(sels) == 1
    return sels[0]


def disagreeing_records():
    """lr 1e-3 wins on dev loss, lr 3e-4 on dev accuracy, and lr 1e-4 on evaluation accuracy."""
    recs = []
    for run in (0, 1):
        recs.append(record("sft", 1e-3, run, dev_loss=0.5, dev_acc=0.5, acc=0.6))
        recs.append(record("sft", 3e-4, run, dev_loss=0.9, dev_acc=0.8, acc=0.7))
        recs.append(record("sft", 1e-4, run, dev_loss=1.2, dev_acc=0.2, acc=0.9))
    return recs


def test_each_rule_reads_its_own_metric():
    recs = disagreeing_records()
    assert chosen(recs, "dev-loss").lr == 1e-3
    assert chosen(recs, "dev-acc").lr == 3e-4
    assert chosen(recs, "eval").lr == 1e-4
    assert chosen(recs, "eval").criterion == "eval acc"


def test_dev_accuracy_ties_go_to_the_lower_dev_loss_within_one_w():
    """Two dev examples give only a few accuracy values, so ties are common; the smaller lr is no reason to pick."""
    recs = [record("sft", lr, run, dev_loss=loss, dev_acc=0.5, acc=acc)
            for run in (0, 1) for lr, loss, acc in ((1e-4, 0.9, 0.6), (3e-4, 0.4, 0.7), (1e-3, 0.6, 0.8))]
    assert chosen(recs, "dev-acc").lr == 3e-4
    # IA2 + SFT: dev losses of different w are different objectives, so a tie across w does not read them
    recs = [record("ia2+sft", 1e-3, run, dev_loss=loss, dev_acc=0.5, acc=0.5, w=w)
            for run in (0, 1) for w, loss in ((0.01, 0.9), (0.5, 0.1))]
    assert chosen(recs, "dev-acc", method="ia2+sft").ce_weight == 0.01


def test_ia2_sft_weight_grid_under_dev_acc_breaks_lr_ties_on_loss_and_names_a_w_tie():
    recs = [record("ia2+sft", lr, run, dev_loss=loss, dev_acc=0.5, acc=0.5, w=w) for run in (0, 1)
            for w in (0.01, 0.5) for lr, loss in ((1e-4, 0.9), (1e-3, 0.2))]
    sel = chosen(recs, "dev-acc", method="ia2+sft")
    assert (sel.lr, sel.ce_weight) == (1e-3, 0.01)  # lr within w on dev loss; w on the tie-break
    assert "tie on dev acc: smallest w of 2" in sel.criterion
    assert "tie on dev acc" in chosen(recs, "dev-loss", method="ia2+sft").criterion


def test_dev_selection_never_reads_evaluation_metrics():
    recs = disagreeing_records()
    before = {rule: chosen(recs, rule).lr for rule in ("dev-loss", "dev-acc")}
    # Poison every evaluation metric so that any rule reading them would switch to the other candidates.
    for rec in recs:
        good = rec["unit"]["lr"] != 1e-3 and rec["unit"]["lr"] != 3e-4
        for row in rec["results"]:
            for k in ("acc", "label_acc"):
                row[k] = 1.0 if good else 0.0
            for k in ("ece", "ece_paper", "label_ece"):
                row[k] = 0.0 if good else 0.99
            row["asim"] = 1.0 if good else -1.0
    assert {rule: chosen(recs, rule).lr for rule in ("dev-loss", "dev-acc")} == before
    assert chosen(recs, "eval").lr == 1e-4
    # The chosen cell reports the (poisoned) evaluation numbers of the dev-chosen candidate.
    assert [r["acc"] for r in chosen(recs, "dev-loss").rows] == [0.0, 0.0]


def test_ood_rows_use_the_source_dev_choice():
    recs = []
    for run in (0, 1):  # on finsen (OOD) the eval accuracies point the other way
        recs.append(record("sft", 1e-3, run, 0.5, 0.5, {"sst2": 0.9, "finsen": 0.1}))
        recs.append(record("sft", 3e-4, run, 0.9, 0.4, {"sst2": 0.1, "finsen": 0.9}))
    for rule in ("dev-loss", "dev-acc"):
        assert chosen(recs, rule, eval_task="finsen").lr == chosen(recs, rule, eval_task="sst2").lr == 1e-3
    assert chosen(recs, "eval", eval_task="finsen").lr == 3e-4
    assert chosen(recs, "eval", eval_task="sst2").lr == 1e-3


def test_mean_over_runs_not_one_run():
    recs = [record("sft", 1e-3, 0, 0.1, 0.5, 0.5), record("sft", 1e-3, 1, 1.0, 0.5, 0.5),
            record("sft", 3e-4, 0, 0.5, 0.5, 0.5), record("sft", 3e-4, 1, 0.5, 0.5, 0.5)]
    sel = chosen(recs, "dev-loss")
    assert sel.lr == 3e-4 and sel.score == pytest.approx(0.5) and len(sel.rows) == 2


def test_a_growing_grid_is_compared_on_shared_runs():
    # lr 1e-3 has runs 0-2, lr 3e-4 only runs 0-1; run 2 is an easy draw (low dev loss) that only 1e-3 has.
    recs = [record("sft", 1e-3, 0, 0.6, 0.5, 0.5), record("sft", 1e-3, 1, 0.6, 0.5, 0.5),
            record("sft", 1e-3, 2, 0.0, 0.5, 0.7),
            record("sft", 3e-4, 0, 0.5, 0.5, 0.6), record("sft", 3e-4, 1, 0.5, 0.5, 0.6)]
    sel = chosen(recs, "dev-loss")
    assert sel.lr == 3e-4 and sel.score == pytest.approx(0.5)  # over all runs 1e-3 would win (0.4 < 0.5)
    assert "2 runs every candidate has" in sel.criterion
    # the appendix lists what the choice saw: 1e-3's mean over runs 0-1 (0.6), not over its three runs (0.4)
    assert {c["lr"]: (c["runs"], c["dev_loss"]) for c in sel.candidates} == {1e-3: (2, pytest.approx(0.6)),
                                                                            3e-4: (2, pytest.approx(0.5))}
    recs += [record("sft", 3e-4, 2, 0.9, 0.5, 0.6)]  # now complete: 1e-3's mean 0.4 beats 3e-4's 0.633
    assert chosen(recs, "dev-loss").lr == 1e-3
    # the chosen candidate keeps every run of its own for the table; the note says what the choice saw
    recs = recs[:4] + [record("sft", 3e-4, 1, 0.9, 0.5, 0.6)]
    sel = chosen(recs, "dev-loss")
    assert sel.lr == 1e-3 and len(sel.rows) == 3 and "2 runs every candidate has" in sel.criterion
    assert sel.score == pytest.approx(0.6)


def test_failed_records_are_ignored():
    recs = disagreeing_records()
    recs.append(record("sft", 1e-2, 0, 0.01, 1.0, 1.0, status="failed"))
    assert chosen(recs, "dev-loss").lr == 1e-3
    assert all(c["lr"] != 1e-2 for c in chosen(recs, "dev-loss").candidates)


def test_ce_weight_of_joint_method_is_not_chosen_across_objectives_by_loss():
    # w=0.001 has the lowest dev loss only because its objective is mostly the (small) IA2 loss.
    recs = []
    for run in (0, 1):
        for lr, dl_small, dl_big in ((1e-3, 0.20, 1.5), (3e-4, 0.25, 1.2)):
            recs.append(record("ia2+sft", lr, run, dl_small, 0.3, 0.9, w=0.001))
            recs.append(record("ia2+sft", lr, run, dl_big, 0.7, 0.1, w=0.5))
    sel = chosen(recs, "dev-loss", method="ia2+sft")
    assert (sel.lr, sel.ce_weight) == (3e-4, 0.5)  # lr on dev loss within w=0.5, w on dev accuracy
    assert chosen(recs, "dev-acc", method="ia2+sft").ce_weight == 0.5
    assert chosen(recs, "eval", method="ia2+sft").ce_weight == 0.001


def test_baselines_have_no_hyper_parameters_and_mixed_settings_are_refused():
    recs = disagreeing_records() + [record("icl", None, r, None, None, 0.4) for r in (0, 1)]
    icl = chosen(recs, "dev-loss", method="icl")
    assert (icl.lr, icl.ce_weight, len(icl.rows)) == (None, None, 2)
    recs.append(record("sft", 1e-3, 2, 0.5, 0.5, 0.6, max_epochs=3))
    with pytest.raises(IA2Error, match="max_epochs"):
        select(done_rows(recs), "dev-loss")
    with pytest.raises(IA2Error):
        select(done_rows(recs), "test-set")
    # a stratified-dev baseline next to reference-split ones is a different experiment, refused as well
    icl_mixed = disagreeing_records() + [record("icl", None, 0, None, None, 0.4),
                                         record("icl", None, 1, None, None, 0.4, dev_split="stratified")]
    with pytest.raises(IA2Error, match="dev_split"):
        select(done_rows(icl_mixed), "dev-loss")
    # so are numbers computed in another precision (a CPU store resumed on a GPU in bf16); records from before the
    # dtype was recorded count as their device's default
    cpu = disagreeing_records()
    for i, r in enumerate(cpu):
        r["machine"] = {"device": "cpu"} if i % 2 else {"device": "cpu", "dtype": "float32"}
    assert {s.lr for s in select(done_rows(cpu), "dev-loss")} == {1e-3}
    gpu = record("sft", 1e-3, 2, 0.5, 0.5, 0.6)
    gpu["machine"] = {"device": "cuda:0", "dtype": "bfloat16"}
    with pytest.raises(IA2Error, match=r"precision\).*--dtype"):
        select(done_rows(cpu + [gpu]), "dev-loss")


def test_summary_counts_and_ttest_pairs():
    recs = []
    for run, (a, b) in enumerate([(0.8, 0.6), (0.7, 0.6), (0.9, 0.5)]):
        recs.append(record("sft", 1e-3, run, 0.5, 0.5, b, ece=0.3))
        recs.append(record("ia2-then-sft", 1e-3, run, 0.5, 0.5, a, ece=0.1))
    summary = compare(build_tables(select(done_rows(recs), "dev-loss")))
    assert summary["acc"]["rows"] == 2 and summary["acc"]["wins"] == 2
    assert summary["ece"]["wins"] == 2 and summary["ece"]["losses"] == 0
    assert summary["acc"]["ttest"]["n"] == 6  # 3 runs x 2 rows
    assert summary["acc"]["ttest"]["mean_diff"] == pytest.approx(100 * (0.8 + 0.7 + 0.9 - 1.7) / 3)


def test_unit_ttest_averages_the_rows_of_one_trained_unit():
    """A unit's OOD rows share its adapter: the conservative test has one pair per (source task, run)."""
    from ia2 import metrics

    recs, a_acc, b_acc = [], [(0.8, 0.6), (0.7, 0.9), (0.9, 0.6)], [(0.6, 0.5), (0.6, 0.7), (0.5, 0.6)]
    for run in range(3):
        recs.append(record("ia2-then-sft", 1e-3, run, 0.5, 0.5, dict(zip(("sst2", "finsen"), a_acc[run]))))
        recs.append(record("sft", 1e-3, run, 0.5, 0.5, dict(zip(("sst2", "finsen"), b_acc[run]))))
    s = compare(build_tables(select(done_rows(recs), "dev-loss")))["acc"]
    assert s["ttest"]["n"] == 6 and s["ttest_units"]["n"] == 3
    want = metrics.paired_ttest([50 * sum(x) for x in a_acc], [50 * sum(x) for x in b_acc])
    assert s["ttest_units"]["p"] == pytest.approx(want["p"]) and s["ttest_units"]["p"] != pytest.approx(s["ttest"]["p"])


def test_per_table_p_values_are_holm_adjusted_over_the_tables():
    """Two tables (N = 4 and N = 8): each per-table test gets Holm's p over the pair; the pooled one keeps its p."""
    from ia2 import metrics

    recs = []
    for n, gap in ((4, (0.1, 0.3, 0.2)), (8, (0.05, -0.1, 0.3))):
        for run in range(3):
            for method, acc in (("ia2-then-sft", 0.5 + gap[run]), ("sft", 0.5)):
                rec = record(method, 1e-3, run, 0.5, 0.5, acc, evals=("sst2",))
                rec["unit"]["n"] = n
                for row in rec["results"]:
                    row["n"] = n
                recs.append(rec)
    s = summarise(build_tables(select(done_rows(recs), "dev-loss")), recs)
    per = [c for c in s["comparisons"] if c["scope"] != "all tables"]
    assert len(per) == 2
    p = [c["acc"]["ttest"]["p"] for c in per]
    assert [c["acc"]["ttest"]["p_holm"] for c in per] == pytest.approx(metrics.holm(p))
    assert min(c["acc"]["ttest"]["p_holm"] for c in per) == pytest.approx(min(1.0, 2 * min(p)))
    pooled = next(c for c in s["comparisons"] if c["scope"] == "all tables")
    assert "p_holm" not in pooled["acc"]["ttest"]
    assert f"(Holm {per[0]['acc']['ttest']['p_holm']:.3g})" in summary_markdown(s, "dev-loss")
    one = summarise(build_tables(select(done_rows([r for r in recs if r["unit"]["n"] == 4]), "dev-loss")), recs)
    assert "p_holm" not in one["comparisons"][0]["acc"]["ttest"]  # a family of one: Holm's p is p


def test_row_counts_use_the_runs_both_methods_have():
    """IA2 -> SFT has runs 0-4, SFT only runs 0-2: comparing 5 runs with 3 would let runs 3-4 decide the row."""
    recs = [record("sft", 1e-3, r, 0.5, 0.5, 0.7) for r in range(3)]
    recs += [record("ia2-then-sft", 1e-3, r, 0.5, 0.5, 0.6 if r < 3 else 1.0) for r in range(5)]
    s = compare(build_tables(select(done_rows(recs), "dev-loss")))["acc"]
    assert (s["wins"], s["losses"], s["ttest"]["n"]) == (0, 2, 6)


def test_equal_means_reached_in_another_order_are_a_tie():
    """Float sums depend on order; rows whose runs have the same mean must count as a tie, not a win."""
    recs = [record("sft", 1e-3, r, 0.5, 0.5, x) for r, x in enumerate((0.07, 1.09, 0.63))]
    recs += [record("ia2-then-sft", 1e-3, r, 0.5, 0.5, x) for r, x in enumerate((0.29, 0.58, 0.92))]
    s = compare(build_tables(select(done_rows(recs), "dev-loss")))["acc"]
    assert (s["wins"], s["ties"], s["losses"]) == (0, 2, 0)


def test_summary_asim_means_the_selected_cells_and_compute_sums_unit_time():
    recs = []
    for run in (0, 1):
        for lr, dev_loss, asim in ((1e-3, 0.5, 0.9), (1e-4, 0.9, 0.1)):  # dev loss selects 1e-3
            rec = record("ia2", lr, run, dev_loss, 0.5, 0.6)
            for row in rec["results"]:
                row["asim"] = asim + 0.02 * run
            rec["timing"] = {"total_s": 1800.0}
            rec["machine"] = {"cpu": "x86_64", "device": "cpu", "torch": "2.13.0+cpu"}
            recs.append(rec)
    recs.append({**record("sft", 1e-3, 0, 0.5, 0.5, 0.6), "timing": {"total_s": 3600.0}})
    recs.append({**record("sft", 1e-3, 1, 0.5, 0.5, 0.6, status="failed"), "timing": {"total_s": 99.0}})
    s = summarise(build_tables(select(done_rows(recs), "dev-loss")), recs)
    (asim,) = s["asim"]
    assert asim["means"] == {"ia2": pytest.approx(0.91)}  # the unselected lr (0.1, 0.12) never enters
    c = s["compute"]
    assert (c["units"], c["hours"]) == (5, pytest.approx(3.0))  # the failed unit is not counted
    assert {(r["method"], r["units"]) for r in c["rows"]} == {("ia2", 4), ("sft", 1)}
    assert c["machines"] == ["cpu x86_64, device cpu, torch 2.13.0+cpu"]


def test_only_filters_units_and_keeps_baselines():
    from ia2.report import filter_records, parse_filters

    recs = disagreeing_records() + [record("icl", None, 0, None, None, 0.5)]
    kept = filter_records(recs, parse_filters(["lr=1e-3"]))
    assert {(r["unit"]["method"], r["unit"]["lr"]) for r in kept} == {("sft", 1e-3), ("icl", None)}
    assert [r["unit"]["run"] for r in filter_records(recs, parse_filters(["lr=0.001", "run=1", "model=m"]))] == [1]
    assert filter_records(recs, parse_filters(["model=other"])) == []
    either = filter_records(recs, parse_filters(["lr=1e-3, 3e-4", "run=1"]))  # a comma list: any of them
    assert sorted(r["unit"]["lr"] for r in either) == [3e-4, 1e-3]
    for bad in ("lr", "learning_rate=1e-3"):
        with pytest.raises(IA2Error, match="bad --only"):
            parse_filters([bad])


def test_report_errors_are_user_errors(tmp_path):
    from ia2.cli import main
    from ia2.report import make_report
    from ia2.store import Store

    with pytest.raises(IA2Error, match="not an ia2 results store"):
        make_report(tmp_path)
    Store(tmp_path / "empty")
    with pytest.raises(IA2Error, match="no finished records"):
        make_report(tmp_path / "empty")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["analyze", str(tmp_path / "empty")]) == 2


# --- end to end on a real store ------------------------------------------------------------------------------
METHODS = "zero-shot,icl,sft,ia2,ia2-then-sft,ia2+sft"
HEADER = "| source | eval | Zero-shot | ICL | SFT only | IA2 only | IA2 -> SFT | IA2 + SFT |"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    if not DATA.exists():
        pytest.skip(f"data mirror not found at {DATA}")
    from ia2.cli import main

    out = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_DATA_DIR", str(DATA))
        rc = main(["run", "--model", "tiny-llama", "--task", "sst2", "--n", "4", "--runs", "0,1", "--methods", METHODS,
                   "--lr", "1e-3,3e-4", "--ce-weight", "0.05", "--limit-eval", "20", "--max-epochs", "2",
                   "--asim-examples", "5", "--out", str(out), "--device", TEST_DEVICE])
        assert rc == 0
        assert main(["analyze", str(out)]) == 0
        assert main(["report", str(out)]) == 0
        assert main(["report", str(out), "--select-on", "eval", "--out", str(out / "report_eval")]) == 0
        yield out


def _table_rows(md: str, header: str) -> list[list[str]]:
    """Body rows of the first Markdown table whose header line is ``header``."""
    lines = md.splitlines()
    start = lines.index(header) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_markdown_table_layout(store):
    md = (store / "report" / "table_tiny-llama_digits_N4.md").read_text()
    rows = _table_rows(md, HEADER)
    assert [r[1] for r in rows] == ["sst2", "finsen*", "poems*"]
    assert rows[0][0] == "sst2"
    for r in rows:  # acc cells are "mean (std)" in % with one decimal
        for cell in r[2:]:
            mean, std = cell.strip("*").split(" (")
            assert 0.0 <= float(mean) <= 100.0 and len(mean.split(".")[1]) == 1 and std.endswith(")")
    ece_rows = _table_rows(md.split("ECE (standard)", 1)[1], HEADER)
    assert all(len(c.strip("*").split(" (")[0].split(".")[1]) == 2 for r in ece_rows for c in r[2:])


def test_selection_label_everywhere(store):
    md = (store / "report" / "table_tiny-llama_digits_N4.md").read_text()
    captions = [line for line in md.splitlines() if line.startswith("**") and "N=4" in line]
    assert len(captions) == 7 and all("chosen on dev loss" in c for c in captions)  # 6 metrics + hyper-parameters
    assert "15 equal-width bins" in md and "15 equal-mass bins" in md
    assert "chosen on dev loss" in (store / "report" / "report.md").read_text()
    ev = (store / "report_eval" / "table_tiny-llama_digits_N4.md").read_text()
    ev_captions = [line for line in ev.splitlines() if line.startswith("**") and "N=4" in line]
    assert len(ev_captions) == 7 and all("chosen on the EVALUATION set (paper protocol" in c for c in ev_captions)
    assert "Warning" in (store / "report_eval" / "report.md").read_text()
    tex = (store / "report_eval" / "table_tiny-llama_digits_N4.tex").read_text()
    assert tex.count(r"\caption{") == tex.count("EVALUATION set") - 1 == 6


def test_csv_and_latex(store):
    with open(store / "report" / "table_tiny-llama_digits_N4.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = ["zero-shot", "icl", "sft", "ia2", "ia2-then-sft", "ia2+sft"]
    assert list(rows[0]) == ["model", "label_format", "n", "selected_on", "source_task", "eval_task", "ood", "metric"] + \
        [f"{c}{s}" for c in cols for s in ("", " std")]
    assert {(r["eval_task"], r["ood"]) for r in rows} == {("sst2", "0"), ("finsen", "1"), ("poems", "1")}
    assert {r["metric"] for r in rows} == {"acc_pct", "ece", "ece_paper", "label_acc_pct", "label_mass", "asim", "lr", "ce_weight"}
    lrs = {r["sft"] for r in rows if r["metric"] == "lr"}
    assert len(lrs) == 1 and float(lrs.pop()) in (1e-3, 3e-4)
    tex = (store / "report" / "table_tiny-llama_digits_N4.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex and r"IA2 $\rightarrow$ SFT" in tex
    assert "finsen*" in tex


def test_summary_matches_table_rows(store):
    summary = json.loads((store / "report" / "summary.json").read_text())
    assert summary["selected_on"] == "dev-loss"
    comp = summary["comparisons"][0]
    assert (comp["a"], comp["b"]) == ("ia2-then-sft", "sft")
    with open(store / "report" / "table_tiny-llama_digits_N4.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for metric, key, better in (("acc_pct", "acc", float.__gt__), ("ece", "ece", float.__lt__)):
        pairs = [(float(r["ia2-then-sft"]), float(r["sft"])) for r in rows if r["metric"] == metric]
        s = comp[key]
        assert s["rows"] == len(pairs) == 3
        assert s["wins"] == sum(better(a, b) for a, b in pairs)
        assert s["wins"] + s["ties"] + s["losses"] == 3
        assert s["ttest"]["n"] == 6  # 2 runs x 3 rows
        assert s["ttest"]["mean_diff"] == pytest.approx(sum(a - b for a, b in pairs) / 3, abs=1e-6)
    index = (store / "report" / "report.md").read_text()
    assert "IA2 -> SFT vs SFT only" in index and str(store) in index and "ia2 report" in index


def test_several_stores_report_as_one(store, tmp_path):
    """Chunks in two stores (here: run 0 in one, run 1 in the other, run 0 in both) give the one-store report."""
    import shutil

    from ia2.cli import main
    from ia2.report import make_report

    a, b = tmp_path / "a", tmp_path / "b"
    for dst, keep in ((a, {0}), (b, {0, 1})):
        shutil.copytree(store, dst, ignore=shutil.ignore_patterns("report*", "analysis", "adapters", "targets"))
        for p in (dst / "records").glob("*.json"):
            if json.loads(p.read_text())["unit"]["run"] not in keep:
                p.unlink()
    (b / "records" / next((a / "records").glob("*.json")).name).unlink()  # a unit found only in a
    make_report([a, b], out=tmp_path / "both", plots=False)
    one = (store / "report" / "table_tiny-llama_digits_N4.csv").read_text()
    assert (tmp_path / "both" / "table_tiny-llama_digits_N4.csv").read_text() == one
    index = (tmp_path / "both" / "report.md").read_text()
    n_done = sum(json.loads(p.read_text())["status"] == "done" for p in (store / "records").glob("*.json"))
    assert f"records: {n_done} done" in index and str(a) in index and str(b) in index
    with pytest.raises(IA2Error, match="pass --out"):
        make_report([a, b])
    assert main(["report", str(a), str(b)]) == 2


def test_plots_decode(store):
    import matplotlib.image as mpimg

    pngs = sorted((store / "report").glob("*.png"))
    names = {p.name.split("_tiny")[0] for p in pngs}
    assert names == {"reliability", "asim_layers", "asim_vs_ece"}  # one N: no metrics-vs-N figure
    index = (store / "report" / "report.md").read_text()
    for p in pngs:
        img = mpimg.imread(p)
        assert img.shape[0] > 50 and img.shape[1] > 50
        assert f"({p.name})" in index


def test_analysis_overlap_and_asim(store):
    ov = json.loads((store / "analysis" / "overlap.json").read_text())
    pairs = {(p["a"], p["b"], p["lr"]): p for p in ov["pairs"]}
    for a, b in (("sft", "ia2"), ("ia2", "ia2-then-sft")):
        for lr in (1e-3, 3e-4):
            p = pairs[(a, b, lr)]
            assert p["runs"] == 2 and 0.0 <= p["overlap"] <= 1.0
            assert set(p["by_module"]) == {"q_proj", "k_proj", "o_proj"}
    asim = json.loads((store / "analysis" / "asim.json").read_text())
    assert {p["method"] for p in asim["per_method"]} == {"sft", "ia2", "ia2-then-sft", "ia2+sft (w=0.05)"}
    assert all(len(p["layers"]) == 2 and -1.0 <= p["asim"] <= 1.0 for p in asim["per_method"])
    index = (store / "report" / "report.md").read_text()
    assert "LoRA subspace overlap" in index and "Activation similarity with ICL" in index


def _adapter_record(root: Path, seed: int, **unit_kw) -> dict:
    """A finished unit with a saved one-matrix LoRA adapter (random B), as lora_overlap reads it."""
    import torch
    from safetensors.torch import save_file

    unit = Unit(**{"model": "tiny-llama", "task": "sst2", "label_format": "digits", "eval_tasks": ("sst2",), "n": 4,
                   "run": 0, "lr": 1e-3, **unit_kw})
    uid = f"{seed:016d}"
    (root / "adapters" / uid).mkdir(parents=True)
    b = torch.randn(16, 8, generator=torch.Generator().manual_seed(seed))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b},
              str(root / "adapters" / uid / "adapter_model.safetensors"))
    return {"uid": uid, "unit": unit.to_dict(), "status": "done", "adapter": f"adapters/{uid}"}


def test_overlap_pairs_distinct_columns_of_one_setting(tmp_path):
    """Two units of one column (IA2 only with --labels gt and icl) never pair with each other (an overlap of 1.0),
    and a store mixing settings (here max_epochs) for the same run is refused, not averaged together."""
    from ia2.analyze import lora_overlap

    recs = [_adapter_record(tmp_path, 1, method="ia2", labels="gt"),
            _adapter_record(tmp_path, 2, method="ia2", labels="icl"),
            _adapter_record(tmp_path, 3, method="sft")]
    res = lora_overlap(recs, tmp_path)
    assert [(p["a"], p["b"]) for p in res["pairs"]] == [("sft", "ia2")]
    assert res["pairs"][0]["overlap"] < 0.99
    assert any(s.startswith("0000000000000002:") and "same column" in s for s in res["skipped"])
    recs += [_adapter_record(tmp_path, 4, method="ia2", max_epochs=10), _adapter_record(tmp_path, 5, method="sft",
                                                                                        max_epochs=10)]
    with pytest.raises(IA2Error, match="mixes settings"):
        lora_overlap(recs, tmp_path)


def test_recomputed_asim_compares_with_the_frozen_base(store):
    """Recomputation must take the ICL activations from the base model with no adapter injected."""
    import peft

    from ia2 import metrics
    from ia2.analyze import recompute_asim
    from ia2.pipeline import Runner
    from ia2.report import load_records

    st, records = load_records(store)
    rec = next(r for r in records if r["unit"]["method"] == "ia2-then-sft" and r["unit"]["run"] == 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_DATA_DIR", str(DATA))
        got = recompute_asim([rec], st.root, 3, device=TEST_DEVICE, force=True)
        ctx = Runner(st, device=TEST_DEVICE, log=lambda m: None).context(Unit.from_dict({**rec["unit"], "asim_examples": 3}))
        model = peft.PeftModel.from_pretrained(ctx.lm.model, str(st.root / rec["adapter"]))
        with model.disable_adapter():
            base = ctx.asim_acts(model, "sst2", True)
        ours = ctx.asim_acts(model, "sst2", False)
    want = metrics.asim_summary([metrics.activation_similarity(a, b) for a, b in zip(base, ours)])[0]
    ratio = metrics.asim_summary([metrics.activation_norm_ratio(a, b) for a, b in zip(base, ours)])[0]
    assert got[(rec["uid"], "sst2")]["examples"] == 3
    assert math.isclose(got[(rec["uid"], "sst2")]["asim"], want, rel_tol=1e-6)
    assert math.isclose(got[(rec["uid"], "sst2")]["norm_ratio"], ratio, rel_tol=1e-6)
    assert {k[1] for k in got} == {"sst2", "finsen", "poems"}


def test_filtered_analysis_recomputes_only_its_units_into_its_own_folder(store, tmp_path):
    from ia2.cli import main

    before = (store / "analysis" / "asim.json").read_text()
    assert main(["analyze", str(store), "--only", "method=ia2"]) == 2  # no --out: refused, nothing written
    out = tmp_path / "ia2-only"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_DATA_DIR", str(DATA))
        assert main(["analyze", str(store), "--only", "method=ia2", "--only", "lr=1e-3", "--examples", "3",
                     "--out", str(out), "--device", TEST_DEVICE]) == 0
    res = json.loads((out / "asim.json").read_text())
    assert [(p["method"], p["lr"]) for p in res["per_method"]] == [("ia2", 1e-3)]
    assert all(0.0 < r["norm_ratio"] < 10.0 and r["examples"] == [3] for r in res["rows"])
    assert all(len(r["norm_layers"]) == 2 and math.isclose(sum(r["norm_layers"]) / 2, r["norm_ratio"], rel_tol=1e-6)
               for r in res["rows"])
    assert "| norm ratio |" in (out / "asim.md").read_text()
    assert (store / "analysis" / "asim.json").read_text() == before


def test_residual_analysis_measures_every_method_and_the_zero_shot_floor(store, tmp_path):
    from ia2.cli import main

    out = tmp_path / "residual"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IA2_DATA_DIR", str(DATA))
        assert main(["analyze", str(store), "--only", "run=0", "--only", "method=ia2,sft", "--residual", "--examples", "3",
                     "--out", str(out), "--device", TEST_DEVICE]) == 0
    res = json.loads((out / "asim.json").read_text())
    methods = {p["method"] for p in res["per_method"]}
    assert methods == {"zero-shot", "sft", "ia2"}  # the zero-shot floor comes along despite --only method=
    for r in res["rows"]:
        assert len(r["resid_layers"]) == 3 and r["examples"] == [3]  # embeddings + 2 blocks
        # both prompts end in the same query token, and no adapter touches the embeddings
        assert r["resid_layers"][0] == pytest.approx(1.0, abs=1e-6)
        assert r["kl"] >= 0.0 and 0.0 <= r["top1_agree"] <= 1.0 and r["resid_norm_last"] > 0.0
    md = (out / "asim.md").read_text()
    assert "**Residual stream and next-token distribution (--residual).**" in md
    assert "| Zero-shot | - |" in md


def test_generative_and_single_token_tasks_of_one_model_and_n_get_separate_tables():
    from ia2.report import build_tables
    from ia2.select import Selection

    def sel(task, eval_task, variant):
        return Selection("m", "digits", 4, task, eval_task, eval_task != task, variant, variant, 1e-3, None,
                         rows=[], criterion="dev loss")

    tables = build_tables([sel("sst2", "sst2", "sft"), sel("gsm8k", "gsm8k", "sft"), sel("gsm8k", "gsm8ks", "ia2")])
    assert [(t.name, [r[:2] for r in t.rows]) for t in tables] == [
        ("m, digits labels, N=4", [("sst2", "sst2")]),
        ("m, generative, N=4", [("gsm8k", "gsm8k"), ("gsm8k", "gsm8ks")])]


def test_table_name_says_generative_instead_of_label_format():
    from ia2.report import Table

    assert Table("m", "digits", 2, rows=[("gsm8k", "gsm8k", False), ("gsm8k", "gsm8ks", True)]).name == "m, generative, N=2"
    assert Table("m", "words", 4, rows=[("sst2", "sst2", False)]).name == "m, words labels, N=4"


def test_generative_tables_show_exact_match_and_no_token_metrics():
    from ia2.report import METRIC, caption, table_markdown

    recs = []
    for method, lr in (("icl", None), ("sft", 1e-3)):
        rec = record(method, lr, 0, 0.5, 0.5, 0.1, evals=("gsm8k",))
        for row in rec["results"]:
            row.update(task="gsm8k", eval_task="gsm8k", ece=None, ece_paper=None, label_acc=None, label_ece=None,
                       label_mass=None,
                       asim=0.4 if lr else None)
        recs.append(rec)
    (table,) = build_tables(select(done_rows(recs), "dev-loss"))
    assert [m.key for m in table.metrics()] == ["acc", "asim"]
    assert "exact match" in caption(table, METRIC["acc"], "dev-loss")
    md = table_markdown(table, "dev-loss")
    assert "ECE" not in md and "top-1 next token" not in md


def test_ia2_loss_variant_is_its_own_column_only_for_ia2_methods():
    assert variant("ia2-then-sft", "icl", "relative") == "ia2-then-sft (ICL labels, relative loss)"
    assert variant("ia2", "gt", "relative") == "ia2 (relative loss)"
    assert variant("sft", "icl", "relative") == "sft (ICL labels)"  # no IA2 stage: the loss does not apply
    assert variant("ia2", "icl", "mse") == variant("ia2", "icl", None) == "ia2"
    assert variant("ia2", "gt", "relative", "residual") == "ia2 (relative loss, residual capture)"
    assert variant("ia2-then-sft", "gt", None, "residual") == "ia2-then-sft (residual capture)"
    assert variant("sft", "gt", None, "residual") == "sft" and variant("ia2", "gt", "mse", "attn") == "ia2"


def test_caption_names_columns_with_fewer_runs():
    from ia2.report import METRIC, caption

    recs = [record("sft", 1e-3, r, 0.5, 0.5, 0.6) for r in (0, 1, 2)]
    recs += [record("ia2-then-sft", 1e-3, r, 0.5, 0.5, 0.7) for r in (0, 1)]
    table = build_tables(select(done_rows(recs), "dev-loss"))[0]
    text = caption(table, METRIC["acc"], "dev-loss")
    assert "over 3 run(s) (0, 1, 2), IA2 -> SFT over 2 (0, 1);" in text
    assert "SFT only over" not in text
    recs.append(record("ia2-then-sft", 1e-3, 2, 0.5, 0.5, 0.7))
    assert "IA2 -> SFT over" not in caption(build_tables(select(done_rows(recs), "dev-loss"))[0], METRIC["acc"],
                                            "dev-loss")


def test_caption_names_the_rows_of_a_column_whose_runs_differ_by_row():
    """A union over rows would claim runs one row lacks (IA2 + SFT over 0-2 when finsen had 0-1 only); rows whose
    runs differ in every column say so once."""
    from ia2.report import METRIC, caption

    def on(task, rec):
        rec["unit"]["task"] = task
        for row in rec["results"]:
            row.update(task=task, eval_task=task, ood=False)
        return rec

    recs = [on(t, record(m, 1e-3, r, 0.5, 0.5, 0.6, evals=("sst2",)))
            for t in ("sst2", "finsen") for m in ("sft", "ia2-then-sft") for r in (0, 1, 2)
            if not (t == "finsen" and m == "ia2-then-sft" and r == 2)]
    text = caption(build_tables(select(done_rows(recs), "dev-loss"))[0], METRIC["acc"], "dev-loss")
    assert "over 3 run(s) (0, 1, 2), IA2 -> SFT over 2 (0, 1) on finsen;" in text
    assert "SFT only over" not in text
    recs = [r for r in recs if r["unit"]["run"] != 2 or r["unit"]["task"] != "finsen"]  # every column alike now
    text = caption(build_tables(select(done_rows(recs), "dev-loss"))[0], METRIC["acc"], "dev-loss")
    assert "Mean (std) over runs 3 (0, 1, 2) on sst2, 2 (0, 1) on finsen;" in text and " over 3 run(s)" not in text


def test_overlap_keeps_earlier_values_when_adapters_are_gone(tmp_path):
    """A committed store has no adapters: re-analysing it (a fresh clone) keeps each pair's earlier per-run value,
    including those of an analysis written before per-run uids were kept; a pair whose unit left is dropped."""
    import shutil

    from ia2.analyze import lora_overlap

    recs = [_adapter_record(tmp_path, 1, method="ia2"), _adapter_record(tmp_path, 2, method="sft"),
            _adapter_record(tmp_path, 3, method="ia2", run=1), _adapter_record(tmp_path, 4, method="sft", run=1)]
    first = lora_overlap(recs, tmp_path)
    assert first["carried"] == 0 and [p["runs"] for p in first["pairs"]] == [2]
    shutil.rmtree(tmp_path / "adapters" / recs[0]["uid"])  # run 0 lost one adapter, run 1 still has both
    without = lora_overlap(recs, tmp_path)
    assert without["pairs"][0]["runs"] == 1 and any("no saved adapter" in s for s in without["skipped"])
    again = lora_overlap(recs, tmp_path, first)
    assert again["carried"] == 1 and not again["skipped"]
    assert again["pairs"][0]["overlap"] == pytest.approx(first["pairs"][0]["overlap"])
    legacy = {"pairs": [{**p, "per_run": [{k: v for k, v in r.items() if k != "uids"} for r in p["per_run"]]}
                        for p in first["pairs"]]}
    assert lora_overlap(recs, tmp_path, legacy)["pairs"][0]["overlap"] == pytest.approx(first["pairs"][0]["overlap"])
    assert lora_overlap(recs[1:], tmp_path, first)["pairs"][0]["runs"] == 1  # run 0's ia2 unit is gone


def test_paired_test_text_prints_float_noise_as_zero():
    """Equal per-run values can leave a mean difference of -2.2e-16; the report must print it as no gap."""
    from ia2.report import _fmt_test
    assert _fmt_test({"t": 0.0, "p": 1.0, "n": 2, "mean_diff": -2.220446049250313e-16}).endswith("mean diff=+0")
    assert _fmt_test({"t": 1.5, "p": 0.2, "n": 3, "mean_diff": 3.3333}).endswith("mean diff=+3.33")
    assert _fmt_test({"t": float("nan"), "p": float("nan"), "n": 0, "mean_diff": float("nan")}) == "-"


def test_selection_regret_measures_accuracy_given_up_against_hindsight():
    recs = disagreeing_records()  # eval acc 0.6 / 0.7 / 0.9 at lr 1e-3 / 3e-4 / 1e-4, on both eval tasks
    recs += [record("ia2", 1e-3, run, 0.5, 0.5, 0.6) for run in (0, 1)]  # one candidate only: no grid, no row
    for rule, lost in (("dev-loss", 30.0), ("dev-acc", 20.0), ("eval", 0.0)):
        s = summarise(build_tables(select(done_rows(recs), rule)), recs)
        (r,) = s["regret"]
        assert (r["method"], r["rows"], r["best"]) == ("sft", 2, 2 if lost == 0 else 0)
        assert (r["mean"], r["max"]) == (pytest.approx(lost), pytest.approx(lost))
        assert f"| SFT only | 2 | {r['best']} | {lost:.1f} | {lost:.1f} |" in summary_markdown(s, rule)


def test_stage_stops_count_units_at_the_epoch_cap_per_lr_and_stage():
    from ia2.report import stage_stops, stops_markdown

    def trained(method, lr, run, stops, status="done"):
        rec = record(method, lr, run, 0.5, 0.5, 0.6, status=status)
        rec["train"] = {"stages": [{"objective": o, "stopped": how, "epochs": ep} for o, how, ep in stops]}
        return rec

    recs = [trained("sft", 1e-4, 0, [("ce", "max_epochs", 50)]), trained("sft", 1e-4, 1, [("ce", "patience", 30)]),
            trained("sft", 1e-3, 0, [("ce", "patience", 10)]),
            trained("ia2-then-sft", 1e-4, 0, [("ia2", "max_epochs", 50), ("ce", "patience", 20)]),
            trained("sft", 1e-4, 2, [("ce", "max_epochs", 50)], status="failed"),  # not counted
            record("icl", None, 0, None, None, 0.6)]  # no training, no row
    rows = {(r["method"], r["lr"], r["stage"]): r for r in stage_stops(recs)}
    assert set(rows) == {("sft", 1e-4, 1), ("sft", 1e-3, 1), ("ia2-then-sft", 1e-4, 1), ("ia2-then-sft", 1e-4, 2)}
    assert (rows["sft", 1e-4, 1]["units"], rows["sft", 1e-4, 1]["at_cap"]) == (2, 1)
    assert rows["sft", 1e-4, 1]["mean_epochs"] == pytest.approx(40.0)
    assert (rows["ia2-then-sft", 1e-4, 1]["objective"], rows["ia2-then-sft", 1e-4, 1]["at_cap"]) == ("ia2", 1)
    assert rows["ia2-then-sft", 1e-4, 2]["at_cap"] == 0
    assert "| m | IA2 -> SFT | 0.0001 | 2 (ce) | 1 | 0 | 20.0 |" in stops_markdown(stage_stops(recs))
