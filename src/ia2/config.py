"""Typed configuration of a run or sweep, and its expansion into units (one trained adapter each).

A unit's identity is the hash of its full config; the config itself is stored inside each result
record and never parsed back from file or folder names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

import yaml

from .adapters import AdapterConfig
from .data import check_dev_split
from .errors import IA2Error
from .io import without_defaults
from .methods import check_ia2_capture, check_ia2_loss, get_method
from .models import DEFAULT_MODEL
from .tasks import LABEL_FORMATS, get_task

DEFAULT_LRS = (1e-4, 3e-4, 1e-3)
DEFAULT_CE_WEIGHTS = (0.001, 0.01, 0.05, 0.5)


@dataclass(frozen=True)
class Unit:
    """One result-producing job: a baseline evaluation or one adapter trained and evaluated."""

    model: str
    task: str
    label_format: str
    eval_tasks: tuple[str, ...]
    n: int
    run: int
    method: str
    lr: float | None = None
    ce_weight: float | None = None
    labels: str = "gt"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    max_epochs: int = 50
    patience: int = 5
    early_stop: str = "best"
    batch_size: int = 4
    g_max: int = 200
    kd_top_k: int | None = None
    limit_eval: int | None = None
    asim_examples: int = 100
    dev_split: str = "reference"
    ia2_loss: str = "mse"
    ia2_capture: str = "attn"

    def uid(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = without_defaults(asdict(self), _ADDED_FIELDS)  # fields added after stores were written: uids stay
        d["eval_tasks"] = list(self.eval_tasks)
        d["adapter"]["targets"] = list(self.adapter.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        d = dict(d)
        d["adapter"] = AdapterConfig(**{**d["adapter"], "targets": tuple(d["adapter"]["targets"])})
        d["eval_tasks"] = tuple(d["eval_tasks"])
        return cls(**d)

    @property
    def group(self) -> tuple:
        """Units sharing a group share data, splits, ICL prompts and teacher targets."""
        return (self.model, self.task, self.label_format, self.n, self.run, self.g_max, self.kd_top_k, self.dev_split,
                self.ia2_capture)


_ADDED_FIELDS = {"dev_split": "reference", "ia2_loss": "mse", "ia2_capture": "attn"}


@dataclass
class RunConfig:
    """Everything ``ia2 run`` and ``ia2 sweep`` accept. Lists are grid axes."""

    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    tasks: list[str] = field(default_factory=lambda: ["sst2"])
    eval_tasks: list[str] | None = None  # default: each task and its OOD pairs
    label_format: str = "digits"
    n: list[int] = field(default_factory=lambda: [4])
    runs: list[int] = field(default_factory=lambda: [0])
    methods: list[str] = field(default_factory=lambda: ["zero-shot", "icl", "sft", "ia2", "ia2-then-sft"])
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    ce_weights: list[float] = field(default_factory=lambda: list(DEFAULT_CE_WEIGHTS))
    labels: str = "gt"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    max_epochs: int = 50
    patience: int = 5
    early_stop: str = "best"
    batch_size: int = 4
    g_max: int = 200
    kd_top_k: int | None = None
    limit_eval: int | None = None
    asim_examples: int = 100
    dev_split: str = "reference"  # or "stratified": dev examples drawn round-robin over labels
    ia2_loss: str = "mse"  # or "relative": each layer's MSE over the teacher's mean square there (not the paper's)
    ia2_capture: str = "attn"  # or "residual": what each layer adds to the residual stream (differs on Gemma-2/3)

    def __post_init__(self):
        for m in self.methods:
            get_method(m)
        for t in self.tasks:
            get_task(t)
        if self.label_format not in LABEL_FORMATS:
            raise IA2Error(f"unknown label format '{self.label_format}'", f"choose one of {', '.join(LABEL_FORMATS)}")
        if self.labels not in ("gt", "icl"):
            raise IA2Error(f"unknown labels '{self.labels}'", "choose gt (ground truth) or icl (ICL responses)")
        check_dev_split(self.dev_split)
        if self.dev_split == "stratified":
            generative = [t for t in self.tasks if get_task(t).kind != "single"]
            if generative:
                raise IA2Error(f"a stratified dev split needs labels; {', '.join(generative)} is generative",
                               "use dev_split: reference for generative tasks")
        check_ia2_loss(self.ia2_loss)
        check_ia2_capture(self.ia2_capture)
        if self.early_stop not in ("best", "last"):
            raise IA2Error(f"unknown --early-stop '{self.early_stop}'", "choose best or last")
        if any(n < 1 for n in self.n):
            raise IA2Error("N must be at least 1", "pass --n 4 for example")
        if any(lr <= 0 for lr in self.lrs):
            raise IA2Error("learning rates must be positive", "e.g. --lr 1e-3")
        if any(not 0 <= w <= 1 for w in self.ce_weights):
            raise IA2Error("ce weights must lie in [0, 1]", "e.g. --ce-weight 0.05")

    def units(self) -> list[Unit]:
        """Expand the grid. Baselines do not depend on lr or weight; methods without
        a joint objective do not depend on the weight."""
        out: list[Unit] = []
        common = dict(labels=self.labels, adapter=self.adapter, max_epochs=self.max_epochs, patience=self.patience,
                      early_stop=self.early_stop, batch_size=self.batch_size, kd_top_k=self.kd_top_k,
                      limit_eval=self.limit_eval, asim_examples=self.asim_examples, dev_split=self.dev_split,
                      ia2_loss=self.ia2_loss, ia2_capture=self.ia2_capture)
        for model in self.models:
            for task_name in self.tasks:
                task = get_task(task_name)
                evals = tuple(self.eval_tasks) if self.eval_tasks else (task_name, *task.ood)
                g_max = 1 if task.kind == "single" else self.g_max
                for n in self.n:
                    for run in self.runs:
                        base = dict(model=model, task=task_name, label_format=self.label_format,
                                    eval_tasks=evals, n=n, run=run, g_max=g_max)
                        for mname in self.methods:
                            m = get_method(mname)
                            if not m.trains:
                                out.append(Unit(**base, method=mname, **common))
                                continue
                            for lr in self.lrs:
                                for w in (self.ce_weights if m.uses_ce_weight else [None]):
                                    out.append(Unit(**base, method=mname, lr=lr, ce_weight=w, **common))
        return out

    # --- YAML in and out -------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["adapter"]["targets"] = list(self.adapter.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IA2Error(f"{where}: unknown field(s) {', '.join(unknown)}", f"allowed: {', '.join(sorted(known))}")
        d = dict(d)
        for key in ("models", "tasks", "n", "runs", "methods", "lrs", "ce_weights", "eval_tasks"):
            if key in d and d[key] is not None and not isinstance(d[key], list):
                d[key] = [d[key]]
        if "adapter" in d:
            a = dict(d["adapter"])
            if "targets" in a:
                a["targets"] = tuple(a["targets"])
            try:
                d["adapter"] = AdapterConfig(**a)
            except TypeError as e:
                raise IA2Error(f"{where}: bad adapter settings ({e})", "fields: kind, r, alpha, dropout, targets") from None
        try:
            return cls(**d)
        except TypeError as e:
            raise IA2Error(f"{where}: {e}", "check the field types") from None

    @classmethod
    def from_yaml(cls, path: str) -> "RunConfig":
        try:
            with open(path, encoding="utf-8") as f:
                d = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise IA2Error(f"config file not found: {path}", "check the path") from None
        except yaml.YAMLError as e:
            raise IA2Error(f"{path}: not valid YAML ({str(e).splitlines()[0]})", "fix the YAML syntax") from None
        if not isinstance(d, dict):
            raise IA2Error(f"{path}: expected a mapping of fields", "see the README's sweep example")
        return cls.from_dict(d, where=path)

    def replace(self, **kw) -> "RunConfig":
        return dataclasses.replace(self, **kw)
