"""The expression language of model files: an allow-listed ``ast`` walk into sympy, with units.

Model files are data.  Their expressions are parsed with :func:`ast.parse` and every node is checked
against an allow-list before it becomes a sympy object; nothing is ever passed to ``eval``,
``sympify`` or ``parse_expr``.  The grammar is:

- numbers (``2``, ``0.5``, ``1e-3``), declared names, and ``t`` (time since the start, h);
- ``+ - * /``, powers ``**`` (``^`` is accepted as a synonym), unary ``-``;
- the functions ``exp``, ``log`` (natural), ``log10``, ``sqrt``, ``abs``, ``min``, ``max``;
- comparisons ``< <= > >= == !=``, ``and``, ``or``, ``not``, and ``A if CONDITION else B``
  (covariate switches such as ``0.8 if APGR < 5 else 1``).

When units are supplied, each sub-expression's unit is inferred: terms of a sum and both sides of a
comparison must measure the same quantity in the same scale, arguments of ``exp``/``log`` and
non-numeric exponents must be dimensionless.  A bare number is dimensionless, except that in a sum,
a comparison or ``min``/``max`` it takes the unit of the other side (so ``t > 24`` and ``C + 1``
read naturally).  Write covariate normalisations against a declared reference, e.g.
``(WT/WT_REF)^0.75`` with ``WT_REF`` a fixed parameter of 70 kg.

Examples
--------
>>> import sympy
>>> CL, V = sympy.symbols("CL V")
>>> parse_expression("CL/V*exp(-0.5)", {"CL": CL, "V": V})
0.606530659712633*CL/V
>>> parse_expression("__import__('os')", {})
Traceback (most recent call last):
...
pkmodel.errors.ExpressionError: names with double underscores are not allowed in model expressions
    __import__('os')
    ^
"""

from __future__ import annotations

import ast
import difflib
import math
import warnings
from collections.abc import Mapping
from fractions import Fraction

import sympy

from .errors import ExpressionError, UnitError
from .units import DIMENSIONLESS, Unit

__all__ = ["ALLOWED_FUNCTIONS", "TIME_SYMBOL", "parse_expression", "parse_expression_with_unit"]

TIME_SYMBOL = sympy.Symbol("t", real=True)

ALLOWED_FUNCTIONS = ("exp", "log", "log10", "sqrt", "abs", "min", "max")
MAX_LENGTH = 10_000
MAX_NODES = 5_000
MAX_DEPTH = 60
MAX_LITERAL = 1e100
MAX_CONSTANT_EXPONENT = 100.0

_GRAMMAR = (
    "allowed: numbers, declared names, t, + - * / ** (or ^), unary -, comparisons, and/or/not, "
    "'A if C else B', and the functions " + ", ".join(ALLOWED_FUNCTIONS)
)

_FORBIDDEN_NAMES = {
    ast.Attribute: "attribute access (x.y)",
    ast.Subscript: "indexing (x[i])",
    ast.Lambda: "lambda functions",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.JoinedStr: "f-strings",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.Starred: "starred arguments",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dictionaries",
    ast.Set: "sets",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}

Wild = None  # the unit of a bare number: adopts the unit of what it is added to or compared with


