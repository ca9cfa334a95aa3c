"""Several worker processes draining one sweep store (``ia2 sweep CONFIG --workers K``).

Each worker is the same ``ia2 sweep`` command with ``--claim``: a unit is claimed by an atomic file
create before it runs, so no unit runs twice. Extra workers (other machines on a shared
filesystem) are started by hand with the same command plus ``--claim``. Each GPU gets one worker.
"""

from __future__ import annotations

import os
import subprocess
import sys


def _worker_argv(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    return out + ["--claim"]


def spawn_workers(args, cfg) -> int:
    import torch

    k = args.workers
    gpus = torch.cuda.device_count()
    base = _worker_argv(sys.argv[1:])
    procs = []
    for w in range(k):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(w % gpus)
        env.setdefault("IA2_THREADS", str(max(1, (os.cpu_count() or 1) // k)))  # cores shared by the workers
        procs.append(subprocess.Popen([sys.executable, "-m", "ia2", *base, "--worker-of", str(w)], env=env))
    codes = [p.wait() for p in procs]
    print(f"ia2: {k} workers finished with exit codes {codes}", file=sys.stderr)
    # A final pass (no claims) regenerates results.jsonl from every worker's records.
    from .store import Store
    Store(args.out).write_results()
    return max(codes)
