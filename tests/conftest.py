"""Shared fixtures for the ia2 test suite.

- The offline dataset mirror lives beside the repository (``<repo>/../shared/data``); CI runs in a
  fresh clone with ``shared/`` next to it. ``IA2_DATA_DIR`` is set to it for the whole session
  (an ``IA2_DATA_DIR`` already set in the environment wins). Tests that need the mirror take the
  ``data_dir`` fixture, which skips them when the mirror is absent.
- ``tiny_lm`` / ``tiny_gemma`` are session-scoped tiny random models (byte tokenizer; the Gemma one
  adds a BOS token). They are shared: do not modify them in place (e.g. attach an adapter to them);
  call ``ia2.models.load_model("tiny-llama")`` for a private copy instead.
- ``IA2_TEST_DEVICE`` (default ``cpu``) moves the model tests onto another device, e.g.
  ``IA2_TEST_DEVICE=cuda make test`` on a GPU machine; they stay in fp32 there so tolerances hold.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def _mirror_path() -> Path:
    env = os.environ.get("IA2_DATA_DIR")
    return Path(env) if env else DEFAULT_DATA_DIR


MIRROR = _mirror_path()
TEST_DEVICE = os.environ.get("IA2_TEST_DEVICE", "cpu")
HAVE_MIRROR = (MIRROR / "stanfordnlp" / "sst2").is_dir()


@pytest.fixture(scope="session", autouse=True)
def _ia2_data_dir_env():
    """Point IA2_DATA_DIR at the mirror for the session (restored afterwards)."""
    old = os.environ.get("IA2_DATA_DIR")
    if HAVE_MIRROR:
        os.environ["IA2_DATA_DIR"] = str(MIRROR)
    yield
    if old is None:
        os.environ.pop("IA2_DATA_DIR", None)
    else:
        os.environ["IA2_DATA_DIR"] = old


@pytest.fixture
def data_dir() -> Path:
    """The offline dataset mirror; skips the test when it is not there."""
    if not HAVE_MIRROR:
        pytest.skip(f"dataset mirror not found at {MIRROR} (set IA2_DATA_DIR)")
    os.environ["IA2_DATA_DIR"] = str(MIRROR)
    return MIRROR


@pytest.fixture(scope="session")
def tiny_lm():
    """Random 2-layer Llama with a byte tokenizer (no BOS), fp32 on TEST_DEVICE (the CPU by default)."""
    from ia2.models import load_model

    return load_model("tiny-llama", device=TEST_DEVICE, dtype="fp32")


@pytest.fixture(scope="session")
def tiny_gemma():
    """Random 2-layer Gemma-3 with a byte tokenizer that prepends a BOS token, fp32 on TEST_DEVICE."""
    from ia2.models import load_model

    return load_model("tiny-gemma", device=TEST_DEVICE, dtype="fp32")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run 10-100x faster single-threaded on a busy 2-core machine, and one thread keeps CPU
    results bit-reproducible; the previous setting is restored for the other test modules."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
