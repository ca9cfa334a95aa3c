"""``ia2 screen``'s table: the responsive flag, the majority rate and the compute line, on hand-made records."""

from ia2.config import Unit
from ia2.report import compute_spent
from ia2.screen import screening_markdown, screening_rows


def record(method, n, run, acc, gold, *, task="sst2", evals=("sst2",), secs=10.0):
    unit = Unit(model="m", task=task, label_format="words", eval_tasks=tuple(evals), n=n, run=run, method=method)
    rows = [{"eval_task": e, "acc": acc if e == task else 0.99, "label_acc": acc + 0.1} for e in evals]
    return {"uid": unit.uid(), "unit": unit.to_dict(), "status": "done", "results": rows,
            "predictions": {e: {"gold": gold} for e in evals}, "timing": {"total_s": secs},
            "machine": {"cpu": "x86_64", "device": "cpu"}}


GOLD = ["pos"] * 6 + ["neg"] * 4  # majority rate 0.6


def rows_for(icl_runs):
    recs = [record("zero-shot", 4, 0, 0.0, GOLD)]
    recs += [record("icl", 4, run, acc, GOLD, evals=("sst2", "finsen")) for run, acc in enumerate(icl_runs)]
    return screening_rows(recs)


def test_responsive_needs_the_margin_over_the_majority_rate_on_the_mean_over_runs():
    exact = rows_for([0.7, 0.6])  # mean 0.65: exactly 5 points over 0.6 counts, float rounding or not
    assert exact[0]["majority"] == 0.6 and abs(exact[0]["icl_acc"][4] - 0.65) < 1e-12
    assert exact[0]["responsive"] is True
    assert rows_for([0.64, 0.64])[0]["responsive"] is False
    # The OOD row (acc 0.99) is not the task's own and never makes a combination responsive.
    assert rows_for([0.5, 0.5])[0]["best_icl_acc"] == 0.5


def test_markdown_has_a_row_per_combination_and_the_compute_it_cost():
    recs = [record("zero-shot", 4, 0, 0.0, GOLD, secs=1800.0), record("icl", 4, 0, 0.9, GOLD, secs=1800.0),
            record("icl", 8, 0, 0.5, GOLD, task="finsen", evals=("finsen",), secs=3600.0)]
    rows = screening_rows(recs)
    md = screening_markdown(rows, "ia2 screen --tasks sst2,finsen", "vm", compute=compute_spent(recs))
    assert "| m | sst2 | words | 0.600 | 0.000 / 0.100 | 0.900 | - | **yes** |" in md
    assert "| m | finsen | words | 0.600 | - / - | - | 0.500 | no |" in md
    assert "3 finished units, 2.00 h of unit wall time" in md


def test_screen_command_end_to_end_and_resumes(tmp_path, data_dir):
    """The CLI runs zero-shot and ICL per N on the tiny model, writes both tables, and a rerun adds no unit."""
    from ia2.cli import main
    from ia2.store import Store

    out = tmp_path / "screen"
    args = ["screen", "--models", "tiny-llama", "--tasks", "sst2", "--formats", "digits", "--n", "4,8",
            "--runs", "0", "--limit-eval", "6", "--out", str(out)]
    assert main(args) == 0
    recs = Store(out, create=False).records()
    assert sorted((r["unit"]["method"], r["unit"]["n"]) for r in recs) == [
        ("icl", 4), ("icl", 8), ("zero-shot", 4), ("zero-shot", 8)]
    md = (out / "screening.md").read_text()
    assert "| tiny-llama | sst2 | digits |" in md and "ICL N=4 | ICL N=8" in md and "4 finished units" in md
    assert (out / "screening.csv").read_text().splitlines()[0].endswith("icl_n4,icl_n8,responsive")
    log_before = (out / "units.log").read_text()
    assert main(args) == 0
    assert (out / "units.log").read_text() == log_before  # resumed: nothing ran again
