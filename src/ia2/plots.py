"""Report figures (PNG, Agg canvas): metrics vs N, reliability diagrams, asim per layer, asim vs ECE.

Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas, so the report never
needs a display and never changes the global pyplot backend of a caller.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import textwrap

from . import metrics
from .io import atomic_path
from .report import METRIC, Table, column_title, mean_std, values


def _figure(rows: int, cols: int, w: float = 3.2, h: float = 2.8) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(4.0, w * cols), h * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, np.atleast_2d(fig.subplots(rows, cols, squeeze=False))


def _save(fig: Figure, path: Path, title: str) -> Path:
    width_chars = int(fig.get_figwidth() * 14)  # ~14 characters per inch at 9 pt: wrap, never crop
    fig.suptitle(textwrap.fill(title, width_chars), fontsize=9)
    with atomic_path(path) as tmp:  # never a half-written figure (crash, full disk)
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    return path


def _colour(var: str, columns: list[str]) -> str:
    return f"C{columns.index(var) % 10}" if var in columns else "k"


def _label(row: tuple) -> str:
    return f"{row[0]} -> {row[1]}" + ("*" if row[2] else "")


def plot_vs_n(tables: list[Table], out: Path, rule_text: str) -> Path | None:
    """Accuracy and ECE against N per method, one line per method, one panel row per eval row."""
    ns = sorted({t.n for t in tables})
    if len(ns) < 2:
        return None
    rows = sorted({r for t in tables for r in t.rows}, key=lambda r: (r[0], r[2], r[1]))
    columns = sorted({v for t in tables for v in t.columns}, key=lambda v: [c for t in tables for c in t.columns].index(v))
    fig, axes = _figure(len(rows), 2)
    for i, row in enumerate(rows):
        for j, key in enumerate(("acc", "ece")):
            ax = axes[i, j]
            for var in columns:
                pts = [(t.n, *mean_std(values(t.cell(row, var), key))) for t in tables if row in t.rows]
                pts = [(n, m, s or 0.0) for n, m, s in pts if m is not None]
                if pts:
                    x, y, e = zip(*sorted(pts))
                    ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, label=column_title(var),
                                color=_colour(var, columns))
            ax.set_xscale("log", base=2)
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.minorticks_off()
            ax.set_xlabel("N")
            ax.set_ylabel(METRIC[key].title)
            ax.set_title(_label(row), fontsize=8)
    axes[0, 0].legend(fontsize=6)
    t0 = tables[0]
    name = f"vs_n_{t0.slug.rsplit('_N', 1)[0]}.png"
    return _save(fig, out / name, f"{t0.model}, {t0.label_format} labels: accuracy and ECE vs N; {rule_text}")


def _pooled(sel, preds: dict, eval_task: str) -> tuple[list[float], list[float]]:
    """Top-1 confidences and correctness of the chosen configuration, pooled over its runs."""
    conf, corr = [], []
    for r in sel.rows:
        p = preds.get(r["uid"], {}).get(eval_task, {})
        if "top1_prob" in p and "correct" in p:
            conf += [float(c) for c in p["top1_prob"]]
            corr += [float(c) for c in p["correct"]]
    return conf, corr


def plot_reliability(table: Table, preds: dict, out: Path, rule_text: str) -> Path | None:
    """Reliability diagram (15 equal-width bins, standard ECE confidence) per method and eval row."""
    grid = {(row, var): _pooled(table.cell(row, var), preds, row[1])
            for row in table.rows for var in table.columns if table.cell(row, var) is not None}
    grid = {k: v for k, v in grid.items() if v[0]}
    rows = [r for r in table.rows if any(k[0] == r for k in grid)]
    cols = [v for v in table.columns if any(k[1] == v for k in grid)]
    if not grid:
        return None
    fig, axes = _figure(len(rows), len(cols), 2.4, 2.4)
    for i, row in enumerate(rows):
        for j, var in enumerate(cols):
            ax = axes[i, j]
            ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
            if (row, var) in grid:
                conf, corr = grid[(row, var)]
                bins = [b for b in metrics.reliability_bins(conf, corr) if b["count"]]
                ax.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["acc"] for b in bins], width=1 / 15,
                       edgecolor="black", lw=0.4, color=_colour(var, table.columns), alpha=0.8)
                ax.scatter([b["conf"] for b in bins], [b["acc"] for b in bins], s=6, color="black", zorder=3)
                ax.set_title(f"{column_title(var)} | {_label(row)}\nECE={metrics.ece_standard(conf, corr):.3f}"
                             f" (n={len(conf)})", fontsize=7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=6)
    return _save(fig, out / f"reliability_{table.slug}.png",
                 f"Reliability (accuracy per confidence bin, runs pooled) — {table.name}; {rule_text}")


def plot_asim_layers(table: Table, out: Path, rule_text: str) -> Path | None:
    """Cosine similarity with the base model's ICL activations, per layer, per trained method."""
    rows = [r for r in table.rows if any(_layers(table.cell(r, v)) is not None for v in table.columns)]
    if not rows:
        return None
    fig, axes = _figure(1, len(rows))
    for j, row in enumerate(rows):
        ax = axes[0, j]
        for var in table.columns:
            layers = _layers(table.cell(row, var))
            if layers is not None:
                ax.plot(range(len(layers)), layers, marker="o", ms=3, label=column_title(var),
                        color=_colour(var, table.columns))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_ylabel("asim (cosine with ICL)")
        ax.set_title(_label(row), fontsize=8)
    axes[0, 0].legend(fontsize=6)
    return _save(fig, out / f"asim_layers_{table.slug}.png", f"asim per layer (mean over runs) — {table.name}; {rule_text}")


