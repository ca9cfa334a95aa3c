"""Analyses of a results store: LoRA subspace overlap between methods, and asim per layer.

Overlap compares adapters that differ only in their method (same model, task, label format, N, run
and learning rate), so a high overlap means the methods moved the same LoRA directions. asim is
read from the records (computed at training time on ``asim_examples`` evaluation examples); with
``examples`` set to another number it is recomputed from the saved adapters, which loads the model.
Results go to ``<store>/analysis/`` where ``ia2 report`` picks them up.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from . import metrics
from .errors import IA2Error
from .io import write_json, write_text
from .report import _column_order, column_title, load_records, lr_text, matching_records
from .select import unit_setting, variant


def _name(rec: dict) -> str:
    u = rec["unit"]
    v = variant(u["method"], u.get("labels"), u.get("ia2_loss"), u.get("ia2_capture"))
    return v + (f" (w={u['ce_weight']:g})" if u.get("ce_weight") is not None else "")


_NO_ADAPTER = "no saved adapter"


def _trained(rec: dict) -> bool:
    """A finished unit that trained an adapter (zero-shot and ICL have no learning rate)."""
    return rec.get("status") == "done" and rec.get("unit", {}).get("lr") is not None


def _adapters(records: list[dict], root: Path) -> tuple[dict[tuple, list[tuple[str, Path, str]]],
                                                         list[tuple[str, str]]]:
    """Saved LoRA adapters grouped by everything but the method; also (uid, reason) for those skipped."""
    groups, skipped = defaultdict(list), []
    for rec in sorted(records, key=lambda r: r["uid"]):  # the smallest uid of a repeated column wins, as in reports
        if not _trained(rec):
            continue
        u = rec["unit"]
        path = root / rec["adapter"] / "adapter_model.safetensors" if rec.get("adapter") else None
        if path is None or not path.exists():
            skipped.append((rec["uid"], _NO_ADAPTER))
        elif u["adapter"]["kind"] != "lora":
            skipped.append((rec["uid"], f"{u['adapter']['kind']} adapter (overlap needs LoRA)"))
        else:
            key = (u["model"], u["label_format"], u["task"], u["n"], u["run"], u["lr"], unit_setting(u))
            name = _name(rec)
            if any(n == name for n, _, _ in groups[key]):  # e.g. ia2 with --labels gt and icl: one column, one adapter
                skipped.append((rec["uid"], "another unit of the same column and setting came first"))
                continue
            groups[key].append((name, path, rec["uid"]))
    settings = defaultdict(set)
    for key in groups:
        settings[key[:6]].add(key[6])
    mixed = next((k for k, v in settings.items() if len(v) > 1), None)
    if mixed:
        model, fmt, task, n, run, lr = mixed
        raise IA2Error(f"the store mixes settings for {model} {task} N={n} lr={lr:g} run {run}",
                       "analyze one setting at a time: write sweeps with different settings to different --out folders")
    return groups, skipped


def _module_type(key: str) -> str:
    parts = key.split(".")
    return parts[parts.index("lora_B") - 1] if "lora_B" in parts else "?"


def _pair_overlap(a: dict, b: dict) -> dict:
    """Mean overlap over all LoRA B matrices, and per module type (q_proj, k_proj, ...)."""
    res = metrics.adapter_overlap(a, b)
    by_type = defaultdict(list)
    for k, v in res["per_module"].items():
        if not math.isnan(v):
            by_type[_module_type(k)].append(v)
    return {"mean": res["mean"], "by_module": {t: statistics.fmean(v) for t, v in sorted(by_type.items())},
            "modules": len(res["per_module"])}


def _carried(earlier: dict | None, records: list[dict], computed: set[tuple[str, str]]) -> list[tuple]:
    """Per-run overlaps of an earlier analysis whose two units are still in the store but not computed now (their
    adapters are not on disk, e.g. in a fresh clone, where stores are committed without adapters). Entries written
    before per-run uids were kept are matched by model, format, task, N, run, lr and column when that is unique."""
    if not earlier:
        return []
    by_uid = {r["uid"]: r for r in records if _trained(r)}
    by_cell = defaultdict(list)
    for uid, r in by_uid.items():
        u = r["unit"]
        by_cell[(u["model"], u["label_format"], u["task"], u["n"], u["run"], u["lr"], _name(r))].append(uid)
    out = []
    for p in earlier.get("pairs", []):
        for r in p.get("per_run", []):
            uids = r.get("uids")
            if uids is None:  # an analysis from before uids were kept
                cells = [by_cell.get((p["model"], p["label_format"], p["task"], p["n"], r["run"], p["lr"], c), [])
                         for c in (p["a"], p["b"])]
                uids = [c[0] for c in cells] if all(len(c) == 1 for c in cells) else None
            if not uids or any(u not in by_uid for u in uids) or tuple(uids) in computed:
                continue
            key = (p["model"], p["label_format"], p["task"], p["n"], p["lr"], p["a"], p["b"])
            out.append((key, {**r, "uids": list(uids), "carried": True}))
    return out


def lora_overlap(records: list[dict], root: Path, earlier: dict | None = None) -> dict:
    """Overlap for every pair of methods in each group, then mean (std) over runs. Pairs whose adapters are gone
    keep their per-run values from ``earlier`` (the store's previous analysis), so re-analysing never loses them."""
    from safetensors.torch import load_file

    groups, skipped = _adapters(records, root)
    per_run, computed = defaultdict(list), set()
    for (model, fmt, task, n, run, lr, _), items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        items = sorted(items, key=lambda it: _column_order(it[0]))
        states = {name: load_file(str(path)) for name, path, _ in items}
        uid_of = {name: uid for name, _, uid in items}
        for a, b in combinations([name for name, _, _ in items], 2):
            res = _pair_overlap(states[a], states[b])
            per_run[(model, fmt, task, n, lr, a, b)].append({"run": run, **res, "uids": [uid_of[a], uid_of[b]]})
            computed.add((uid_of[a], uid_of[b]))
    carried = _carried(earlier, records, computed)
    for key, r in carried:
        per_run[key].append(r)
    kept = {u for _, r in carried for u in r["uids"]}
    skipped = [f"{uid}: {why}" for uid, why in skipped if not (why == _NO_ADAPTER and uid in kept)]
    pairs = []
    for (model, fmt, task, n, lr, a, b), rs in sorted(per_run.items(), key=lambda kv: (
            str(kv[0][:5]), _column_order(kv[0][5]), _column_order(kv[0][6]))):
        rs = sorted(rs, key=lambda r: r["run"])
        finite = [r["mean"] for r in rs if not math.isnan(r["mean"])]
        types = sorted({t for r in rs for t in r["by_module"]})
        pairs.append({"model": model, "label_format": fmt, "task": task, "n": n, "lr": lr, "a": a, "b": b,
                      "overlap": statistics.fmean(finite) if finite else None,
                      "std": statistics.stdev(finite) if len(finite) > 1 else None, "runs": len(rs),
                      "by_module": {t: statistics.fmean([r["by_module"][t] for r in rs if t in r["by_module"]])
                                    for t in types},
                      "per_run": rs})
    return {"definition": "for each LoRA B matrix U = left singular vectors; overlap = ||U_a^T U_b||_F^2 / r; "
                          "averaged over layers and modules, then over runs",
            "pairs": pairs, "skipped": skipped, "carried": len(carried)}


def _f(x, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


_FORMULA = "||U_a^T U_b||_F^2 / r"


def overlap_markdown(res: dict) -> str:
    types = sorted({t for p in res["pairs"] for t in p["by_module"]})
    lines = ["# LoRA subspace overlap", "",
             f"Definition: {res['definition'].replace(_FORMULA, f'`{_FORMULA}`')}. Pairs share model, label format, task, N, run, learning rate "
             "and adapter settings. 1 = same subspace, about r/d for random ones.", "",
             "| model | format | task | N | lr | a | b | overlap (std) | runs | " + " | ".join(types) + " |",
             "|---|---|---|---:|---:|---|---|---:|---:|" + "---:|" * len(types)]
    for p in res["pairs"]:
        cell = _f(p["overlap"]) + (f" ({_f(p['std'])})" if p["std"] is not None else "")
        lines.append(f"| {p['model']} | {p['label_format']} | {p['task']} | {p['n']} | {p['lr']:g} | "
                     f"{column_title(p['a'])} | {column_title(p['b'])} | {cell} | {p['runs']} | "
                     + " | ".join(_f(p["by_module"].get(t)) for t in types) + " |")
    if not res["pairs"]:
        lines.append("\nNo pair of saved LoRA adapters shares (model, task, N, run, lr).")
    if res.get("carried"):
        lines += ["", f"{res['carried']} per-run value(s) come from the store's earlier analysis: their adapters are "
                      "not on disk here (stores are committed without them)."]
    if res["skipped"]:
        lines += ["", f"Skipped {len(res['skipped'])} adapter(s): " + "; ".join(res["skipped"][:10])]
    return "\n".join(lines) + "\n"


# --- asim ---------------------------------------------------------------------------------------------------
def _stored_count(rec: dict, row: dict) -> int:
    return min(rec["unit"].get("asim_examples") or 0, row.get("n_eval") or 0)


def stored_asim(records: list[dict]) -> dict[tuple, dict]:
    """(uid, eval_task) -> asim as stored at training time."""
    out = {}
    for rec in records:
        if rec.get("status") != "done":
            continue
        for row in rec.get("results", []):
            if row.get("asim") is not None:
                out[(rec["uid"], row["eval_task"])] = {"asim": row["asim"], "layers": row.get("asim_layers") or [],
                                                       "examples": _stored_count(rec, row), "source": "stored"}
    return out


def recompute_asim(records: list[dict], root: Path, examples: int | None, device=None, force: bool = False,
                   log=print, residual: bool = False) -> dict[tuple, dict]:
    """asim of saved adapters on ``examples`` eval examples (None: the unit's own asim_examples).

    Only units whose stored count differs are recomputed unless ``force``. Loads each model once.
    ``residual`` adds, at the first output position, the residual stream's cosine and norm ratio per layer
    and KL(ICL || method) of the next-token distribution, and includes zero-shot units (the frozen base
    without demonstrations) as the floor every method starts from.
    """
    import peft

    from .adapters import detach
    from .config import Unit
    from .pipeline import Runner
    from .store import Store

    def wanted(r: dict) -> bool:
        if r.get("status") != "done":
            return False
        if residual and r["unit"]["method"] == "zero-shot":
            return True
        return bool(r.get("adapter")) and r["unit"].get("lr") is not None and (
            force or residual or any(_stored_count(r, row) != min(examples or 0, row.get("n_eval") or 0)
                                     for row in r.get("results", [])))

    todo = [r for r in records if wanted(r)]
    runner = Runner(Store(root, create=False), device=device, log=log, save_adapters=False)
    out = {}
    for rec in sorted(todo, key=lambda r: (r["unit"]["model"], str(Unit.from_dict(r["unit"]).group))):
        unit = Unit.from_dict({**rec["unit"], "asim_examples": examples or rec["unit"]["asim_examples"]})
        ctx = runner.context(unit)
        for name in ctx.evals:  # the frozen base with ICL, memoised BEFORE any adapter is injected:
            ctx.base_icl_acts(name)  # PEFT patches the base model's modules in place
            if residual:
                ctx.base_icl_outputs(name)
        model = peft.PeftModel.from_pretrained(ctx.lm.model, str(root / rec["adapter"])) if rec.get("adapter") \
            else ctx.lm.model
        try:
            for name in ctx.evals:
                ours = ctx.asim_acts(model, name, False)
                pairs = list(zip(ctx.base_icl_acts(name), ours))
                asim, layers = metrics.asim_summary([metrics.activation_similarity(a, b) for a, b in pairs])
                norm, norm_layers = metrics.asim_summary([metrics.activation_norm_ratio(a, b) for a, b in pairs])
                out[(rec["uid"], name)] = {"asim": asim, "layers": layers, "examples": len(pairs),
                                           "source": "recomputed", "norm_ratio": norm, "norm_layers": norm_layers}
                if residual:
                    out[(rec["uid"], name)].update(_residual(ctx.base_icl_outputs(name),
                                                             ctx.first_outputs(model, name, False)))
        finally:
            if rec.get("adapter"):
                ctx.lm.model = detach(model)
    return out


def _zero_shot_of(chosen: list[dict], records: list[dict]) -> list[dict]:
    """The finished zero-shot records of the same groups (model, task, format, N, run, ...) as ``chosen``."""
    from .config import Unit

    groups = {Unit.from_dict(r["unit"]).group for r in chosen}
    have = {r["uid"] for r in chosen}
    return [r for r in records if r.get("status") == "done" and r["unit"]["method"] == "zero-shot"
            and r["uid"] not in have and Unit.from_dict(r["unit"]).group in groups]


def _residual(icl: list, ours: list) -> dict:
    """Compare the base with demonstrations (``icl``) and a model without them (``ours``) at the first output
    position: residual stream per layer (cosine, norm ratio), next-token KL, and top-1 agreement."""
    pairs = list(zip(icl, ours))
    _, cos = metrics.asim_summary([metrics.activation_similarity(a.hidden, b.hidden) for a, b in pairs])
    _, norm = metrics.asim_summary([metrics.activation_norm_ratio(a.hidden, b.hidden) for a, b in pairs])
    return {"resid_layers": cos, "resid_norm_layers": norm,
            "kl": statistics.fmean(metrics.next_token_kl(a.logprobs[0], b.logprobs[0]) for a, b in pairs),
            "top1_agree": statistics.fmean(float(a.tokens[0] == b.tokens[0]) for a, b in pairs)}


def asim_summary(records: list[dict], values: dict[tuple, dict]) -> dict:
    """Mean over runs of asim and its layer profile per (model, format, N, source, eval, method, lr, w)."""
    by_uid = {r["uid"]: r for r in records}
    groups = defaultdict(list)
    for (uid, eval_task), v in values.items():
        rec, u = by_uid[uid], by_uid[uid]["unit"]
        groups[(u["model"], u["label_format"], u["n"], u["task"], eval_task, _name(rec), u["lr"])].append(v)
    rows = []
    for (model, fmt, n, task, eval_task, name, lr), vs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rows.append({"model": model, "label_format": fmt, "n": n, "task": task, "eval_task": eval_task,
                     "method": name, "lr": lr, "runs": len(vs), "asim": statistics.fmean(v["asim"] for v in vs),
                     "std": statistics.stdev([v["asim"] for v in vs]) if len(vs) > 1 else None,
                     "layers": _mean_layers(vs, "layers"),
                     "norm_ratio": _mean_of(vs, "norm_ratio"), "norm_layers": _mean_layers(vs, "norm_layers"),
                     **_residual_means(vs),
                     "examples": sorted({v["examples"] for v in vs}), "source": sorted({v["source"] for v in vs})})
    return {"definition": "cosine similarity over d between the base model WITH demonstrations and the adapter "
                          "WITHOUT them, at output positions, per layer; averaged over examples, then layers",
            "norm_ratio": "||adapter without demonstrations|| / ||base with demonstrations|| of the same activations, "
                          "averaged the same way (recomputed values only: asim cannot see a shrunken but aligned "
                          "activation)",
            "residual": "at the first output position (the query's last token): cosine and norm ratio of the "
                        "residual stream per layer (embeddings first; the last entry is what the LM head reads), "
                        "KL(ICL || method) of the next-token distribution in nats, and how often both pick the same "
                        "top-1 token (--residual only)",
            "rows": rows, "per_method": _per_method(rows)}


def _residual_means(items: list[dict]) -> dict:
    """Means over runs of the --residual measures; {} when none was computed."""
    if not any(x.get("resid_layers") for x in items):
        return {}
    cos, norm = _mean_layers(items, "resid_layers"), _mean_layers(items, "resid_norm_layers")
    return {"resid_layers": cos, "resid_norm_layers": norm, "resid_last": cos[-1] if cos else None,
            "resid_norm_last": norm[-1] if norm else None,
            "kl": _mean_of(items, "kl"), "top1_agree": _mean_of(items, "top1_agree")}


def _per_method(rows: list[dict]) -> list[dict]:
    """Mean over eval tasks per setting; tasks, N and learning rates are never pooled (they answer different
    questions, and an unselected lr would dilute the method's number)."""
    keys = ("model", "label_format", "n", "task", "method", "lr")
    by = defaultdict(list)
    for r in rows:
        by[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, rs in sorted(by.items(), key=lambda kv: (str(kv[0][:4]), _column_order(kv[0][4]), kv[0][5])):
        out.append({**dict(zip(keys, key)), "rows": len(rs), "asim": statistics.fmean(r["asim"] for r in rs),
                    "layers": _mean_layers(rs, "layers"),
                    "norm_ratio": _mean_of(rs, "norm_ratio"), **_residual_means(rs)})
    return out


def _mean_of(items: list[dict], key: str) -> float | None:
    """Mean of ``key`` over the items that have it; None when none does (e.g. asim stored at training time)."""
    vals = [x[key] for x in items if x.get(key) is not None]
    return statistics.fmean(vals) if vals else None


def _mean_layers(items: list[dict], key: str) -> list[float]:
    """Per-layer mean of the ``key`` profiles the items have; empty when none has one or their lengths differ."""
    sets = [x[key] for x in items if x.get(key)]
    return [statistics.fmean(c) for c in zip(*sets)] if sets and len({len(x) for x in sets}) == 1 else []


def _layers_text(layers: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in layers) if layers else "-"


def asim_markdown(res: dict) -> str:
    lines = ["# Activation similarity with ICL (asim)", "", f"Definition: {res['definition']}.",
             f"Norm ratio: {res['norm_ratio']}.", "",
             "Per setting, mean over its evaluation tasks (rows):", "",
             "| model | format | N | source | method | lr | eval rows | asim | norm ratio | per layer |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---|"]
    lines += [f"| {p['model']} | {p['label_format']} | {p['n']} | {p['task']} | {column_title(p['method'])} | "
              f"{lr_text(p['lr'])} | {p['rows']} | {p['asim']:.3f} | {_f(p['norm_ratio'])} | {_layers_text(p['layers'])} |"
              for p in res["per_method"]]
    lines += ["", "| model | format | N | source | eval | method | lr | asim (std) | norm ratio | runs | examples "
              "| per layer |", "|---|---|---:|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in res["rows"]:
        cell = f"{r['asim']:.3f}" + (f" ({r['std']:.3f})" if r["std"] is not None else "")
        lines.append(f"| {r['model']} | {r['label_format']} | {r['n']} | {r['task']} | {r['eval_task']} | "
                     f"{column_title(r['method'])} | {lr_text(r['lr'])} | {cell} | {_f(r['norm_ratio'])} | {r['runs']} | "
                     f"{','.join(map(str, r['examples']))} ({'/'.join(r['source'])}) | {_layers_text(r['layers'])} |")
    resid = [p for p in res["per_method"] if p.get("resid_layers")]
    if resid:
        lines += ["", "**Residual stream and next-token distribution (--residual).**", "",
                  f"Measured {res['residual']}. Per setting, mean over its evaluation tasks:", "",
                  "| model | format | N | source | method | lr | asim | residual cosine, last layer | "
                  "residual norm ratio, last layer | KL(ICL ‖ method) | same top-1 | residual cosine per layer |",
                  "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {p['model']} | {p['label_format']} | {p['n']} | {p['task']} | {column_title(p['method'])} | "
                  f"{lr_text(p['lr'])} | {p['asim']:.3f} | {_f(p['resid_last'])} | {_f(p['resid_norm_last'])} | "
                  f"{_f(p['kl'])} | {_f(p['top1_agree'], 2)} | {_layers_text(p['resid_layers'])} |" for p in resid]
    return "\n".join(lines) + "\n"


def analyze(store_dir: str | Path, examples: int | None = None, recompute: bool = False, device=None,
            log=print, filters: dict[str, str] | None = None, out: str | Path | None = None,
            residual: bool = False) -> Path:
    """Write overlap.{json,md} and asim.{json,md} under ``out`` (default ``<store>/analysis``, which ``ia2
    report`` reads); returns that folder. ``filters`` (``--only``) restrict it to some units, e.g. to
    recompute a few adapters; such a partial analysis goes to its own ``out``, never over the store's."""
    store, records = load_records(store_dir)
    if examples is not None and examples < 1:
        raise IA2Error(f"--examples must be at least 1, got {examples}", "e.g. --examples 100")
    if filters:
        if out is None:
            raise IA2Error("an analysis filtered with --only needs its own --out folder",
                           "add e.g. --out runs/analysis-gemma, so the store's full analysis is not overwritten")
        everything, records = records, matching_records(records, filters)
        if residual:  # the zero-shot floor of the chosen units' groups, whatever the filters say (it has no lr)
            records += _zero_shot_of(records, everything)
    out = Path(out) if out else store.root / "analysis"
    earlier = next((json.loads(p.read_text()) for p in (out / "overlap.json", store.root / "analysis" / "overlap.json")
                    if p.exists()), None)
    ov = lora_overlap(records, store.root, earlier)
    write_json(out / "overlap.json", ov)
    write_text(out / "overlap.md", overlap_markdown(ov))
    values = stored_asim(records)
    if examples is not None or recompute or residual:
        values.update(recompute_asim(records, store.root, examples, device=device, force=recompute, log=log,
                                     residual=residual))
    res = asim_summary(records, values)
    write_json(out / "asim.json", {"examples": examples, "recomputed": recompute, "residual": residual, **res})
    write_text(out / "asim.md", asim_markdown(res))
    return out
