"""``ia2 analyze DIR``: LoRA subspace overlap between methods and asim per layer, into DIR/analysis."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="LoRA subspace overlap between methods; asim per layer",
                              description="Compare saved adapters of different methods (same model, task, N, run, "
                                          "lr) and summarise activation similarity with ICL. Results go to "
                                          "DIR/analysis, which ia2 report includes.")
    p.add_argument("store", metavar="DIR", help="results store (the --out folder of ia2 run / sweep)")
    p.add_argument("--examples", type=int, default=None,
                   help="evaluation examples for asim; when it differs from what was stored at training time, "
                        "asim is recomputed from the saved adapters (loads the model). Default: use stored values")
    p.add_argument("--recompute", action="store_true",
                   help="recompute asim for every saved adapter, even where the stored count matches")
    p.add_argument("--residual", action="store_true",
                   help="also compare the residual stream (cosine, norm ratio per layer) and the next-token "
                        "distribution (KL from ICL) at the first output position; recomputes every saved adapter "
                        "and adds zero-shot units as the floor. Shows where aligned attention outputs stop "
                        "explaining the answer")
    p.add_argument("--device", default=None, help="device for recomputing asim (default: cuda if present)")
    p.add_argument("--only", action="append", metavar="FIELD=VALUE",
                   help="analyze only units with this setting, e.g. --only model=gemma3-270m --only method=sft,ia2 "
                        "(repeatable, a comma list means any of them, as in ia2 report); needs --out")
    p.add_argument("--out", default=None, help="output folder (default: DIR/analysis, which ia2 report includes)")
    p.set_defaults(fn=cmd_analyze)


def cmd_analyze(args) -> int:
    from .analyze import analyze
    from .report import parse_filters

    out = analyze(args.store, examples=args.examples, recompute=args.recompute, device=args.device,
                  log=lambda m: print(m, file=sys.stderr, flush=True), filters=parse_filters(args.only), out=args.out,
                  residual=args.residual)
    print(f"analysis: {out}", file=sys.stderr)
    return 0
