"""``ia2 report DIR``: tables, summary, plots and an index from a results store."""

from __future__ import annotations

import shlex
import sys

from .select import RULES


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="paper-layout tables (Markdown, CSV, LaTeX), t-tests and plots",
                              description="Choose one learning rate (and ce weight) per cell, then write tables, "
                                          "a summary of IA2 -> SFT vs SFT, and plots under --out.")
    p.add_argument("stores", nargs="+", metavar="DIR",
                   help="results store(s) (the --out folder of ia2 run / sweep); several are reported as one")
    p.add_argument("--select-on", choices=list(RULES), default="dev-loss",
                   help="dev-loss (default) or dev-acc: chosen on the source task's dev set; "
                        "eval: on the evaluation set itself (the paper's protocol, labelled as such)")
    p.add_argument("--out", default=None, help="output folder (default: DIR/report; required with several stores)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--only", action="append", metavar="FIELD=VALUE",
                   help="report only units with this unit setting, e.g. --only lr=1e-3 --only n=4,8 (repeatable; a "
                        "comma list means any of them; units without the field, like the baselines' lr, are kept)")
    p.set_defaults(fn=cmd_report)


def cmd_report(args) -> int:
    from pathlib import Path

    from .report import make_report, parse_filters

    filters = parse_filters(args.only)
    # One store defaults to DIR/report; several need --out, which make_report asks for.
    out = args.out or (str(Path(args.stores[0]) / "report") if len(args.stores) == 1 else None)
    command = "ia2 report " + " ".join(shlex.quote(a) for a in [*args.stores, "--select-on", args.select_on]
                                       + (["--out", out] if out else [])
                                       + (["--no-plots"] if args.no_plots else [])
                                       + [f"--only={f}" for f in args.only or []])
    index = make_report(args.stores, args.select_on, out, command, plots=not args.no_plots, filters=filters)
    print(f"report: {index}", file=sys.stderr)
    return 0
