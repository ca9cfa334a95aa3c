"""IA2: ICL Activation Alignment for few-shot adapters.

``from ia2 import RunConfig, run`` mirrors the ``ia2 run`` command.
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy, so `import ia2` stays light for the CLI's error paths
    if name in ("RunConfig", "Unit", "run"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)