class _Walker:
    def __init__(
        self,
        text: str,
        names: Mapping[str, sympy.Basic],
        units: Mapping[str, Unit] | None,
        caret_shift: list[int],
    ):
        self.text = text
        self.source = text.replace("^", "**").strip()
        self.names = names
        self.units = units
        self.caret_shift = caret_shift
        self.nodes = 0

    # -- errors ---------------------------------------------------------------------------------
    def fail(self, message: str, node: ast.AST | None = None) -> ExpressionError:
        col = getattr(node, "col_offset", None)
        if col is not None:
            col -= sum(1 for p in self.caret_shift if p < col)
        return ExpressionError(message, self.text, col)

    # -- units ----------------------------------------------------------------------------------
    def same(self, what: str, node: ast.AST, *units: Unit | None) -> Unit | None:
        real = [u for u in units if u is not None]
        if not real:
            return Wild
        first = real[0]
        for other in real[1:]:
            if not first.same_dimension(other):
                raise self.fail(
                    f"unit mismatch in {what}: {first.describe()} and {other.describe()} measure different "
                    "quantities; convert one side (e.g. divide by a volume or multiply by a molar mass)",
                    node,
                )
            if not math.isclose(first.scale, other.scale, rel_tol=1e-12):
                raise self.fail(
                    f"unit mismatch in {what}: {first.describe()} and {other.describe()} differ by a factor "
                    f"{first.scale / other.scale:g}; multiply one side by that factor or use one unit",
                    node,
                )
        return first

    def dimensionless(self, what: str, node: ast.AST, unit: Unit | None) -> None:
        if unit is not None and not unit.dimensionless:
            raise self.fail(
                f"{what} must be dimensionless but has unit {unit.describe()}; divide by a reference value "
                "with the same unit (e.g. WT/WT_REF)",
                node,
            )

    # -- the walk -------------------------------------------------------------------------------
    def walk(self, node: ast.AST, depth: int = 0) -> tuple[sympy.Basic, Unit | None]:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(
                f"expression is too large (more than {MAX_NODES} elements); split it into derived quantities"
            )
        if depth > MAX_DEPTH:
            raise self.fail(f"expression is nested too deeply (more than {MAX_DEPTH} levels)", node)
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            label = _FORBIDDEN_NAMES.get(type(node))  # type: ignore[call-overload]
            if label is None:
                label = f"'{type(node).__name__}' syntax"
            raise self.fail(f"{label} not allowed in model expressions; {_GRAMMAR}", node)
        value, unit = method(node, depth + 1)
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Call)):
            self.check_constant(value, node)
        return value, unit

    def check_constant(self, value: sympy.Basic, node: ast.AST) -> None:
        """Refuse a constant sub-expression that is not a finite real number of moderate size.

        Every operand was checked before (literals and constant sub-expressions have ``|x| <= 1e100``), so
        the evaluation below is of one operation on bounded numbers: ``exp(1000)``, ``1e100*1e100``,
        ``log(0)`` or ``sqrt(-1)`` are caught here, where the operation is, before a model can carry an
        infinite, complex or overflowing constant into the numerics.
        """
        if not isinstance(value, sympy.Expr) or value.free_symbols:
            return
        if value.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
            number = complex("nan")
        else:
            try:
                number = complex(value.evalf(20))
            except (TypeError, ValueError, OverflowError):
                number = complex("nan")
        text = ast.get_source_segment(self.source, node) or str(value)
        if not (math.isfinite(number.real) and math.isfinite(number.imag)) or abs(number) > MAX_LITERAL:
            raise self.fail(
                f"the constant {text} is not a finite number within |x| <= {MAX_LITERAL:g} "
                "(it overflows, divides by zero or takes the log of 0); fix the formula",
                node,
            )
        if number.imag != 0:
            raise self.fail(
                f"the constant {text} is not a real number (a square root or power of a negative number); "
                "fix the formula",
                node,
            )

    def visit_Expression(self, node: ast.Expression, depth: int):
        return self.walk(node.body, depth)

    def visit_Constant(self, node: ast.Constant, depth: int):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"the literal {value!r} is not a number; only numbers are allowed", node)
        if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_LITERAL:
            raise self.fail(f"the number {value!r} is out of range (|x| <= {MAX_LITERAL:g})", node)
        if isinstance(value, int):
            return sympy.Integer(value), Wild
        return sympy.Float(value), Wild

    def visit_Name(self, node: ast.Name, depth: int):
        name = node.id
        if "__" in name:
            raise self.fail("names with double underscores are not allowed in model expressions", node)
        if name == "t":
            return TIME_SYMBOL, (Unit(1.0, _hour_dims(), "h") if self.units is not None else Wild)
        if name not in self.names:
            if name in ALLOWED_FUNCTIONS:
                raise self.fail(f"'{name}' is a function; call it, e.g. {name}(x)", node)
            close = difflib.get_close_matches(name, list(self.names), n=3)
            hint = (
                f"; did you mean {', '.join(close)}?"
                if close
                else "; declare it as a parameter, covariate, derived quantity, compartment or input"
            )
            raise self.fail(f"unknown name '{name}'{hint}", node)
        unit = self.units.get(name) if self.units is not None else Wild
        if self.units is not None and unit is None:
            raise self.fail(f"'{name}' has no unit", node)
        return self.names[name], unit

    def visit_UnaryOp(self, node: ast.UnaryOp, depth: int):
        value, unit = self.walk(node.operand, depth)
        if not isinstance(node.op, ast.Not):
            _as_number(self, value, node.operand)
        if isinstance(node.op, ast.USub):
            return -value, unit
        if isinstance(node.op, ast.UAdd):
            return value, unit
        if isinstance(node.op, ast.Not):
            return sympy.Not(_as_condition(self, value, node)), DIMENSIONLESS
        raise self.fail(f"the operator '{type(node.op).__name__}' is not allowed; {_GRAMMAR}", node)

    def visit_BinOp(self, node: ast.BinOp, depth: int):
        left, lu = self.walk(node.left, depth)
        right, ru = self.walk(node.right, depth)
        _as_number(self, left, node.left)
        _as_number(self, right, node.right)
        op = node.op
        if isinstance(op, (ast.Add, ast.Sub)):
            unit = self.same("a sum", node, lu, ru)
            return (left + right if isinstance(op, ast.Add) else left - right), unit
        if isinstance(op, ast.Mult):
            return left * right, _mul(lu, ru)
        if isinstance(op, ast.Div):
            if right.is_zero:
                raise self.fail("division by zero", node)
            return left / right, _div(lu, ru)
        if isinstance(op, ast.Pow):
            if right.has(sympy.Pow) and not right.is_Number:
                raise self.fail(
                    "power towers (a**b**c) are not allowed; compute the exponent as a derived quantity", node
                )
            if right.is_Number and left.is_Number:
                try:
                    value = float(left) ** float(right)
                except (OverflowError, ZeroDivisionError):
                    value = math.inf
                if isinstance(value, complex) or not math.isfinite(value) or abs(value) > MAX_LITERAL:
                    raise self.fail(
                        f"the constant {left}**{right} is out of range (|x| <= {MAX_LITERAL:g})", node
                    )
                return sympy.Float(value), Wild
            if right.is_Number:
                if lu is not None and not lu.dimensionless and not right.is_Integer:
                    raise self.fail(
                        f"a fractional power of a quantity in {lu.describe()}: the base must be dimensionless; "
                        "normalise it by a reference value with the same unit, e.g. (WT/WT_REF)^0.75",
                        node,
                    )
                if abs(float(right)) > MAX_CONSTANT_EXPONENT:
                    raise self.fail(
                        f"the exponent {right} is too large (|exponent| <= {MAX_CONSTANT_EXPONENT:g})", node
                    )
                if left.is_Number and float(left) == 0 and float(right) < 0:
                    raise self.fail("zero raised to a negative power", node)
                unit = None if lu is None else lu ** Fraction(float(right)).limit_denominator(1000)
                return sympy.Pow(left, right), unit
            self.dimensionless("a power's base with a non-numeric exponent", node, lu)
            self.dimensionless("an exponent", node, ru)
            return sympy.Pow(left, right), (
                DIMENSIONLESS if lu is not None or self.units is not None else Wild
            )
        raise self.fail(f"the operator '{type(op).__name__}' is not allowed; {_GRAMMAR}", node)

    def visit_Call(self, node: ast.Call, depth: int):
        if not isinstance(node.func, ast.Name):
            raise self.fail(f"only the functions {', '.join(ALLOWED_FUNCTIONS)} can be called", node)
        name = node.func.id
        if "__" in name:
            raise self.fail("names with double underscores are not allowed in model expressions", node)
        if name not in ALLOWED_FUNCTIONS:
            raise self.fail(
                f"the function '{name}' is not allowed; allowed functions: {', '.join(ALLOWED_FUNCTIONS)}",
                node,
            )
        if node.keywords:
            raise self.fail(f"keyword arguments are not allowed in {name}()", node)
        args = [self.walk(a, depth) for a in node.args]
        for (value, _), arg in zip(args, node.args, strict=True):
            _as_number(self, value, arg)
        if name in ("min", "max"):
            if len(args) < 2:
                raise self.fail(f"{name}() needs at least two arguments", node)
            unit = self.same(f"{name}()", node, *(u for _, u in args))
            fn = sympy.Min if name == "min" else sympy.Max
            return fn(*(a for a, _ in args)), unit
        if len(args) != 1:
            raise self.fail(f"{name}() takes exactly one argument, got {len(args)}", node)
        ((arg, unit),) = args
        if name == "abs":
            return sympy.Abs(arg), unit
        if name == "sqrt":
            return sympy.sqrt(arg), (None if unit is None else unit ** Fraction(1, 2))
        self.dimensionless(f"the argument of {name}()", node, unit)
        if name == "exp":
            return sympy.exp(arg), DIMENSIONLESS if self.units is not None else Wild
        if name == "log":
            return sympy.log(arg), DIMENSIONLESS if self.units is not None else Wild
        return sympy.log(arg, 10), DIMENSIONLESS if self.units is not None else Wild

    def visit_Compare(self, node: ast.Compare, depth: int):
        if len(node.ops) != 1:
            raise self.fail(
                "chained comparisons (a < b < c) are not allowed; write (a < b) and (b < c)", node
            )
        ops = {
            ast.Lt: sympy.StrictLessThan,
            ast.LtE: sympy.LessThan,
            ast.Gt: sympy.StrictGreaterThan,
            ast.GtE: sympy.GreaterThan,
            ast.Eq: sympy.Eq,
            ast.NotEq: sympy.Ne,
        }
        op = ops.get(type(node.ops[0]))  # type: ignore[call-overload]
        if op is None:
            raise self.fail(
                f"the comparison '{type(node.ops[0]).__name__}' is not allowed; use < <= > >= == !=", node
            )
        left, lu = self.walk(node.left, depth)
        right, ru = self.walk(node.comparators[0], depth)
        _as_number(self, left, node.left)
        _as_number(self, right, node.comparators[0])
        self.same("a comparison", node, lu, ru)
        return op(left, right), DIMENSIONLESS

    def visit_BoolOp(self, node: ast.BoolOp, depth: int):
        parts = [_as_condition(self, self.walk(v, depth)[0], v) for v in node.values]
        fn = sympy.And if isinstance(node.op, ast.And) else sympy.Or
        return fn(*parts), DIMENSIONLESS

    def visit_IfExp(self, node: ast.IfExp, depth: int):
        cond, _ = self.walk(node.test, depth)
        cond = _as_condition(self, cond, node.test)
        a, au = self.walk(node.body, depth)
        b, bu = self.walk(node.orelse, depth)
        _as_number(self, a, node.body)
        _as_number(self, b, node.orelse)
        unit = self.same("the two branches of 'A if C else B'", node, au, bu)
        return sympy.Piecewise((a, cond), (b, True)), unit


