"""Paper-layout tables, the IA2 -> SFT vs SFT summary, plots and an index, from a results store.

Numbers are read from the store's records only (nothing is recomputed), after one configuration per
cell has been chosen by :mod:`ia2.select`. The selection rule is printed in the header and in every
caption, so a table made with the evaluation-set rule can never pass for a dev-selected one.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, metrics
from .activations import CAPTURE_POINTS
from .errors import IA2Error
from .io import write_json, write_text
from .methods import IA2_LOSSES
from .select import Selection, done_rows, generative_task, rule_label, select, variant
from .store import Store

TITLES = {"zero-shot": "Zero-shot", "icl": "ICL", "sft": "SFT only", "kd": "KD", "ia2": "IA2 only",
          "ia2-then-sft": "IA2 -> SFT", "ia2+sft": "IA2 + SFT", "sft-then-ia2": "SFT -> IA2"}
CORE = ("icl", "sft", "ia2", "ia2-then-sft", "ia2+sft")  # always shown, as in the paper


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    scale: float
    decimals: int
    higher_better: bool
    definition: str


METRICS = (
    Metric("acc", "Accuracy (%)", 100.0, 1, True,
           "accuracy: the top-1 next token over the full vocabulary equals the label"),
    Metric("ece", "ECE (standard)", 1.0, 2, False,
           "ECE (standard): confidence = top-1 probability over the full vocabulary, 15 equal-width bins"),
    Metric("ece_paper", "ECE (paper)", 1.0, 2, False,
           "ECE (paper): confidence = top-1 probability renormalised over the top-10 tokens, 15 equal-mass bins"),
    Metric("label_acc", "Label-set accuracy (%)", 100.0, 1, True,
           "label-set accuracy: argmax over the label tokens only equals the label"),
    Metric("label_mass", "Label mass", 1.0, 2, True,
           "label mass: probability the model puts on the label tokens together (how well-formed its answers "
           "are; ICL's is the target IA2 aligns to)"),
    Metric("asim", "asim", 1.0, 2, True,
           "asim: cosine similarity of the attention outputs of the base model WITH demonstrations and of the "
           "method WITHOUT them, at output positions, mean over layers (trained methods only)"),
)
# Generative tasks are scored on the answer parsed from the decoded text; the token-level metrics do not apply.
GENERATIVE_ACC = "accuracy: the answer parsed from the greedy decoding equals the reference (exact match)"
METRIC = {m.key: m for m in METRICS}


def column_title(var: str) -> str:
    base, _, rest = var.partition(" ")
    return TITLES.get(base, base) + (f" {rest}" if rest else "")


def _column_order(var: str) -> tuple:
    base = var.split(" ")[0]
    return (list(TITLES).index(base) if base in TITLES else len(TITLES), var)


# --- tables ---------------------------------------------------------------------------------------
@dataclass
class Table:
    """One (model, label format, N): rows are (source, eval) pairs, columns are methods."""

    model: str
    label_format: str
    n: int
    rows: list[tuple[str, str, bool]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    cells: dict[tuple, dict[str, Selection]] = field(default_factory=dict)

    @property
    def generative(self) -> bool:
        return bool(self.rows) and all(generative_task(r[0]) for r in self.rows)

    @property
    def name(self) -> str:
        # Generative tasks have no label format: say so rather than the (unused) default "digits".
        return f"{self.model}, {'generative' if self.generative else f'{self.label_format} labels'}, N={self.n}"

    def metrics(self) -> list[Metric]:
        """The metrics with at least one number in this table (generative tables: accuracy and asim)."""
        return [m for m in METRICS
                if any(values(self.cell(row, v), m.key) for row in self.rows for v in self.columns)]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", f"{self.model}_{self.label_format}_N{self.n}").strip("-")

    def cell(self, row: tuple, var: str) -> Selection | None:
        return self.cells.get(row[:2], {}).get(var)

    def runs(self, var: str | None = None) -> list[int]:
        """The runs in the table, or in one column of it."""
        return sorted({r["run"] for c in self.cells.values() for v, s in c.items() if var in (None, v)
                       for r in s.rows})

    def _row_label(self, row: tuple) -> str:
        return row[0] if row[0] == row[1] else f"{row[0]}->{row[1]}"

    def _cell_runs(self, row: tuple, var: str) -> tuple[int, ...]:
        s = self.cell(row, var)
        return tuple(sorted({r["run"] for r in s.rows})) if s else ()

    def _row_run_set(self, row: tuple) -> tuple[int, ...]:
        """A row's runs: those of any of its columns."""
        return tuple(sorted({r for v in self.columns for r in self._cell_runs(row, v)}))

    def row_runs(self) -> dict[tuple[int, ...], list[str]]:
        """Run set -> the rows holding it, so a caption never claims runs one row lacks."""
        out: dict[tuple[int, ...], list[str]] = {}
        for row in self.rows:
            out.setdefault(self._row_run_set(row), []).append(self._row_label(row))
        return out

    def partial_columns(self) -> dict[str, dict[tuple[int, ...], list[str]]]:
        """Columns with fewer runs than their row somewhere (e.g. a method whose chunk has not run them all yet), as
        run set -> the rows where it has them; empty cells ("-") are skipped."""
        row_sets = {row: self._row_run_set(row) for row in self.rows}
        out = {}
        for v in self.columns:
            groups: dict[tuple[int, ...], list[str]] = {}
            for row in self.rows:
                rs = self._cell_runs(row, v)
                if rs and rs != row_sets[row]:
                    groups.setdefault(rs, []).append(self._row_label(row))
            if groups:
                out[v] = groups
        return out


