"""The ``ia2`` command: tasks, run, sweep, report, analyze, predict, doctor.

    ia2 run --task sst2 --n 4 --runs 0-4 --methods zero-shot,icl,sft,ia2,ia2-then-sft --out runs/sst2
    ia2 sweep sweep.yaml --out runs/grid          # resumable; ia2 sweep --preset smoke --out /tmp/s
    ia2 report runs/grid                          # tables, t-tests, plots under runs/grid/report
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from .errors import IA2Error


def parse_int_list(text: str) -> list[int]:
    """'0-4' -> [0,1,2,3,4]; '0,2' -> [0,2]; '4' -> [4]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise IA2Error(f"cannot read '{text}' as integers", "use e.g. 0-4 or 0,2,3") from None
    return out


def parse_float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise IA2Error(f"cannot read '{text}' as numbers", "use e.g. 1e-4,3e-4,1e-3") from None


def split_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_grid_args(p: argparse.ArgumentParser, for_sweep: bool = False) -> None:
    d = None if for_sweep else argparse.SUPPRESS
    p.add_argument("--model", "--models", dest="models", type=split_list, default=d,
                   help="preset (smollm2-135m, gemma3-270m, tiny-llama), hub id, folder or .gguf; comma list")
    p.add_argument("--task", "--tasks", dest="tasks", type=split_list, default=d,
                   help="built-in task name(s) or a task .yaml file")
    p.add_argument("--eval-tasks", type=split_list, default=d, help="default: the task and its OOD pairs")
    p.add_argument("--label-format", choices=["digits", "words"], default=d)
    p.add_argument("--n", type=parse_int_list, default=d, help="training examples N (comma list)")
    p.add_argument("--runs", type=parse_int_list, default=d, help="run indices, e.g. 0-4")
    p.add_argument("--methods", type=split_list, default=d)
    p.add_argument("--lr", "--lrs", dest="lrs", type=parse_float_list, default=d)
    p.add_argument("--ce-weight", "--ce-weights", dest="ce_weights", type=parse_float_list, default=d)
    p.add_argument("--labels", choices=["gt", "icl"], default=d, help="SFT labels: ground truth or ICL responses")
    p.add_argument("--limit-eval", type=int, default=d, help="evaluate on the first K eval examples only")
    p.add_argument("--early-stop", choices=["best", "last"], default=d,
                   help="best: restore the best-dev-loss adapter; last: keep the final one (reference scripts)")
    p.add_argument("--dev-split", choices=["reference", "stratified"], default=d,
                   help="reference: N/2 dev examples in shuffled order (the paper's scripts); stratified: "
                        "round-robin over labels, same training examples")
    p.add_argument("--ia2-loss", choices=["mse", "relative"], default=d,
                   help="mse: sum over layers of each layer's MSE (the paper); relative: each layer's MSE divided "
                        "by the teacher's mean square there, so layers of small attention outputs count equally")
    p.add_argument("--ia2-capture", choices=["attn", "residual"], default=d,
                   help="attn: each layer's self-attention output after o_proj (the paper); residual: what the "
                        "layer adds to the residual stream (after Gemma-2/3's post-attention norm; elsewhere the same)")
    p.add_argument("--max-epochs", type=int, default=d)
    p.add_argument("--patience", type=int, default=d)
    p.add_argument("--batch-size", type=int, default=d, help="effective batch (capped at N)")
    p.add_argument("--g-max", type=int, default=d, help="max teacher tokens for generative tasks (default 200)")
    p.add_argument("--kd-top-k", type=int, default=d)
    p.add_argument("--asim-examples", type=int, default=d)
    p.add_argument("--adapter", choices=["lora", "ia3", "prefix", "prompt"], default=None)
    p.add_argument("--lora-r", type=int, default=None)
    p.add_argument("--lora-alpha", type=float, default=None)
    p.add_argument("--targets", type=split_list, default=None, help="adapter target modules")


