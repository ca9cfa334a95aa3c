"""Hyper-parameter selection for reports: one learning rate (and ce weight) per table cell.

A cell is (model, label format, N, source task, eval task, method). Its candidates are the (lr, w)
settings in the store; each has one row per run. The default picks the candidate with the lowest
mean dev loss over runs (the runs every candidate has, while a grid is still growing), so the evaluation set
never influences the choice. ``dev-acc`` uses the source task's dev accuracy instead. ``eval`` reproduces the
paper's protocol (mean accuracy on the evaluation set itself) and must be labelled as such wherever its numbers
are shown.

Dev numbers belong to the trained unit, not to an eval task, so a unit's out-of-distribution rows
are selected with the same source-task dev numbers as its in-distribution row (same choice).

IA2 + SFT's dev loss is (1-w) L_IA2 + w L_SFT, a different objective for every w, so under
``dev-loss`` the lr is chosen on dev loss within each w and w itself on dev accuracy.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .errors import IA2Error
from .methods import get_method
from .models import default_dtype, dtype_name

RULES = {
    "dev-loss": "learning rate chosen on dev loss (mean over runs; the w of IA2 + SFT on dev accuracy)",
    "dev-acc": "learning rate chosen on dev accuracy (mean over runs; ties: the lower dev loss)",
    "eval": "learning rate chosen on the EVALUATION set (paper protocol; optimistic)",
}
BASELINES = ("zero-shot", "icl")

# Unit fields that change what a trained (or any) result means; mixing them in one cell is refused.
_SETTING_ALL = ("limit_eval", "g_max", "dev_split")
_SETTING_TRAINED = ("adapter", "max_epochs", "patience", "early_stop", "batch_size", "asim_examples")


def rule_label(rule: str) -> str:
    """The sentence printed in report headers and table captions."""
    check_rule(rule)
    return RULES[rule]


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise IA2Error(f"unknown selection rule '{rule}'", f"choose one of {', '.join(RULES)}")


def variant(method: str, labels: str | None, ia2_loss: str | None = None, ia2_capture: str | None = None) -> str:
    """Column identity: a method whose SFT stage follows --labels is a different column with ICL labels, and an
    IA2 method trained with a non-default IA2 loss or capture point is a different column too (so one report can
    compare them)."""
    m = get_method(method)
    quals = ["ICL labels"] if labels == "icl" and any(s.labels is None for s in m.stages) else []
    if ia2_loss not in (None, "mse") and m.needs_activations:
        quals.append(f"{ia2_loss} loss")
    if ia2_capture not in (None, "attn") and m.needs_activations:
        quals.append(f"{ia2_capture} capture")
    return f"{method} ({', '.join(quals)})" if quals else method


def unit_setting(unit: dict, precision: str | None = None) -> str:
    """What must agree between the runs of one cell (as JSON): the unit's setting fields and the precision."""
    keys = _SETTING_ALL + (_SETTING_TRAINED if unit.get("lr") is not None else ())
    keys += ("kd_top_k",) if unit.get("method") == "kd" else ()
    return json.dumps({**{k: unit.get(k) for k in keys}, **({"precision": precision} if precision else {})},
                      sort_keys=True)


def precision(record: dict) -> str | None:
    """The dtype a record's numbers were computed in; records from before it was recorded ran in the device's
    default (float32 on CPU, bfloat16 on GPU) unless --dtype said otherwise."""
    m = record.get("machine") or {}
    if m.get("dtype") or "device" not in m:
        return m.get("dtype")
    return dtype_name(default_dtype(torch.device(m["device"])))


def done_rows(records: list[dict]) -> list[dict]:
    """Result rows of finished records, each tagged with its column (variant) and unit setting."""
    out = []
    for rec in records:
        if rec.get("status") != "done":
            continue  # failed (diverged) units have no usable numbers
        unit = rec.get("unit", {})
        for row in rec.get("results", []):
            out.append({**row, "_variant": variant(row["method"], row.get("labels"), unit.get("ia2_loss"),
                                                         unit.get("ia2_capture")),
                        "_setting": unit_setting(unit, precision(rec))})
    return out


def generative_task(name: str) -> bool:
    from .tasks import REGISTRY
    return name in REGISTRY and REGISTRY[name].kind == "generative"


