"""Per-layer mean square of the teacher's attention outputs, from a store's cached targets, as Markdown.

The paper's IA2 loss sums every layer's MSE, so a layer's share of the loss scales with these numbers; the
``relative`` loss divides each layer's MSE by them (the same function computes both). Training targets only.

    python docs/results/diagnostics/layer_scale.py runs/study --label-format words --n 4 --task sst2 > OUT.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from ia2.methods import StudentExample, relative_layer_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--task")
    ap.add_argument("--label-format")
    ap.add_argument("--n", type=int)
    args = ap.parse_args()
    rows = []
    for meta in sorted(Path(args.store, "targets").glob("*.json")):
        key = json.loads(meta.read_text())["key"]
        if any(want is not None and key[k] != want for k, want in
               (("task", args.task), ("label_format", args.label_format), ("n", args.n))):
            continue
        tensors = load_file(str(meta.with_suffix(".safetensors")))
        train = [StudentExample([], [], v) for k, v in tensors.items() if k.startswith("train.") and k.endswith(".acts")]
        ms = [1 / w for w in relative_layer_weights(train)]
        rows.append((key["model"].split(":")[0], key["task"], key["label_format"], key["n"], key["run"], ms))
    if not rows:
        raise SystemExit(f"no cached targets match in {args.store}/targets")
    print(f"Teacher attention-output mean square per layer (training targets), from `{args.store}/targets`.\n")
    print("| model | task | format | N | run | max / min | mean square per layer (block 0 first) |")
    print("|---|---|---|---:|---:|---:|---|")
    for model, task, fmt, n, run, ms in sorted(rows):
        cells = " ".join(f"{v:.3g}" for v in ms)
        print(f"| {model} | {task} | {fmt} | {n} | {run} | {max(ms) / min(ms):,.0f} | {cells} |")


if __name__ == "__main__":
    main()
