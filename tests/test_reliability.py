"""Reliability and safety (issue 8): hostile model files, hostile expressions, numerical faults, and
results that are never lost.  docs/reliability.md maps every item of the issue to its tests; the
counts written there are checked by ``test_corpus_counts_in_the_doc_are_the_counted_ones`` below.

Oracles
-------
* Hostile model files: the expected key and rule of each file in ``tests/data/hostile/models/`` are
  written by hand in ``HOSTILE_MODEL_FILES`` from what the file breaks; "executes nothing" is checked
  by a Python audit hook (PEP 578) that sees every ``exec`` of a code object, every process start and
  every file opened for writing while a file is loaded, and by the payload's own target file, which
  must not exist afterwards.  That the payload is live is shown by ``sympy.sympify`` — the trap the
  expression parser avoids — creating the file in a subprocess.
* Grammar property: each generated expression is evaluated independently, by a small evaluator of the
  generated tree written here (Python's ``math`` on floats), and compared with the parsed sympy
  expression evaluated at the same values.
* Stiff model: dA/dt = −K·A² has the closed form A(t) = A0/(1 + K·A0·t) (separation of variables).
* Fits at a bound: the data are generated with CL = 1 L/h and the bounds exclude it, so the maximum
  likelihood estimate must sit on the bound (individual fit: CL = 0.8 exactly, lmfit's bound).
* Results never lost: file contents are compared byte for byte (SHA-256) before and after a killed
  or failed write; hashes in results.json are compared with ``hashlib`` on the files themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pkmodel as pk
from pkmodel.errors import ExpressionError, PkmodelError
from pkmodel.expressions import parse_expression
from pkmodel.fitting import run_fit
from pkmodel.model import list_models
from pkmodel.report import Section, Table, write_report

HERE = Path(__file__).parent
HOSTILE = HERE / "data" / "hostile" / "models"
DOC = HERE.parent / "docs" / "reliability.md"

# ------------------------------------------------------------------------------------------------
# a guard that sees code execution, process starts and writes (PEP 578 audit hook)

_GUARD: dict = {"active": False, "seen": []}
_FORBIDDEN_PREFIXES = (
    "os.system",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
    "os.kill",
    "os.remove",
    "os.unlink",
    "os.rename",
    "os.rmdir",
    "os.truncate",
    "shutil.",
    "subprocess.",
    "socket.",
    "ctypes.",
    "webbrowser.",
)


def _audit(event: str, args: tuple) -> None:
    if not _GUARD["active"] or any("__pycache__" in str(a) for a in args):
        return  # an import may write its bytecode cache
    if event == "exec":
        # module imports run code objects compiled from .py files; anything else (eval, exec of a
        # string, a compiled expression) is code execution
        filename = getattr(args[0], "co_filename", "?")
        if not filename.endswith(".py"):
            _GUARD["seen"].append(f"exec of code from {filename!r}")
            raise RuntimeError("audit guard: code execution blocked")
    elif event == "open":
        path, mode, flags = (*args, None, None, None)[:3]
        if isinstance(mode, str):
            writing = any(c in mode for c in "wax+")
        else:
            writing = isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing:
            _GUARD["seen"].append(f"open {path!r} for writing")
            raise RuntimeError("audit guard: write blocked")
    elif event.startswith(_FORBIDDEN_PREFIXES):
        _GUARD["seen"].append(f"{event} {args!r:.80}")
        raise RuntimeError(f"audit guard: {event} blocked")


sys.addaudithook(_audit)  # hooks cannot be removed; it does nothing while the guard is inactive


@contextlib.contextmanager
def executes_nothing():
    """Fail the test if the body executes code, starts a process, writes or deletes a file."""
    _GUARD["seen"] = []
    _GUARD["active"] = True
    try:
        yield
    finally:
        _GUARD["active"] = False
    assert _GUARD["seen"] == [], _GUARD["seen"]


# ------------------------------------------------------------------------------------------------
# 1. hostile model files: file -> (dotted key or None when the file as a whole is bad, rule regex)

HOSTILE_MODEL_FILES = {
    # -- the file itself
    "toml_syntax_error.toml": (
        None,
        r"not valid TOML: Expected '\]' at the end of a table declaration \(at line 2",
    ),
    "toml_duplicate_key.toml": (None, r"not valid TOML: Cannot overwrite a value"),
    "toml_duplicate_table.toml": (None, r"not valid TOML: Cannot declare \('parameters',\) twice"),
    "utf8_bom.toml": (None, r"byte-order mark \(BOM\).*save the file as UTF-8 without BOM"),
    "latin1_encoded.toml": (None, r"not UTF-8 text: 'utf-8' codec can't decode byte 0xe9"),
    "utf16_encoded.toml": (None, r"not UTF-8 text: 'utf-8' codec can't decode byte 0xff in position 0"),
    "binary_garbage.toml": (None, r"not UTF-8 text"),
    "toml_nested_arrays.toml": (None, r"not valid TOML: arrays or tables are nested too deeply"),
    "integer_5000_digits.toml": (None, r"not valid TOML: Exceeds the limit \(4300 digits\)"),
    "integer_400_digits.toml": (
        "parameters.CL",
        r"value must be a finite number, got an integer of 401 digits",
    ),
    # -- code-execution attempts in expressions
    "import_os_system.toml": ("flows[0].rate", r"names with double underscores are not allowed"),
    "dunder_subclasses.toml": ("flows[0].rate", r"names with double underscores are not allowed"),
    "dunder_builtins.toml": ("flows[0].rate", r"names with double underscores are not allowed"),
    "attribute_access.toml": ("flows[0].rate", r"attribute access \(x\.y\) not allowed"),
    "lambda.toml": ("flows[0].rate", r"lambda functions not allowed"),
    "lambda_call.toml": (
        "flows[0].rate",
        r"only the functions exp, log, log10, sqrt, abs, min, max can be called",
    ),
    "list_comprehension.toml": ("flows[0].rate", r"comprehensions not allowed"),
    "generator_expression.toml": ("flows[0].rate", r"generator expressions not allowed"),
    # braces are index placeholders in model files: the f-string is refused as an index expression
    "f_string.toml": ("flows[0]", r"index expression \{open\('PWNED', 'w'\)\} may only use integers"),
    "eval_call.toml": ("flows[0].rate", r"the function 'eval' is not allowed"),
    "exec_call.toml": ("flows[0].rate", r"the function 'exec' is not allowed"),
    "open_call.toml": ("flows[0].rate", r"the function 'open' is not allowed"),
    "getattr_call.toml": ("flows[0].rate", r"the function 'getattr' is not allowed"),
    "walrus.toml": ("flows[0].rate", r"assignment expressions \(:=\) not allowed"),
    "statement_injection.toml": ("flows[0].rate", r"syntax error: invalid syntax"),
    "newline_injection.toml": ("flows[0].rate", r"syntax error: invalid syntax"),
    "fullwidth_dunder.toml": (
        "flows[0].rate",
        r"the character '＿' \(U\+FF3F\) is not allowed: expressions are ASCII",
    ),
    "lookalike_name.toml": ("flows[0].rate", r"the character 'Ｃ' \(U\+FF23\) is not allowed"),
    "comparison_is.toml": ("flows[0].rate", r"the comparison 'Is' is not allowed; use < <= > >= == !="),
    # -- enormous exponents and expressions
    "power_tower.toml": ("flows[0].rate", r"the constant 10\*\*10000000000\.0+ is out of range"),
    "huge_literal.toml": ("flows[0].rate", r"the number inf is out of range"),
    "exp_overflow.toml": (
        "flows[0].rate",
        r"the constant exp\(1000\) is not a finite number within \|x\| <= 1e\+100",
    ),
    "product_overflow.toml": ("flows[0].rate", r"the constant 1e100\*1e100 is not a finite number"),
    "exponent_too_large.toml": ("flows[0].rate", r"the exponent 150 is too large \(\|exponent\| <= 100\)"),
    "nested_too_deep.toml": ("flows[0].rate", r"nested too deeply \(more than 60 levels\)"),
    "too_long.toml": ("flows[0].rate", r"longer than 10000 characters; split it into derived quantities"),
    "too_many_nodes.toml": ("flows[0].rate", r"too large \(more than 5000 elements\)"),
    "sqrt_negative.toml": ("flows[0].rate", r"the constant sqrt\(-1\) is not a real number"),
    "log_zero.toml": ("flows[0].rate", r"the constant log\(0\) is not a finite number"),
    "division_by_zero.toml": ("flows[0].rate", r"division by zero"),
    "index_range_product.toml": ("compartments.A{a}_{b}_{c}", r"expand to more than 10000 copies"),
    "nested_sums.toml": ("flows[0]", r"expand to more than 10000 terms"),
    "index_huge_product.toml": (
        "compartments.A{n}",
        r"cannot expand the index placeholders: Exceeds the limit",
    ),
    "index_nested_too_deep.toml": (
        "compartments.A{n}",
        r"cannot expand the index placeholders: maximum recursion",
    ),
    "index_range_too_long.toml": ("compartments.A{n}.for.n", r"must be increasing and at most 1000 long"),
    # -- names
    "unknown_name.toml": ("flows[0].rate", r"unknown name 'UNKNOWN'; declare it as a parameter"),
    "misspelt_name.toml": ("flows[0].rate", r"unknown name 'CLL'; did you mean CL\?"),
    "cyclic_derived.toml": ("derived.A", r"'A' is defined in terms of itself \(a cycle through A, B\)"),
    "self_referencing_derived.toml": ("derived.KEL", r"'KEL' is defined in terms of itself"),
    "flow_to_undeclared.toml": ("flows[0].to", r"'to' names 'NOWHERE', which is not a declared compartment"),
    "flow_from_undeclared.toml": (
        "flows[0].from",
        r"'from' names 'GHOST', which is not a declared compartment",
    ),
    "duplicated_name.toml": ("compartments.CL", r"'CL' is declared twice \(first as parameters\.CL\)"),
    "name_with_newline.toml": ("parameters.CL2\n", r"'CL2\n' is not a valid name"),
    "reserved_name.toml": ("compartments.t", r"'t' is a reserved word"),
    "keyword_name.toml": ("parameters.lambda", r"'lambda' is a reserved word"),
    # -- units
    "missing_unit_parameter.toml": ("parameters.CL", r"missing required field\(s\) unit"),
    "missing_unit_compartment.toml": ("compartments.CENT", r"missing required field\(s\) unit"),
    "missing_unit_output.toml": ("outputs.CP", r"missing required field\(s\) unit"),
    "unknown_unit.toml": ("parameters.CL", r"unknown unit symbol 'furlong'"),
    "unit_injection.toml": ("parameters.CL", r"cannot read unit \"__import__\('os'\)\" at position 0"),
    "inconsistent_rate_unit.toml": ("flows[0].rate", r"has unit 'L/h\*mg' but '0\.001 g/h' is required"),
    "inconsistent_sum.toml": ("flows[0].rate", r"unit mismatch in a sum: '0\.001 g/h' and 'L/h'"),
    "dimensional_exp.toml": (
        "flows[0].rate",
        r"the argument of exp\(\) must be dimensionless but has unit 'mg'",
    ),
    "output_wrong_quantity.toml": ("outputs.CP", r"declared in 'mg', which measures a different quantity"),
    "flow_between_units.toml": ("flows[0]", r"connects compartments with different units \(mg and nmol\)"),
    "derived_wrong_unit.toml": ("derived.KEL", r"differ by a factor 0\.0166667"),
    "time_unit_minutes.toml": ("model.time_unit", r"time is always in hours"),
    # -- values and bounds
    "bounds_exclude_value.toml": ("parameters.CL", r"value 1 lies outside its bounds \[2, 100\]"),
    "bounds_reversed.toml": ("parameters.CL.bounds", r"bounds \[100, 0\] must have lower < upper"),
    "bounds_nan.toml": ("parameters.CL.bounds", r"bounds \[nan, 100\] must have lower < upper"),
    "value_infinite.toml": ("parameters.V", r"value must be finite, got inf"),
    "covariate_nan.toml": ("covariates.WT", r"value must be finite, got nan"),
    "value_is_text.toml": ("parameters.CL", r"value must be a number, got '1\.0'"),
    "molar_mass_negative.toml": ("compartments.CENT.molar_mass", r"molar_mass \(g/mol\) must be > 0"),
    "unknown_section.toml": (None, r"unknown section\(s\) modle"),
    "unknown_field.toml": ("parameters.V", r"unknown field\(s\) 'colour'"),
    "no_compartments.toml": ("compartments", r"a model needs at least one compartment"),
}


def test_hostile_corpus_is_complete_and_large_enough():
    on_disk = {p.name for p in HOSTILE.glob("*.toml")}
    assert on_disk == set(HOSTILE_MODEL_FILES)  # every file has an expectation and vice versa
    assert len(on_disk) >= 30


@pytest.mark.parametrize("name", sorted(HOSTILE_MODEL_FILES))
def test_hostile_model_file_is_refused_naming_file_key_and_rule(name, tmp_path, monkeypatch):
    key, rule = HOSTILE_MODEL_FILES[name]
    path = HOSTILE / name
    monkeypatch.chdir(tmp_path)  # payloads write relative paths ('PWNED'): they would land here
    with executes_nothing(), pytest.raises(pk.ModelFileError) as info:
        pk.load_model(path)
    error = info.value
    message = str(error)
    assert error.file == str(path) and message.startswith(str(path))
    assert error.key == key
    if key is not None:
        assert message.startswith(f"{path}, key '{key}': ")
    assert re.search(rule, message), message
    assert list(tmp_path.iterdir()) == []


def test_shipped_models_load_under_the_guard():
    # the guard does not cry wolf: loading every shipped model executes no code object of its own
    names = [name for name, _ in list_models()]
    assert len(names) >= 10
    for name in names:
        pk.load_model(name)  # first load: lazy imports happen outside the guard
    with executes_nothing():
        for name in names:
            assert pk.load_model(name).state_names


def _model_with_rate(rate: str) -> str:
    # a TOML basic string: json.dumps escapes quotes, backslashes and control characters as TOML does
    return (
        '[parameters]\nCL = { value = 1.0, unit = "L/h" }\nV = { value = 10.0, unit = "L" }\n'
        '[compartments]\nCENT = { unit = "mg", dose = true }\n'
        f'[[flows]]\nfrom = "CENT"\nrate = {json.dumps(rate)}\n'
    )


def test_a_live_file_creating_payload_creates_nothing_when_loaded(tmp_path):
    target = tmp_path / "created_by_payload"
    payload = f"__import__('pathlib').Path({str(target)!r}).touch()"
    # control: the payload is live — sympy.sympify, which evaluates its text, creates the file (run in
    # a subprocess so that this process never executes it)
    subprocess.run(
        [sys.executable, "-c", f"import sympy; sympy.sympify({payload!r})"],
        check=True,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
        timeout=120,
    )
    assert target.exists()
    target.unlink()
    wrapped = [
        payload,
        f"CL/V*CENT + 0*({payload})",
        f"exec({payload!r})",
        f"eval({payload!r})",
        f"[{payload} for _ in (1,)]",
        f"(lambda: {payload})()",
        f"min(({payload} for _ in (1,)), CL)",
        payload.replace("__import__", "\uff3f\uff3fimport\uff3f\uff3f"),
    ]
    for k, rate in enumerate(wrapped):
        path = tmp_path / f"evil{k}.toml"
        path.write_text(_model_with_rate(rate), encoding="utf-8")
        with executes_nothing(), pytest.raises(pk.ModelFileError) as info:
            pk.load_model(path)
        # refused by the expression checker, not by the TOML reader: the payload reached the parser
        assert info.value.key == "flows[0].rate", str(info.value)
        assert not target.exists()


# ------------------------------------------------------------------------------------------------
# 1b. property: grammar-generated expressions parse to what they mean; any accepted text is finite

VALUES = {"CL": 1.3, "V": 2.7, "A": 0.6}
SYMBOLS = {name: sympy.Symbol(name) for name in VALUES}


def _combine(children):
    """One level of the grammar over (text, value, scale) triples.

    The value is computed here with Python floats, independently of the parser; ``scale`` is the
    largest magnitude met on the way, which bounds the rounding error of that float computation.
    """
    unary = st.sampled_from(["neg", "exp", "sqrt", "log", "log10", "abs", "square", "root"])
    binary = st.sampled_from(["+", "-", "*", "/", "min", "max", "if"])

    def one(op, a):
        text, value, scale = a
        squashed = f"({text})/(abs({text}) + 1)"  # in (-1, 1): keeps exp and powers finite
        small = value / (abs(value) + 1)
        text, value = {
            "neg": (f"-({text})", -value),
            "exp": (f"exp({squashed})", math.exp(small)),
            "sqrt": (f"sqrt(abs({text}))", math.sqrt(abs(value))),
            "log": (f"log(abs({text}) + 1)", math.log(abs(value) + 1)),
            "log10": (f"log10(abs({text}) + 1)", math.log10(abs(value) + 1)),
            "abs": (f"abs({text})", abs(value)),
            "square": (f"({squashed})^2", small**2),
            "root": (f"(abs({text}) + 1)**0.5", (abs(value) + 1) ** 0.5),
        }[op]
        return text, value, max(scale, abs(value))

    def two(op, a, b):
        (ta, va, sa), (tb, vb, sb) = a, b
        if op in "+-*":
            text, value = f"({ta}) {op} ({tb})", {"+": va + vb, "-": va - vb, "*": va * vb}[op]
        elif op == "/":
            text, value = f"({ta})/(abs({tb}) + 1)", va / (abs(vb) + 1)
        elif op in ("min", "max"):
            text, value = f"{op}({ta}, {tb})", (min if op == "min" else max)(va, vb)
        else:
            text, value = f"(({ta}) if ({ta}) < ({tb}) else ({tb}))", va if va < vb else vb
        return text, value, max(sa, sb, abs(value))

    return st.one_of(st.builds(one, unary, children), st.builds(two, binary, children, children))


LEAVES = st.one_of(
    st.sampled_from(sorted(VALUES)).map(lambda n: (n, VALUES[n], VALUES[n])),
    st.sampled_from([0.5, 1, 2, 3.25, 7]).map(lambda x: (repr(x), float(x), float(x))),
)
GRAMMAR = st.recursive(LEAVES, _combine, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(GRAMMAR)
def test_grammar_generated_expressions_parse_to_their_value(item):
    text, expected, scale = item
    try:
        expr = parse_expression(text, SYMBOLS)
    except ExpressionError as exc:
        # only the size limits may refuse a well-formed expression of the grammar
        assert re.search(r"nested too deeply|too large|longer than", str(exc)), (text, str(exc))
        return
    got = complex(sympy.N(expr.subs({SYMBOLS[n]: v for n, v in VALUES.items()}), 30))
    assert got.imag == 0
    assert math.isclose(got.real, expected, rel_tol=1e-9, abs_tol=1e-12 * scale), (text, got, expected)


TOKENS = ["CL", "V", "t", "exp(", "log(", "sqrt(", "min(", "max(", "(", ")", "+", "-", "*", "/", "**"]
TOKENS += ["^", "<", " if ", " else ", "0", "1", "0.5", "1e99", "1e100", "10", ",", "-1", "abs("]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14).map("".join))
def test_accepted_expressions_hold_only_finite_real_constants(text):
    try:
        expr = parse_expression(text, {"CL": SYMBOLS["CL"], "V": SYMBOLS["V"]})
    except ExpressionError:
        return
    assert not expr.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan, sympy.I), (text, expr)
    for atom in expr.atoms(sympy.Number):
        assert math.isfinite(float(atom)) and abs(float(atom)) <= 1e100, (text, atom)


# Found by fuzzing the parser while writing these tests: before the fix each raised TypeError from sympy
# (a comparison used as a number), was accepted with an infinite, complex or overflowing constant, or
# (the last) was a SyntaxWarning printed to stderr and accepted.
PARSER_REGRESSIONS = [
    ("CL*(CL < 1)", r"a comparison \(true or false\) is not a number"),
    ("-(CL < 1)", r"a comparison \(true or false\) is not a number"),
    ("exp(CL < 1)", r"a comparison \(true or false\) is not a number"),
    ("(CL < 1) < 2", r"a comparison \(true or false\) is not a number"),
    ("CL if CL < 1 else CL < 2", r"a comparison \(true or false\) is not a number"),
    ("1e100*CL*1e100", r"folds its numbers into the constant 1\.0+E\+200"),
    ("CL*1e100/1e-100", r"folds its numbers into the constant"),
    ("exp(exp(exp(exp(1))))*CL", r"the constant exp\(exp\(exp\(exp\(1\)\)\)\) is not a finite number"),
    ("CL*sqrt(-1)", r"the constant sqrt\(-1\) is not a real number"),
    ("CL*log(0)", r"the constant log\(0\) is not a finite number"),
    ("CL in V", r"the comparison 'In' is not allowed"),
    ("1if CL < 1 else 2", r"syntax error: invalid decimal literal"),
]


@pytest.mark.parametrize(("text", "rule"), PARSER_REGRESSIONS)
def test_parser_regressions_raise_expression_error(text, rule):
    with pytest.raises(ExpressionError, match=rule):
        parse_expression(text, {"CL": SYMBOLS["CL"], "V": SYMBOLS["V"]})


# ------------------------------------------------------------------------------------------------
# 2. datasets: the corpus is tests/test_data.py (CASES) and tests/test_data_properties.py; these are the
# holes found while auditing it for this issue


def test_a_column_of_only_true_false_words_is_not_read_as_one_and_zero(tmp_path):
    from pkmodel.data import read_dataset
    from pkmodel.errors import DatasetError

    # pandas reads a column holding only True/False words as booleans; before the fix AMT 'True' was
    # silently a dose of 1 (and a covariate of TRUE/false became 1.0/0.0)
    path = tmp_path / "data.csv"
    path.write_text("ID,TIME,AMT,DV\n1,0,True,.\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 2: AMT value 'True' is not a number"):
        read_dataset(path)
    path.write_text("ID,TIME,AMT,DV,SEX\n1,0,100,.,TRUE\n1,1,.,5,false\n", encoding="utf-8")
    assert read_dataset(path).records["SEX"].tolist() == ["TRUE", "false"]  # kept as written


def test_many_covariate_columns_are_read_without_warnings(tmp_path):
    from pkmodel.data import read_dataset

    # before the fix each covariate column was inserted on its own: from about 100 columns on pandas
    # warned that the frame was fragmented (an error under this test suite's warning filter)
    names = [f"C{i}" for i in range(300)]
    path = tmp_path / "wide.csv"
    path.write_text(
        "ID,TIME,AMT,DV," + ",".join(names) + "\n"
        "1,0,100,.," + ",".join(str(i) for i in range(300)) + "\n"
        "1,1,.,5," + ",".join(str(i) for i in range(300)) + "\n",
        encoding="utf-8",
    )
    records = read_dataset(path).records
    assert records[names].iloc[1].tolist() == list(range(300))


# ------------------------------------------------------------------------------------------------
# 3. numerical faults


def test_stiff_model_is_solved_to_its_closed_form():
    # dA/dt = -K A² with K = 1e4 /(mg·h): A(t) = A0/(1 + K·A0·t), falling from 1 mg by 4 decades in
    # 1 h and by 7 in 1000 h (time scales 1e-4 h to 1e3 h: stiff for an explicit solver)
    stiff = {
        "parameters": {"K": {"value": 1.0e4, "unit": "1/(mg*h)"}},
        "compartments": {"A": {"unit": "mg", "dose": True}},
        "flows": [{"from": "A", "rate": "K*A*A"}],
        "outputs": {"AMOUNT": {"expr": "A", "unit": "mg"}},
    }
    times = np.array([0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0])
    result = pk.simulate(pk.load_model(stiff), pk.parse_regimen("1 mg once"), times)
    assert result.ok and result.engine == "ode"
    # tolerance: the solver's defaults are rtol 1e-8 and atol 1e-10 mg; allow 1000x and 10x of them
    np.testing.assert_allclose(
        result.output("AMOUNT")[:, 0], 1.0 / (1.0 + 1.0e4 * times), rtol=1e-5, atol=1e-9
    )


@pytest.mark.parametrize("engine", ["exact", "ode"])
def test_negative_amounts_from_either_engine_are_reported(engine):
    # a zero-order outflow of 1 mg/h with no floor: 1 mg is gone at 1 h and A(2 h) = -1 mg exactly
    leaky = {
        "parameters": {"R": {"value": 1.0, "unit": "mg/h"}},
        "compartments": {"A": {"unit": "mg", "dose": True}},
        "flows": [{"from": "A", "rate": "R"}],
    }
    result = pk.simulate(pk.load_model(leaky), pk.parse_regimen("1 mg once"), [0.0, 2.0], engine=engine)
    assert not result.ok
    assert re.search(r"compartment A went negative \(-1 at t=2 h", result.warnings[0])
    assert "tighten rtol/atol or check the model's rates and parameters" in result.warnings[0]


FIT_SPEC = """\
[fit]
model = "one_compartment_iv"
data = "data.csv"
method = "{method}"
seed = 7

