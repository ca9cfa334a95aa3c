"""``ia2 predict``: run a saved adapter on a JSONL/CSV file of new inputs."""

from __future__ import annotations

import sys


def cmd_predict(args) -> int:
    from .predict import predict_file

    n = predict_file(args.adapter, args.input, args.out, task=args.task, model=args.model, device=args.device,
                     batch_size=args.batch_size)
    print(f"ia2: wrote {n} predictions to {args.out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("predict", help="apply a trained adapter to new inputs (JSONL or CSV)")
    p.add_argument("--adapter", required=True, help="adapter folder written by ia2 run (<out>/adapters/<uid>)")
    p.add_argument("--input", required=True, help="JSONL/CSV rows with the task's prompt columns")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--task", default=None, help="default: the task the adapter was trained on (e.g. an OOD task)")
    p.add_argument("--model", default=None, help="default: the base model the adapter was trained on")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(fn=cmd_predict)
