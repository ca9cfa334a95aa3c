"""Rows -> examples -> pool / eval sets -> per-run splits (SPEC section 2, reference-compatible).

Rows come from a local mirror (``IA2_DATA_DIR``, layout ``<org>/<name>/<config>/<split>.jsonl``)
when it is set, otherwise from the hub through ``datasets.load_dataset``. Where the mirror lacks a
split, a documented seeded carve of another split is used and reported in ``TaskData.notes``.
"""

from __future__ import annotations

import functools
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import IA2Error
from .io import read_table
from .tasks import Task
from .tasks import transforms

POOL_SIZE = 2000
EVAL_SIZE = 500
SHUFFLE_SEED = 42
MAX_DEV = 48
DEV_SPLITS = ("reference", "stratified")  # how the N/2 dev examples are drawn (see make_split)


@dataclass(frozen=True)
class Example:
    """One rendered example: the query prompt and its answer string (appended with no space)."""

    query: str
    answer: str
    label: int | None = None  # index into the label set (single-token tasks)
    gold: str | None = None  # parsed gold answer (generative tasks)
    source_index: int = -1  # position of the row in its source split (after filtering)


@dataclass
class TaskData:
    task: Task
    label_format: str
    pool: list[Example]
    eval: list[Example]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunSplit:
    """Positions into the pool for one run: train, dev, ICL demo pool, and per-example demonstrations."""

    run: int
    train: list[int]
    dev: list[int]
    demo_pool: list[int]
    demos: list[list[int]]  # demos[i]: pool positions of the demonstrations of training example i

    def dev_demos(self, j: int) -> list[int]:
        """Dev example j reuses the demonstrations of training example j."""
        return self.demos[j]


def data_dir() -> Path | None:
    d = os.environ.get("IA2_DATA_DIR")
    return Path(d) if d else None


def shuffle_permutation(n: int, seed: int = SHUFFLE_SEED) -> np.ndarray:
    """The permutation ``datasets.Dataset.shuffle(seed=seed)`` applies (numpy default_rng)."""
    return np.random.default_rng(seed).permutation(n)


def shuffled(rows: list, seed: int = SHUFFLE_SEED) -> list:
    return [rows[i] for i in shuffle_permutation(len(rows), seed)]


@functools.lru_cache(maxsize=64)
def _load_split_cached(hf_id: str, config: str, split: str, root: str | None) -> tuple[dict, ...]:
    if root is not None:
        path = Path(root) / hf_id / config / f"{split}.jsonl"
        return tuple(read_table(path))
    try:
        import datasets
        ds = datasets.load_dataset(hf_id, None if config == "default" else config, split=split)
    except Exception as e:  # the hub is unreachable or the dataset is missing
        raise IA2Error(f"could not load {hf_id} ({config}/{split}) from the hub: {type(e).__name__}",
                       "set IA2_DATA_DIR to a local mirror (e.g. ../shared/data)") from None
    return tuple(ds.to_list())


def mirror_has(hf_id: str, config: str, split: str) -> bool:
    root = data_dir()
    return root is None or (root / hf_id / config / f"{split}.jsonl").exists()


def load_rows(hf_id: str, config: str, split: str) -> list[dict]:
    root = data_dir()
    return list(_load_split_cached(hf_id, config, split, str(root) if root else None))


def _resolve(task: Task, split: str, notes: list[str]) -> tuple[str, str] | None:
    """(config, split) to read for a wanted split, applying documented mirror substitutes."""
    src = task.source
    config = src.config
    if not mirror_has(src.hf_id, config, split) and config in src.alt_configs:
        alt = src.alt_configs[config]
        if mirror_has(src.hf_id, alt, split):
            notes.append(f"{task.name}: mirror lacks config '{config}', using '{alt}' instead")
            config = alt
    if mirror_has(src.hf_id, config, split):
        return config, split
    if split in src.alt_splits and mirror_has(src.hf_id, config, src.alt_splits[split]):
        alt = src.alt_splits[split]
        notes.append(f"{task.name}: mirror lacks split '{split}', using split '{alt}' (shuffled, seed 42)")
        return config, alt
    return None


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def check_columns(row: dict, names: list[str], part: str, task: Task, where: str) -> None:
    """A row missing a column used by a template is an error naming the column and the row's columns."""
    missing = [f for f in names if f not in row]
    if missing:
        raise IA2Error(f"{where} has no column '{missing[0]}' used in the {part} of task '{task.name}'",
                       f"columns present: {', '.join(sorted(row))}")


