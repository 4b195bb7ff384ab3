"""Property-based tests of the expression parser: any text either parses into the allowed grammar or
raises the project's ExpressionError — never another exception, never execution."""

from __future__ import annotations

import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from pkmodel.errors import ExpressionError
from pkmodel.expressions import parse_expression, parse_expression_with_unit
from pkmodel.units import parse_unit

NAMES = {"CL": sympy.Symbol("CL"), "V": sympy.Symbol("V"), "A": sympy.Symbol("A")}
UNITS = {"CL": parse_unit("L/h"), "V": parse_unit("L"), "A": parse_unit("mg")}
ALPHABET = "CLVAtexplogsqrtminax_0123456789.+-*/^()<>=!, ifelsendort[]{}'\"\\:;@~`|&%$#?"
TOKENS = [
    "CL",
    "V",
    "A",
    "t",
    "exp(",
    "log(",
    "sqrt(",
    "min(",
    "max(",
    "(",
    ")",
    "+",
    "-",
    "*",
    "/",
    "**",
    "^",
    "<",
    ">=",
    " if ",
    " else ",
    " and ",
    " or ",
    "not ",
    "1",
    "0.5",
    "1e3",
    ",",
    "__",
    ".",
    "[",
    "]",
    "lambda",
    ":",
    "'",
    "f'",
    "{",
    "}",
]


def _check(text: str) -> None:
    try:
        expr = parse_expression(text, NAMES)
    except ExpressionError:
        return
    assert isinstance(expr, sympy.Basic)
    assert expr.free_symbols <= {*NAMES.values(), sympy.Symbol("t", real=True)}


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_random_text_parses_or_raises_expression_error(text):
    _check(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=12).map("".join))
def test_token_soup_parses_or_raises_expression_error(text):
    _check(text)
    try:
        parse_expression_with_unit(text, NAMES, UNITS)
    except ExpressionError:
        pass
