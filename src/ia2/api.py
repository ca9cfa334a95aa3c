"""Python API mirroring ``ia2 run``: a config dataclass in, result rows out.

    from ia2 import RunConfig, run
    rows = run(RunConfig(tasks=["sst2"], n=[4], runs=[0], methods=["icl", "ia2-then-sft"]), out="runs/api")
"""

from __future__ import annotations

from .config import RunConfig, Unit
from .pipeline import Runner, run_units
from .store import Store


def run(cfg: RunConfig, out: str, resume: bool = False, device=None, dtype=None, log=print,
        save_adapters: bool = True) -> list[dict]:
    """Run every unit of ``cfg`` into the store at ``out``; return this config's result rows."""
    store = Store(out)
    units = cfg.units()
    runner = Runner(store, device=device, dtype=dtype, log=log, save_adapters=save_adapters)
    run_units(units, store, runner, resume=resume)
    uids = {u.uid() for u in units}
    return [r for r in store.rows() if r["uid"] in uids]


__all__ = ["RunConfig", "Unit", "run"]