def render_query(task: Task, row: dict, where: str) -> str:
    fields = template_fields(task.prompt)
    check_columns(row, fields, "prompt", task, where)
    return task.prompt.format(**{k: row[k] for k in fields})


def _rows_to_examples(task: Task, rows: list[dict], label_format: str, where: str) -> list[Example]:
    labels = task.label_strings(label_format) if task.kind == "single" else None
    answer_fields = [task.label_field] if task.kind == "single" else template_fields(task.answer)
    out: list[Example] = []
    user_task = task.origin != "builtin"
    for i, raw in enumerate(rows):
        row = transforms.apply(task.transform, {**task.transform_args}, raw, i)
        if row is None:
            continue
        query = render_query(task, row, f"{where}: row {i + 1}")
        check_columns(row, answer_fields, "answer", task, f"{where}: row {i + 1}")
        if task.kind == "single":
            value = row.get(task.label_field)
            if task.label_map is not None:
                key = str(value) if user_task else value
                idx = task.label_map.get(key)
                if idx is None:
                    if user_task:
                        raise IA2Error(f"{where}: row {i + 1} has label {value!r}, not in the task's labels {list(task.labels)}",
                                       "fix the data or add the label to 'labels'")
                    continue  # built-in filters (e.g. finsen drops neutral)
            else:
                idx = int(value)
            out.append(Example(query, labels[idx], label=idx, source_index=i))
        else:
            from .tasks.parsers import get_parser
            answer = task.answer.format(**row)
            out.append(Example(query, answer, gold=get_parser(task.parser)(answer), source_index=i))
    return out


_TASK_DATA: dict[tuple, TaskData] = {}


def load_task_data(task: Task, label_format: str = "digits") -> TaskData:
    """Pool (<= 2000) and eval set (<= 500) of a task, exactly as SPEC section 2 prescribes.

    Built-in tasks are memoised per process (rendering 67k sst2 rows costs ~0.5 s per call);
    callers treat the result as read-only.
    """
    if task.origin != "builtin":
        return _load_task_data(task, label_format)
    key = (task.name, label_format, str(data_dir()))
    if key not in _TASK_DATA:
        _TASK_DATA[key] = _load_task_data(task, label_format)
    return _TASK_DATA[key]


def _load_task_data(task: Task, label_format: str) -> TaskData:
    notes: list[str] = []
    src = task.source
    if task.kind == "single":
        task.label_strings(label_format)  # validates the format early
    if src.files:  # user task from YAML
        pool = _rows_to_examples(task, read_table(src.files["train"]), label_format, src.files["train"]) \
            if "train" in src.files else []
        ev = _rows_to_examples(task, read_table(src.files["eval"]), label_format, src.files["eval"])
        if not ev:
            raise IA2Error(f"{src.files['eval']}: no examples in the evaluation file of task '{task.name}'",
                           "add rows: one JSON object per line (.jsonl) or rows under a header (.csv)")
        return TaskData(task, label_format, shuffled(pool)[:POOL_SIZE], shuffled(ev)[:EVAL_SIZE], notes)

    def examples(split: str) -> list[Example] | None:
        resolved = _resolve(task, split, notes)
        if resolved is None:
            return None
        config, real_split = resolved
        return _rows_to_examples(task, load_rows(src.hf_id, config, real_split), label_format,
                                 f"{src.hf_id}/{config}/{real_split}")

    if src.scheme == "one_split_tail":
        rows = examples(src.eval_split)
        if rows is None:
            raise _unavailable(task, src.eval_split)
        rows = shuffled(rows)
        return TaskData(task, label_format, rows[:-EVAL_SIZE][:POOL_SIZE], rows[-EVAL_SIZE:], notes)
    ev_rows = examples(src.eval_split)
    if ev_rows is None:
        raise _unavailable(task, src.eval_split)
    ev = shuffled(ev_rows)
    if src.scheme == "eval_only":
        return TaskData(task, label_format, [], ev[:EVAL_SIZE], notes)
    pool_rows = examples(src.pool_split)
    if pool_rows is None:
        # Documented carve: the eval set stays the hub's (first 500 of the shuffled eval split);
        # the pool is the next up-to-2000 rows of that same shuffled split.
        notes.append(f"{task.name}: mirror lacks split '{src.pool_split}'; pool carved from split "
                     f"'{src.eval_split}' (shuffled seed 42: rows 0-499 eval, the next rows pool)")
        return TaskData(task, label_format, ev[EVAL_SIZE:EVAL_SIZE + POOL_SIZE], ev[:EVAL_SIZE], notes)
    return TaskData(task, label_format, shuffled(pool_rows)[:POOL_SIZE], ev[:EVAL_SIZE], notes)


