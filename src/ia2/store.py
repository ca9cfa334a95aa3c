"""The results store: one JSON record per unit, written atomically; claims let workers share it.

Layout of a store folder: ``store.json`` (format version), ``records/<uid>.json``,
``claims/<uid>.json`` (a unit in progress), ``adapters/<uid>/`` (saved adapters),
``targets/`` (teacher-target cache), and ``results.jsonl`` (all rows, regenerated).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from . import __version__
from .errors import DiskFull, IA2Error
from .io import write_json, write_jsonl

STORE_FORMAT = 1


class Store:
    def __init__(self, root: str | os.PathLike, create: bool = True):
        self.root = Path(root)
        meta = self.root / "store.json"
        if meta.exists():
            try:
                info = json.loads(meta.read_text())
                fmt, version = info.get("format"), info.get("ia2_version", "unknown")
            except (json.JSONDecodeError, OSError, AttributeError, UnicodeDecodeError):
                raise IA2Error(f"{meta} is unreadable, so {self.root} cannot be used as a results store",
                               "use a new --out folder (the records under records/ are plain JSON)") from None
            if fmt != STORE_FORMAT:
                raise IA2Error(f"{self.root} holds a results store of format {fmt} (written by ia2 {version}), "
                               f"this ia2 ({__version__}) reads and writes format {STORE_FORMAT}",
                               "use a new --out folder, or the ia2 version that wrote it")
        elif create:
            if self.root.exists() and any(self.root.iterdir()) and not (self.root / "records").exists():
                raise IA2Error(f"{self.root} exists and is not an ia2 results store",
                               "choose an empty or new --out folder")
            write_json(meta, {"format": STORE_FORMAT, "ia2_version": __version__})
        else:
            raise IA2Error(f"{self.root} is not an ia2 results store (no store.json)", "pass the folder given to --out")
        for sub in ("records", "claims", "adapters", "targets"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self, older_than: float = 3600.0) -> None:
        """Temporary files of writes killed mid-way (``kill -9``, power loss); an hour old, so no live writer's."""
        import shutil

        now = time.time()
        for folder in (self.root, *(self.root / sub for sub in ("records", "adapters", "targets"))):
            for p in folder.glob(".*.tmp"):
                try:
                    if now - p.stat().st_mtime > older_than:
                        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                except OSError:
                    pass

    # --- records ---------------------------------------------------------------------------
    def record_path(self, uid: str) -> Path:
        return self.root / "records" / f"{uid}.json"

    def has(self, uid: str) -> bool:
        return self.record_path(uid).exists()

    def write(self, record: dict) -> None:
        write_json(self.record_path(record["uid"]), record)

    def records(self) -> list[dict]:
        out = []
        for p in sorted((self.root / "records").glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                raise IA2Error(f"corrupt record {p}", "delete it and resume the sweep to recompute that unit") from None
        return out

    def rows(self) -> list[dict]:
        return [row for r in self.records() for row in r.get("results", [])]

    def write_results(self) -> Path:
        path = self.root / "results.jsonl"
        write_jsonl(path, sorted(self.rows(), key=lambda r: (r["model"], r["task"], r["n"], r["run"], r["eval_task"],
                                                              r["method"], r["lr"] or 0, r["ce_weight"] or 0)))
        return path

    def log_event(self, event: str, uid: str) -> None:
        """Append one line to ``units.log`` (an audit trail of which process ran which unit)."""
        line = json.dumps({"event": event, "uid": uid, "host": socket.gethostname(), "pid": os.getpid(),
                           "time": round(time.time(), 3)}) + "\n"
        try:
            fd = os.open(self.root / "units.log", os.O_CREAT | os.O_APPEND | os.O_WRONLY)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(self.root / "units.log") from e
            raise

    def events(self) -> list[dict]:
        path = self.root / "units.log"
        if not path.exists():
            return []
        out = []
        for x in path.read_text().splitlines():
            try:
                out.append(json.loads(x))
            except json.JSONDecodeError:  # a line cut short by a crash or a full disk
                continue
        return out

    # --- claims (parallel workers) --------------------------------------------------------------
    def claim(self, uid: str, stale_after: float = 6 * 3600) -> bool:
        """Atomically claim a unit; a claim whose process is gone (same host) or too old is taken over."""
        path = self.root / "claims" / f"{uid}.json"
        me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale(path, stale_after):
                    return False
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return True
        return False

    def release(self, uid: str) -> None:
        (self.root / "claims" / f"{uid}.json").unlink(missing_ok=True)

    @staticmethod
    def _stale(path: Path, stale_after: float) -> bool:
        try:
            info = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            return time.time() - path.stat().st_mtime > 60 if path.exists() else True
        if time.time() - info.get("time", 0) > stale_after:
            return True
        if info.get("host") == socket.gethostname():
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False
