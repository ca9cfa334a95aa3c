"""PEFT adapters: LoRA (default) and IA3, attached to one loaded base model and removed after use."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import IA2Error

DEFAULT_TARGETS = ("q_proj", "k_proj", "o_proj")


@dataclass(frozen=True)
class AdapterConfig:
    """``kind`` lora or ia3; rank/alpha/dropout apply to LoRA. Targets default to q, k, o projections."""

    kind: str = "lora"
    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS)

    def __post_init__(self):
        if self.kind not in ("lora", "ia3", "prefix", "prompt"):
            raise IA2Error(f"unknown adapter kind '{self.kind}'", "choose lora or ia3")
        if self.r < 1:
            raise IA2Error(f"LoRA rank must be >= 1, got {self.r}", "pass --lora-r 8 for example")

    @property
    def shifts_positions(self) -> bool:
        """Prompt/prefix tuning add virtual tokens, so aligned positions would no longer correspond."""
        return self.kind in ("prefix", "prompt")

    def peft_config(self):
        import peft

        if self.kind == "lora":
            return peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                                   target_modules=list(self.targets), bias="none", task_type="CAUSAL_LM")
        if self.kind == "ia3":
            return peft.IA3Config(target_modules=list(self.targets), feedforward_modules=[], task_type="CAUSAL_LM")
        if self.kind == "prefix":
            return peft.PrefixTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM")
        return peft.PromptTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM")


def check_compatible(cfg: AdapterConfig, method_name: str, needs_activations: bool) -> None:
    if cfg.shifts_positions and needs_activations:
        raise IA2Error(f"adapter '{cfg.kind}' adds virtual tokens, which shifts the positions IA2 aligns "
                       f"(method '{method_name}')", "use --adapter lora or ia3 for activation losses")


def attach(model, cfg: AdapterConfig):
    """Wrap the base model with a fresh adapter (initialised from torch's current RNG state)."""
    import peft

    try:
        pm = peft.get_peft_model(model, cfg.peft_config())
    except ValueError as e:
        raise IA2Error(f"cannot attach {cfg.kind} adapter: {e}", "check --targets against the model's module names") from None
    for n, p in pm.named_parameters():
        p.requires_grad_(any(k in n for k in ("lora_", "ia3_", "prompt_encoder")))
    return pm


def detach(peft_model):
    """Remove the adapter layers and return the untouched base model (nothing merged)."""
    base = peft_model.unload() if hasattr(peft_model, "unload") else peft_model.get_base_model()
    base.requires_grad_(False)
    return base


def trainable_state(peft_model) -> dict:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def load_trainable_state(peft_model, state: dict) -> None:
    params = dict(peft_model.named_parameters())
    with torch.no_grad():  # in place, so an optimizer or an FSDP shard keeps pointing at the same tensors
        for n, v in state.items():
            params[n].copy_(v)
