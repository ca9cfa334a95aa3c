"""Data-parallel training (2 CPU processes, gloo) matches the single-process run; tracking backends.

The same file is the worker script: ``torchrun --nproc_per_node 2 tests/test_distributed.py OUT`` trains
two chained stages (IA2 then SFT, as ia2-then-sft does) on synthetic examples and saves each rank's
adapter weights and curves to OUT/rank{r}.pt. N = 5 training examples with effective batch 4 gives
batches of 4 and 1 per epoch, so the 2-process run also exercises an empty shard (rank 1 of the
1-example batch); 3 dev examples shard unevenly (2 + 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
ATOL = 1e-4  # LoRA weights, single process vs 2 processes (measured max |diff| is printed by the test)


def _examples(n: int, layers: int, d: int, seed: int):
    from ia2.methods import StudentExample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        q = torch.randint(3, 200, (5 + i % 4,), generator=g).tolist()  # varied lengths -> padding in batches
        t = torch.randint(3, 200, (1 + i % 3,), generator=g).tolist()
        out.append(StudentExample(q, t, acts=torch.randn(layers, len(t), d, generator=g) * 0.1))
    return out


def train_once(micro_batch: int | None = None) -> dict:
    """IA2 stage then SFT stage on one LoRA adapter; returns adapter weights and per-stage logs."""
    from dataclasses import asdict

    from ia2 import distributed
    from ia2.adapters import AdapterConfig, attach, trainable_state
    from ia2.methods import Objective
    from ia2.models import load_model
    from ia2.train import TrainConfig, train_stage

    lm = load_model("tiny-llama", distributed.device() or "cpu", "fp32")
    torch.manual_seed(0)
    model = attach(lm.model, AdapterConfig())
    cfg_l = lm.model.config
    train = _examples(5, cfg_l.num_hidden_layers, cfg_l.hidden_size, seed=1)
    dev = _examples(3, cfg_l.num_hidden_layers, cfg_l.hidden_size, seed=2)
    cfg = TrainConfig(lr=3e-3, batch_size=4, micro_batch=micro_batch, max_epochs=4, patience=3, seed=0)
    logs = []
    for obj in (Objective("ia2", "icl"), Objective("sft", "gt")):
        logs.append(asdict(train_stage(model, obj, train, dev, cfg, lm.tokenizer.pad_token_id)))
    return {"state": {k: v.cpu() for k, v in trainable_state(model).items()}, "logs": logs}


DATA = HERE.parents[2] / "shared" / "data"
CLI_RUN = ["run", "--model", "tiny-llama", "--task", "sst2", "--eval-tasks", "sst2", "--n", "4", "--runs", "0",
           "--methods", "ia2", "--lr", "1e-3", "--max-epochs", "2", "--limit-eval", "4", "--asim-examples", "2",
           "--device", "cpu"]


def grad_once() -> dict:
    """The gradient of one 3-example IA2 batch (sharded 2 + 1 over two processes), adapter weights random."""
    from ia2 import distributed
    from ia2.adapters import AdapterConfig, attach
    from ia2.distributed import DataParallel
    from ia2.methods import Objective, make_batch
    from ia2.models import load_model

    lm = load_model("tiny-llama", distributed.device() or "cpu", "fp32")
    torch.manual_seed(0)
    model = attach(lm.model, AdapterConfig())
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)  # LoRA B starts at 0, which would leave A without gradient
    batch = _examples(3, lm.model.config.num_hidden_layers, lm.model.config.hidden_size, seed=3)
    obj, pad = Objective("ia2", "icl"), lm.tokenizer.pad_token_id
    dp = DataParallel.create(model, torch.optim.SGD(params, lr=0.0))
    if dp is not None:
        loss = dp.backward(obj, batch, pad, micro=3)
    else:
        per = obj.per_example(model, make_batch(batch, pad, "cpu"))
        (per.sum() / len(batch)).backward()
        loss = float(per.mean())
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    if dp is not None:
        dp.close()
    return {"loss": loss, "grads": grads}


def _worker(out: str, with_cli: bool) -> None:
    """One rank: train_stage on synthetic data, then (with the data mirror) the pipeline through the CLI."""
    torch.set_num_threads(1)
    from ia2 import distributed

    acc = distributed.get_accelerator()
    assert acc is not None and acc.num_processes == 2, "expected a 2-process launch"
    torch.save(grad_once(), Path(out) / f"grad-rank{acc.process_index}.pt")
    for micro in (None, 1):  # micro 1: gradient accumulation within a rank, uneven forward counts padded
        res = train_once(micro)
        res["main"] = distributed.is_main()
        torch.save(res, Path(out) / f"rank{acc.process_index}-micro{micro}.pt")
    distributed.barrier()
    if with_cli:
        from ia2.cli import main

        assert main([*CLI_RUN, "--out", str(Path(out) / "cli")]) == 0
    distributed.shutdown()  # main() has already ended the group when it ran; a second call is a no-op
    assert not torch.distributed.is_initialized() and distributed._ACCELERATOR is None


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore", IA2_DATA_DIR=str(DATA))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(args: list[str], timeout: int = 240, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", _free_port(), *args]
    return subprocess.run(cmd, env={**_env(), **env}, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_single_process_has_no_accelerator(monkeypatch):
    from ia2 import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.get_accelerator() is None and distributed.is_main() and distributed.device() is None
    distributed.barrier()  # no-op
    with distributed.main_first():
        pass
    assert distributed.agree(True) is True
    distributed.shutdown()  # no-op
    assert distributed.shard([1, 2, 3, 4], 0, 2) == [1, 2] and distributed.shard([1, 2, 3, 4], 1, 2) == [3, 4]
    assert distributed.shard([9], 1, 2) == [] and distributed.shard([1, 2, 3], 1, 2) == [3]


class _FakeAccelerator:
    """Records what ``distributed.shutdown`` does: the closing barrier and the process group's end."""

    def __init__(self):
        self.calls = []
        self.state = self

    def wait_for_everyone(self):
        self.calls.append("barrier")

    def destroy_process_group(self):
        self.calls.append("destroy")