[parameters.CL]
theta = 0.5
bounds = [0.01, {cl_upper}]
{eta}
[parameters.V]
theta = 8
bounds = [1, 100]

[residual.CP]
model = "proportional"
proportional = 0.1
{extra}"""


@pytest.fixture(scope="module")
def fit_folder(tmp_path_factory):
    """Three subjects after 100 mg IV: C = (100/10)·exp(-CL_i/10·t) mg/L, CL_i = exp(η_i) L/h, 5 % noise."""
    folder = tmp_path_factory.mktemp("fit")
    rng = np.random.default_rng(4)
    rows = []
    for subject in (1, 2, 3):
        cl = math.exp(rng.normal(0.0, 0.2))
        rows.append({"ID": subject, "TIME": 0.0, "AMT": 100.0, "EVID": 1, "MDV": 1, "DV": "."})
        for t in (0.5, 1, 2, 4, 8, 12, 24):
            dv = 10.0 * math.exp(-cl / 10.0 * t) * math.exp(rng.normal(0.0, 0.05))
            rows.append({"ID": subject, "TIME": t, "AMT": ".", "EVID": 0, "MDV": 0, "DV": round(dv, 4)})
    pd.DataFrame(rows).to_csv(folder / "data.csv", index=False)
    return folder


def _spec(folder: Path, name: str, method="individual", cl_upper=10, eta="", extra="") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(FIT_SPEC.format(method=method, cl_upper=cl_upper, eta=eta, extra=extra), encoding="utf-8")
    return path


POPULATION = {"method": "foce-i", "eta": "eta = true", "extra": "[omega.init]\nCL = 0.05\n"}


def test_individual_fit_at_a_bound_is_not_a_success(fit_folder):
    # subject 1's CL (about 0.88 L/h unbounded) is pushed onto the upper bound 0.8
    run = run_fit(_spec(fit_folder, "ind_bound", cl_upper=0.8))
    assert run.result[1].estimates["CL"] == 0.8
    assert run.status == "covariance-failed" and not run.success
    assert "covariance step FAILED" in run.status_message and "ID(s) 1" in run.status_message
    assert "a parameter at a bound" in run.result[1].covariance.message


def test_population_fit_at_a_bound_is_not_a_success(fit_folder):
    # the typical CL (about 0.75 L/h unbounded) is pushed onto the upper bound 0.6
    run = run_fit(_spec(fit_folder, "pop_bound", cl_upper=0.6, **POPULATION))
    assert run.result.theta["CL"] == pytest.approx(0.6, rel=1e-5)
    assert run.status == "covariance-failed" and not run.success
    assert "a parameter at a bound" in run.status_message


def test_estimate_on_a_bound_is_named_in_the_status_without_covariance_step(fit_folder):
    run = run_fit(_spec(fit_folder, "ind_bound_nocov", cl_upper=0.8, extra="[options]\ncovariance = false\n"))
    assert run.result[1].estimates["CL"] == 0.8 and not run.success
    text = run.status_message + " " + " ".join(run.notes)
    assert re.search(r"\bCL\b.*\bupper bound\b.*0\.8", text), text


def test_population_estimate_on_a_bound_is_named_in_the_status(fit_folder):
    run = run_fit(_spec(fit_folder, "pop_bound_named", cl_upper=0.6, **POPULATION))
    assert re.search(r"\bCL\b[^;]*\bupper bound\b[^;]*0\.6", run.status_message), run.status_message


def test_fit_that_does_not_converge_says_so_everywhere(fit_folder, tmp_path):
    extra = POPULATION["extra"] + "[options]\nmax_iterations = 1\n"
    spec = _spec(fit_folder, "pop_maxit", **{**POPULATION, "extra": extra})
    run = run_fit(spec, out_dir=tmp_path / "res")
    assert not run.result.converged
    assert run.status == "not-converged" and not run.success
    assert run.status_message.startswith("estimation did NOT converge: Maximum number of iterations")
    written = json.loads((tmp_path / "res" / "results.json").read_text(encoding="utf-8"))
    assert (written["status"], written["status_message"]) == (run.status, run.status_message)
    assert "status: not-converged" in (tmp_path / "res" / "parameters.txt").read_text(encoding="utf-8")


def test_fit_that_does_not_converge_gives_the_fix(fit_folder):
    extra = POPULATION["extra"] + "[options]\nmax_iterations = 1\n"
    run = run_fit(_spec(fit_folder, "pop_maxit_fix", **{**POPULATION, "extra": extra}))
    assert "max_iterations" in run.status_message


# ------------------------------------------------------------------------------------------------
# 4. results never lost


def _tree(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _sections(title: str, n_tables: int = 2, n_rows: int = 10) -> list[Section]:
    frame = pd.DataFrame({"x": np.arange(n_rows, dtype=float), "y": np.arange(n_rows) * 0.5})
    return [Section(title, (f"{title} text",), [Table(f"t{i}", f"T{i}", frame) for i in range(n_tables)])]


# The child writes a large report (8 tables of 20 000 rows) over an existing one with force=True, and
# stops for good in the middle: after the second table is in the temporary folder, it says so and sleeps.
_KILLED_REPORT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np, pandas as pd
    import pkmodel.report as report

    target, ready = sys.argv[1], Path(sys.argv[2])
    original = report.format_table
    calls = []

    def format_then_stall(table):
        calls.append(table.name)
        if len(calls) == 3:
            ready.write_text("mid-write", encoding="utf-8")
            time.sleep(600)
        return original(table)

    report.format_table = format_then_stall
    frame = pd.DataFrame({"x": np.arange(20_000, dtype=float), "y": np.arange(20_000) * 0.5})
    items = [report.Table(f"t{i}", f"T{i}", frame) for i in range(8)]
    report.write_report(target, "Second", [report.Section("S", (), items)], force=True)
    """
)


