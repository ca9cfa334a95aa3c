"""Sweeps: resumable after a kill (final store equals an uninterrupted run), parallel workers run each
unit exactly once, and the dry run plans without running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ia2.cli import main
from ia2.config import RunConfig
from ia2.presets import preset_config
from ia2.store import Store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.exists(), reason="offline data mirror not found")

# The smoke preset trimmed to one run so the three sweeps here stay quick.
SMALL = ["--runs", "0", "--lr", "1e-3,3e-4"]


def _env() -> dict:
    env = dict(os.environ, IA2_DATA_DIR=str(DATA), OMP_NUM_THREADS="1")
    return env


def _sweep(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ia2", "sweep", "--preset", "smoke", "--out", str(out), *SMALL, *extra],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _comparable(store: Path) -> dict:
    """uid -> result rows without timings (what must not depend on interruptions)."""
    out = {}
    for rec in Store(store, create=False).records():
        out[rec["uid"]] = (rec["status"], json.dumps(rec["results"], sort_keys=True))
    return out


def test_dry_run_prints_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IA2_DATA_DIR", str(DATA))
    assert main(["sweep", "--preset", "smoke", "--dry-run", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    n_units = len(preset_config("smoke").units())
    assert f"{n_units} units" in out and "teacher passes: 2" in out and "estimated cost" in out
    assert not (tmp_path / "s" / "records").exists()  # nothing ran


def test_unit_identity_is_stable_and_dev_split_is_part_of_it():
    """Stores written before dev_split existed must keep resuming: the default stays out of the uid."""
    import dataclasses

    from ia2.errors import IA2Error
    u = RunConfig(models=["smollm2-135m"], tasks=["sst2"], eval_tasks=["sst2"], methods=["ia2"]).units()[0]
    assert u.uid() == "a6296db402cce4a1" and "dev_split" not in u.to_dict()
    strat = dataclasses.replace(u, dev_split="stratified")
    assert strat.uid() != u.uid() and strat.group != u.group
    assert type(u).from_dict(strat.to_dict()) == strat and type(u).from_dict(u.to_dict()) == u
    assert RunConfig(tasks=["sst2"], dev_split="stratified").units()[0].dev_split == "stratified"
    with pytest.raises(IA2Error, match="generative"):
        RunConfig(tasks=["gsm8k"], dev_split="stratified")
    with pytest.raises(IA2Error, match="unknown dev split"):
        RunConfig(dev_split="balanced")
    # likewise the IA2 loss variant: "mse" (the paper's) stays out, "relative" is another unit with the same targets
    assert "ia2_loss" not in u.to_dict()
    rel = RunConfig(models=["smollm2-135m"], tasks=["sst2"], eval_tasks=["sst2"], methods=["ia2"],
                    ia2_loss="relative").units()[0]
    assert rel.uid() != u.uid() and rel.group == u.group and type(u).from_dict(rel.to_dict()) == rel
    with pytest.raises(IA2Error, match="unknown IA2 loss 'l1'"):
        RunConfig(ia2_loss="l1")
    # the capture point: "attn" (the paper's) stays out; "residual" needs its own teacher targets (another group)
    assert "ia2_capture" not in u.to_dict()
    res = RunConfig(models=["smollm2-135m"], tasks=["sst2"], eval_tasks=["sst2"], methods=["ia2"],
                    ia2_capture="residual").units()[0]
    assert res.uid() != u.uid() and res.group != u.group and type(u).from_dict(res.to_dict()) == res
    with pytest.raises(IA2Error, match="unknown IA2 capture point 'mlp'"):
        RunConfig(ia2_capture="mlp")


def test_units_share_teacher_groups():
    cfg = RunConfig(models=["tiny-llama"], tasks=["sst2"], n=[4], runs=[0, 1, 2, 3, 4],
                    methods=["sft", "ia2", "ia2-then-sft"], lrs=[1e-4, 3e-4, 1e-3])
    units = cfg.units()
    assert len(units) == 45 and len({u.group for u in units}) == 5
    assert len({u.uid() for u in units}) == 45


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    p = _sweep(full)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    expected = _comparable(full)

    p = _sweep(killed)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((killed / "records").glob("*.json"))) < 3:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_before = len(list((killed / "records").glob("*.json")))
    assert 0 < n_before < len(expected), "the kill should land mid-sweep"
    uids = {json.loads(rec.read_text())["uid"] for rec in (killed / "records").glob("*.json")}  # each one complete
    listed = {json.loads(x)["uid"] for x in (killed / "results.jsonl").read_text().splitlines()}
    assert listed <= uids and len(uids - listed) <= 1  # results.jsonl follows the records (the kill may split one)

    p = _sweep(killed)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert f"{n_before} already done" in err
    assert _comparable(killed) == expected

    # The resumed smoke store reports like any other: tables in three formats and decodable plots.
    assert main(["report", str(killed), "--out", str(tmp_path / "report")]) == 0
    rep = tmp_path / "report"
    table = (rep / "table_tiny-llama_digits_N4.md").read_text()
    for row in ("| sst2 | sst2 |", "finsen*", "poems*"):
        assert row in table
    assert "\\begin{tabular}" in (rep / "table_tiny-llama_digits_N4.tex").read_text()
    assert (rep / "table_tiny-llama_digits_N4.csv").read_text().count("\n") > 3
    import matplotlib.image
    for png in rep.glob("*.png"):
        assert matplotlib.image.imread(png).size > 0


def test_two_workers_run_each_unit_once(tmp_path):
    out = tmp_path / "w"
    p = _sweep(out, "--workers", "2")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    store = Store(out, create=False)
    starts = [e["uid"] for e in store.events() if e["event"] == "start"]
    units = {u.uid() for u in preset_config("smoke").replace(runs=[0], lrs=[1e-3, 3e-4]).units()}
    assert sorted(starts) == sorted(units), "every unit exactly once"
    assert 1 <= len({e["pid"] for e in store.events()}) <= 2
    assert {r["uid"] for r in store.records()} == units
    assert not list((out / "claims").iterdir())