@pytest.mark.parametrize("argv, code, calls", [
    (["tasks"], 0, ["barrier", "destroy"]),  # success: the ranks meet, then the group ends
    (["report", "/nonexistent/store"], 2, ["destroy"]),  # a user error: no barrier (other ranks may never arrive)
])
def test_cli_ends_the_process_group(monkeypatch, capsys, argv, code, calls):
    """Every CLI exit ends the process group itself, so no rank aborts in interpreter teardown."""
    from ia2 import distributed
    from ia2.cli import main

    fake = _FakeAccelerator()
    monkeypatch.setattr(distributed, "_ACCELERATOR", fake)
    monkeypatch.setenv("IA2_THREADS", "1")
    assert main(argv) == code
    assert fake.calls == calls and distributed._ACCELERATOR is None
    distributed.shutdown()  # idempotent
    assert fake.calls == calls


_SINGLE: dict = {}


def _single() -> dict:
    if not _SINGLE:
        _SINGLE.update(train_once())
    return _SINGLE


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One 2-process launch for both comparisons below (process start-up dominates the cost)."""
    out = tmp_path_factory.mktemp("ddp")
    proc = _torchrun([str(HERE), str(out), "cli" if DATA.is_dir() else "no-cli"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_two_process_gradient_is_full_batch_mean(two_process_run):
    """Loss scaling: the DDP-averaged gradient equals the single-process full-batch mean gradient."""
    g0, g1 = (torch.load(two_process_run / f"grad-rank{r}.pt") for r in (0, 1))
    single = grad_once()
    assert g0["loss"] == g1["loss"] == pytest.approx(single["loss"], rel=1e-5)
    worst = 0.0
    for k, g in single["grads"].items():
        assert torch.equal(g0["grads"][k], g1["grads"][k]), k
        scale = float(g.abs().max()) or 1.0
        worst = max(worst, float((g0["grads"][k] - g).abs().max()) / scale)
    print(f"gradient: max relative |single - 2 processes| = {worst:.2e}")
    assert worst < 1e-4


@pytest.mark.parametrize("micro", [None, 1])
def test_two_process_ddp_matches_single_process(two_process_run, micro):
    r0, r1 = (torch.load(two_process_run / f"rank{r}-micro{micro}.pt") for r in (0, 1))
    assert r0["main"] and not r1["main"]
    # Ranks agree exactly: same weights, same curves, same early-stopping decisions.
    strip = lambda logs: [{k: v for k, v in lg.items() if k != "seconds"} for lg in logs]  # noqa: E731
    assert strip(r0["logs"]) == strip(r1["logs"])
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    single = _single()  # this process: WORLD_SIZE unset -> the unchanged single-process loop (full batches)
    assert set(single["state"]) == set(r0["state"])
    diff = max(float((single["state"][k] - r0["state"][k]).abs().max()) for k in single["state"])
    moved = max(float(v.abs().max()) for k, v in single["state"].items() if "lora_B" in k)
    print(f"micro={micro}: max |LoRA single - 2 processes| = {diff:.2e} (largest |lora_B| {moved:.2e})")
    assert moved > 1e-3, "training did not move the adapter"
    assert diff < ATOL
    for s, d in zip(single["logs"], r0["logs"]):
        keys = ("steps", "epochs", "best_step", "stopped")
        assert [s[k] for k in keys] == [d[k] for k in keys]
        for cs, cd in zip(s["curve"], d["curve"], strict=True):
            assert cs["step"] == cd["step"]
            assert cs["train_loss"] == pytest.approx(cd["train_loss"], rel=1e-4, abs=1e-6)
            assert cs["dev_loss"] == pytest.approx(cd["dev_loss"], rel=1e-4, abs=1e-6)


def test_cli_two_processes_write_one_record(two_process_run, tmp_path, monkeypatch):
    """``torchrun -m ia2 -- run ...``: teacher targets cached once, one record, adapter equal to a 1-process run."""
    if not DATA.is_dir():
        pytest.skip("shared data folder absent")
    from safetensors.torch import load_file

    from ia2.cli import main

    monkeypatch.setenv("IA2_DATA_DIR", str(DATA))
    assert main([*CLI_RUN, "--out", str(tmp_path / "s")]) == 0  # the same run in this process (single process)
    d = two_process_run / "cli"
    assert len(list((d / "records").glob("*.json"))) == 1
    assert len(list((d / "targets").glob("*.safetensors"))) == 1
    (ad,) = (d / "adapters").iterdir()
    (as_,) = (tmp_path / "s" / "adapters").iterdir()
    assert ad.name == as_.name  # same unit uid
    wd, ws = (load_file(str(p / "adapter_model.safetensors")) for p in (ad, as_))
    diff = max(float((wd[k] - ws[k]).abs().max()) for k in ws)
    print(f"pipeline: max |LoRA single - 2 processes| = {diff:.2e}")
    assert diff < ATOL
    rd, rs = (json.loads(next((p / "records").glob("*.json")).read_text()) for p in (d, tmp_path / "s"))
    assert rd["train"]["stages"][0]["best_dev"] == pytest.approx(rs["train"]["stages"][0]["best_dev"], rel=1e-4)
    assert [r["eval_task"] for r in rd["results"]] == [r["eval_task"] for r in rs["results"]] == ["sst2"]


# Sharded: baselines and a two-stage method, so the teacher, evaluation and both stages run collectively.
# gsm8k with N = 2 adds generation (decoding loops on every rank) and a 1-example dev set (uneven shards).
CLI_FSDP = {
    "sst2": [*CLI_RUN[:CLI_RUN.index("--methods") + 1], "zero-shot,icl,ia2-then-sft",
             *CLI_RUN[CLI_RUN.index("--methods") + 2:]],
    "gsm8k": ["run", "--model", "tiny-llama", "--task", "gsm8k", "--eval-tasks", "gsm8k", "--n", "2", "--runs", "0",
              "--methods", "icl,ia2-then-sft", "--g-max", "6", "--lr", "1e-3", "--max-epochs", "2", "--limit-eval", "3",
              "--asim-examples", "2", "--device", "cpu"],
}


@pytest.mark.parametrize("task", sorted(CLI_FSDP))
def test_fsdp_two_processes_match_single_process(task, tmp_path, monkeypatch):
    """``ACCELERATE_USE_FSDP=true torchrun -m ia2 -- run ...``: the model is sharded (FSDP2) over 2 CPU processes;
    teacher, baselines, training and evaluation run collectively; records, metrics and the saved adapter
    match a single-process run."""
    if not DATA.is_dir():
        pytest.skip("shared data folder absent")
    from safetensors.torch import load_file

    from ia2.cli import main

    args = CLI_FSDP[task]
    proc = _torchrun(["-m", "ia2", "--", *args, "--out", str(tmp_path / "fsdp")], ACCELERATE_USE_FSDP="true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    monkeypatch.setenv("IA2_DATA_DIR", str(DATA))
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    d, s = tmp_path / "fsdp", tmp_path / "single"
    assert len(list((d / "targets").glob("*.safetensors"))) == 1  # one teacher pass, written once
    recs = {p: {r["unit"]["method"]: r for r in (json.loads(f.read_text()) for f in (p / "records").glob("*.json"))}
            for p in (d, s)}
    assert set(recs[d]) == set(recs[s]) == set(args[args.index("--methods") + 1].split(","))
    for method, rs in recs[s].items():
        rd = recs[d][method]
        assert rd["status"] == rs["status"] == "done"
        pd, ps = rd["predictions"][task], rs["predictions"][task]
        assert set(pd) == set(ps)
        for k in {"prediction", "correct", "label_correct"} & set(ps):  # per-example outcomes are identical
            assert pd[k] == ps[k], (method, k)
        for a, b in zip(rd["results"], rs["results"], strict=True):
            assert a["acc"] == b["acc"] and a["label_acc"] == b["label_acc"], method
            for k in ("ece", "asim"):
                assert (a[k] is None) == (b[k] is None) and (b[k] is None or a[k] == pytest.approx(b[k], abs=1e-5))
    (ad,), (as_,) = (list((p / "adapters").iterdir()) for p in (d, s))
    wd, ws = (load_file(str(p / "adapter_model.safetensors")) for p in (ad, as_))
    assert set(wd) == set(ws)
    diff = max(float((wd[k] - ws[k]).abs().max()) for k in ws)
    print(f"FSDP {task}: max |LoRA single - 2 sharded processes| = {diff:.2e}")
    assert diff < ATOL
    assert max(float(v.abs().max()) for k, v in ws.items() if "lora_B" in k) > 1e-4, "training did not move the adapter"
    stages = [recs[p]["ia2-then-sft"]["train"]["stages"] for p in (d, s)]
    assert [st["steps"] for st in stages[0]] == [st["steps"] for st in stages[1]]


def test_accelerate_configs_packaged_and_relaunch_command(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    from ia2 import distributed
    from ia2.errors import IA2Error

    kinds = {"single": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP"}
    for name in distributed.CONFIG_NAMES:
        path = distributed.config_path(name)
        assert path.is_file() and load_config_from_file(str(path)).distributed_type.name == kinds[name]
    with pytest.raises(IA2Error, match="unknown accelerate config"):
        distributed.config_path("nope")
    calls = []
    monkeypatch.setattr(distributed.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setenv("IA2_NUM_PROCESSES", "2")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["run", "--accelerate-config", "multi_gpu", "--n", "4", "--accelerate-config=x", "--out", "o"]
    assert distributed.relaunch("multi_gpu", argv) == 0
    cmd = calls[0]
    assert cmd[cmd.index("--config_file") + 1].endswith("multi_gpu.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("-m", cmd.index("--config_file")):] == ["-m", "ia2", "--", "run", "--n", "4", "--out", "o"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(IA2Error, match="already distributed"):
        distributed.relaunch("multi_gpu", argv)


def test_report_to_unknown_backend_errors():
    from ia2.distributed import check_report_to, open_tracker
    from ia2.errors import IA2Error

    assert check_report_to(None) == "none" and open_tracker("none", "/nonexistent", "x") is None
    with pytest.raises(IA2Error, match="unknown --report-to"):
        check_report_to("mlflow")


def test_report_to_missing_backend_names_pip_command(monkeypatch):
    import builtins

    from ia2.distributed import check_report_to
    from ia2.errors import IA2Error

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name in ("wandb", "tensorboard") or name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    for backend, pip in (("wandb", "pip install wandb"), ("tensorboard", "pip install tensorboard")):
        with pytest.raises(IA2Error) as e:
            check_report_to(backend)
        assert pip in str(e.value)


def test_report_to_tensorboard_writes_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    from ia2.distributed import open_tracker

    tr = open_tracker("tensorboard", tmp_path, "unit", {"method": "ia2"})
    cb = tr.stage("1-ia2")
    for step in (2, 4):
        cb({"step": step, "epoch": 1, "train_loss": 1.0 / step, "dev_loss": 2.0 / step})
    cb2 = tr.stage("2-sft")  # steps continue after the first stage's last step
    cb2({"step": 2, "epoch": 1, "train_loss": 0.1, "dev_loss": 0.2})
    tr.close()
    events = list((tmp_path / "unit").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "unit"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("1-ia2/dev_loss")] == [2, 4]
    assert [e.step for e in ea.Scalars("2-sft/train_loss")] == [6]


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2] == "cli")