def _hour_dims():
    from .units import HOUR

    return HOUR.dims


def _as_condition(walker: _Walker, value, node):
    if isinstance(
        value,
        (
            sympy.core.relational.Relational,
            sympy.logic.boolalg.BooleanFunction,
            sympy.logic.boolalg.BooleanAtom,
        ),
    ):
        return value
    raise walker.fail("a condition must be a comparison (e.g. APGR < 5) or and/or/not of comparisons", node)


def _as_number(walker: _Walker, value, node):
    if isinstance(
        value,
        (
            sympy.core.relational.Relational,
            sympy.logic.boolalg.BooleanFunction,
            sympy.logic.boolalg.BooleanAtom,
        ),
    ):
        raise walker.fail(
            "a comparison (true or false) is not a number; write a switch as 'A if CONDITION else B'", node
        )
    return value


def _mul(a: Unit | None, b: Unit | None) -> Unit | None:
    if a is None and b is None:
        return Wild
    return (a or DIMENSIONLESS) * (b or DIMENSIONLESS)


def _div(a: Unit | None, b: Unit | None) -> Unit | None:
    if a is None and b is None:
        return Wild
    return (a or DIMENSIONLESS) / (b or DIMENSIONLESS)


def _prepare(text: str) -> tuple[ast.Expression, list[int]]:
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be text, got {type(text).__name__} {text!r}", str(text))
    if not text.strip():
        raise ExpressionError("empty expression; write a formula such as CL/V", text)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"expression is longer than {MAX_LENGTH} characters; split it into derived quantities",
            text[:80] + "...",
        )
    odd = next((i for i, ch in enumerate(text) if not ch.isascii()), None)
    if odd is not None:
        raise ExpressionError(
            f"the character {text[odd]!r} (U+{ord(text[odd]):04X}) is not allowed: expressions are ASCII "
            "(names are letters, digits and _; write * for ×, - for −)",
            text,
            odd,
        )
    shifts = [i for i, ch in enumerate(text) if ch == "^"]
    source = text.replace("^", "**")
    # positions in `source` where a '^' became '**' (used to map carets back to the text)
    caret_shift = [p + k for k, p in enumerate(shifts)]
    try:
        with warnings.catch_warnings():
            # '1if x else y' is a SyntaxWarning (an error in later Pythons): refuse it, whatever the filters
            warnings.simplefilter("error", SyntaxWarning)
            tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        col = (exc.offset or 1) - 1
        col -= sum(1 for p in caret_shift if p < col)
        raise ExpressionError(f"syntax error: {exc.msg}", text, max(col, 0)) from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ExpressionError(f"cannot parse expression: {exc}", text[:80]) from None
    for node in ast.walk(tree):  # refuse dunder names anywhere before looking at anything else
        ident = (
            node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        )
        if "__" in ident:
            col = node.col_offset - sum(1 for p in caret_shift if p < node.col_offset)
            raise ExpressionError(
                "names with double underscores are not allowed in model expressions", text, col
            )
    return tree, caret_shift