def _task_rank(name: str) -> tuple:
    from .tasks import REGISTRY
    return (list(REGISTRY).index(name) if name in REGISTRY else len(REGISTRY), name)


def build_tables(selections: list[Selection]) -> list[Table]:
    """Group selections into tables; rows grouped by source task, in-distribution row first."""
    tables: dict[tuple, Table] = {}
    for s in selections:
        t = tables.setdefault(s.table_key, Table(*s.table_key))
        t.cells.setdefault(s.row_key, {})[s.variant] = s
        if (s.task, s.eval_task, s.ood) not in t.rows:
            t.rows.append((s.task, s.eval_task, s.ood))
        if s.variant not in t.columns:
            t.columns.append(s.variant)
    for t in tables.values():
        t.rows.sort(key=lambda r: (_task_rank(r[0]), r[2], _task_rank(r[1])))
        t.columns = sorted(set(t.columns) | set(CORE), key=_column_order)
    return [tables[k] for k in sorted(tables, key=lambda k: (k[0], k[1], k[2]))]


def values(sel: Selection | None, metric: str) -> list[float]:
    """Per-run values of a metric (scaled as displayed); empty when the metric does not apply."""
    if sel is None:
        return []
    vals = [r.get(metric) for r in sel.rows]
    if any(v is None or math.isnan(v) for v in vals):
        return []
    return [v * METRIC[metric].scale for v in vals]


def mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) over runs; std is None for a single run."""
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def cell_text(vals: list[float], decimals: int) -> str:
    m, s = mean_std(vals)
    if m is None:
        return "-"
    return f"{m:.{decimals}f}" + (f" ({s:.{decimals}f})" if s is not None else "")


def best_columns(table: Table, row: tuple, metric: Metric) -> set[str]:
    """Columns with the best displayed mean in a row (ties on the rounded value all count as best)."""
    shown = {}
    for var in table.columns:
        m, _ = mean_std(values(table.cell(row, var), metric.key))
        if m is not None:
            shown[var] = round(m, metric.decimals)
    if len(set(shown.values())) < 2:
        return set()  # nothing stands out when every method shows the same number
    best = max(shown.values()) if metric.higher_better else min(shown.values())
    return {v for v, x in shown.items() if x == best}


def caption(table: Table, metric: Metric, rule: str) -> str:
    runs = table.runs()
    definition = GENERATIVE_ACC if metric.key == "acc" and table.generative else metric.definition

    def over(rs: tuple[int, ...]) -> str:
        return f"{len(rs)} ({', '.join(map(str, rs))})"

    def per_row(groups: dict) -> str:
        """One run set for every row reads "3 (0, 1, 2)"; otherwise each set names its rows."""
        if len(groups) == 1 and len(next(iter(groups.values()))) == len(table.rows):
            return over(next(iter(groups)))
        return ", ".join(f"{over(rs)} on {', '.join(rows)}" for rs, rows in groups.items())
    rows = table.row_runs()
    head = (f"Mean (std) over {len(runs)} run(s) ({', '.join(map(str, runs))})" if len(rows) == 1
            else f"Mean (std) over runs {per_row(rows)}")
    fewer = "".join(f", {column_title(v)} over {per_row(groups)}" for v, groups in table.partial_columns().items())
    return (f"{metric.title} — {table.name}. {head}{fewer}; "
            f"{rule_label(rule)}. {definition[0].upper() + definition[1:]}. "
            f"`*` = out of distribution; bold = best in row. "
            "Trained adapters are evaluated without demonstrations; ICL uses N-1 of them.")


def _grid(table: Table, metric: Metric) -> list[list[tuple[str, bool]]]:
    """Text and bold flag of every cell, in row and column order (first two: source, eval)."""
    out, prev = [], None
    for row in table.rows:
        best = best_columns(table, row, metric)
        src = row[0] if row[0] != prev else ""
        prev = row[0]
        out.append([(src, False), (row[1] + ("*" if row[2] else ""), False)] +
                   [(cell_text(values(table.cell(row, v), metric.key), metric.decimals), v in best)
                    for v in table.columns])
    return out


def markdown_table(table: Table, metric: Metric, rule: str) -> str:
    head = ["source", "eval"] + [column_title(v) for v in table.columns]
    lines = [f"**{caption(table, metric, rule)}**", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * len(table.columns)) + "|"]
    for cells in _grid(table, metric):
        lines.append("| " + " | ".join(f"**{t}**" if b else t for t, b in cells) + " |")
    return "\n".join(lines) + "\n"


def hparam_markdown(table: Table, rule: str) -> str:
    """Which learning rate (and w) each cell reports, and on what it was chosen."""
    head = ["source", "eval"] + [column_title(v) for v in table.columns]
    lines = [f"**Chosen hyper-parameters — {table.name}; {rule_label(rule)}.**", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in table.rows:
        cells = []
        for v in table.columns:
            s = table.cell(row, v)
            cells.append("-" if s is None or s.lr is None else
                         f"lr={s.lr:g}" + (f", w={s.ce_weight:g}" if s.ce_weight is not None else "")
                         + f" ({s.criterion})")
        lines.append("| " + " | ".join([row[0], row[1] + ("*" if row[2] else "")] + cells) + " |")
    return "\n".join(lines) + "\n"


def table_markdown(table: Table, rule: str) -> str:
    parts = [f"# {table.name}\n", f"Selection: **{rule_label(rule)}**.\n"]
    parts += [markdown_table(table, m, rule) for m in table.metrics()]
    parts.append(hparam_markdown(table, rule))
    return "\n".join(parts)


CSV_HEAD = ["model", "label_format", "n", "selected_on", "source_task", "eval_task", "ood", "metric"]


def table_csv(table: Table, rule: str) -> str:
    """Long-by-metric, wide-by-method CSV with unrounded means (acc in %), std and chosen lr / w."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_HEAD + [f"{v}{s}" for v in table.columns for s in ("", " std")])
    for row in table.rows:
        base = [table.model, table.label_format, table.n, rule, row[0], row[1], int(row[2])]
        for m in METRICS:
            stats = [mean_std(values(table.cell(row, v), m.key)) for v in table.columns]
            w.writerow(base + [m.key + ("_pct" if m.scale == 100 else "")] +
                       ["" if x is None else f"{x:.10g}" for ms in stats for x in ms])
        for hp in ("lr", "ce_weight"):
            sels = [table.cell(row, v) for v in table.columns]
            w.writerow(base + [hp] + [x for s in sels for x in
                                      ("" if s is None or getattr(s, hp) is None else f"{getattr(s, hp):g}", "")])
    return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "`": "", "—": "---"}


def _tex(text: str) -> str:
    """Escape plain text for LaTeX; a lone "-" (missing cell) becomes an en dash, "->" an arrow."""
    if text == "-":
        return "--"
    return "".join(_TEX.get(ch, ch) for ch in text).replace("->", r"$\rightarrow$")