def _kill_when_ready(args: list[str], ready: Path, timeout: float = 120.0) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", *args], env=dict(os.environ, OPENBLAS_NUM_THREADS="1"), stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if child.poll() is not None:
                raise AssertionError(f"the child ended before the kill: {child.stderr.read().decode()}")
            assert time.monotonic() < deadline, "the child never reached the middle of the write"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()


def test_report_killed_mid_write_leaves_the_previous_report_intact(tmp_path):
    target = tmp_path / "report"
    write_report(target, "First", _sections("First"), provenance={"seed": 1})
    before = _tree(target)
    _kill_when_ready([_KILLED_REPORT, str(target), str(tmp_path / "ready")], tmp_path / "ready")
    assert _tree(target) == before  # byte for byte
    # the kill happened mid-write: the hidden temporary folder holds the two finished tables
    (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith(".report.tmp-")]
    assert sorted(p.name for p in (partial / "tables").iterdir()) == ["t0.csv", "t1.csv"]
    assert not (partial / "report.html").exists()
    # the next write is not disturbed by the leftover, and replaces the report only with force
    with pytest.raises(PkmodelError, match="never overwrites"):
        write_report(target, "Third", _sections("Third"))
    write_report(target, "Third", _sections("Third"), force=True)
    assert "Third" in (target / "report.html").read_text(encoding="utf-8")


