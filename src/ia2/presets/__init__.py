"""Sweep presets shipped as YAML files beside this module (``ia2 sweep --preset NAME``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import IA2Error

HERE = Path(__file__).parent


def preset_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def preset_config(name: str):
    from ..config import RunConfig

    path = HERE / f"{name}.yaml"
    if not path.exists():
        raise IA2Error(f"unknown preset '{name}'", f"valid presets: {', '.join(preset_names())}")
    return RunConfig.from_yaml(str(path))
