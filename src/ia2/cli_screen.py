"""``ia2 screen``: zero-shot vs ICL per (model, task, label format) and N, with the responsive flag."""

from __future__ import annotations

import platform
import shlex
import sys


def cmd_screen(args) -> int:
    from .cli import execute, log
    from .screen import screen_configs, write_screening
    from .store import Store

    for cfg in screen_configs(args.models, args.tasks, args.formats, args.n, args.runs, args.limit_eval):
        execute(cfg, args, resume=True)
    machine = f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'})"
    rows = write_screening(Store(args.out), "ia2 " + shlex.join(sys.argv[1:]), machine, args.margin)
    for r in rows:
        log(f"{r['model']:>14} {r['task']:>10} {r['label_format']:>6}: majority {r['majority']:.2f}, "
            f"best ICL {r['best_icl_acc']:.2f} -> {'responsive' if r['responsive'] else 'not responsive'}")
    log(f"screening table: {args.out}/screening.md")
    return 0


def register(sub) -> None:
    from .cli import add_exec_args, parse_int_list, split_list

    p = sub.add_parser("screen", help="zero-shot vs ICL screening: which (model, task, format) learn in context")
    p.add_argument("--models", type=split_list, default=["smollm2-135m"])
    p.add_argument("--tasks", type=split_list, default=["sst2", "finsen", "strategytf", "agnews"])
    p.add_argument("--formats", type=split_list, default=["digits", "words"])
    p.add_argument("--n", type=parse_int_list, default=[4, 8, 16])
    p.add_argument("--runs", type=parse_int_list, default=[0, 1])
    p.add_argument("--limit-eval", type=int, default=100)
    p.add_argument("--margin", type=float, default=0.05)
    add_exec_args(p)
    p.set_defaults(fn=cmd_screen)