def _unavailable(task: Task, split: str) -> IA2Error:
    root = data_dir()
    return IA2Error(f"task '{task.name}': split '{split}' of {task.source.hf_id} ({task.source.config}) "
                    f"is not in the data mirror {root}",
                    "add it to the mirror, or unset IA2_DATA_DIR to load from the hub")


def task_available(task: Task) -> bool:
    try:
        load_task_data(task)
        return True
    except IA2Error:
        return False


def check_dev_split(dev_split: str) -> None:
    if dev_split not in DEV_SPLITS:
        raise IA2Error(f"unknown dev split '{dev_split}'", f"choose one of {', '.join(DEV_SPLITS)}")


def make_split(pool_size: int, n: int, run: int, max_demos: int | None = None, dev_split: str = "reference",
               labels: list | None = None) -> RunSplit:
    """Per-run split, seeded by the run index (compatible with the reference scripts).

    ``dev_split="stratified"`` keeps the same training examples and demonstrations but draws the N/2 dev
    examples round-robin over the labels (``labels[i]`` of pool position i), so a dev set of two sst2
    examples is never a single class; the reference split draws them in shuffled order.
    """
    check_dev_split(dev_split)
    if dev_split == "stratified" and (labels is None or any(x is None for x in labels)):
        raise IA2Error("a stratified dev split needs a label for every pool example (a classification task)",
                       "use dev_split: reference for generative tasks")
    if n < 1:
        raise IA2Error(f"N must be at least 1, got {n}", "pass --n 1 or more")
    n_dev = min(MAX_DEV, n // 2)
    if n + n_dev > pool_size:
        raise IA2Error(f"N={n} needs {n + n_dev} pool examples (train + dev) but the pool has {pool_size}",
                       f"use --n {max(1, (pool_size * 2) // 3)} or less")
    rng = np.random.RandomState(run)
    positions = list(range(pool_size))
    rng.shuffle(positions)
    train = positions[:n]
    dev = positions[n:n + n_dev] if dev_split == "reference" else _round_robin(positions[n:], labels, n_dev)
    taken = set(dev)
    demo_pool = [p for p in positions[n:] if p not in taken]
    demos: list[list[int]] = []
    for i in range(n):
        others = [p for j, p in enumerate(train) if j != i]
        if max_demos is not None and max_demos < len(others):
            others = [int(x) for x in rng.choice(others, max_demos, replace=False)]
        rng.shuffle(others)
        demos.append([int(x) for x in others])
    return RunSplit(run, [int(x) for x in train], [int(x) for x in dev], [int(x) for x in demo_pool], demos)


def _round_robin(positions: list[int], labels: list, k: int) -> list[int]:
    """The first k positions taking one of each label in turn (labels ordered by first appearance)."""
    by_label: dict = {}
    for p in positions:
        by_label.setdefault(labels[p], []).append(p)
    queues, out = list(by_label.values()), []
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


def single_label_dev_note(task: str, split: RunSplit, pool: list[Example]) -> str | None:
    """A note when every dev example of a run has the same label (likely at N/2 = 2). Dev loss then rewards
    predicting that label with certainty, so early stopping and restore-best can keep an adapter that has
    collapsed to one class. Happens with the reference split; ``dev_split="stratified"`` avoids it."""
    labels = {pool[i].answer for i in split.dev}
    if len(split.dev) == 0 or len(labels) != 1 or pool[split.dev[0]].label is None:
        return None
    return (f"{task}: the dev set of run {split.run} ({len(split.dev)} example(s)) has the single label "
            f"{next(iter(labels))!r}; dev loss cannot tell collapse to that label from learning the task")


def icl_demos_for_eval(demo_pool: list[int], n_eval: int, k: int, run: int) -> list[list[int]]:
    """k demonstrations per evaluation query, drawn without replacement from the demo pool (seeded by run)."""
    if k > len(demo_pool):
        raise IA2Error(f"the ICL baseline needs {k} demonstrations but the demo pool has {len(demo_pool)}",
                       "use a smaller --n")
    rng = np.random.RandomState(10_000 + run)
    return [[int(x) for x in rng.choice(demo_pool, k, replace=False)] for _ in range(n_eval)]
