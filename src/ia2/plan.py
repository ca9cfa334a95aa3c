"""``ia2 sweep --dry-run``: what a sweep will do and roughly what it costs, before running it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .config import RunConfig
from .methods import get_method

# Rough CPU seconds (2 cores, SmolLM2-135M, single-token task) measured with `ia2 run`; the tiny
# model is ~50x cheaper. Replaced by the store's own mean timings once records exist.
DEFAULT_COST_S = {"teacher_per_example": 0.4, "train_unit": 40.0, "eval_per_query": 0.02}


def _scale(model: str) -> float:
    return 0.02 if model.startswith("tiny") else (2.0 if "gemma" in model else 1.0)


def measured_costs(out: str | None) -> dict | None:
    """Mean train/eval seconds per trained unit from an existing store, if any."""
    if not out or not (Path(out) / "records").exists():
        return None
    from .store import Store
    recs = [r for r in Store(out, create=False).records() if r.get("timing", {}).get("train_s") is not None]
    if not recs:
        return None
    return {"train_unit": sum(r["timing"]["train_s"] + r["timing"]["eval_s"] for r in recs) / len(recs)}


def describe_plan(cfg: RunConfig, out: str | None = None) -> str:
    units = cfg.units()
    done = 0
    if out and (Path(out) / "store.json").exists():
        from .store import Store
        store = Store(out, create=False)
        done = sum(store.has(u.uid()) for u in units)
    groups = {u.group for u in units if get_method(u.method).trains}
    trained = [u for u in units if get_method(u.method).trains]
    by_method = Counter(u.method for u in units)
    measured = measured_costs(out)
    cost = 0.0
    for u in trained:
        per = measured["train_unit"] if measured else DEFAULT_COST_S["train_unit"] * _scale(u.model)
        cost += per * (2 if len(get_method(u.method).stages) > 1 else 1)
    for g in groups:
        cost += DEFAULT_COST_S["teacher_per_example"] * _scale(g[0]) * (g[3] + min(48, g[3] // 2)) * (g[5] if g[5] > 1 else 1)
    n_eval = cfg.limit_eval or 500
    cost += sum(DEFAULT_COST_S["eval_per_query"] * _scale(u.model) * n_eval * len(u.eval_tasks) for u in units)
    lines = [f"sweep plan: {len(units)} units ({done} already in the store), {len(trained)} adapters to train",
             f"teacher passes: {len(groups)} (one per model x task x N x run, shared by every method and lr)",
             "units per method: " + ", ".join(f"{m} {c}" for m, c in by_method.items()),
             f"models: {', '.join(cfg.models)}; tasks: {', '.join(cfg.tasks)}; N: {cfg.n}; runs: {cfg.runs}; lrs: {cfg.lrs}",
             f"estimated cost: ~{cost / 3600:.1f} h on this kind of CPU "
             f"({'from this store' if measured else 'rough defaults'}), less {done} finished units"]
    return "\n".join(lines)
