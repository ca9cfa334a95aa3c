"""Data-parallel training of one run across processes, and training-curve tracking.

    accelerate launch --config_file src/ia2/accelerate_configs/multi_gpu.yaml -m ia2 run ...
    torchrun --nproc_per_node 2 -m ia2 run ...
    ia2 run --accelerate-config multi_gpu ...        # re-executes itself under accelerate launch

Single process (``WORLD_SIZE`` unset or 1): ``get_accelerator()`` is None and nothing here changes
the training loop; ``is_main()`` is True and ``barrier()`` does nothing.

Several processes (one per GPU, or CPU processes on the gloo backend):

* Batch arithmetic. The effective batch stays what the method prescribes, B = min(4, N) examples
  per optimizer step, whatever the number of processes W. Each step, every process takes a
  contiguous shard of that batch: process r gets examples [r*s, (r+1)*s) with s = ceil(B / W)
  (so the per-process micro-batch is B / W when W divides B; a process whose shard is empty, e.g.
  B = 1 or the short last batch of an epoch, runs a zero-weighted forward so that the gradient
  all-reduce still lines up). ``TrainConfig.micro_batch`` further splits a shard into forwards.
* Loss scaling. Each process back-propagates ``sum(local per-example losses) / B * W``; DDP
  averages gradients over the W processes, which gives sum(all per-example losses) / B: exactly
  the full-batch mean gradient of the single-process run.
* Agreement. All processes draw the same example order (the seeded generator), all-reduce the
  batch loss (so the divergence check raises on every rank or none) and compute the dev loss as
  an all-reduced sum over contiguous dev shards, so every rank sees the same bits and takes the
  same early-stopping decisions; parameters stay identical because DDP gives every rank the same
  averaged gradient.
* Teacher targets come from the frozen base on the main process, which writes them to the cache;
  the other processes wait at a barrier and then load them from the cache.
* Evaluation, saving adapters and writing records happen on the main process only.

Sharded (FSDP: ``accelerate launch --config_file fsdp.yaml``, or ``ACCELERATE_USE_FSDP=true`` with
torchrun), for base models that do not fit one device:

* Every unit loads the base on the CPU, attaches its adapter, and shards the pair with torch's FSDP2
  ``fully_shard`` (each decoder layer named by the model's ``_no_split_modules``, then the root), which
  moves each process's shard to its device. There is one copy of the weights: the teacher pass and the
  activation-similarity reference run through the same sharded model with the adapter disabled.
* Every forward is collective, so all processes run the teacher pass, the baselines and the evaluation
  together on the same inputs (identical results on every rank); only the main process writes.
  Training shards each batch exactly as under DDP (FSDP averages gradients over processes like DDP).
* The adapter is gathered to full tensors before ``save_pretrained``, so it loads in plain peft. The
  sharded model is dropped after the unit and the next unit reloads the base (from the safetensors cache).

Tracking (``--report-to none|tensorboard|wandb``): one curve per trained unit, fed from the dev
checks of ``train_stage`` (main process only).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from datetime import timedelta
from importlib import resources
from pathlib import Path

import torch

from .errors import IA2Error

_ACCELERATOR = None
CONFIG_NAMES = ("single", "multi_gpu", "fsdp")
REPORT_TO = ("none", "tensorboard", "wandb")


# --- process group --------------------------------------------------------------------------------
def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def get_accelerator():
    """The shared ``accelerate.Accelerator`` when several processes run, else None.

    CPU-only machines get the gloo backend. The process-group timeout is long (``IA2_DIST_TIMEOUT_MIN``,
    default 180 minutes) because non-main processes wait while the main one computes teacher targets
    and evaluates.
    """
    global _ACCELERATOR
    if world_size() <= 1:
        return None
    if _ACCELERATOR is None:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        minutes = float(os.environ.get("IA2_DIST_TIMEOUT_MIN", "180"))
        cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        acc = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=minutes))])
        if acc.distributed_type.name in ("DEEPSPEED", "MEGATRON_LM", "XLA"):
            raise IA2Error(f"ia2 trains with DDP or FSDP; accelerate is set up for {acc.distributed_type.name}",
                           "launch with --accelerate-config multi_gpu (DDP) or fsdp (sharded), or torchrun")
        _ACCELERATOR = acc
    return _ACCELERATOR


def shutdown(ok: bool = True) -> None:
    """End the process group before the interpreter exits (a no-op in one process).

    Left to interpreter teardown, gloo's threads can outlive the process group and abort a rank at exit
    ("terminate called without an active exception"), which fails a run whose work is done. After a
    success the ranks first meet at a barrier so none leaves while another still uses the group; after
    an error they do not (the other ranks may never arrive).
    """
    global _ACCELERATOR
    acc, _ACCELERATOR = _ACCELERATOR, None
    if acc is None:
        return
    if ok:
        acc.wait_for_everyone()
    acc.state.destroy_process_group()


def sharded() -> bool:
    """True when several processes shard the model (FSDP) instead of each holding a copy (DDP).

    ``accelerate launch`` with an FSDP config sets ``ACCELERATE_USE_FSDP``; on CPU-only machines accelerate
    itself reports MULTI_CPU, so the variable is read directly (set it by hand under torchrun).
    """
    if world_size() <= 1:
        return False
    acc = get_accelerator()
    return acc.distributed_type.name == "FSDP" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def shard_model(model):
    """Shard ``model`` (a base or a PeftModel) across the processes with FSDP2, in place; returns it.

    Decoder layers (the classes in the HF model's ``_no_split_modules``) become one FSDP unit each and the
    root holds the rest (embeddings, final norm, head). Parameters move to this process's device.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    acc = get_accelerator()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise IA2Error(f"cannot shard {type(base).__name__}: no decoder-layer class to wrap (_no_split_modules)",
                       "use DDP (--accelerate-config multi_gpu) for this model")
    mesh = init_device_mesh(acc.device.type, (acc.num_processes,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state(model) -> dict:
    """The trainable parameters as full (unsharded) CPU tensors; collective when the model is sharded."""
    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[n] = full.detach().cpu().clone()
    return out


def is_main() -> bool:
    acc = get_accelerator()
    return acc is None or acc.is_main_process


def barrier() -> None:
    acc = get_accelerator()
    if acc is not None:
        acc.wait_for_everyone()


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (e.g. computes and caches teacher targets); the others
    wait at a barrier and then run it (loading from the cache)."""
    acc = get_accelerator()
    if acc is None:
        yield
        return
    if not acc.is_main_process:
        acc.wait_for_everyone()
    yield
    if acc.is_main_process:
        acc.wait_for_everyone()


def device() -> torch.device | None:
    """This process's device when distributed (e.g. cuda:LOCAL_RANK), else None (the caller's default)."""
    acc = get_accelerator()
    return acc.device if acc is not None else None


def agree(value: bool) -> bool:
    """The main process's ``value`` on every process (e.g. whether a unit is already in the store)."""
    acc = get_accelerator()
    if acc is None:
        return value
    t = torch.tensor([1.0 if value else 0.0], device=acc.device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def shard(items: list, rank: int, world: int) -> list:
    """Contiguous shard ``rank`` of ``world``: items [rank*s, (rank+1)*s) with s = ceil(len / world)."""
    s = math.ceil(len(items) / world) if items else 0
    return items[rank * s:(rank + 1) * s]


# --- data-parallel training step ------------------------------------------------------------------
class DataParallel:
    """One training stage's DDP wrapper: sharded gradient steps and all-reduced losses.

    Built by :meth:`create` inside ``train_stage``; None in a single process.
    """

    def __init__(self, acc, model, ddp_model, optimizer):
        # Sharded (FSDP2): the model itself is the wrapper and averages gradients over processes like DDP.
        self.acc, self.model, self.ddp, self.optimizer = acc, model, ddp_model, optimizer
        self.fsdp = ddp_model is model
        self.rank, self.world = acc.process_index, acc.num_processes
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device if self.params else acc.device

    @classmethod
    def create(cls, model, optimizer) -> "DataParallel | None":
        acc = get_accelerator()
        if acc is None or acc.num_processes <= 1:
            return None
        acc.free_memory()  # references left by a stage that raised (e.g. diverged)
        if sharded():
            return cls(acc, model, model, optimizer)
        ddp_model, optimizer = acc.prepare(model, optimizer)
        return cls(acc, model, ddp_model, optimizer)

    @contextlib.contextmanager
    def _no_sync(self):
        """Accumulate this forward's gradient locally (no all-reduce / reduce-scatter yet)."""
        if not self.fsdp:
            with self.ddp.no_sync():
                yield
            return
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def _sum(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def backward(self, objective, batch: list, pad_id: int, micro: int) -> float:
        """Accumulate the gradient of the full-batch mean loss; returns that mean (same on every rank)."""
        from .methods import make_batch

        b = len(batch)
        mine = shard(batch, self.rank, self.world)
        chunks = [(mine[i:i + micro], 1.0) for i in range(0, len(mine), micro)]
        # Every rank runs the same number of forwards (DDP syncs buffers in each one): ranks with a short or
        # empty shard pad with zero-weighted forwards of the batch's first example.
        n_forwards = math.ceil(math.ceil(b / self.world) / micro)
        chunks += [(batch[:1], 0.0)] * (n_forwards - len(chunks))
        local = 0.0
        for k, (chunk, weight) in enumerate(chunks):
            sync = k == len(chunks) - 1
            with contextlib.nullcontext() if sync else self._no_sync():
                per = objective.per_example(self.ddp, make_batch(chunk, pad_id, self.device), through_output=self.fsdp)
                total = per.sum()
                loss = total * (weight * self.world / b)
                if not self.fsdp:
                    # The zero term gives every trainable parameter a gradient, so DDP's reducer never waits
                    # on a parameter the objective does not reach (e.g. custom MLP targets under the IA2 loss).
                    loss = loss + 0.0 * sum(p.sum() for p in self.params)
                loss.backward()
            if weight:
                local += float(total.detach())
        return self._sum(local) / b

    def mean_loss(self, objective, examples: list, pad_id: int, micro: int) -> float:
        """Mean per-example loss over ``examples`` (dev), each rank a contiguous shard, all-reduced."""
        from .methods import make_batch

        if not examples:
            return math.nan
        mine = shard(examples, self.rank, self.world)
        chunks = [mine[i:i + micro] for i in range(0, len(mine), micro)]
        if self.fsdp:  # every forward is collective: a short shard pads with forwards whose loss is dropped
            n_forwards = math.ceil(math.ceil(len(examples) / self.world) / micro)
            chunks += [None] * (n_forwards - len(chunks))
        total = 0.0
        with torch.no_grad():
            for chunk in chunks:
                per = objective.per_example(self.model, make_batch(chunk or examples[:1], pad_id, self.device))
                total += float(per.sum()) if chunk else 0.0
        return self._sum(total) / len(examples)

    def close(self) -> None:
        """Drop accelerate's references to the wrapped model and optimizer (the adapter stays trained)."""
        self.acc.free_memory()
        self.ddp = self.optimizer = None


# --- launching ------------------------------------------------------------------------------------
def config_path(name: str) -> Path:
    """A packaged accelerate config (single, multi_gpu, fsdp) or a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)
    stem = name.removesuffix(".yaml")
    if stem not in CONFIG_NAMES:
        raise IA2Error(f"unknown accelerate config '{name}'",
                       f"choose {', '.join(CONFIG_NAMES)} or give the path of an accelerate YAML file")
    return Path(str(resources.files("ia2") / "accelerate_configs" / f"{stem}.yaml"))


def _strip_option(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def relaunch(config: str, argv: list[str], extra: list[str] | None = None) -> int:
    """Run ``ia2 <argv>`` again under ``accelerate launch --config_file <config>`` and return its exit code.

    ``argv`` is the original command line without the program name; ``--accelerate-config`` is removed
    from it. ``extra`` goes to ``accelerate launch`` before ``-m ia2`` (e.g. ``["--num_processes", "4"]``).
    """
    if world_size() > 1:
        raise IA2Error("--accelerate-config given inside an already distributed launch",
                       "drop --accelerate-config when using accelerate launch or torchrun yourself")
    path = config_path(config)
    extra = list(extra or [])
    n = os.environ.get("IA2_NUM_PROCESSES")
    packaged_multi = path.stem in ("multi_gpu", "fsdp") and path.parent == config_path("single").parent
    if n is None and packaged_multi:  # default: one process per visible GPU
        gpus = torch.cuda.device_count()
        if gpus < 2:
            raise IA2Error(f"--accelerate-config {path.stem} needs at least 2 GPUs, found {gpus}",
                           "on CPU: torchrun --nproc_per_node 2 -m ia2 -- run ... (README, 'Scaling out'); "
                           "or set IA2_NUM_PROCESSES")
        n = str(gpus)
    if n and not any(a.startswith(("--num_processes", "--num-processes")) for a in extra):
        extra += ["--num_processes", n]
    # "--": the launcher would otherwise read ia2's --n as an abbreviation of one of its own options
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), *extra,
           "-m", "ia2", "--", *_strip_option(argv, "--accelerate-config")]
    print(f"ia2: relaunching under accelerate ({path.name}): {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    return subprocess.call(cmd)


# --- tracking -------------------------------------------------------------------------------------
def check_report_to(backend: str | None) -> str:
    """Validate ``--report-to`` and that its package is installed; returns the backend name."""
    backend = (backend or "none").lower()
    if backend not in REPORT_TO:
        raise IA2Error(f"unknown --report-to '{backend}'", f"choose {', '.join(REPORT_TO)}")
    if backend == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
        except ImportError:
            raise IA2Error("--report-to tensorboard needs the tensorboard package",
                           "pip install tensorboard  (or pip install 'ia2[tracking]')") from None
    elif backend == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise IA2Error("--report-to wandb needs the wandb package", "pip install wandb") from None
    return backend


class Tracker:
    """Training curves of one unit: ``stage(label)`` returns an ``on_check`` callback for train_stage.

    Steps are counted across a unit's stages (stage 2 continues after stage 1's last step), and each
    value is logged as ``<stage label>/train_loss`` and ``<stage label>/dev_loss``. TensorBoard logs go
    to ``<logdir>/<name>``; wandb runs go to the project ``IA2_WANDB_PROJECT`` (default ``ia2``).
    """

    def __init__(self, backend: str, logdir: str | Path, name: str, config: dict | None = None):
        self.backend = check_report_to(backend)
        self.offset, self._last = 0, 0
        self._writer = self._run = None
        if self.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(logdir) / name))
            if config:
                self._writer.add_text("unit", "\n".join(f"    {k}: {v}" for k, v in config.items()))
        elif self.backend == "wandb":
            import wandb

            self._run = wandb.init(project=os.environ.get("IA2_WANDB_PROJECT", "ia2"), name=name, config=config or {},
                                   dir=str(logdir))

    def stage(self, label: str):
        """The ``on_check`` callback of one stage; call before that stage's train_stage."""
        self.offset = self._last

        def on_check(rec: dict) -> None:
            step = self.offset + int(rec["step"])
            self._last = max(self._last, step)
            values = {f"{label}/train_loss": rec["train_loss"], f"{label}/dev_loss": rec["dev_loss"]}
            if self._writer is not None:
                for k, v in values.items():
                    self._writer.add_scalar(k, v, step)
            elif self._run is not None:
                self._run.log({**values, f"{label}/epoch": rec["epoch"]}, step=step)

        return on_check

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._run is not None:
            self._run.finish()
        self._writer = self._run = None


def open_tracker(backend: str | None, logdir: str | Path, name: str, config: dict | None = None) -> Tracker | None:
    """A Tracker on the main process when ``backend`` is not none; None otherwise."""
    if check_report_to(backend) == "none" or not is_main():
        return None
    return Tracker(backend, logdir, name, config)
