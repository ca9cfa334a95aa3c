"""``ia2 tasks``: the registry is listed without touching data unless a mirror is set or --data asks for it
(offline, counting from the hub would retry for minutes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import ia2.data
from ia2.cli import main
from ia2.errors import IA2Error


def _listing(capsys, *args) -> str:
    assert main(["tasks", *args]) == 0
    return capsys.readouterr().out


def test_without_mirror_lists_registry_and_reads_no_data(monkeypatch, capsys):
    monkeypatch.delenv("IA2_DATA_DIR", raising=False)
    monkeypatch.setattr(ia2.data, "load_task_data", lambda t: pytest.fail(f"read data for {t.name}"))
    out = _listing(capsys)
    assert "sizes not counted" in out and "sst2" in out and "gsm8k" in out and "finsen, poems" in out


def test_data_flag_counts_and_reports_unavailable_tasks(monkeypatch, capsys):
    monkeypatch.delenv("IA2_DATA_DIR", raising=False)

    def fake(task):
        if task.name == "gsm8k":
            raise IA2Error("no gsm8k here", "fix")
        return SimpleNamespace(pool=[0] * 7, eval=[0] * 3, notes=[])

    monkeypatch.setattr(ia2.data, "load_task_data", fake)
    out = _listing(capsys, "--data")
    sst2 = next(line for line in out.splitlines() if "│ sst2 " in line)
    assert "│ 7 " in sst2 and "│ 3 " in sst2
    assert "unavailable: no gsm8k here" in out


def test_mirror_counts_by_default_and_no_data_skips(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("IA2_DATA_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(ia2.data, "load_task_data",
                        lambda t: calls.append(t.name) or SimpleNamespace(pool=[], eval=[], notes=[]))
    assert f"data: {tmp_path}" in _listing(capsys)
    assert "sst2" in calls
    calls.clear()
    assert "sizes not counted" in _listing(capsys, "--no-data") and calls == []