@dataclass
class Selection:
    """The chosen configuration of one cell and the rows (one per run) that it reports."""

    model: str
    label_format: str
    n: int
    task: str
    eval_task: str
    ood: bool
    variant: str
    method: str
    lr: float | None
    ce_weight: float | None
    rows: list[dict]
    criterion: str
    score: float | None = None
    candidates: list[dict] = field(default_factory=list)

    @property
    def table_key(self) -> tuple:
        # A generative task has no label format (its units carry the default "digits"): it gets its own table
        # instead of joining the single-token table of the same model and N.
        return (self.model, "generative" if generative_task(self.task) else self.label_format, self.n)

    @property
    def row_key(self) -> tuple:
        return (self.task, self.eval_task)


def _mean(xs: list) -> float | None:
    """Mean over runs; None if any run lacks the number (a partial mean would favour missing runs)."""
    ok = [x for x in xs if x is not None and not math.isnan(x)]
    return math.fsum(ok) / len(ok) if ok and len(ok) == len(xs) else None  # fsum: equal sets tie in any order


def _dedupe(rows: list[dict], where: str) -> list[dict]:
    """One row per run; the same setting seen twice (e.g. another eval-task list) keeps the smallest uid."""
    if len({r["_setting"] for r in rows}) > 1:
        diff = sorted(k for k in json.loads(rows[0]["_setting"])
                      if len({json.dumps(json.loads(r["_setting"]).get(k), sort_keys=True) for r in rows}) > 1)
        raise IA2Error(f"the store mixes settings for {where} (they differ in: {', '.join(diff)})",
                       "report one setting at a time: write sweeps with different settings to different --out folders"
                       + (" (or resume with the --dtype the store was computed in)" if "precision" in diff else ""))
    by_run: dict[int, dict] = {}
    for r in sorted(rows, key=lambda r: r["uid"]):
        by_run.setdefault(r["run"], r)
    return [by_run[k] for k in sorted(by_run)]


def _score(rows: list[dict], criterion: str) -> float | None:
    metric = {"dev loss": "dev_loss", "dev acc": "dev_acc", "eval acc": "acc"}[criterion]
    return _mean([r.get(metric) for r in rows])


def _best(cands: dict[tuple, list[dict]], criterion: str) -> tuple[tuple, float | None]:
    """Best (lr, w) by ``criterion``; missing scores lose. Dev accuracy on 2-4 dev examples ties often, so its
    ties go to the lower dev loss when every candidate has the same w (dev losses of different w are different
    objectives); remaining ties go to the smaller lr, then w."""
    sign = 1.0 if criterion == "dev loss" else -1.0
    loss_breaks_ties = criterion == "dev acc" and len({hp[1] for hp in cands}) == 1

    def order(hp):
        s = _score(cands[hp], criterion)
        loss = _score(cands[hp], "dev loss") if loss_breaks_ties else None
        return (s is None, sign * s if s is not None else 0.0, loss is None, loss or 0.0, hp[0] or 0.0, hp[1] or 0.0)

    hp = min(cands, key=order)
    return hp, _score(cands[hp], criterion)


def _w_tie(per_w: dict[tuple, list[dict]], hp: tuple) -> str:
    """Say so when w was decided by the tie-break (the smallest w) rather than by dev accuracy."""
    acc = _score(per_w[hp], "dev acc")
    tied = [k for k, rows in per_w.items() if _score(rows, "dev acc") == acc]
    return f" (tie on dev acc: smallest w of {len(tied)})" if len(tied) > 1 else ""


def _best_lr_per_w(cands: dict[tuple, list[dict]], criterion: str) -> dict[tuple, list[dict]]:
    """For each w, the candidate with the best lr by ``criterion`` (one objective per w)."""
    ws = sorted({hp[1] for hp in cands})
    best = [_best({k: v for k, v in cands.items() if k[1] == w}, criterion)[0] for w in ws]
    return {hp: cands[hp] for hp in best}