def add_exec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="results store folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default fp32 on CPU, bf16 on GPU")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--teacher-batch-size", type=int, default=8)
    p.add_argument("--no-save-adapters", action="store_true")
    p.add_argument("--report-to", default="none", choices=["none", "tensorboard", "wandb"],
                   help="training curves (train/dev loss per dev check); tensorboard logs go to OUT/tracking")
    p.add_argument("--accelerate-config", default=None, metavar="NAME",
                   help="re-run this command data-parallel under 'accelerate launch' with a packaged config "
                        "(single, multi_gpu, fsdp) or an accelerate YAML file; see the README section 'Scaling out'")


def grid_overrides(args) -> dict:
    keys = ("models", "tasks", "eval_tasks", "label_format", "n", "runs", "methods", "lrs", "ce_weights", "labels",
            "limit_eval", "dev_split", "early_stop", "max_epochs", "patience", "batch_size", "g_max", "kd_top_k",
            "asim_examples", "ia2_loss", "ia2_capture")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def adapter_overrides(args, base):
    from .adapters import AdapterConfig
    kw = {}
    if args.adapter:
        kw["kind"] = args.adapter
    if args.lora_r is not None:
        kw["r"] = args.lora_r
    if args.lora_alpha is not None:
        kw["alpha"] = args.lora_alpha
    if args.targets:
        kw["targets"] = tuple(args.targets)
    return AdapterConfig(**{**base.__dict__, **kw}) if kw else base


def _setup_quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets
    datasets.disable_progress_bars()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def execute(cfg, args, resume: bool, claim: bool = False) -> tuple:
    """Plan, run with a progress bar, write results.jsonl; returns (units, store, stats)."""
    from tqdm import tqdm

    from .pipeline import Runner, run_units
    from .store import Store

    from .distributed import is_main, main_first

    units = cfg.units()
    from .preflight import preflight  # every user error (data, labels, N, context) before any output
    first_lm = preflight(units, args.out, args.device, args.dtype, resume=resume)
    with main_first():  # several processes (accelerate launch / torchrun): the main one creates the store
        store = Store(args.out)
    runner = Runner(store, device=args.device, dtype=args.dtype, log=lambda m: tqdm.write(m, file=sys.stderr),
                    eval_batch_size=args.eval_batch_size, teacher_batch_size=args.teacher_batch_size,
                    save_adapters=not args.no_save_adapters, report_to=getattr(args, "report_to", "none"))
    runner.lm = first_lm  # loaded by the preflight; the first model the run needs
    # disable=None: no bar when stderr is not a terminal (log files, tests), so an error stays one clean line.
    bar = tqdm(total=len(units), desc="units", unit="unit", file=sys.stderr, dynamic_ncols=True,
               disable=None if is_main() else True)

    count = {"n": 0, "ran": 0}

    def progress(unit, status):
        count["n"] += 1
        what = f"{unit.task} N={unit.n} run={unit.run} {unit.method}" + (f" lr={unit.lr:g}" if unit.lr else "")
        bar.set_postfix_str(f"{what} {status}", refresh=False)
        bar.update(1)
        if bar.disable and is_main():  # logging to a file: one line per unit with an ETA instead of a bar
            if status != "skipped":
                count["ran"] += 1
            elapsed = time.time() - t0
            left = len(units) - count["n"]
            eta = elapsed / count["ran"] * left if count["ran"] else 0.0
            log(f"[{count['n']}/{len(units)}] {what}: {status} ({elapsed:.0f}s elapsed, ETA {eta:.0f}s)")

    t0 = time.time()
    try:
        stats = run_units(units, store, runner, resume=resume, claim=claim, progress=progress)
    except BaseException:
        bar.leave = False  # clear the bar: the error line that follows stands alone
        raise
    finally:
        bar.close()
    stats["wall_s"] = round(time.time() - t0, 1)
    return units, store, stats


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ia2 results (no demonstrations unless method=icl; acc/ece as fractions)")
    for col in ("task", "eval_task", "N", "run", "method", "lr", "acc", "ece", "ece_paper", "label_acc", "asim"):
        table.add_column(col, justify="right" if col not in ("task", "eval_task", "method") else "left")

    def f(x, nd=3):
        return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))

    for r in rows:
        table.add_row(r["task"], r["eval_task"] + ("*" if r["ood"] else ""), str(r["n"]), str(r["run"]), r["method"],
                      "-" if r["lr"] is None else f"{r['lr']:g}", f(r["acc"]), f(r["ece"]), f(r["ece_paper"]),
                      f(r["label_acc"]), f(r.get("asim")))
    Console(width=140).print(table)


