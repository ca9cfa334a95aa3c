"""Atomic file writes and strict line-oriented readers.

Every record, cache and adapter is written under a temporary name in the destination folder and
renamed into place, so a crash or a full disk never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import DiskFull, IA2Error

_UMASK = os.umask(0)
os.umask(_UMASK)


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain; writers such as safetensors wrap it in their own types."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``, on failure delete it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        if _is_disk_full(exc):
            raise DiskFull(path) from exc
        raise
    try:
        yield tmp
        # mkstemp/mkdtemp create private (0600/0700) entries; give the result the usual umask permissions.
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_UMASK)
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, DiskFull) and _is_disk_full(exc):
            raise DiskFull(path) from exc
        raise


def without_defaults(d: dict, added: dict) -> dict:
    """``d`` less the fields in ``added`` (name -> default) that hold their default: fields added to an identity
    (a unit's uid, a target-cache key) after stores were written, so old hashes and names stay valid."""
    return {k: v for k, v in d.items() if not (k in added and v == added[k])}


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in rows))


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a malformed line is an error naming the file and the line number."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise IA2Error(f"{path}:{lineno}: not valid UTF-8 text", "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise IA2Error(f"{path}:{lineno}: malformed JSON line ({e.msg})",
                               "fix or remove that line") from None
            if not isinstance(row, dict):
                raise IA2Error(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}",
                               "each line must be one object with the task's columns")
            rows.append(row)
    return rows


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Read a CSV with a header; a bad row (field count, quoting, encoding) is an error with its line."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise IA2Error(f"{path}:{line}: not valid UTF-8 text", "save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[dict] = []
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise IA2Error(f"{path}:{reader.line_num}: malformed CSV ({e})", "fix the quoting on that line") from None
        if header is None:
            header = row
            continue
        if not row:
            continue
        if len(row) != len(header):
            raise IA2Error(f"{path}:{reader.line_num}: malformed CSV row ({len(row)} fields, header has {len(header)})",
                           "quote fields that contain commas")
        rows.append(dict(zip(header, row)))
    if header is None:
        raise IA2Error(f"{path}: empty CSV file", "add a header row and data rows")
    return rows


def read_table(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise IA2Error(f"data file not found: {path}", "check the path (relative paths are resolved against the task YAML)")
    if path.is_dir():
        raise IA2Error(f"data path is a folder, not a file: {path}", "point the task's 'data' entries at .jsonl or .csv files")
    if path.suffix == ".csv":
        return read_csv(path)
    return read_jsonl(path)