def _choose(cands: dict[tuple, list[dict]], method: str, rule: str) -> tuple[tuple, float | None, str]:
    """Apply the rule; dev-acc falls back to dev loss where dev accuracy is missing (generative tasks)."""
    if rule == "eval":
        return (*_best(cands, "eval acc"), "eval acc")
    has_acc = all(_score(rows, "dev acc") is not None for rows in cands.values())
    several_w = get_method(method).uses_ce_weight and len({hp[1] for hp in cands}) > 1
    if rule == "dev-acc" and has_acc and several_w:
        # lr within each w on dev accuracy (ties: dev loss, one objective), then w across them on dev accuracy
        per_w = _best_lr_per_w(cands, "dev acc")
        hp, score = _best(per_w, "dev acc")
        return hp, score, "dev acc" + _w_tie(per_w, hp)
    if rule == "dev-acc" and has_acc:
        return (*_best(cands, "dev acc"), "dev acc")
    if rule == "dev-loss" and several_w:
        # Dev losses of different w are different objectives ((1-w) IA2 + w CE), so only lr is
        # chosen on dev loss within each w; w itself is chosen on dev accuracy when there is one.
        per_w = _best_lr_per_w(cands, "dev loss")
        if all(_score(rows, "dev acc") is not None for rows in per_w.values()):
            hp, score = _best(per_w, "dev acc")
            return hp, score, "lr: dev loss, w: dev acc" + _w_tie(per_w, hp)
        return (*_best(per_w, "dev loss"), "dev loss (w across objectives)")
    return (*_best(cands, "dev loss"), "dev loss" if rule == "dev-loss" else "dev loss (no dev acc)")


def _cells(rows: list[dict]) -> dict[tuple, dict[tuple, list[dict]]]:
    cells: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["model"], r["label_format"], r["n"], r["task"], r["eval_task"], r["_variant"])
        cells[key][(r["lr"], r["ce_weight"])].append(r)
    return cells


def _candidate_summary(cands: dict[tuple, list[dict]]) -> list[dict]:
    """Every candidate's means, for the report's selection appendix (transparency, not choice)."""
    return [{"lr": hp[0], "ce_weight": hp[1], "runs": len(rs), "dev_loss": _score(rs, "dev loss"),
             "dev_acc": _score(rs, "dev acc"), "eval_acc": _score(rs, "eval acc")}
            for hp, rs in sorted(cands.items(), key=lambda kv: (kv[0][0] or 0.0, kv[0][1] or 0.0))]


def _shared_runs(cands: dict[tuple, list[dict]]) -> dict[tuple, list[dict]]:
    """Candidates restricted to the runs all of them have, so a grid still growing (one lr with 5 runs, another
    with 3) is compared on the same demonstration draws; unchanged when they share no run."""
    shared = set.intersection(*({r["run"] for r in rs} for rs in cands.values()))
    if not shared:
        return cands
    return {hp: [r for r in rs if r["run"] in shared] for hp, rs in cands.items()}


def _select_cell(key: tuple, cands: dict[tuple, list[dict]], rule: str) -> Selection:
    model, fmt, n, task, eval_task, var = key
    where = f"{model} {task}->{eval_task} N={n} {var}"
    _dedupe([r for rs in cands.values() for r in rs], where)  # refuses mixed settings in one cell
    cands = {hp: _dedupe(rs, where) for hp, rs in cands.items()}
    method = next(iter(cands.values()))[0]["method"]
    shared = _shared_runs(cands)
    if method in BASELINES:
        hp, score, crit = (None, None), None, "none (no hyper-parameters)"
    else:
        # A row's dev_loss / dev_acc are its unit's source-task dev numbers (identical for every
        # eval task of the unit), so an OOD cell makes the same choice as the in-distribution one.
        hp, score, crit = _choose(shared, method, rule)
        if any(len(shared[k]) < len(rs) for k, rs in cands.items()):
            crit += f" (on the {len(shared[hp])} runs every candidate has)"
        elif len(cands) > 1 and len({tuple(r["run"] for r in rs) for rs in cands.values()}) > 1:
            crit += " (the candidates share no run: compared on different runs)"
    chosen = cands[hp]  # the table shows every run of the chosen candidate; the appendix what the choice saw
    return Selection(model, fmt, n, task, eval_task, bool(chosen[0]["ood"]), var, method, hp[0], hp[1], chosen,
                     crit, score, _candidate_summary(shared) if method not in BASELINES else [])


def select(rows: list[dict], rule: str = "dev-loss") -> list[Selection]:
    """Choose one configuration per cell. ``rows`` come from :func:`done_rows`."""
    check_rule(rule)
    cells = _cells(rows)
    return [_select_cell(k, cells[k], rule) for k in sorted(cells, key=lambda k: tuple(str(x) for x in k))]
