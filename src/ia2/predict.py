"""Apply a trained adapter to new inputs: prediction, confidence and label-set probabilities.

    ia2 predict --adapter runs/demo/adapters/<uid> --input new.jsonl --out preds.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import render_query
from .errors import IA2Error
from .evaluate import next_token_probs_batches
from .generation import greedy_decode
from .io import read_table, write_jsonl
from .models import load_model
from .prompts import encode, label_token_ids, length_batches
from .tasks import get_task
from .tasks.parsers import cut_at_stop, get_parser


def load_adapter(adapter_dir: str | Path, model: str | None = None, device=None):
    """(peft model, tokenizer, training info) from a folder written by ``ia2 run``/``ia2 sweep``."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    info_path = adapter_dir / "ia2_training.json"
    if not (adapter_dir / "adapter_config.json").exists() or not info_path.exists():
        raise IA2Error(f"{adapter_dir} is not an ia2 adapter folder (no adapter_config.json / ia2_training.json)",
                       "pass a folder under <out>/adapters/ written by ia2 run")
    info = json.loads(info_path.read_text())
    lm = load_model(model or info["unit"]["model"], device)
    peft_model = PeftModel.from_pretrained(lm.model, str(adapter_dir))
    peft_model.eval()
    return peft_model, lm.tokenizer, info


def predict_rows(model, tokenizer, task, label_format: str, rows: list[dict], batch_size: int = 16) -> list[dict]:
    prompts = [encode(tokenizer, render_query(task, row, f"input row {i + 1}")) for i, row in enumerate(rows)]
    out: list[dict] = [{} for _ in rows]
    if task.kind == "single":
        labels = task.label_strings(label_format)
        lids = label_token_ids(tokenizer, labels, task.name)
        for idx, probs in next_token_probs_batches(model, tokenizer, prompts, batch_size):
            top_p, top_id = probs.max(-1)
            lp = probs[:, lids]
            lp = lp / lp.sum(-1, keepdim=True).clamp_min(1e-30)
            for j, i in enumerate(idx):
                out[i] = {"prediction": tokenizer.decode([int(top_id[j])]), "confidence": float(top_p[j]),
                          "label_probs": {lab: float(p) for lab, p in zip(labels, lp[j])},
                          "label_prediction": labels[int(lp[j].argmax())]}
    else:
        parse = get_parser(task.parser)
        for idx in length_batches([len(p) for p in prompts], max(1, batch_size // 2)):
            for i, d in zip(idx, greedy_decode(model, tokenizer, [prompts[k] for k in idx], task.max_new_tokens)):
                text = cut_at_stop(tokenizer.decode(d.tokens, skip_special_tokens=True))
                out[i] = {"generated": text, "answer": parse(text)}
    return [{**row, **o} for row, o in zip(rows, out)]


def predict_file(adapter: str, input_path: str, out_path: str, task: str | None = None, model: str | None = None,
                 device=None, batch_size: int = 16) -> int:
    rows = read_table(input_path)
    peft_model, tok, info = load_adapter(adapter, model, device)
    unit = info["unit"]
    t = get_task(task or unit["task"])
    with torch.no_grad():
        preds = predict_rows(peft_model, tok, t, unit.get("label_format", "digits"), rows, batch_size)
    write_jsonl(out_path, preds)
    return len(preds)
