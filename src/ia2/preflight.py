"""Check a grid before any unit runs, so a user error costs seconds and one clear line, not hours.

``preflight(units, out)`` runs every check that does not need training: the results store's format,
model names, task files and data (malformed lines, missing columns, unknown labels), N against the
training pool, single-token labels, and the length of every ICL prompt against the model's
context. It writes nothing; an ``IA2Error`` is raised for the first problem found. The same checks
still run inside the pipeline (they are the source of truth); this only moves them to the front.
"""

from __future__ import annotations

from pathlib import Path

from .errors import IA2Error
from .models import PRESETS, LoadedModel, load_model
from .prompts import check_length


def check_model_name(spec: str) -> None:
    """The model names ``load_model`` accepts, checked without loading anything."""
    if spec in PRESETS:
        return
    if spec.endswith(".gguf"):
        if not Path(spec).exists():
            raise IA2Error(f"GGUF file not found: {spec}", "check the path given to --model")
        return
    if Path(spec).is_dir() or "/" in spec:
        return
    raise IA2Error(f"unknown model '{spec}'",
                   f"valid presets: {', '.join(PRESETS)}; or a hub id, a local folder, or a .gguf file")


def pending_units(units: list, out: str | Path, resume: bool) -> list:
    """Units still to run; opens an existing store read-only (which checks its format version)."""
    root = Path(out)
    if not (root / "store.json").exists():
        return list(units)
    from .store import Store

    store = Store(root, create=False)
    return [u for u in units if not (resume and store.has(u.uid()))]


def check_group(lm: LoadedModel, units: list) -> None:
    """Data, split, labels and prompt lengths of the units of one group (same data, N and run)."""
    from .methods import get_method
    from .pipeline import GroupContext
    from .targets import teacher_prompts

    u = units[0]
    ctx = GroupContext(u, lm, None, lambda _msg: None)  # loads data, splits, checks single-token labels
    if any(get_method(x.method).trains for x in units):
        icl, _ = teacher_prompts(lm.tokenizer, ctx.pool, ctx.split)
        n_train = len(ctx.split.train)
        for i, ids in enumerate(icl):
            which = f"training example {i}" if i < n_train else f"dev example {i - n_train}"
            check_length(lm.model, len(ids) + u.g_max,
                         f"the ICL prompt of {which} of task '{ctx.task.name}' (N={u.n}, run {u.run}) "
                         f"plus {u.g_max} answer token(s)")
    if any(x.method == "icl" for x in units):
        for name in ctx.evals:
            ctx.icl_queries(name)  # raises when an evaluation prompt with demonstrations is too long


def preflight(units: list, out: str | Path, device=None, dtype=None, resume: bool = False) -> LoadedModel | None:
    """Run every check on the units still to run; returns the loaded model the run starts with (or None).

    Models are loaded one at a time; the one returned is the first the runner needs (units run sorted
    by model name), so it is not loaded twice.
    """
    pending = pending_units(units, out, resume)
    for name in sorted({u.model for u in units}):
        check_model_name(name)
    if not pending:
        return None
    lm = None
    for name in sorted({u.model for u in pending}, reverse=True):
        lm = None  # free the previous model before loading the next
        lm = load_model(name, device, dtype)
        groups: dict[tuple, list] = {}
        for u in pending:
            if u.model == name:
                groups.setdefault((u.group, u.eval_tasks, u.limit_eval), []).append(u)
        for group_units in groups.values():
            check_group(lm, group_units)
    return lm