def test_report_failure_between_the_two_renames_puts_the_previous_report_back(tmp_path, monkeypatch):
    target = tmp_path / "report"
    write_report(target, "First", _sections("First"))
    before = _tree(target)
    real_replace = os.replace
    calls = []

    def replace_fails_second_time(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the new folder cannot be moved into place (e.g. a full or read-only disk)
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_fails_second_time)
    with pytest.raises(OSError, match="No space left"):
        write_report(target, "Second", _sections("Second"), force=True)
    monkeypatch.undo()
    assert calls[0][0] == "report" and calls[1][1] == "report"  # old moved aside, new one refused
    assert _tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary or old folder left


@pytest.fixture(scope="module")
def small_run(fit_folder):
    return run_fit(_spec(fit_folder, "ind_ok"), command_line="pkmodel fit ind_ok.toml --out res")


def test_fit_results_carry_provenance(small_run, fit_folder, tmp_path):
    from importlib.metadata import version

    folder = small_run.write(tmp_path / "res", plots=False)
    written = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    sha = {
        name: hashlib.sha256((fit_folder / name).read_bytes()).hexdigest()
        for name in ("ind_ok.toml", "data.csv")
    }
    model_file = pk.load_model("one_compartment_iv").file
    assert written["spec"]["sha256"] == sha["ind_ok.toml"]
    assert written["data"]["sha256"] == sha["data.csv"]
    assert written["model"]["sha256"] == hashlib.sha256(Path(model_file).read_bytes()).hexdigest()
    assert written["seed"] == 7
    assert written["command_line"] == "pkmodel fit ind_ok.toml --out res"
    assert written["versions"]["pkmodel"] == version("pkmodel")
    assert written["status"] == "success"


