"""Task registry: built-in benchmarks plus user tasks loaded from a small YAML file.

``get_task("sst2")`` or ``get_task("path/to/task.yaml")``; adding a built-in task is one entry
in ``builtin.py``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import IA2Error
from .builtin import BUILTIN
from .spec import LABEL_FORMATS, Source, Task

REGISTRY: dict[str, Task] = {t.name: t for t in BUILTIN}

YAML_FIELDS = {"name", "data", "prompt", "answer", "labels", "word_labels", "parser", "label_field",
               "max_new_tokens", "description", "ood"}
YAML_REQUIRED = ("name", "data", "prompt", "answer")


def register(task: Task) -> Task:
    REGISTRY[task.name] = task
    return task


def is_task_file(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml"))


def get_task(spec: str) -> Task:
    """A built-in task by name, or a user task from a YAML path."""
    if is_task_file(spec):
        return load_task_yaml(spec)
    if spec not in REGISTRY:
        raise IA2Error(f"unknown task '{spec}'",
                       f"valid tasks: {', '.join(sorted(REGISTRY))}, or a path to a task .yaml file")
    return REGISTRY[spec]


def load_task_yaml(path: str | Path) -> Task:
    """Parse a user task file; every problem names the file and the field."""
    path = Path(path)
    if not path.exists():
        raise IA2Error(f"task file not found: {path}", "check the path passed to --task")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise IA2Error(f"{path}: not valid YAML ({str(e).splitlines()[0]})", "fix the YAML syntax") from None
    if not isinstance(spec, dict):
        raise IA2Error(f"{path}: expected a mapping of fields", f"required fields: {', '.join(YAML_REQUIRED)}")
    unknown = sorted(set(spec) - YAML_FIELDS)
    if unknown:
        raise IA2Error(f"{path}: unknown field(s) {', '.join(unknown)}",
                       f"allowed fields: {', '.join(sorted(YAML_FIELDS))}")
    missing = [k for k in YAML_REQUIRED if k not in spec]
    if missing:
        raise IA2Error(f"{path}: missing field(s) {', '.join(missing)}",
                       "see the README's user-task example")
    for key in ("prompt", "answer"):
        _check_template(path, key, spec[key])
    data = spec["data"]
    if not isinstance(data, dict) or "eval" not in data:
        raise IA2Error(f"{path}: field 'data' must map splits to files and include 'eval'",
                       "e.g. data: {train: train.jsonl, eval: eval.jsonl}")
    unknown_splits = sorted(set(data) - {"train", "eval"})
    if unknown_splits:
        raise IA2Error(f"{path}: unknown data split(s) {', '.join(unknown_splits)}", "use 'train' and 'eval'")
    files = {k: str((path.parent / v).resolve()) for k, v in data.items()}
    labels = spec.get("labels")
    kind = "single" if labels else "generative"
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise IA2Error(f"{path}: field 'labels' must be a list of strings", 'e.g. labels: ["0", "1"]')
    word_labels = spec.get("word_labels")
    if word_labels is not None and (not labels or not isinstance(word_labels, list)
                                    or not all(isinstance(x, str) for x in word_labels)
                                    or len(word_labels) != len(labels)):
        raise IA2Error(f"{path}: field 'word_labels' must be a list of strings, one per entry of 'labels'",
                       'e.g. labels: ["0", "1"] with word_labels: [" negative", " positive"]')
    parser = spec.get("parser")
    if kind == "generative":
        from .parsers import PARSERS
        parser = parser or "exact"
        if parser not in PARSERS:
            raise IA2Error(f"{path}: unknown parser '{parser}'", f"choose one of {', '.join(sorted(PARSERS))}")
    answer = str(spec["answer"])
    label_field = spec.get("label_field")
    if kind == "single" and label_field is None:
        # answer: "{label}" names the column that holds the label string.
        import string
        fields = [f for _, f, _, _ in string.Formatter().parse(answer) if f]
        if len(fields) != 1:
            raise IA2Error(f"{path}: field 'answer' of a classification task must be one column, e.g. \"{{label}}\"",
                           "or set label_field")
        label_field = fields[0]
    return Task(
        name=str(spec["name"]), kind=kind,
        source=Source(pool_split="train" if "train" in files else None, eval_split="eval",
                      scheme="two_splits" if "train" in files else "eval_only", files=files),
        prompt=str(spec["prompt"]), answer=answer if kind == "generative" else None,
        label_field=label_field, labels=tuple(labels) if labels else None,
        word_labels=tuple(spec["word_labels"]) if spec.get("word_labels") else None,
        label_map={lab: i for i, lab in enumerate(labels)} if labels else None,
        parser=parser, max_new_tokens=int(spec.get("max_new_tokens", 200)),
        ood=tuple(spec.get("ood", ())), description=str(spec.get("description", "")), origin=str(path),
    )


def _check_template(path: Path, key: str, text) -> None:
    """A prompt/answer template: a string whose {fields} are plain column names."""
    import string
    if not isinstance(text, str):
        raise IA2Error(f"{path}: field '{key}' must be a string", 'e.g. prompt: "Text:{text}\\nLabel:"')
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise IA2Error(f"{path}: field '{key}' is not a valid template ({e})",
                       "write columns as {column}; double a literal brace: {{ or }}") from None
    for _, name, spec, conv in parsed:
        if name is not None and (not name or name.isdigit() or "." in name or "[" in name or spec or conv):
            raise IA2Error(f"{path}: field '{key}' uses {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}, "
                           "not a plain column name", "write columns as {column}; double a literal brace: {{ or }}")


def eval_tasks_for(task: Task) -> list[Task]:
    """The task itself (when it has an eval set) followed by its out-of-distribution pairs."""
    return [task] + [get_task(name) for name in task.ood]


__all__ = ["REGISTRY", "LABEL_FORMATS", "Source", "Task", "get_task", "load_task_yaml", "register",
           "eval_tasks_for", "is_task_file"]
