"""Is a (model, task, label format) ICL-responsive? Zero-shot vs ICL at several N, before any training.

IA2 aligns a model to what ICL does: where ICL does not beat the majority class, no method will show
IA2's accuracy gain. A combination is ICL-responsive when ICL top-1 accuracy exceeds the majority-class
rate of the evaluated examples by at least ``margin`` at some N.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from statistics import mean

from .config import RunConfig
from .io import write_text
from .report import compute_markdown, compute_spent
from .store import Store


def screen_configs(models: list[str], tasks: list[str], formats: list[str], ns: list[int], runs: list[int],
                   limit_eval: int) -> list[RunConfig]:
    """One baseline-only config per (label format, task), evaluated on the task itself (no OOD pairs)."""
    return [RunConfig(models=models, tasks=[t], eval_tasks=[t], label_format=f, n=ns, runs=runs,
                      methods=["zero-shot", "icl"], limit_eval=limit_eval) for f in formats for t in tasks]


def screening_rows(records: list[dict], margin: float = 0.05) -> list[dict]:
    recs = [r for r in records if r["status"] == "done" and r["unit"]["method"] in ("zero-shot", "icl")]
    cells: dict = defaultdict(lambda: {"zs": [], "zs_label": [], "icl": defaultdict(list), "majority": None})
    for r in recs:
        u = r["unit"]
        for row in r["results"]:
            if row["eval_task"] != u["task"]:
                continue
            c = cells[(u["model"], u["task"], u["label_format"])]
            gold = r["predictions"].get(row["eval_task"], {}).get("gold")
            if gold:
                c["majority"] = Counter(gold).most_common(1)[0][1] / len(gold)
            if u["method"] == "zero-shot":
                c["zs"].append(row["acc"])
                c["zs_label"].append(row["label_acc"])
            else:
                c["icl"][u["n"]].append(row["acc"])
    out = []
    for (model, task, fmt), c in sorted(cells.items()):
        icl = {n: mean(v) for n, v in sorted(c["icl"].items())}
        best = max(icl.values()) if icl else None
        maj = c["majority"]
        out.append({"model": model, "task": task, "label_format": fmt, "majority": maj,
                    "zero_shot_acc": mean(c["zs"]) if c["zs"] else None,
                    "zero_shot_label_acc": mean(c["zs_label"]) if c["zs_label"] else None,
                    "icl_acc": icl, "best_icl_acc": best,
                    # the tolerance keeps an exact margin (0.65 vs 0.60) from failing on float rounding
                    "responsive": bool(best is not None and maj is not None and best - maj >= margin - 1e-9)})
    return out


def screening_markdown(rows: list[dict], command: str, machine: str, margin: float = 0.05,
                       compute: dict | None = None) -> str:
    """The table, plus the compute it cost when ``compute`` (from ``report.compute_spent``) is given."""
    ns = sorted({n for r in rows for n in r["icl_acc"]})
    head = ["model", "task", "format", "majority", "zero-shot acc / label", *[f"ICL N={n}" for n in ns], "ICL-responsive"]
    lines = [f"# ICL screening", "",
             f"ICL-responsive: ICL top-1 accuracy beats the majority-class rate by >= {margin * 100:.0f} points at some N. "
             "Accuracies are fractions, means over runs (top-1 token equals the label, stripped).", "",
             f"Written by: `{command}` (the store may also hold cells from earlier screening commands)  ",
             f"Machine: {machine}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for r in rows:
        lines.append("| " + " | ".join([r["model"], r["task"], r["label_format"], f(r["majority"]),
                                        f"{f(r['zero_shot_acc'])} / {f(r['zero_shot_label_acc'])}",
                                        *[f(r["icl_acc"].get(n)) for n in ns],
                                        "**yes**" if r["responsive"] else "no"]) + " |")
    if compute is not None:
        lines += ["", "## Compute", "", compute_markdown(compute).rstrip("\n")]
    return "\n".join(lines) + "\n"


def write_screening(store: Store, command: str, machine: str, margin: float = 0.05) -> list[dict]:
    records = store.records()  # read once: the table and its compute line
    rows = screening_rows(records, margin)
    compute = compute_spent(records)
    write_text(store.root / "screening.md", screening_markdown(rows, command, machine, margin, compute))
    buf = io.StringIO()
    w = csv.writer(buf)
    ns = sorted({n for r in rows for n in r["icl_acc"]})
    w.writerow(["model", "task", "label_format", "majority", "zero_shot_acc", "zero_shot_label_acc",
                *[f"icl_n{n}" for n in ns], "responsive"])
    for r in rows:
        w.writerow([r["model"], r["task"], r["label_format"], r["majority"], r["zero_shot_acc"],
                    r["zero_shot_label_acc"], *[r["icl_acc"].get(n) for n in ns], r["responsive"]])
    write_text(store.root / "screening.csv", buf.getvalue())
    return rows