def test_fit_results_never_overwritten_and_a_failed_write_keeps_them(small_run, tmp_path, monkeypatch):
    target = small_run.write(tmp_path / "res", plots=False)
    (target / "marker.txt").write_text("first results", encoding="utf-8")
    before = _tree(target)
    with pytest.raises(PkmodelError, match=r"already exists; use --force \(force=True\) to replace it"):
        small_run.write(target, plots=False)
    real_to_csv = pd.DataFrame.to_csv

    def to_csv_fails_on_predictions(frame, path=None, *args, **kwargs):
        if path is not None and Path(path).name == "predictions.csv":
            raise OSError(28, "No space left on device")
        return real_to_csv(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv_fails_on_predictions)
    with pytest.raises(OSError, match="No space left"):
        small_run.write(target, force=True, plots=False)
    monkeypatch.undo()
    assert _tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    small_run.write(target, force=True, plots=False)
    assert not (target / "marker.txt").exists() and (target / "results.json").exists()


_KILLED_FIT_WRITE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import pandas as pd
    import pkmodel.fitting as fitting

    spec, target, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    run = fitting.run_fit(spec)
    real_to_csv = pd.DataFrame.to_csv

    def to_csv_then_stall(frame, path=None, *args, **kwargs):
        out = real_to_csv(frame, path, *args, **kwargs)
        if path is not None and Path(path).name == "individual_parameters.csv":
            ready.write_text("mid-write", encoding="utf-8")
            time.sleep(600)
        return out

    pd.DataFrame.to_csv = to_csv_then_stall
    run.write(target, force=True, plots=False)
    """
)


def test_fit_write_killed_mid_write_leaves_the_previous_results_intact(small_run, fit_folder, tmp_path):
    target = small_run.write(tmp_path / "res", plots=False)
    before = _tree(target)
    spec = fit_folder / "ind_ok.toml"
    _kill_when_ready([_KILLED_FIT_WRITE, str(spec), str(target), str(tmp_path / "ready")], tmp_path / "ready")
    assert _tree(target) == before
    (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith(".res.tmp-")]
    assert "individual_parameters.csv" in {p.name for p in partial.iterdir()}


def test_comparison_report_records_the_command_line(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import pkmodel._compare_report as compare_report
    from pkmodel.compare import Comparison

    monkeypatch.setattr(compare_report, "build_sections", lambda comparison: _sections("Comparison"))
    scenario = SimpleNamespace(title="T", banner="")
    comparison = Comparison(scenario, {}, {"seed": 3, "scenario_sha256": "ab"})
    comparison.write(tmp_path / "a", command_line="pkmodel compare s.toml")
    provenance = json.loads((tmp_path / "a" / "provenance.json").read_text(encoding="utf-8"))
    assert provenance == {"seed": 3, "scenario_sha256": "ab", "command_line": "pkmodel compare s.toml"}
    monkeypatch.setattr(sys, "argv", ["pkmodel", "compare", "my scenario.toml"])
    comparison.write(tmp_path / "b")
    provenance = json.loads((tmp_path / "b" / "provenance.json").read_text(encoding="utf-8"))
    assert provenance["command_line"] == "pkmodel compare 'my scenario.toml'"


# ------------------------------------------------------------------------------------------------
# 5. the counts written in docs/reliability.md


def _counts() -> dict[str, int]:
    import test_data
    import test_model_files

    return {
        "hostile model files (tests/data/hostile/models)": len(HOSTILE_MODEL_FILES),
        "hostile rate expressions (test_model_files.HOSTILE_RATES)": len(test_model_files.HOSTILE_RATES),
        "invalid model tables (test_model_files.HOSTILE_FILES)": len(test_model_files.HOSTILE_FILES),
        "malformed dataset kinds (test_data.CASES)": len(test_data.CASES),
        "distinct dataset rules in that corpus": len({case[3] for case in test_data.CASES}),
        "dataset regressions found by property tests (test_data.REGRESSIONS)": len(test_data.REGRESSIONS),
    }


def test_corpus_counts_in_the_doc_are_the_counted_ones():
    text = DOC.read_text(encoding="utf-8")
    counts = _counts()
    for label, count in counts.items():
        match = re.search(rf"^\| {re.escape(label)} \| (\d+) \|$", text, flags=re.MULTILINE)
        assert match, f"docs/reliability.md has no row '| {label} | N |'"
        assert int(match.group(1)) == count, f"{label}: the doc says {match.group(1)}, the corpus has {count}"
    assert counts["hostile model files (tests/data/hostile/models)"] >= 30
    assert counts["malformed dataset kinds (test_data.CASES)"] >= 40
