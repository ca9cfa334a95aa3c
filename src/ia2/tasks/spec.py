"""The Task dataclass: a benchmark declared as data (source, splits, template, labels, parser)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import IA2Error

LABEL_FORMATS = ("digits", "words")


@dataclass(frozen=True)
class Source:
    """Where rows come from: a hub dataset (or its mirror) or local files of a user task."""

    hf_id: str | None = None
    config: str = "default"
    pool_split: str | None = None  # None: the task is evaluation-only (an OOD target)
    eval_split: str | None = None
    # "two_splits": pool and eval from their own splits; "one_split_tail": one split, shuffled,
    # last 500 rows are the eval set and the rest the pool.
    scheme: Literal["two_splits", "one_split_tail", "eval_only"] = "two_splits"
    files: dict[str, str] = field(default_factory=dict)  # user tasks: split -> local path
    # Documented substitutes when the local mirror lacks a split or config.
    alt_splits: dict[str, str] = field(default_factory=dict)
    alt_configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One benchmark. Rendering: ``prompt.format(**row)`` then the answer with no space.

    Single-token tasks name a ``label_field`` whose (mapped) value indexes ``labels``;
    generative tasks render ``answer`` from the row and score with ``parser``.
    """

    name: str
    kind: Literal["single", "generative"]
    source: Source
    prompt: str
    answer: str | None = None  # generative answer template
    label_field: str | None = None
    labels: tuple[str, ...] | None = None
    word_labels: tuple[str, ...] | None = None
    label_map: dict[Any, int] | None = None  # raw label value -> index into labels; others are dropped
    parser: str | None = None
    max_new_tokens: int = 200
    transform: str | None = None  # name in tasks.transforms.TRANSFORMS
    transform_args: dict[str, Any] = field(default_factory=dict)
    ood: tuple[str, ...] = ()
    description: str = ""
    origin: str = "builtin"  # or the YAML path of a user task

    def __post_init__(self):
        if self.kind == "single" and not self.labels:
            raise IA2Error(f"task '{self.name}': a single-token task needs 'labels'", "list the label strings")
        if self.kind == "generative" and not (self.answer and self.parser):
            raise IA2Error(f"task '{self.name}': a generative task needs 'answer' and 'parser'",
                           "add an answer template and one of: number, boxed, after_hashes, exact")

    @property
    def eval_only(self) -> bool:
        return self.source.scheme == "eval_only"

    def label_strings(self, label_format: str = "digits") -> tuple[str, ...]:
        """The answer strings of the label set in the requested format (digits = the paper's)."""
        if self.kind != "single":
            raise IA2Error(f"task '{self.name}' is generative and has no label set")
        if label_format == "digits":
            return self.labels  # type: ignore[return-value]
        if label_format == "words":
            if not self.word_labels:
                raise IA2Error(f"task '{self.name}' has no word-label format",
                               "use --label-format digits for this task")
            return self.word_labels
        raise IA2Error(f"unknown label format '{label_format}'", f"choose one of {', '.join(LABEL_FORMATS)}")

    def replace(self, **kw) -> "Task":
        return dataclasses.replace(self, **kw)
