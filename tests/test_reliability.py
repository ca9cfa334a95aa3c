"""Reliability: bit-identical reruns on CPU, atomic writes under a full disk, target-cache validation,
resuming a finished store, and a check that every file writer in the package writes atomically."""

from __future__ import annotations

import ast
import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_DEVICE
import torch

import ia2
from ia2.cli import main
from ia2.errors import DiskFull, IA2Error
from ia2.io import atomic_path, read_csv, read_jsonl, write_json, write_text
from ia2.store import Store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SRC = Path(ia2.__file__).resolve().parent
needs_mirror = pytest.mark.skipif(not (DATA / "stanfordnlp" / "sst2").is_dir(), reason="offline data mirror not found")

GRID = ["run", "--model", "tiny-llama", "--task", "sst2", "--eval-tasks", "sst2", "--n", "4", "--runs", "0",
        "--methods", "zero-shot,icl,sft,ia2-then-sft", "--lr", "1e-3", "--limit-eval", "10", "--max-epochs", "1",
        "--asim-examples", "2", "--device", TEST_DEVICE]


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- determinism and resume


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    if not (DATA / "stanfordnlp" / "sst2").is_dir():
        pytest.skip("offline data mirror not found")
    os.environ["IA2_DATA_DIR"] = str(DATA)
    out = tmp_path_factory.mktemp("det") / "a"
    assert main([*GRID, "--out", str(out)]) == 0
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def _curves(out: Path) -> dict:
    recs = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    return {r["uid"]: [(c["train_loss"], c["dev_loss"]) for s in (r["train"] or {}).get("stages", []) for c in s["curve"]]
            for r in recs}


