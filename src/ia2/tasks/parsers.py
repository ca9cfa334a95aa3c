"""Answer parsers for generative benchmarks.

A parser maps raw model output (or a gold solution) to a normalised answer
string, or ``None`` when no answer can be found. Gold answers and predictions
go through the same parser, so comparison is a plain string equality.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "PARSERS",
    "Parser",
    "cut_at_stop",
    "get_parser",
    "parse_after_hashes",
    "parse_boxed",
    "parse_exact",
    "parse_number",
]

Parser = Callable[[str], str | None]

_HASHES = "####"
_BOXED = "\\boxed"

# One number: optional sign (not when it is a binary minus such as "5-3"),
# optional dollar sign, then digits with optional thousands separators and
# an optional fractional part.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w.])(?P<neg>-)\s?)?"
    r"(?:\$\s?)?"
    r"(?:(?<=\$)(?P<neg2>-))?"
    r"(?<![\d.])"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)
_ANSWER_IS_RE = re.compile(r"the\s+answer\s+is", re.IGNORECASE)
_ANSWER_COLON_RE = re.compile(r"answer\s*:", re.IGNORECASE)
_BARE_TOKEN_RE = re.compile(r"[^\s$\\{}]+")


def cut_at_stop(text: str, stop: str = "\n\n") -> str:
    """Return ``text`` up to (not including) the first ``stop``; all of it if absent or empty."""
    if not stop:
        return text
    idx = text.find(stop)
    return text if idx < 0 else text[:idx]


def _canonical_number(match: re.Match[str]) -> str:
    """Normalise a ``_NUMBER_RE`` match: no commas, no trailing zeros, no ``-0``."""
    num = match.group("num").replace(",", "")
    int_part, _, frac_part = num.partition(".")
    int_part = int_part.lstrip("0") or "0"
    frac_part = frac_part.rstrip("0")
    out = f"{int_part}.{frac_part}" if frac_part else int_part
    negative = bool(match.group("neg") or match.group("neg2"))
    if negative and out != "0":
        out = "-" + out
    return out


def _first_number(text: str) -> str | None:
    """Canonical form of the first number in ``text``, or None."""
    m = _NUMBER_RE.search(text)
    return _canonical_number(m) if m else None


def _last_number(text: str) -> str | None:
    """Canonical form of the last number in ``text``, or None."""
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    return _canonical_number(last) if last else None


def _closing_brace(text: str, open_idx: int) -> int | None:
    """Index of the brace closing ``text[open_idx] == '{'``; escaped braces are skipped."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _last_boxed(text: str) -> str | None:
    """Raw content of the last complete top-level ``\\boxed{...}`` (or ``\\boxed tok``)."""
    result: str | None = None
    i = 0
    n = len(text)
    while True:
        j = text.find(_BOXED, i)
        if j < 0:
            return result
        k = j + len(_BOXED)
        m = k
        while m < n and text[m].isspace():
            m += 1
        if m < n and text[m] == "{":
            end = _closing_brace(text, m)
            if end is None:  # truncated: look for a later (nested) complete one
                i = k
                continue
            result = text[m + 1 : end]
            i = end + 1
        elif m > k:
            tok = _BARE_TOKEN_RE.match(text, m)
            if tok:
                result = tok.group(0)
                i = tok.end()
            else:
                i = k
        else:
            i = k


def parse_number(text: str) -> str | None:
    """Numeric answer (GSM8K style): after the last ``####``, else fallbacks.

    Fallback order: last ``\\boxed{}``, "The answer is X", "Answer: X",
    the last number in the text.
    """
    idx = text.rfind(_HASHES)
    if idx >= 0:
        found = _first_number(text[idx + len(_HASHES) :])
        if found is not None:
            return found
    boxed = _last_boxed(text)
    if boxed is not None:
        found = _first_number(boxed)
        if found is not None:
            return found
    for pattern in (_ANSWER_IS_RE, _ANSWER_COLON_RE):
        for m in reversed(list(pattern.finditer(text))):
            rest = text[m.end() :].split("\n", 1)[0]
            found = _first_number(rest)
            if found is not None:
                return found
    return _last_number(text)


def parse_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{}``, whitespace removed, ``\\dfrac``/``\\tfrac`` -> ``\\frac``."""
    content = _last_boxed(text)
    if content is None:
        return None
    content = "".join(content.split())
    return content.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def parse_after_hashes(text: str) -> str | None:
    """Text after the last ``####``, stripped and lower-cased; None without ``####``."""
    idx = text.rfind(_HASHES)
    if idx < 0:
        return None
    return text[idx + len(_HASHES) :].strip().lower()


def parse_exact(text: str) -> str | None:
    """The whole text, stripped."""
    return text.strip()


PARSERS: dict[str, Parser] = {
    "number": parse_number,
    "boxed": parse_boxed,
    "after_hashes": parse_after_hashes,
    "exact": parse_exact,
}


def get_parser(name: str) -> Parser:
    """Look up a parser by name; ``KeyError`` lists the valid names."""
    try:
        return PARSERS[name]
    except KeyError:
        valid = ", ".join(sorted(PARSERS))
        raise KeyError(f"unknown parser {name!r}; valid parsers: {valid}") from None
