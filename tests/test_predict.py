"""`ia2 predict` end to end on a trained tiny adapter, and saved adapters loading in plain peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ia2.cli import main
from ia2.data import load_task_data
from ia2.store import Store
from ia2.tasks import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.exists(), reason="offline data mirror not found")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os
    os.environ["IA2_DATA_DIR"] = str(DATA)
    out = tmp_path_factory.mktemp("store")
    assert main(["run", "--model", "tiny-llama", "--task", "sst2", "--eval-tasks", "sst2", "--n", "4", "--runs", "0",
                 "--methods", "sft", "--lr", "1e-2", "--limit-eval", "8", "--max-epochs", "3", "--asim-examples", "2",
                 "--out", str(out)]) == 0
    (rec,) = Store(out, create=False).records()
    return out, rec


def test_predict_matches_the_stored_evaluation(trained, tmp_path):
    out, rec = trained
    examples = load_task_data(get_task("sst2")).eval[:8]
    rows = [{"sentence": e.query.removeprefix("Text:").removesuffix("\nLabel:"), "id": i} for i, e in enumerate(examples)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = tmp_path / "preds.jsonl"
    assert main(["predict", "--adapter", str(out / rec["adapter"]), "--input", str(inp), "--out", str(dest)]) == 0
    preds = [json.loads(x) for x in dest.read_text().splitlines()]
    assert [p["id"] for p in preds] == list(range(8))  # input order and columns kept
    stored = rec["predictions"]["sst2"]
    for p, conf, lp in zip(preds, stored["top1_prob"], stored["label_probs"]):
        assert p["confidence"] == pytest.approx(conf, abs=1e-5)
        assert set(p["label_probs"]) == {"0", "1"}
        assert sum(p["label_probs"].values()) == pytest.approx(1.0, abs=1e-6)
        assert p["label_probs"]["1"] == pytest.approx(lp[1] / sum(lp), abs=1e-5)
        assert p["label_prediction"] in ("0", "1")


def test_saved_adapter_loads_in_plain_peft(trained):
    from peft import PeftModel

    from ia2.models import load_model

    out, rec = trained
    lm = load_model("tiny-llama")
    x = torch.tensor([lm.tokenizer("Text:a fine film\nLabel:").input_ids])
    with torch.no_grad():
        base = lm.model(input_ids=x).logits[0, -1]
        model = PeftModel.from_pretrained(lm.model, str(out / rec["adapter"]))
        adapted = model(input_ids=x).logits[0, -1]
    assert not torch.allclose(base, adapted), "the trained adapter changes the output"
    assert (out / rec["adapter"] / "ia2_training.json").exists()


def test_predict_refuses_a_folder_that_is_not_an_adapter(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"sentence": "x"}\n')
    assert main(["predict", "--adapter", str(tmp_path), "--input", str(inp), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "not an ia2 adapter folder" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