def parse_expression_with_unit(
    text: str, names: Mapping[str, sympy.Basic], units: Mapping[str, Unit] | None = None
) -> tuple[sympy.Expr, Unit | None]:
    """Parse ``text`` into a sympy expression and infer its unit.

    Parameters
    ----------
    text : str
        The expression as written in the model file.
    names : mapping of str to sympy object
        The declared names and what they stand for (symbols or already-parsed expressions).
    units : mapping of str to Unit, optional
        Units of the declared names; when given, units are checked and inferred.

    Returns
    -------
    expr : sympy.Expr
    unit : Unit or None
        The inferred unit; None when units were not given or the expression is a bare number.

    Raises
    ------
    ExpressionError
        The expression is outside the grammar, refers to an unknown name or mixes units; the message
        names the rule and shows the expression with a caret under the offending part.
    """
    tree, caret_shift = _prepare(text)
    walker = _Walker(text, names, units, caret_shift)
    try:
        expr, unit = walker.walk(tree)
    except RecursionError:
        raise ExpressionError(
            f"expression is nested too deeply (more than {MAX_DEPTH} levels)", text[:80]
        ) from None
    except UnitError as exc:
        raise ExpressionError(str(exc), text) from None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        # a combination sympy itself refuses; the contract is: the grammar's formula or ExpressionError
        raise ExpressionError(f"cannot be turned into a formula ({exc}); {_GRAMMAR}", text) from None
    # sympy folds constants across operations ((1e100*CL)*1e100 becomes 1e200*CL): check the result too
    for atom in expr.atoms(sympy.Number):
        if not (atom.is_real and atom.is_finite) or abs(float(atom)) > MAX_LITERAL:
            raise ExpressionError(
                f"the expression folds its numbers into the constant {atom}, which is not a finite number "
                f"within |x| <= {MAX_LITERAL:g}; fix the formula",
                text,
            )
    if expr.has(sympy.zoo, sympy.nan, sympy.I):
        raise ExpressionError("the expression has an infinite or complex constant; fix the formula", text)
    return expr, unit


def parse_expression(text: str, names: Mapping[str, sympy.Basic]) -> sympy.Expr:
    """Parse ``text`` into a sympy expression (no unit checks).

    See :func:`parse_expression_with_unit` for the grammar and errors.
    """
    return parse_expression_with_unit(text, names, None)[0]
