"""Every user error exits non-zero with ONE clear stderr line, no traceback, and leaves no partial output.

One test per case of the reliability issue. Runs go through ``ia2.cli.main`` in-process (two through a
subprocess) on the tiny random model; most use a small user task written to ``tmp_path`` so they stay
fast. A failed unit must leave nothing behind: no ``*.tmp`` file, no record (except a diverged
training, which is recorded with status ``failed``), no adapter.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ia2.cli import main
from ia2.errors import IA2Error

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_mirror = pytest.mark.skipif(not (DATA / "stanfordnlp" / "sst2").is_dir(), reason="offline data mirror not found")

FAST = ["--model", "tiny-llama", "--runs", "0", "--limit-eval", "10", "--max-epochs", "1", "--asim-examples", "2"]
TEXTS = ["good movie", "bad film", "great", "awful", "nice plot", "boring", "loved it", "hated it",
         "fine work", "meh", "superb", "terrible"]
GOOD_YAML = ('name: mini\ndata: {train: train.jsonl, eval: eval.jsonl}\nprompt: "Text:{text}\\nLabel:"\n'
             'answer: "{label}"\nlabels: ["0", "1"]\n')


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    if DATA.is_dir():
        monkeypatch.setenv("IA2_DATA_DIR", str(DATA))
    monkeypatch.setenv("IA2_CACHE_DIR", str(tmp_path / "cache"))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def user_task(tmp: Path, yaml_text: str = GOOD_YAML, name: str = "task.yaml", train=None, evals=None) -> str:
    """A 12-row binary user task; ``train``/``evals`` replace the data rows."""
    _jsonl(tmp / "train.jsonl", train if train is not None else
           [{"text": t, "label": str(i % 2)} for i, t in enumerate(TEXTS)])
    _jsonl(tmp / "eval.jsonl", evals if evals is not None else
           [{"text": t, "label": str(i % 2)} for i, t in enumerate(TEXTS[:6])])
    (tmp / name).write_text(yaml_text, encoding="utf-8")
    return str(tmp / name)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_user_error(rc: int, err: str, *needles: str) -> str:
    """Exit 2 and exactly one stderr line 'ia2: error: ...' naming the problem; no traceback. Informational
    'note: ...' lines about the data (e.g. a single-label dev set) may precede it."""
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note: ")]
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("ia2: error: "), line
    assert "Traceback" not in err
    assert " — " in line, f"no hint on how to fix it: {line}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_nothing_partial(out: Path, allow_records: int = 0) -> None:
    """No temporary files anywhere, no adapters, and at most ``allow_records`` records."""
    if not out.exists():
        return
    tmps = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not tmps, f"left-over temporary files: {tmps}"
    records = list((out / "records").glob("*.json")) if (out / "records").exists() else []
    assert len(records) <= allow_records, records
    adapters = [p for p in (out / "adapters").iterdir()] if (out / "adapters").exists() else []
    assert len(adapters) <= allow_records, adapters


# --------------------------------------------------------------------------- names


def test_unknown_task_lists_valid_ones(capsys, tmp_path):
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", "sst3", "--n", "4", "--methods", "zero-shot", "--out", str(out))
    line = assert_user_error(rc, err, "unknown task 'sst3'", "sst2", "agnews", "gsm8k", ".yaml")
    assert "valid tasks" in line
    assert not out.exists()


def test_unknown_model_lists_presets(capsys, tmp_path):
    out = tmp_path / "out"
    task = user_task(tmp_path)
    rc, _, err = run_cli(capsys, "run", *FAST, "--model", "tiny-lama", "--task", task, "--n", "4",
                         "--methods", "zero-shot", "--out", str(out))
    assert_user_error(rc, err, "unknown model 'tiny-lama'", "tiny-llama", "smollm2-135m", "gemma3-270m")
    assert not out.exists()


def test_unknown_method_and_bad_option_value(capsys, tmp_path):
    task = user_task(tmp_path)
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--methods", "sft,ia3", "--out", str(tmp_path / "o"))
    assert_user_error(rc, err, "unknown method 'ia3'", "ia2-then-sft")
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "four", "--out", str(tmp_path / "o"))
    assert_user_error(rc, err, "'four'", "integers")


# --------------------------------------------------------------------------- task files


def test_task_yaml_missing_field(capsys, tmp_path):
    task = user_task(tmp_path, GOOD_YAML.replace('prompt: "Text:{text}\\nLabel:"\n', ""))
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "task.yaml", "missing field(s) prompt")
    assert not (tmp_path / "out").exists()


def test_task_yaml_unknown_field(capsys, tmp_path):
    task = user_task(tmp_path, GOOD_YAML + "lables: [a, b]\n")
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "task.yaml", "unknown field(s) lables", "allowed fields")


def test_task_yaml_broken_template(capsys, tmp_path):
    task = user_task(tmp_path, GOOD_YAML.replace("Text:{text}", "Text:{text"))
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "task.yaml", "'prompt'", "not a valid template")


def test_malformed_jsonl_line_names_file_and_line(capsys, tmp_path):
    task = user_task(tmp_path)
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    lines[4] = '{"text": "cut off", "label": '
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot,sft",
                         "--out", str(out))
    assert_user_error(rc, err, "train.jsonl:5:", "malformed JSON")
    assert_nothing_partial(out)


def test_malformed_csv_line_names_file_and_line(capsys, tmp_path):
    (tmp_path / "eval.csv").write_text('text,label\n"fine, really",1\nbad,0,extra\n', encoding="utf-8")
    task = user_task(tmp_path, GOOD_YAML.replace("eval.jsonl", "eval.csv"))
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot",
                         "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "eval.csv:3:", "3 fields, header has 2")
    (tmp_path / "eval.csv").write_text('text,label\n"unterminated,1\n', encoding="utf-8")
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot",
                         "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "eval.csv:", "malformed CSV")
    assert_nothing_partial(tmp_path / "out")


def test_missing_prompt_column(capsys, tmp_path):
    task = user_task(tmp_path, GOOD_YAML.replace("{text}", "{sentence}"))
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot",
                         "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "train.jsonl", "row 1", "no column 'sentence'", "columns present: label, text")


def test_label_not_in_label_list(capsys, tmp_path):
    evals = [{"text": "ok", "label": "1"}, {"text": "so-so", "label": "neutral"}]
    task = user_task(tmp_path, evals=evals)
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot",
                         "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "eval.jsonl", "row 2", "'neutral'", "not in the task's labels ['0', '1']")


@needs_mirror
def test_label_not_a_single_token(capsys, tmp_path):
    # tiny-llama's byte tokenizer: digit labels are one token, the word label ' negative' is nine.
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", "sst2", "--eval-tasks", "sst2", "--label-format", "words",
                         "--n", "4", "--methods", "zero-shot", "--out", str(out))
    assert_user_error(rc, err, "task 'sst2'", "' negative'", "9 tokens", "not one")
    assert not out.exists()


def test_n_larger_than_training_pool(capsys, tmp_path):
    task = user_task(tmp_path)
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "64", "--methods", "zero-shot,sft",
                         "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "N=64", "the pool has 12", "--n 8")
    assert not (tmp_path / "out").exists()


def test_icl_prompt_longer_than_context_is_refused_not_truncated(capsys, tmp_path):
    # Three 1500-byte demonstrations do not fit tiny-llama's 2048 positions: refuse before any unit runs
    # (the zero-shot unit, which would fit, is not run either: the grid is checked as a whole first).
    train = [{"text": "x" * 1500, "label": str(i % 2)} for i in range(8)]
    task = user_task(tmp_path, train=train)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot,sft",
                         "--out", str(out))
    assert_user_error(rc, err, "ICL prompt", "task 'mini'", "N=4", "longer than the model's context of 2048",
                      "smaller --n")
    assert not out.exists()


def test_icl_eval_prompt_longer_than_context(capsys, tmp_path):
    # Short training texts, long evaluation queries: the ICL baseline's prompts overflow.
    evals = [{"text": "y" * 2100, "label": "0"}, {"text": "z" * 2100, "label": "1"}]
    task = user_task(tmp_path, evals=evals)
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "icl",
                         "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "ICL evaluation prompt", "longer than the model's context of 2048")


# --------------------------------------------------------------------------- caches, training, disk, store


def test_corrupt_target_cache_is_detected_and_recomputed(capsys, tmp_path):
    task = user_task(tmp_path)
    out = tmp_path / "out"
    args = ["run", *FAST, "--task", task, "--n", "4", "--methods", "ia2", "--lr", "1e-3", "--no-save-adapters",
            "--out", str(out)]
    rc, _, err = run_cli(capsys, *args)
    assert rc == 0, err
    (st,) = (out / "targets").glob("*.safetensors")
    (js,) = (out / "targets").glob("*.json")
    good = json.loads(js.read_text())["sha256"]
    first = json.loads(next((out / "records").glob("*.json")).read_text())["results"][0]

    data = bytearray(st.read_bytes())
    data[-8:] = b"\xff" * 8
    st.write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, *args)
    assert rc == 0, err
    assert "teacher targets recomputed: cache file is corrupt (checksum mismatch)" in err
    assert json.loads(js.read_text())["sha256"] == good  # rewritten, same content as the first time
    again = json.loads(next((out / "records").glob("*.json")).read_text())["results"][0]
    assert again["acc"] == first["acc"] and again["asim"] == first["asim"]
    assert_nothing_partial(out, allow_records=1)
    # Mismatched caches (another request's key, other queries, wrong shapes): tests/test_reliability.py.


def test_nan_loss_is_recorded_as_failed_and_the_sweep_goes_on(capsys, tmp_path):
    task = user_task(tmp_path)
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"models: [tiny-llama]\ntasks: ['{task}']\nn: [4]\nruns: [0]\nmethods: [zero-shot, sft]\n"
                   "lrs: [1.0e+30, 1.0e-3]\nmax_epochs: 1\nlimit_eval: 10\nasim_examples: 2\n")
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "sweep", str(cfg), "--out", str(out))
    assert rc == 1, err  # failed units make the command fail, after every other unit ran
    assert "Traceback" not in err
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    by_lr = {r["unit"]["lr"]: r for r in records}
    assert set(by_lr) == {None, 1e30, 1e-3}  # zero-shot, the diverged sft and the good sft
    bad = by_lr[1e30]
    assert bad["status"] == "failed" and bad["results"] == []
    assert isinstance(bad["failed_step"], int) and bad["failed_step"] >= 1
    assert "loss became" in bad["error"] and "--lr" in bad["error"]
    assert by_lr[1e-3]["status"] == "done" and by_lr[None]["status"] == "done"
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["lr"] or 0 for r in rows) == [0, 1e-3]
    assert "1 failed" in err
    assert not (out / "adapters" / bad["uid"]).exists()
    assert_nothing_partial(out, allow_records=3)


def test_disk_full_while_saving_adapter_leaves_nothing(capsys, tmp_path, monkeypatch):
    import peft

    def full_disk(self, save_directory, **kw):
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / "adapter_model.safetensors").write_bytes(b"\0" * 100)  # half written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", full_disk)
    task = user_task(tmp_path)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "sft", "--lr", "1e-3",
                         "--out", str(out))
    assert_user_error(rc, err, "disk full while writing", "adapters", "nothing was left behind", "free some space")
    assert list((out / "adapters").iterdir()) == []
    assert list((out / "records").iterdir()) == []
    assert_nothing_partial(out)


class _HalfWriter:
    """A file whose first write stores half the text, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_disk_full_while_writing_record(capsys, tmp_path, monkeypatch):
    import builtins

    import ia2.io

    def fake_open(file, mode="r", *a, **kw):
        f = builtins.open(file, mode, *a, **kw)
        return _HalfWriter(f) if "w" in mode and f"{os.sep}records{os.sep}" in str(file) else f

    monkeypatch.setattr(ia2.io, "open", fake_open, raising=False)  # the writer's own open(): record writes fail
    task = user_task(tmp_path)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot", "--out", str(out))
    assert_user_error(rc, err, "disk full while writing", "records")
    assert list((out / "records").iterdir()) == []
    assert_nothing_partial(out)


