"""Tests for ia2.tasks.parsers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ia2.tasks.parsers import (
    PARSERS,
    cut_at_stop,
    get_parser,
    parse_after_hashes,
    parse_boxed,
    parse_exact,
    parse_number,
)

FUZZ = settings(max_examples=200, deadline=None)

GSM8K_GOLD = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)
GSM8K_GOLD_BIG = (
    "The house cost 80,000 + 50,000 = $<<80000+50000=130000>>130,000.\n"
    "It increased by 80,000 * 1.5 = <<80000*1.5=120000>>120,000.\n"
    "So the profit was 120,000 - 50,000 = $<<120000-50000=70000>>70,000.\n"
    "#### 70000"
)


# ---------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert set(PARSERS) == {"number", "boxed", "after_hashes", "exact"}
    assert get_parser("number") is parse_number
    assert get_parser("boxed") is parse_boxed
    assert get_parser("after_hashes") is parse_after_hashes
    assert get_parser("exact") is parse_exact


def test_get_parser_unknown_lists_valid_names() -> None:
    with pytest.raises(KeyError) as exc:
        get_parser("nope")
    msg = str(exc.value)
    assert "nope" in msg
    for name in PARSERS:
        assert name in msg


# ---------------------------------------------------------------- cut_at_stop


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("a\nb\n\nc\n\nd", "\n\n", "a\nb"),
        ("no stop here", "\n\n", "no stop here"),
        ("\n\nleading", "\n\n", ""),
        ("x Question: y", "Question:", "x "),
        ("abc", "", "abc"),
    ],
)
def test_cut_at_stop(text: str, stop: str, expected: str) -> None:
    assert cut_at_stop(text, stop) == expected


def test_cut_at_stop_default() -> None:
    assert cut_at_stop("#### 5\n\nQuestion: next") == "#### 5"


# ---------------------------------------------------------------- number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GSM8K_GOLD, "72"),
        (GSM8K_GOLD_BIG, "70000"),
        ("reasoning\n#### 1,000", "1000"),
        ("reasoning\n#### 1,234,567", "1234567"),
        ("reasoning\n#### $5", "5"),
        ("reasoning\n#### -3", "-3"),
        ("reasoning\n#### -$3", "-3"),
        ("reasoning\n#### $-3", "-3"),
        ("reasoning\n#### 18.0", "18"),
        ("reasoning\n#### 18.50", "18.5"),
        ("reasoning\n#### 0.25", "0.25"),
        ("reasoning\n#### .5", "0.5"),
        ("reasoning\n#### 72.", "72"),
        ("reasoning\n#### $1,200.00.", "1200"),
        ("reasoning\n####72", "72"),
        ("reasoning\n#### -0", "0"),
        ("reasoning\n#### 007", "7"),
        # last #### wins
        ("#### 1\nmore text\n#### 2", "2"),
        # #### without a number falls back
        ("She has 12 apples.\n####", "12"),
    ],
)
def test_number_hashes(text: str, expected: str) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the total is \\boxed{18}.", "18"),
        ("First \\boxed{3}, then \\boxed{42}", "42"),
        ("\\boxed{\\$1,000}", "1000"),
        ("\\boxed{-7.50} and 99 later", "-7.5"),
        ("The answer is 42.", "42"),
        ("the ANSWER is: $1,250 in total", "1250"),
        ("I think 5 apples. The answer is 7. Done 9", "7"),
        ("Answer: 13\nbecause 2 + 2", "13"),
        ("answer: -4", "-4"),
        ("She bought 3 apples and 4 pears, 7 in total.", "7"),
        ("5-3=2", "2"),
        ("The difference is 10 - 4 = 6", "6"),
        ("It costs $2.50 each.", "2.5"),
        ("It's about 1,5 or so", "5"),
        ("It was -12 degrees", "-12"),
    ],
)
def test_number_fallbacks(text: str, expected: str) -> None:
    assert parse_number(text) == expected


def test_number_fallback_order() -> None:
    # #### beats boxed beats "the answer is" beats "Answer:" beats last number.
    assert parse_number("\\boxed{1} The answer is 2. Answer: 3. 4\n#### 5") == "5"
    assert parse_number("\\boxed{1} The answer is 2. Answer: 3. 4") == "1"
    assert parse_number("The answer is 2. Answer: 3. 4") == "2"
    assert parse_number("Answer: 3. 4") == "3"
    assert parse_number("3. 4") == "4"


@pytest.mark.parametrize("text", ["", "no numbers here", "#### ", "\\boxed{x}", "The answer is x"])
def test_number_missing(text: str) -> None:
    assert parse_number(text) is None


def test_number_gold_and_prediction_agree() -> None:
    prediction = "Natalia sold 24 clips in May, so 48 + 24 = 72.\nThe answer is 72."
    assert parse_number(prediction) == parse_number(GSM8K_GOLD)


# ---------------------------------------------------------------- boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so x = \\boxed{5}", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("$\\boxed{\\dfrac{3}{4}}$", "\\frac{3}{4}"),
        ("\\boxed{\\tfrac{a}{b} + 1}", "\\frac{a}{b}+1"),
        ("\\boxed{ x ^ { 2 } + 1 }", "x^{2}+1"),
        ("\\boxed{\\sqrt{\\frac{1}{\\left(2\\right)}}}", "\\sqrt{\\frac{1}{\\left(2\\right)}}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed {7}", "7"),
        ("The answer is $\\boxed 5$.", "5"),
        # truncated final box: fall back to the last complete one
        ("\\boxed{3} and then \\boxed{\\frac{1", "3"),
        ("\\boxed{}", ""),
    ],
)
def test_boxed(text: str, expected: str) -> None:
    assert parse_boxed(text) == expected


@pytest.mark.parametrize("text", ["", "x = 5", "\\boxed{unclosed", "\\boxed", "boxed{3}"])
def test_boxed_missing(text: str) -> None:
    assert parse_boxed(text) is None


# ---------------------------------------------------------------- after_hashes / exact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mitochondria make ATP.\n#### Mitochondria", "mitochondria"),
        ("#### a\n#### B ", "b"),
        ("support\n####   Photosynthesis  \n", "photosynthesis"),
        ("support\n####", ""),
    ],
)
def test_after_hashes(text: str, expected: str) -> None:
    assert parse_after_hashes(text) == expected


def test_after_hashes_missing() -> None:
    assert parse_after_hashes("no hashes at all ###") is None


def test_exact() -> None:
    assert parse_exact("  Hello World \n") == "Hello World"
    assert parse_exact("") == ""


# ---------------------------------------------------------------- fuzz


@FUZZ
@given(text=st.text())
def test_parsers_never_raise(text: str) -> None:
    for name, parser in PARSERS.items():
        out = parser(text)
        assert out is None or isinstance(out, str), name
    assert isinstance(cut_at_stop(text), str)


_JUNK_ALPHABET = "0123456789#\\{}$,.- \nabx"


@FUZZ
@given(text=st.text(alphabet=_JUNK_ALPHABET))
def test_parsers_never_raise_on_adversarial_text(text: str) -> None:
    for parser in PARSERS.values():
        out = parser(text)
        assert out is None or isinstance(out, str)


def _canonical(v: Decimal) -> str:
    """Expected canonical string for a numeric value (independent of the parser)."""
    if v == v.to_integral_value():
        return str(int(v))
    return format(v.normalize(), "f")


_numbers = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(Decimal),
    st.decimals(
        min_value=-(10**9),
        max_value=10**9,
        allow_nan=False,
        allow_infinity=False,
        places=4,
    ),
    st.decimals(
        min_value=-1000,
        max_value=1000,
        allow_nan=False,
        allow_infinity=False,
        places=1,
    ),
)


def _render(v: Decimal, style: str) -> str:
    if style == "plain":
        return format(v, "f")
    if style == "commas":
        return format(v, ",f")
    if style == "dollar":
        return "$" + format(v, "f")
    if style == "dollar_commas":
        return "$" + format(v, ",f")
    # "-$5" style
    sign = "-" if v < 0 else ""
    return sign + "$" + format(abs(v), ",f")


@FUZZ
@given(
    v=_numbers,
    style=st.sampled_from(["plain", "commas", "dollar", "dollar_commas", "sign_dollar"]),
    reasoning=st.text(),
    suffix=st.sampled_from(["", ".", " ", "\n", " dollars.", "\n\n"]),
)
def test_number_round_trip(v: Decimal, style: str, reasoning: str, suffix: str) -> None:
    gold = f"{reasoning}\n#### {_render(v, style)}{suffix}"
    assert parse_number(gold) == _canonical(v)


@FUZZ
@given(v=_numbers, reasoning=st.text(alphabet="abcdefgh xyz+=*/\n"))
def test_number_round_trip_fallbacks(v: Decimal, reasoning: str) -> None:
    value = format(v, ",f")
    expected = _canonical(v)
    assert parse_number(f"{reasoning}\nThe answer is {value}.") == expected
    assert parse_number(f"{reasoning} \\boxed{{{value}}}") == expected
    assert parse_number(f"{reasoning}\nAnswer: {value}") == expected


_leaf = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=6),
    st.sampled_from(["\\frac", "\\sqrt", "\\pi ", "\\cdot ", "\\{", "\\}", "\\\\"]),
)
_balanced = st.recursive(
    _leaf,
    lambda children: st.one_of(
        children.map(lambda s: "{" + s + "}"),
        st.lists(children, max_size=4).map("".join),
    ),
    max_leaves=12,
)


@FUZZ
@given(prefix=st.text().filter(lambda s: "boxed" not in s), expr=_balanced)
def test_boxed_round_trip(prefix: str, expr: str) -> None:
    expected = "".join(expr.split())
    if "\\dfrac" in expected or "\\tfrac" in expected:
        return
    assert parse_boxed(prefix + " \\boxed{" + expr + "}") == expected


@FUZZ
@given(support=st.text(), answer=st.text().filter(lambda s: "####" not in s))
def test_after_hashes_round_trip(support: str, answer: str) -> None:
    assert parse_after_hashes(support + "\n#### " + answer) == answer.strip().lower()


@FUZZ
@given(text=st.text(), stop=st.text(min_size=1, max_size=3))
def test_cut_at_stop_property(text: str, stop: str) -> None:
    head = cut_at_stop(text, stop)
    assert text.startswith(head)
    assert stop not in head
    if stop in text:
        assert text[len(head) :].startswith(stop)
    else:
        assert head == text