@needs_mirror
def test_same_command_same_seeds_gives_bit_identical_metrics(first_run, tmp_path):
    # The rerun is a fresh process with another hash seed, as when a user runs the command again.
    second = tmp_path / "b"
    env = dict(os.environ, IA2_DATA_DIR=str(DATA), PYTHONHASHSEED="12345")
    proc = subprocess.run([sys.executable, "-m", "ia2", *GRID, "--out", str(second)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    a, b = _metrics(first_run), _metrics(second)
    assert len(a) == 4
    assert a == b  # every metric, exactly (floats compared bit for bit through JSON's repr)
    assert (first_run / "results.jsonl").read_bytes() == (second / "results.jsonl").read_bytes()
    assert _curves(first_run) == _curves(second)
    trained = [r["uid"] for r in a if r["method"] in ("sft", "ia2-then-sft")]
    for uid in trained:  # the adapters themselves are identical
        wa = (first_run / "adapters" / uid / "adapter_model.safetensors").read_bytes()
        wb = (second / "adapters" / uid / "adapter_model.safetensors").read_bytes()
        assert wa == wb


@needs_mirror
def test_resume_skips_finished_units(first_run, capsys):
    records = sorted((first_run / "records").glob("*.json"))
    before = {p.name: p.stat().st_mtime_ns for p in records}
    assert main([*GRID, "--resume", "--out", str(first_run)]) == 0
    err = capsys.readouterr().err
    assert "0 units run, 4 already in the store (--resume), 0 failed" in err
    assert {p.name: p.stat().st_mtime_ns for p in sorted((first_run / "records").glob("*.json"))} == before
    # a sweep over the same store is resumable by default: nothing to do either
    cfg = first_run.parent / "sweep.yaml"
    cfg.write_text("models: [tiny-llama]\ntasks: [sst2]\neval_tasks: [sst2]\nn: [4]\nruns: [0]\n"
                   "methods: [zero-shot, icl, sft, ia2-then-sft]\nlrs: [1.0e-3]\nlimit_eval: 10\nmax_epochs: 1\n"
                   "asim_examples: 2\n")
    assert main(["sweep", str(cfg), "--device", TEST_DEVICE, "--out", str(first_run)]) == 0
    assert "sweep: 0 run, 4 already done, 0 failed" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in sorted((first_run / "records").glob("*.json"))} == before


# --------------------------------------------------------------------------- atomic writes


def test_write_json_disk_full_mid_write_leaves_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "rec.json"
    write_json(target, {"v": 1})
    monkeypatch.setattr(os, "fsync", _enospc)  # the data is written, then the flush to disk fails
    with pytest.raises(DiskFull) as info:
        write_json(target, {"v": 2, "pad": "x" * 10000})
    assert isinstance(info.value, IA2Error) and isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    assert "disk full" in str(info.value) and str(target) in str(info.value)
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_atomic_rename_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(IA2Error, match="disk full"):
        write_text(tmp_path / "results.jsonl", "a\n")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_disk_full_mid_save_leaves_no_partial_adapter(tmp_path):
    adapter = tmp_path / "adapters" / "abc"
    with pytest.raises(DiskFull):
        with atomic_path(adapter, is_dir=True) as tmp:
            (tmp / "adapter_config.json").write_text("{}")
            (tmp / "adapter_model.safetensors").write_bytes(b"\0" * 64)
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    assert list((tmp_path / "adapters").iterdir()) == []


def test_atomic_dir_replaces_previous_adapter_whole(tmp_path):
    adapter = tmp_path / "a"
    with atomic_path(adapter, is_dir=True) as tmp:
        (tmp / "old.bin").write_text("old")
    with atomic_path(adapter, is_dir=True) as tmp:
        (tmp / "new.bin").write_text("new")
    assert sorted(p.name for p in adapter.iterdir()) == ["new.bin"]


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise KeyError("bug")
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_get_normal_permissions(tmp_path):
    """mkstemp makes private files; results on a shared machine must be readable like any other file."""
    from ia2 import io as ia2io

    write_text(tmp_path / "r.json", "{}")
    with atomic_path(tmp_path / "d", is_dir=True) as tmp:
        (tmp / "f").write_text("x")
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o666 & ~ia2io._UMASK
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~ia2io._UMASK


def test_store_record_disk_full(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(DiskFull, match="disk full"):
        store.write({"uid": "u1", "status": "done", "results": []})
    assert not store.has("u1")
    assert _leftovers(tmp_path) == []


def test_target_cache_disk_full(tmp_path, monkeypatch):
    import ia2.targets as targets

    cache = targets.TargetCache(tmp_path / "targets")
    t = _fake_targets()

    def half_then_full(tensors, filename):
        Path(filename).write_bytes(b"\0" * 32)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(targets, "save_file", half_then_full)
    with pytest.raises(DiskFull):
        cache.save(t)
    assert list((tmp_path / "targets").iterdir()) == []


# --------------------------------------------------------------------------- every writer is atomic

WRITERS = {"savefig", "save_pretrained", "save_file", "torch.save", "write_bytes", "to_csv", "dump"}
# Files that write in place on purpose: io.py implements the atomic writes; a claim needs O_EXCL
# creation (store.claim); units.log is an append-only audit trail; training curves for TensorBoard
# are a stream.
EXEMPT = {"io.py": "implements atomic writes", "distributed.py": "tracking streams"}
EXEMPT_FUNCTIONS = {("store.py", "claim"): "O_EXCL create is the lock", ("store.py", "log_event"): "append-only log"}


def _call_name(node: ast.Call) -> str:
    f = node.func
    if isinstance(f, ast.Attribute):
        base = f.value.id if isinstance(f.value, ast.Name) else ""
        return f"{base}.{f.attr}" if base == "torch" else f.attr
    return f.id if isinstance(f, ast.Name) else ""


def _writes_in_place(node: ast.Call) -> bool:
    name = _call_name(node)
    if name == "open":  # open(path, "w"/"a"/"x"...)
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax")
    if name == "write_text":  # Path.write_text (ia2.io.write_text is called as a plain function)
        return isinstance(node.func, ast.Attribute)
    return name in WRITERS


def test_every_file_writer_uses_atomic_path():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in EXEMPT:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        protected: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (rel, node.name) in EXEMPT_FUNCTIONS:
                protected |= {id(n) for n in ast.walk(node)}
            if isinstance(node, ast.With) and any(
                    isinstance(i.context_expr, ast.Call) and _call_name(i.context_expr) == "atomic_path" for i in node.items):
                protected |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and id(node) not in protected and _writes_in_place(node):
                offenders.append(f"{rel}:{node.lineno} {_call_name(node)}")
    assert not offenders, ("write through ia2.io (write_text/write_json/write_jsonl) or inside "
                           f"`with atomic_path(...) as tmp:`: {offenders}")


# --------------------------------------------------------------------------- target cache validation


def _fake_targets(n_train: int = 2, n_dev: int = 1):
    from ia2.targets import TargetKey, Targets, TeacherExample

    key = TargetKey("tiny-llama:seed0:float32", "sst2", "digits", 4, 0, 1, "full")
    g = torch.Generator().manual_seed(0)

    def ex(i):
        return TeacherExample([1, 2, 3 + i], [7], torch.randn(2, 1, 8, generator=g), torch.randn(1, 11, generator=g), None)

    return Targets(key, [ex(i) for i in range(n_train)], [ex(10 + i) for i in range(n_dev)])


def _queries(t) -> list[list[int]]:
    return [e.query_ids for e in t.train + t.dev]


def test_target_cache_roundtrip_and_every_kind_of_damage(tmp_path):
    from ia2.targets import TargetCache

    cache = TargetCache(tmp_path)
    t = _fake_targets()
    cache.save(t)
    st, js = cache.paths(t.key)
    found, why = cache.load(t.key, _queries(t))
    assert why == "" and found.reused
    assert torch.equal(found.train[1].acts, t.train[1].acts) and found.dev[0].tokens == [7]

    def damaged(edit) -> str:
        cache.save(t)
        edit()
        got, reason = cache.load(t.key, _queries(t))
        assert got is None
        return reason

    def flip():
        data = bytearray(st.read_bytes())
        data[-4:] = b"\x01\x02\x03\x04"
        st.write_bytes(bytes(data))

    assert "checksum" in damaged(flip)
    assert "unreadable" in damaged(lambda: js.write_text(js.read_text()[:40]))
    assert "unreadable" in damaged(lambda: js.write_text("[1, 2]"))
    assert damaged(lambda: st.unlink()) == "absent"

    def other_key():
        meta = json.loads(js.read_text())
        meta["key"]["run"] = 3
        js.write_text(json.dumps(meta))

    assert "key differs" in damaged(other_key)

    def other_tokens():  # metadata consistent with its checksum but not with the tensors
        meta = json.loads(js.read_text())
        meta["examples"][0]["tokens"] = [7, 8, 9]
        js.write_text(json.dumps(meta))

    assert "do not match" in damaged(other_tokens)

    def missing_tensor():
        meta = json.loads(js.read_text())
        meta["examples"][0]["i"] = 42
        js.write_text(json.dumps(meta))

    assert "unreadable" in damaged(missing_tensor)
    cache.save(t)
    got, reason = cache.load(t.key, [[9, 9]] + _queries(t)[1:])
    assert got is None and "queries differ" in reason


# --------------------------------------------------------------------------- readers


def test_readers_name_file_and_line(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_bytes(b'{"a": 1}\n\n{"a": \xff}\n')
    with pytest.raises(IA2Error, match=r"d\.jsonl:3: not valid UTF-8"):
        read_jsonl(bad)
    bad.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(IA2Error, match=r"d\.jsonl:2: expected a JSON object"):
        read_jsonl(bad)
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('a,b\n1,2\n"x"y,3\n')
    with pytest.raises(IA2Error, match=r"d\.csv:3: malformed CSV"):
        read_csv(csv_file)
    csv_file.write_text("")
    with pytest.raises(IA2Error, match="empty CSV"):
        read_csv(csv_file)
    csv_file.write_text('a,b\n"multi\nline",2\n')
    assert read_csv(csv_file) == [{"a": "multi\nline", "b": "2"}]


def test_store_removes_stale_temporaries_of_killed_writers(tmp_path):
    store = Store(tmp_path / "s")
    old_file = store.root / "records" / ".abc.json.x1.tmp"
    old_dir = store.root / "adapters" / ".abc.x2.tmp"
    fresh = store.root / "records" / ".def.json.x3.tmp"  # a live writer's: kept
    old_file.write_text("{half")
    old_dir.mkdir()
    (old_dir / "adapter_model.safetensors").write_bytes(b"\0")
    fresh.write_text("{")
    for p in (old_file, old_dir):
        os.utime(p, (1, 1))
    Store(tmp_path / "s")
    assert not old_file.exists() and not old_dir.exists() and fresh.exists()