def _layers(sel) -> list[float] | None:
    if sel is None:
        return None
    per_run = [r.get("asim_layers") for r in sel.rows]
    if not per_run or any(not x for x in per_run) or len({len(x) for x in per_run}) != 1:
        return None
    return list(np.mean(np.asarray(per_run, dtype=float), axis=0))


def plot_asim_vs_ece(table: Table, out: Path, rule_text: str) -> Path | None:
    """One point per (method, eval row, run): does moving toward ICL activations go with calibration?"""
    pts = defaultdict(list)
    for row in table.rows:
        for var in table.columns:
            sel = table.cell(row, var)
            for r in sel.rows if sel else []:
                if r.get("asim") is not None and r.get("ece") is not None:
                    pts[var].append((r["asim"], r["ece"]))
    if not pts:
        return None
    fig, axes = _figure(1, 1, 4.5, 3.5)
    ax = axes[0, 0]
    for var, xy in pts.items():
        x, y = zip(*xy)
        ax.scatter(x, y, s=14, label=column_title(var), color=_colour(var, table.columns), alpha=0.8)
    ax.set_xlabel("asim (layer mean)")
    ax.set_ylabel("ECE (standard)")
    ax.legend(fontsize=6)
    return _save(fig, out / f"asim_vs_ece_{table.slug}.png", f"asim vs ECE — {table.name}; {rule_text}")


def make_plots(tables: list[Table], records: list[dict], out: Path, rule_text: str = "") -> list[Path]:
    """All figures for a report; a figure without data is skipped rather than drawn empty."""
    preds = {r["uid"]: r.get("predictions") or {} for r in records if r.get("status") == "done"}
    figs: list[Path | None] = []
    groups = defaultdict(list)
    for t in tables:
        groups[(t.model, t.label_format)].append(t)
    for ts in groups.values():
        figs.append(plot_vs_n(sorted(ts, key=lambda t: t.n), out, rule_text))
    for t in tables:
        figs += [plot_reliability(t, preds, out, rule_text), plot_asim_layers(t, out, rule_text),
                 plot_asim_vs_ece(t, out, rule_text)]
    return [f for f in figs if f is not None]
