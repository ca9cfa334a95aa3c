#!/usr/bin/env python
"""Build a model folder with a real model's shape and tokenizer but random weights, for timing only.

    python benchmarks/shape_model.py SRC OUT [--seed 0]

SRC holds a model's ``config.json`` and tokenizer files (``tokenizer.json`` may be gzipped as
``tokenizer.json.gz``), e.g. the dense copy ia2 caches under ``~/.cache/ia2/models/<preset>-<hash>``.
Speed and memory depend on the shape and the token counts, not on the weights' values, so a machine
that cannot receive a GGUF (an accelerator reached only through a small upload) can still measure a
preset's real costs: ``benchmarks/run.py --models OUT`` and ``ia2 sweep`` accept the folder as a model.
Accuracies measured with it mean nothing.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def build(src: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (src / "config.json").is_file():
        raise SystemExit(f"error: {src}/config.json not found; fix: point SRC at a model folder with its config")
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
        elif (src / f"{name}.gz").is_file():
            with gzip.open(src / f"{name}.gz", "rb") as f, open(out / name, "wb") as g:
                shutil.copyfileobj(f, g)
    if not (out / "tokenizer.json").is_file():
        raise SystemExit(f"error: no tokenizer.json(.gz) in {src}; fix: copy the model's tokenizer files there")
    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="folder with config.json and tokenizer files")
    ap.add_argument("out", type=Path, help="folder to write (random weights, same shape and tokenizer)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = build(args.src, args.out, args.seed)
    print(f"wrote {out} (random weights, shape of {args.src})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