def latex_table(table: Table, metric: Metric, rule: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{_tex(caption(table, metric, rule))}}}",
             r"\begin{tabular}{ll" + "r" * len(table.columns) + "}", r"\toprule",
             " & ".join(["Source", "Eval"] + [_tex(column_title(v)) for v in table.columns]) + r" \\", r"\midrule"]
    for i, cells in enumerate(_grid(table, metric)):
        if i and cells[0][0]:
            lines.append(r"\midrule")
        lines.append(" & ".join(rf"\textbf{{{_tex(t)}}}" if b else _tex(t) for t, b in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def table_latex(table: Table, rule: str) -> str:
    head = f"% {table.name}; {rule_label(rule)}. Requires \\usepackage{{booktabs}}.\n"
    return head + "\n".join(latex_table(table, m, rule) for m in table.metrics())


# --- summary: IA2 -> SFT vs SFT only -----------------------------------------------------------------
def _pairs(tables: list[Table], a: str, b: str, metric: str) -> tuple[dict[tuple, tuple[float, float]], list[tuple]]:
    """The runs both methods have, per row: values keyed (table, source task, eval task, run), and per-row means
    over those same runs (so a row's count and its pairs in the t-test see the same runs); rows sharing no run
    are left out."""
    pairs, rows = {}, []
    for t in tables:
        for row in t.rows:
            sa, sb = t.cell(row, a), t.cell(row, b)
            ra = {r["run"]: v for r, v in zip(sa.rows, values(sa, metric))} if sa else {}
            rb = {r["run"]: v for r, v in zip(sb.rows, values(sb, metric))} if sb else {}
            runs = sorted(set(ra) & set(rb))
            if not runs:
                continue
            pairs.update({(t.slug, row[0], row[1], run): (ra[run], rb[run]) for run in runs})
            rows.append((t.slug, row[0], row[1], statistics.fmean(ra[r] for r in runs),
                         statistics.fmean(rb[r] for r in runs)))
    return pairs, rows


def _by_unit(pairs: dict[tuple, tuple[float, float]]) -> tuple[list[float], list[float]]:
    """One pair per trained unit (table, source task, run): the mean over its evaluation rows. A unit's in- and
    out-of-distribution rows come from the same adapter and demonstration draw, so they are not independent."""
    by: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for (slug, src, _eval, run), ab in pairs.items():
        by[(slug, src, run)].append(ab)
    return ([statistics.fmean(x[0] for x in v) for v in by.values()],
            [statistics.fmean(x[1] for x in v) for v in by.values()])


COMPARED = ("acc", "ece", "ece_paper")  # the metrics each IA2 -> SFT vs SFT comparison counts and tests


def compare(tables: list[Table], a: str = "ia2-then-sft", b: str = "sft") -> dict:
    """Row wins (mean over the shared runs; lower ECE wins; unrounded) and two paired t-tests: over (run, row)
    pairs, the paper's "across runs and tasks" (SPEC section 5), and over trained units, the conservative one."""
    out = {"a": a, "b": b}
    for key in COMPARED:
        pairs, rows = _pairs(tables, a, b, key)
        ties = [math.isclose(r[3], r[4], rel_tol=1e-9, abs_tol=1e-12) for r in rows]
        better = (lambda u, v: u > v) if METRIC[key].higher_better else (lambda u, v: u < v)
        out[key] = {"rows": len(rows), "wins": sum(better(r[3], r[4]) and not t for r, t in zip(rows, ties)),
                    "ties": sum(ties), "losses": sum(better(r[4], r[3]) and not t for r, t in zip(rows, ties)),
                    "ttest": metrics.paired_ttest([x for x, _ in pairs.values()], [y for _, y in pairs.values()]),
                    "ttest_units": metrics.paired_ttest(*_by_unit(pairs))}
    return out


def asim_by_method(tables: list[Table]) -> list[dict]:
    """Mean asim of the reported (selected) configuration per table and method, over rows and runs."""
    out = []
    for t in tables:
        means = {v: statistics.fmean(xs) for v in t.columns
                 if (xs := [x for row in t.rows for x in values(t.cell(row, v), "asim")])}
        if means:
            out.append({"table": t.name, "means": means})
    return out


def selection_regret(tables: list[Table]) -> list[dict]:
    """How much evaluation accuracy the selection rule gave up, per method: over the rows whose cell had a grid
    (two or more candidates), points between the candidate best on the evaluation set in hindsight and the chosen
    one (on the runs every candidate has). Zero by construction under ``eval``; it measures how well a dev rule on
    2-4 dev examples stands in for the paper's test-set choice."""
    by: dict[str, list[float]] = defaultdict(list)
    for t in tables:
        for row in t.rows:
            for v in t.columns:
                sel = t.cell(row, v)
                cands = [c for c in (sel.candidates if sel else []) if c["eval_acc"] is not None]
                chosen = [c["eval_acc"] for c in cands if (c["lr"], c["ce_weight"]) == (sel.lr, sel.ce_weight)]
                if len(cands) >= 2 and chosen:
                    by[v].append(100 * (max(c["eval_acc"] for c in cands) - chosen[0]))
    return [{"method": v, "rows": len(xs), "best": sum(x < 1e-9 for x in xs), "mean": statistics.fmean(xs),
             "max": max(xs)} for v, xs in sorted(by.items(), key=lambda kv: _column_order(kv[0]))]


def compute_spent(records: list[dict]) -> dict:
    """Wall time of the finished units (each record's ``timing.total_s``) per model and method."""
    by: dict[tuple, list] = defaultdict(lambda: [0, 0.0])
    machines = set()
    for rec in records:
        secs = (rec.get("timing") or {}).get("total_s")
        if rec.get("status") != "done" or secs is None:
            continue
        cell = by[(rec["unit"]["model"], rec["unit"]["method"])]
        cell[0] += 1
        cell[1] += secs
        m = rec.get("machine") or {}
        machines.add(", ".join(f"{k} {m[k]}" for k in ("cpu", "device", "torch") if m.get(k)))
    rows = [{"model": k[0], "method": k[1], "units": v[0], "hours": v[1] / 3600}
            for k, v in sorted(by.items(), key=lambda kv: (kv[0][0], _column_order(kv[0][1])))]
    return {"units": sum(r["units"] for r in rows), "hours": sum(r["hours"] for r in rows), "rows": rows,
            "machines": sorted(machines - {""})}


def stage_stops(records: list[dict]) -> list[dict]:
    """How each training stage ended, per model, method, learning rate and stage: at the epoch cap or by patience
    on dev loss. A comparison at a fixed small learning rate is only fair if the baseline was not cut short, so
    reports show it."""
    by: dict[tuple, list] = defaultdict(lambda: [0, 0, 0])
    for rec in records:
        if rec.get("status") != "done":
            continue
        u = rec["unit"]
        for i, st in enumerate((rec.get("train") or {}).get("stages") or []):
            cell = by[(u["model"], u["method"], u["lr"], i, st.get("objective"))]
            cell[0] += 1
            cell[1] += st.get("stopped") == "max_epochs"
            cell[2] += st.get("epochs") or 0
    order = sorted(by, key=lambda k: (k[0], _column_order(k[1]), k[2] or 0, k[3]))
    return [{"model": k[0], "method": k[1], "lr": k[2], "stage": k[3] + 1, "objective": k[4], "units": by[k][0],
             "at_cap": by[k][1], "mean_epochs": by[k][2] / by[k][0]} for k in order]


def lr_text(lr: float | None) -> str:
    """A learning rate as tables print it ("-" for untrained methods)."""
    return "-" if lr is None else f"{lr:g}"


def stops_markdown(stops: list[dict]) -> str:
    lines = ["Per model, method, learning rate and training stage: units whose stage ran to the epoch cap "
             "(`max_epochs`) rather than stopping on dev loss (patience), and the mean number of epochs run.", "",
             "| model | method | lr | stage | units | at the epoch cap | mean epochs |",
             "|---|---|---:|---|---:|---:|---:|"]
    for r in stops:
        lines.append(f"| {r['model']} | {column_title(r['method'])} | {lr_text(r['lr'])} | "
                     f"{r['stage']} ({r['objective']}) | "
                     f"{r['units']} | {r['at_cap']} | {r['mean_epochs']:.1f} |")
    return "\n".join(lines) + "\n"


def summarise(tables: list[Table], records: list[dict] | None = None) -> dict:
    pairs = [("ia2-then-sft", "sft")]
    if any("sft (ICL labels)" in t.columns and "ia2-then-sft (ICL labels)" in t.columns for t in tables):
        pairs.append(("ia2-then-sft (ICL labels)", "sft (ICL labels)"))
    # an IA2 loss variant (ablation: another loss or capture point): against SFT only and against the same method
    # with the paper's loss
    present = {c for t in tables for c in t.columns}
    for labels in (None, "icl"):
        for loss, capture in list(itertools.product(IA2_LOSSES, CAPTURE_POINTS))[1:]:
            for method, rival in (("ia2-then-sft", "sft"), ("ia2", None)):
                v = variant(method, labels, loss, capture)
                for b in ([variant(rival, labels)] if rival else []) + [variant(method, labels)]:
                    if v in present and (v, b) not in pairs:
                        pairs.append((v, b))
    scopes = ([("all tables", tables)] if len(tables) > 1 else []) + [(t.name, [t]) for t in tables]
    comparisons = [{"scope": scope, **compare(ts, a, b)} for a, b in pairs for scope, ts in scopes
                   if any(a in t.columns and b in t.columns for t in ts)]
    _adjust_per_table(comparisons)
    return {"comparisons": comparisons, "asim": asim_by_method(tables), "regret": selection_regret(tables),
            "compute": compute_spent(records or []), "stops": stage_stops(records or [])}


def _adjust_per_table(comparisons: list[dict]) -> None:
    """Adds ``p_holm`` to every per-table test when there are several tables: Holm over the tables of one
    comparison, metric and test (the pooled "all tables" test is one test and keeps its p). With a dozen tables,
    one p under 0.05 is expected by chance; the adjusted p says whether a table's result survives that."""
    family: dict[tuple, list[dict]] = defaultdict(list)
    for c in comparisons:
        if c["scope"] != "all tables":
            for key in COMPARED:
                for test in ("ttest", "ttest_units"):
                    family[(c["a"], c["b"], key, test)].append(c[key][test])
    for tests in (t for t in family.values() if len(t) > 1):
        for tt, p in zip(tests, metrics.holm([tt["p"] for tt in tests])):
            tt["p_holm"] = p


def _fmt_test(tt: dict) -> str:
    if tt["n"] == 0:
        return "-"
    t = "n/a" if math.isnan(tt["t"]) else f"{tt['t']:.2f}"
    p = "n/a" if math.isnan(tt["p"]) else f"{tt['p']:.3g}"
    if "p_holm" in tt and not math.isnan(tt["p_holm"]):
        p += f" (Holm {tt['p_holm']:.3g})"
    md = tt["mean_diff"]
    md = 0.0 if abs(md) < 1e-9 else md  # float noise of equal per-run values (e.g. -2.2e-16) reads as a real gap
    return f"t={t}, p={p}, n={tt['n']}, mean diff={md:+.3g}"


def summary_markdown(summary: dict, rule: str) -> str:
    lines = [f"Row counts compare unrounded means over the runs both methods have (a row can count as won where the "
             f"table shows equal numbers). The paired t-test pairs the same run of the same row, as the paper does "
             f"(across runs and tasks); the one by trained unit first averages each unit's evaluation rows (its "
             f"in- and out-of-distribution rows share one adapter, so they are not independent) and is the "
             f"conservative one (a - b; accuracy in %, ECE lower is better). A per-table p is followed by its Holm-adjusted "
             f"value over the tables of the same comparison, metric and test. Selection: {rule_label(rule)}.", "",
             "| a vs b | scope | metric | rows | a better | ties | a worse | paired t-test (runs x rows) | "
             "paired t-test (trained units) |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for c in summary["comparisons"]:
        for key in COMPARED:
            s = c[key]
            lines.append(f"| {column_title(c['a'])} vs {column_title(c['b'])} | {c['scope']} | {key} | {s['rows']} | "
                         f"{s['wins']} | {s['ties']} | {s['losses']} | {_fmt_test(s['ttest'])} | "
                         f"{_fmt_test(s['ttest_units'])} |")
    if summary.get("asim"):
        cols = sorted({v for a in summary["asim"] for v in a["means"]}, key=_column_order)
        lines += ["", "Mean asim of the reported configurations (over rows and runs; higher = closer to ICL's "
                  "activations):", "", "| table | " + " | ".join(column_title(v) for v in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        lines += [f"| {a['table']} | " + " | ".join(f"{a['means'][v]:.3f}" if v in a["means"] else "-" for v in cols)
                  + " |" for a in summary["asim"]]
    if summary.get("regret"):
        lines += ["", "What the selection rule gave up: over the rows with a grid (two or more candidate settings), "
                  "evaluation accuracy points between the candidate best on the evaluation set in hindsight and the "
                  "chosen one (0 under test-set selection, by construction):", "",
                  "| method | rows with a grid | chose the best | mean points lost | most points lost |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {column_title(r['method'])} | {r['rows']} | {r['best']} | {r['mean']:.1f} | {r['max']:.1f} |"
                  for r in summary["regret"]]
    return "\n".join(lines) + "\n"


def compute_markdown(compute: dict) -> str:
    lines = [f"{compute['units']} finished units, {compute['hours']:.2f} h of unit wall time (sum of the records' "
             f"`timing.total_s`; units that ran in parallel count separately). Machine(s): "
             f"{'; '.join(compute['machines']) or 'not recorded'}.", "",
             "| model | method | units | hours |", "|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {column_title(r['method'])} | {r['units']} | {r['hours']:.2f} |" for r in compute["rows"]]
    return "\n".join(lines) + "\n"


# --- orchestration ---------------------------------------------------------------------------------------
def load_records(store_dir: str | Path) -> tuple[Store, list[dict]]:
    """Open an existing store (never creates one) and check that it has finished records."""
    root = Path(store_dir)
    if not root.is_dir():
        raise IA2Error(f"{root} does not exist or is not a folder", "pass the folder given to ia2 run/sweep --out")
    store = Store(root, create=False)
    records = store.records()
    if not any(r.get("status") == "done" for r in records):
        raise IA2Error(f"{root} has no finished records ({len(records)} record(s), none done)",
                       "run ia2 run or ia2 sweep with --out pointing here first")
    return store, records


def write_tables(tables: list[Table], rule: str, out: Path) -> list[dict]:
    files = []
    for t in tables:
        paths = {ext: out / f"table_{t.slug}.{ext}" for ext in ("md", "csv", "tex")}
        write_text(paths["md"], table_markdown(t, rule))
        write_text(paths["csv"], table_csv(t, rule))
        write_text(paths["tex"], table_latex(t, rule))
        files.append({"table": t, **{k: p.name for k, p in paths.items()}})
    return files


def selection_csv(selections: list[Selection], rule: str) -> str:
    """Every candidate of every trained cell with its means and whether it was chosen (audit trail)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "label_format", "n", "source_task", "eval_task", "method", "selected_on", "criterion",
                "lr", "ce_weight", "runs", "dev_loss", "dev_acc", "eval_acc", "chosen"])
    for s in selections:
        for c in s.candidates:
            w.writerow([s.model, s.label_format, s.n, s.task, s.eval_task, s.variant, rule, s.criterion,
                        c["lr"], c["ce_weight"], c["runs"], c["dev_loss"], c["dev_acc"], c["eval_acc"],
                        int(c["lr"] == s.lr and c["ce_weight"] == s.ce_weight)])
    return buf.getvalue()


def merge_records(loaded: list[tuple[Store, list[dict]]]) -> list[dict]:
    """Records of several stores as one list; a unit found in more than one store counts once (a finished copy
    wins over an unfinished one, then the first store given)."""
    by_uid: dict[str, dict] = {}
    for _, records in loaded:
        for rec in records:
            old = by_uid.get(rec["uid"])
            if old is None or (old.get("status") != "done" and rec.get("status") == "done"):
                by_uid[rec["uid"]] = rec
    return list(by_uid.values())


def parse_filters(specs: list[str] | None) -> dict[str, str]:
    """``FIELD=VALUE`` strings (``--only lr=1e-3``) into a dict, checking FIELD against the unit's fields."""
    from dataclasses import fields as dc_fields

    from .config import Unit

    known = {f.name for f in dc_fields(Unit)}
    out = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or key not in known:
            raise IA2Error(f"bad --only '{spec}'", f"write FIELD=VALUE with FIELD one of {', '.join(sorted(known))}")
        out[key] = value
    return out


def _matches(value, wanted: str) -> bool:
    """``wanted`` is one value or a comma list of alternatives (``method=sft,ia2``)."""
    return any(_matches_one(value, w.strip()) for w in wanted.split(","))


def _matches_one(value, wanted: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value) == wanted
    try:
        return math.isclose(float(value), float(wanted), rel_tol=1e-9)
    except ValueError:
        return False


def filter_records(records: list[dict], filters: dict[str, str]) -> list[dict]:
    """Keep records whose unit matches every filter; a field a unit does not have (None: e.g. the lr of a
    baseline) does not exclude it, so ``lr=1e-3`` keeps the baselines beside the lr-1e-3 adapters."""
    return [r for r in records
            if all(r["unit"].get(k) is None or _matches(r["unit"][k], v) for k, v in filters.items())]


def matching_records(records: list[dict], filters: dict[str, str] | None) -> list[dict]:
    """:func:`filter_records`, refusing a selection with no finished unit (``--only`` of report and analyze)."""
    kept = filter_records(records, filters or {})
    if not any(r.get("status") == "done" for r in kept):
        raise IA2Error(f"no finished records match {filters}", "check the --only FIELD=VALUE filters")
    return kept


def make_report(store_dirs: str | Path | list, rule: str = "dev-loss", out: str | Path | None = None,
                command: str | None = None, plots: bool = True, filters: dict[str, str] | None = None) -> Path:
    """Write tables, summary, plots and ``report.md`` under ``out``; returns the index path.

    Several stores (e.g. chunks run in different sessions or on different machines) are reported as one;
    units whose settings differ within a cell are still refused by the selection."""
    dirs = [store_dirs] if isinstance(store_dirs, (str, Path)) else list(store_dirs)
    if len(dirs) > 1 and out is None:
        raise IA2Error("several stores need an output folder", "pass --out, e.g. --out runs/report-all")
    loaded = [load_records(d) for d in dirs]
    stores, records = [s for s, _ in loaded], matching_records(merge_records(loaded), filters)
    out = Path(out) if out else stores[0].root / "report"
    out.mkdir(parents=True, exist_ok=True)
    selections = select(done_rows(records), rule)
    tables = build_tables(selections)
    files = write_tables(tables, rule, out)
    summary = summarise(tables, records)
    write_json(out / "summary.json", {"selected_on": rule, "selection": rule_label(rule), **summary})
    write_text(out / "selection.csv", selection_csv(selections, rule))
    figures = []
    if plots:
        from .plots import make_plots
        figures = make_plots(tables, records, out, rule_label(rule))
    index = _index(stores, records, rule, files, summary, figures, out, command, filters)
    write_text(out / "report.md", index)
    return out / "report.md"


def _analysis_section(roots: list[Path], out: Path) -> list[str]:
    lines = []
    for root in roots:
        adir = root / "analysis"
        found = [p for p in (adir / "overlap.md", adir / "asim.md") if p.exists()]
        where = f" of `{_relpath(root, out)}`" if len(roots) > 1 else ""
        if not found:
            lines += [f"No analyses found{where} (run `ia2 analyze` on the store to add LoRA overlap and asim "
                      "summaries).", ""]
        for p in found:
            rel = Path(_relpath(p, out))
            text = "\n" + p.read_text(encoding="utf-8").strip()
            lines += [(text.replace("\n# ", "\n### ").strip()).replace("\n", f"{where}\n", 1), "",
                      f"Source: [{rel}]({rel}) and [{rel.with_suffix('.json')}]({rel.with_suffix('.json')}).", ""]
    return lines


def _relpath(p: Path, start: Path) -> str:
    import os
    return os.path.relpath(p.resolve(), start.resolve())


def _index(stores: list[Store], records: list[dict], rule: str, files: list[dict], summary: dict,
           figures: list[Path], out: Path, command: str | None, filters: dict[str, str] | None = None) -> str:
    done = sum(r.get("status") == "done" for r in records)
    roots = " ".join(str(s.root) for s in stores)
    lines = ["# IA2 report", "",
             f"- store{'s' if len(stores) > 1 else ''}: " + ", ".join(f"`{s.root.resolve()}`" for s in stores),
             f"- command: `{command or f'ia2 report {roots} --select-on {rule} --out {out}'}`",
             f"- generated: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by ia2 {__version__}",
             f"- records: {done} done, {len(records) - done} failed or unfinished (ignored)"
             + (f"; only units with {', '.join(f'{k}={v}' for k, v in filters.items())}" if filters else ""),
             f"- selection: **{rule_label(rule)}** (per model, source task, eval task, label format, N and method;"
             f" all candidates in [selection.csv](selection.csv))",
             "- metrics: " + "; ".join(m.definition for m in METRICS), ""]
    if rule == "eval":
        lines += ["> **Warning:** hyper-parameters were chosen on the evaluation set itself, as in the paper. "
                  "These numbers are optimistic; use `--select-on dev-loss` for an honest estimate.", ""]
    variants = any(c["a"].endswith(("loss)", "capture)")) for c in summary["comparisons"])
    lines += ["## Summary: IA2 -> SFT vs SFT only" + (", and the IA2 loss variants" if variants else ""), "",
              summary_markdown(summary, rule), "## Tables", ""]
    for f in files:
        lines += [f"### {f['table'].name}", "", f"[Markdown]({f['md']}) · [CSV]({f['csv']}) · [LaTeX]({f['tex']})", "",
                  *(markdown_table(f["table"], m, rule) for m in f["table"].metrics() if m.key in ("acc", "ece"))]
    lines += ["## Plots", ""] + [f"- [{p.stem}]({p.name})\n\n  ![{p.stem}]({p.name})" for p in figures]
    lines += ["", "## Analyses", ""]
    if filters:
        lines += ["The analyses are `ia2 analyze`'s for the whole store(s); `--only` does not filter them.", ""]
    lines += _analysis_section([s.root for s in stores], out)
    if summary.get("stops"):
        lines += ["## Training stages: epoch cap or early stop", "", stops_markdown(summary["stops"])]
    lines += ["## Compute", "", compute_markdown(summary["compute"])]
    return "\n".join(lines) + "\n"
