"""Row transforms that a template alone cannot express (option shuffling, text cuts).

A transform maps one source row (plus its position in the split) to a new row, or None to drop it.
Registering a new one is a function and a decorator.
"""

from __future__ import annotations

import random
from typing import Any, Callable

Transform = Callable[[dict, int, dict], "dict | None"]
TRANSFORMS: dict[str, Transform] = {}

# Arbitrary option keys of the remapped multiple-choice tasks (SPEC section 3). The 4-option map
# is a prefix of the 8-option map so that sciq_remap -> qasc_remap is a meaningful transfer.
REMAP_KEYS = ("apple", "Friday", "banana", "Saturday", "Thursday", "Sunday", "Wednesday", "Monday")


def register(name: str) -> Callable[[Transform], Transform]:
    def deco(fn: Transform) -> Transform:
        TRANSFORMS[name] = fn
        return fn
    return deco


def render_choices(options: list[str], keys: tuple[str, ...]) -> str:
    return "\n".join(f"[{k}]{o}" for k, o in zip(keys, options))


@register("sciq_choices")
def sciq_choices(row: dict, index: int, args: dict) -> dict:
    """Correct answer + 3 distractors in an order seeded by the row's position in its split."""
    options = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
    order = list(range(4))
    random.Random(args.get("seed", 0) * 1_000_003 + index).shuffle(order)
    shuffled = [options[i] for i in order]
    return {**row, "choices": render_choices(shuffled, REMAP_KEYS[:4]), "label": order.index(0)}


@register("qasc_choices")
def qasc_choices(row: dict, index: int, args: dict) -> dict | None:
    """QASC's 8 options keep the dataset's order (already shuffled by its authors)."""
    texts = row["choices"]["text"]
    letters = row["choices"]["label"]
    if row.get("answerKey") not in letters:
        return None
    return {**row, "question": row["question"], "choices": render_choices(texts, REMAP_KEYS[: len(texts)]),
            "label": letters.index(row["answerKey"])}


@register("cut_text")
def cut_text(row: dict, index: int, args: dict) -> dict:
    """Cut a long text to its first ``chars`` characters at a word boundary (bbcnews: 256)."""
    field, limit = args.get("field", "text"), int(args.get("chars", 256))
    text: str = row[field]
    if len(text) > limit:
        cut = text[:limit]
        space = cut.rfind(" ")
        text = (cut[:space] if space > 0 else cut).rstrip()
    return {**row, field: text}


def apply(name: str | None, args: dict[str, Any], row: dict, index: int) -> dict | None:
    if name is None:
        return row
    return TRANSFORMS[name](row, index, args)