def test_results_store_of_an_incompatible_version(capsys, tmp_path):
    task = user_task(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "store.json").write_text(json.dumps({"format": 99, "ia2_version": "9.0"}))
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot", "--out", str(out))
    assert_user_error(rc, err, "format 99", "ia2 9.0", "new --out folder")
    assert sorted(p.name for p in out.iterdir()) == ["store.json"]  # untouched

    (out / "store.json").write_text('{"format": ')
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot", "--out", str(out))
    assert_user_error(rc, err, "store.json is unreadable")


def test_out_folder_that_is_not_a_store(capsys, tmp_path):
    task = user_task(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    rc, _, err = run_cli(capsys, "run", *FAST, "--task", task, "--n", "4", "--methods", "zero-shot",
                         "--out", str(tmp_path / "out"))
    assert_user_error(rc, err, "is not an ia2 results store", "--out")


# --------------------------------------------------------------------------- --debug and a real process


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(IA2Error, match="unknown task 'nope'"):
        main(["--debug", "run", *FAST, "--task", "nope", "--out", str(tmp_path / "out")])


def _ia2(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ia2", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_subprocess_user_error_is_one_line(tmp_path):
    """A real process (stderr not a terminal, no pytest capture): one line, exit 2; --debug: see above."""
    task = user_task(tmp_path, GOOD_YAML + "colour: blue\n")
    proc = _ia2("run", *FAST, "--task", task, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "unknown field(s) colour")
    assert proc.stdout == ""


def test_stratified_dev_split_runs_and_removes_single_label_dev_sets(capsys, tmp_path):
    """--dev-split stratified reaches the pipeline: no run's dev set is a single class any more."""
    task = user_task(tmp_path)
    notes = {}
    for split in ("reference", "stratified"):
        out = tmp_path / split
        rc, _, err = run_cli(capsys, "run", "--task", task, "--n", "4", *FAST, "--runs", "0-7",
                             "--methods", "zero-shot", "--dev-split", split, "--out", str(out))
        assert rc == 0, err
        records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
        assert len(records) == 8
        assert {r["unit"].get("dev_split", "reference") for r in records} == {split}
        notes[split] = [n for r in records for n in r["notes"] if "single label" in n]
    assert notes["reference"] and not notes["stratified"]


@pytest.mark.parametrize("field,default,value,title", [("ia2_loss", "mse", "relative", "relative loss"),
                                                        ("ia2_capture", "attn", "residual", "residual capture")])
def test_ia2_loss_variant_reaches_the_record(capsys, tmp_path, field, default, value, title):
    """--ia2-loss relative / --ia2-capture residual train, are recorded in the unit, and are their own report
    column, compared (paired) with the paper's loss."""
    task = user_task(tmp_path)
    for v in (default, value):
        rc, _, err = run_cli(capsys, "run", "--task", task, "--n", "4", *FAST, "--methods", "ia2",
                             "--" + field.replace("_", "-"), v, "--out", str(tmp_path / "s"))
        assert rc == 0, err
    records = [json.loads(p.read_text()) for p in (tmp_path / "s" / "records").glob("*.json")]
    assert sorted(r["unit"].get(field, default) for r in records) == sorted([default, value])
    assert all(r["status"] == "done" for r in records)
    assert all(r["machine"]["dtype"] == ("float32" if r["machine"]["device"] == "cpu" else "bfloat16")
               for r in records)  # the precision reports check (no --dtype given: the device's default)
    rc, _, err = run_cli(capsys, "report", str(tmp_path / "s"), "--out", str(tmp_path / "r"))
    assert rc == 0, err
    report = (tmp_path / "r" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| source | eval |"))
    assert "| IA2 only |" in header and f"| IA2 only ({title}) |" in header
    assert f"| IA2 only ({title}) vs IA2 only | " in report and "and the IA2 loss variants" in report


def test_stratified_dev_split_on_a_generative_task(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", "--task", "gsm8k", "--dev-split", "stratified", *FAST,
                         "--out", str(tmp_path / "o"))
    assert_user_error(rc, err, "stratified dev split needs labels", "gsm8k", "dev_split: reference")
    assert not (tmp_path / "o").exists()
