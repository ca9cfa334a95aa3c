"""Method registry. A method is its stages; each stage trains the same adapter with one objective.

Adding a method is one ``register(Method(...))`` line; a new objective is a function in
``objectives.py`` plus a branch in ``Objective.per_example``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..activations import CAPTURE_POINTS
from ..errors import IA2Error
from .objectives import Objective, StudentBatch, StudentExample, make_batch, relative_layer_weights


@dataclass(frozen=True)
class Stage:
    objective: str  # "ia2", "sft", "kd", "ia2+sft"
    labels: str | None = None  # None: the run's --labels choice (gt or icl); "icl": fixed


@dataclass(frozen=True)
class Method:
    name: str
    stages: tuple[Stage, ...]
    description: str

    @property
    def trains(self) -> bool:
        return bool(self.stages)

    @property
    def uses_ce_weight(self) -> bool:
        return any(s.objective == "ia2+sft" for s in self.stages)

    @property
    def needs_activations(self) -> bool:
        return any(s.objective in ("ia2", "ia2+sft") for s in self.stages)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


register(Method("zero-shot", (), "base model, no demonstrations, no training"))
register(Method("icl", (), "base model with N-1 demonstrations in the prompt"))
register(Method("sft", (Stage("sft"),), "cross-entropy on answers (ground truth, or ICL responses with --labels icl)"))
register(Method("kd", (Stage("kd", "icl"),), "KL to the ICL teacher's next-token distributions"))
register(Method("ia2", (Stage("ia2", "icl"),), "align no-demo attention outputs to the ICL ones (MSE)"))
register(Method("ia2+sft", (Stage("ia2+sft", "icl"),), "(1-w) IA2 + w SFT in one pass, ICL labels"))
register(Method("ia2-then-sft", (Stage("ia2", "icl"), Stage("sft")), "IA2, then SFT on the same adapter"))
register(Method("sft-then-ia2", (Stage("sft"), Stage("ia2", "icl")), "SFT, then IA2 on the same adapter"))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise IA2Error(f"unknown method '{name}'", f"valid methods: {', '.join(METHODS)}")
    return METHODS[name]


IA2_LOSSES = ("mse", "relative")


def check_ia2_loss(name: str) -> None:
    if name not in IA2_LOSSES:
        raise IA2Error(f"unknown IA2 loss '{name}'", f"choose one of {', '.join(IA2_LOSSES)}")


def check_ia2_capture(name: str) -> None:
    if name not in CAPTURE_POINTS:
        raise IA2Error(f"unknown IA2 capture point '{name}'", f"choose one of {', '.join(CAPTURE_POINTS)}")


def stage_objective(stage: Stage, labels: str, ce_weight: float, kd_top_k: int | None,
                    layer_weights: tuple[float, ...] | None = None, capture: str = "attn") -> Objective:
    """``layer_weights`` (one per layer) scale the IA2 loss's per-layer MSEs; None keeps the paper's plain sum.
    ``capture``: where the IA2 loss reads the attention outputs (the teacher targets' capture point)."""
    uses_acts = stage.objective in ("ia2", "ia2+sft")
    return Objective(stage.objective, stage.labels or labels,
                     ce_weight if stage.objective == "ia2+sft" else 0.0,
                     kd_top_k if stage.objective == "kd" else None,
                     layer_weights if uses_acts else None, capture if uses_acts else "attn")


__all__ = ["METHODS", "Method", "Stage", "Objective", "StudentBatch", "StudentExample", "make_batch",
           "get_method", "register", "stage_objective"]