def cmd_run(args) -> int:
    from .config import RunConfig

    cfg = RunConfig(**grid_overrides(args))
    cfg.adapter = adapter_overrides(args, cfg.adapter)
    units, store, stats = execute(cfg, args, resume=args.resume)
    from .distributed import is_main
    if not is_main():  # several processes: the main one reports
        return 0
    uids = {u.uid() for u in units}
    rows = [r for r in store.rows() if r["uid"] in uids]
    rows.sort(key=lambda r: (r["task"], r["eval_task"] != r["task"], r["eval_task"], r["n"], r["run"],
                             list(cfg.methods).index(r["method"]) if r["method"] in cfg.methods else 99, r["lr"] or 0))
    print_table(rows)
    failed = [r for r in store.records() if r["uid"] in uids and r["status"] == "failed"]
    log(f"{stats['done']} units run, {stats['skipped']} already in the store (--resume), {len(failed)} failed in {stats['wall_s']}s; "
        f"results: {store.root / 'results.jsonl'}")
    if failed:  # the other units ran and were kept; a failed unit still makes the command fail
        log(f"ia2: {len(failed)} unit(s) failed, recorded with status 'failed' (first: {failed[0]['error']})")
    return 1 if failed else 0


def cmd_tasks(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .data import load_task_data
    from .tasks import REGISTRY

    data_dir = os.environ.get("IA2_DATA_DIR")
    # Counting pool/eval sizes reads every dataset: instant from a local mirror, but from the hub it downloads
    # (or, offline, retries for minutes), so without a mirror the sizes are opt-in (--data).
    count = args.data if args.data is not None else bool(data_dir)
    where = f"data: {data_dir}" if data_dir else "data: hub"
    table = Table(title=f"tasks ({where})" if count else "tasks (sizes not counted: set IA2_DATA_DIR or pass --data)")
    for col in ("name", "kind", "labels", "word labels", "pool", "eval", "OOD pairs", "note"):
        table.add_column(col)
    for t in REGISTRY.values():
        pool, ev, note = "-", "-", ""
        if count:
            try:
                td = load_task_data(t)
                pool, ev, note = str(len(td.pool)), str(len(td.eval)), "; ".join(n.split(": ", 1)[1] for n in td.notes)
            except IA2Error as e:
                note = f"unavailable: {e.message}"
        table.add_row(t.name, t.kind, " ".join(t.labels or ()) or t.parser or "", "/".join(x.strip() for x in t.word_labels or ()),
                      pool, ev, ", ".join(t.ood), note[:120])
    Console(width=200).print(table)
    return 0


def cmd_sweep(args) -> int:
    from .config import RunConfig
    from .presets import preset_config

    if args.preset:
        cfg = preset_config(args.preset)
    elif args.config:
        cfg = RunConfig.from_yaml(args.config)
    else:
        raise IA2Error("ia2 sweep needs a CONFIG file or --preset", "e.g. ia2 sweep --preset smoke --out /tmp/s")
    over = grid_overrides(args)
    if over:
        cfg = cfg.replace(**over)
        cfg.__post_init__()
    cfg.adapter = adapter_overrides(args, cfg.adapter)
    if args.dry_run:
        from .plan import describe_plan
        print(describe_plan(cfg, args.out))
        return 0
    if args.workers and args.workers > 1:
        from .workers import spawn_workers
        return spawn_workers(args, cfg)
    units, store, stats = execute(cfg, args, resume=True, claim=args.claim or bool(args.worker_of))
    log(f"sweep: {stats['done']} run, {stats['skipped']} already done, {stats['failed']} failed, "
        f"{stats['claimed_elsewhere']} taken by other workers, {stats['wall_s']}s; store: {store.root}")
    return 1 if stats["failed"] else 0  # failed units (e.g. a diverged loss) are recorded; the rest ran


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ia2", description="ICL Activation Alignment: few-shot adapters aligned to ICL.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list the tasks, their labels, sizes and OOD pairs")
    p.add_argument("--data", action=argparse.BooleanOptionalAction, default=None,
                   help="count pool/eval sizes by loading each dataset (default: only when IA2_DATA_DIR is set)")
    p.set_defaults(fn=cmd_tasks)

    p = sub.add_parser("run", help="evaluate baselines and train methods on one grid")
    add_grid_args(p, for_sweep=True)
    add_exec_args(p)
    p.add_argument("--resume", action="store_true", help="skip units already in the store")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("sweep", help="run a resumable sweep from a YAML config or a preset")
    p.add_argument("config", nargs="?")
    p.add_argument("--preset", default=None, help="smoke, paper-single, paper-generative")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost")
    p.add_argument("--workers", type=int, default=1, help="worker processes draining the store (one per GPU)")
    p.add_argument("--claim", action="store_true", help="claim units so several workers can share the store")
    p.add_argument("--worker-of", default=None, help=argparse.SUPPRESS)
    add_grid_args(p)
    add_exec_args(p)
    p.set_defaults(fn=cmd_sweep)

    for extra in ("report", "analyze", "predict", "doctor", "screen"):
        try:
            mod = __import__(f"ia2.cli_{extra}", fromlist=["register"])
        except ImportError:
            continue
        mod.register(sub)
    return ap


def _one_line(e: BaseException) -> str:
    """An error message on one line, whatever text (file names, data) it quotes."""
    return " ".join(str(e).splitlines()).strip()


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except IA2Error as e:  # raised by an option's type (e.g. --n abc): one line, like every user error
        if "--debug" in (sys.argv[1:] if argv is None else argv) or os.environ.get("IA2_DEBUG"):
            raise
        print(f"ia2: error: {_one_line(e)}", file=sys.stderr)
        return 2
    debug = args.debug or bool(os.environ.get("IA2_DEBUG"))
    code = None
    try:
        if getattr(args, "accelerate_config", None):  # re-run under accelerate launch (ia2.distributed)
            from .distributed import relaunch
            return relaunch(args.accelerate_config, sys.argv[1:] if argv is None else list(argv))
        if getattr(args, "bare", False):  # ia2 doctor: must work when torch/transformers are missing
            return args.fn(args) or 0
        _setup_quiet()
        import torch
        from .distributed import world_size
        # CPU processes share the cores; IA2_THREADS overrides (1 is faster on a machine busy with other work).
        threads = int(os.environ.get("IA2_THREADS", 0)) or max(1, (os.cpu_count() or 1) // world_size())
        torch.set_num_threads(threads)
        code = args.fn(args) or 0
        return code
    except IA2Error as e:
        if debug:
            raise
        print(f"ia2: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ia2: interrupted (finished units are kept; run the same command to resume)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — one clear line, traceback with --debug
        if debug:
            raise
        print(f"ia2: internal error: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:  # end the process group here, the closing barrier only after a success (ia2.distributed.shutdown)
        if "ia2.distributed" in sys.modules:
            sys.modules["ia2.distributed"].shutdown(ok=code == 0)


if __name__ == "__main__":
    sys.exit(main())
