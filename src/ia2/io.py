"""Atomic file writes and strict line-oriented readers.

Every record, cache and adapter is written under a temporary name in the destination folder and
renamed into place, so a crash or a full disk never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import IA2Error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
            raise IA2Error(f"disk full while writing {path}; nothing was left behind",
                           "free some space and run the same command again (finished work is kept)") from exc
        raise


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
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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
    """Read a CSV with a header; a row with the wrong number of fields is an error with its line."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise IA2Error(f"{path}: empty CSV file", "add a header row and data rows") from None
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise IA2Error(f"{path}:{reader.line_num}: malformed CSV row ({len(row)} fields, header has {len(header)})",
                               "quote fields that contain commas")
            rows.append(dict(zip(header, row)))
    return rows


def read_table(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise IA2Error(f"data file not found: {path}", "check the path (relative paths are resolved against the task YAML)")
    if path.suffix == ".csv":
        return read_csv(path)
    return read_jsonl(path)
