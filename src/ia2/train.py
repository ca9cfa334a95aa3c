"""The training loop: Adam, effective batch min(4, N), dev checks every 2 steps and at epoch end,
patience 5, restore the best-dev-loss adapter. One stage; methods chain stages on one adapter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .adapters import load_trainable_state, trainable_state
from .distributed import DataParallel
from .errors import TrainingDiverged
from .methods import Objective, StudentExample, make_batch


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 4  # effective batch; capped at N by the caller
    micro_batch: int | None = None  # examples per forward (gradient accumulation); None = batch_size
    max_epochs: int = 50
    eval_every: int = 2  # optimizer steps between dev checks (plus one at every epoch end)
    patience: int = 5
    early_stop: str = "best"  # "best": restore the best-dev-loss adapter; "last": keep the final one (reference)
    seed: int = 0


@dataclass
class StageLog:
    objective: str
    steps: int = 0
    epochs: int = 0
    best_dev: float = math.inf
    best_step: int = 0
    stopped: str = "max_epochs"
    seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)  # {"step", "epoch", "train_loss", "dev_loss"}


def mean_loss(model, objective: Objective, examples: list[StudentExample], pad_id: int, micro: int) -> float:
    """Mean of per-example losses, without gradients (dev checks)."""
    if not examples:
        return math.nan
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), micro):
            chunk = examples[i:i + micro]
            total += float(objective.per_example(model, make_batch(chunk, pad_id, device)).sum())
    return total / len(examples)


def train_stage(model, objective: Objective, train: list[StudentExample], dev: list[StudentExample],
                cfg: TrainConfig, pad_id: int, on_check=None) -> StageLog:
    """Train the model's trainable (adapter) parameters on one objective; see module docstring."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=0.0)
    # Several processes (accelerate/torchrun): DDP over shards of each batch, see ia2.distributed. None otherwise.
    dp = DataParallel.create(model, opt)
    if dp is not None:
        opt = dp.optimizer
    bs = max(1, min(cfg.batch_size, len(train)))
    micro = max(1, min(cfg.micro_batch or bs, bs))
    gen = torch.Generator().manual_seed(cfg.seed)
    log = StageLog(objective.name)
    # Without dev examples (N = 1) the training loss stands in for the dev loss.
    dev_set = dev or train
    best_state, bad, last_check, t0 = None, 0, -1, time.time()

    def check(epoch: int, train_loss: float) -> bool:
        nonlocal best_state, bad, last_check
        last_check = log.steps
        model.eval()
        dev_loss = (dp.mean_loss(objective, dev_set, pad_id, micro) if dp  # all-reduced: the same on every rank
                    else mean_loss(model, objective, dev_set, pad_id, micro))
        model.train()
        if not math.isfinite(dev_loss):  # weights already broken by the last step: stop, never "restore" them
            raise TrainingDiverged(objective.name, log.steps, dev_loss)
        log.curve.append({"step": log.steps, "epoch": epoch, "train_loss": train_loss, "dev_loss": dev_loss})
        if on_check:
            on_check(log.curve[-1])
        if dev_loss < log.best_dev:
            log.best_dev, log.best_step, bad = dev_loss, log.steps, 0
            best_state = trainable_state(model)
        else:
            bad += 1
        return bad >= cfg.patience

    model.train()
    stop = False
    for epoch in range(1, cfg.max_epochs + 1):
        log.epochs = epoch
        order = torch.randperm(len(train), generator=gen).tolist()
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            opt.zero_grad(set_to_none=True)
            batch_loss = 0.0
            if dp is not None:  # every rank: its shard of the batch; the loss is the all-reduced batch mean
                batch_loss = dp.backward(objective, [train[i] for i in idx], pad_id, micro)
                if not math.isfinite(batch_loss):
                    raise TrainingDiverged(objective.name, log.steps + 1, batch_loss)
            for m in range(0, len(idx), micro) if dp is None else ():
                chunk = [train[i] for i in idx[m:m + micro]]
                loss = objective.per_example(model, make_batch(chunk, pad_id, device)).sum() / len(idx)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(objective.name, log.steps + 1, float(loss))
                loss.backward()
                batch_loss += float(loss.detach())
            opt.step()
            log.steps += 1
            if log.steps % cfg.eval_every == 0 and check(epoch, batch_loss):
                stop = True
                break
        if not stop and last_check != log.steps:
            stop = check(epoch, batch_loss)
        if stop:
            log.stopped = "patience"
            break
    model.eval()
    if dp is not None:
        dp.close()
    if cfg.early_stop == "best" and best_state is not None:
        load_trainable_state(model, best_state)
    log.seconds = time.time() - t0
    return log
