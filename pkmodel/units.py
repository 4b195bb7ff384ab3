"""Physical units: parsing, dimensional checks and conversion factors.

A unit is a scale factor times a product of powers of six base dimensions: mass (g), amount of
substance (mol), volume (L), time (h), length (m) and count (cells, with no SI size).  The scale is
relative to the base units ``g``, ``mol``, ``L``, ``h``, ``m``.  Units are written as in
pharmacometric tables: ``mg``, ``mg/kg``, ``L/h``, ``1/h``, ``µg/mL``, ``ng/mL``, ``nmol``,
``g/mol``, ``10^9/L``, ``µg·h/mL``, ``L/µmol``; ``1`` (or ``-``) is dimensionless.  Operators
``*`` (or ``·``) and ``/`` associate to the left, ``^N`` raises a factor to an integer power.

Examples
--------
>>> parse_unit("mg/L").factor_to(parse_unit("µg/mL"))
1.0
>>> round(parse_unit("nmol").factor_to(parse_unit("pmol")), 9)
1000.0
>>> parse_unit("ng/mL") == parse_unit("µg/L")
True
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from .errors import UnitError

__all__ = ["Unit", "convert_amount", "parse_unit"]

DIMENSIONS = ("g", "mol", "L", "h", "m", "cell")

# symbol -> (scale, exponents in DIMENSIONS order)
_BASE: dict[str, tuple[float, tuple[int, ...]]] = {}


def _define(symbols: str, scale: float, dims: tuple[int, ...]) -> None:
    for s in symbols.split():
        _BASE[s] = (scale, dims)


_MASS, _MOL, _VOL, _TIME, _LEN, _CELL = (tuple(int(i == k) for i in range(6)) for k in range(6))
_NONE = (0, 0, 0, 0, 0, 0)
_define("kg", 1e3, _MASS)
_define("g", 1.0, _MASS)
_define("mg", 1e-3, _MASS)
_define("µg μg ug mcg", 1e-6, _MASS)
_define("ng", 1e-9, _MASS)
_define("pg", 1e-12, _MASS)
_define("mol", 1.0, _MOL)
_define("mmol", 1e-3, _MOL)
_define("µmol μmol umol", 1e-6, _MOL)
_define("nmol", 1e-9, _MOL)
_define("pmol", 1e-12, _MOL)
_define("L l", 1.0, _VOL)
_define("dL dl", 0.1, _VOL)
_define("mL ml", 1e-3, _VOL)
_define("µL μL uL", 1e-6, _VOL)
_define("h hr", 1.0, _TIME)
_define("min", 1.0 / 60.0, _TIME)
_define("s", 1.0 / 3600.0, _TIME)
_define("d day", 24.0, _TIME)
_define("week wk", 168.0, _TIME)
_define("m", 1.0, _LEN)
_define("cm", 1e-2, _LEN)
_define("cells cell", 1.0, _CELL)
_define("Da", 1.0, (1, -1, 0, 0, 0, 0))
_define("kDa", 1e3, (1, -1, 0, 0, 0, 0))
_define("%", 1e-2, _NONE)
_define("1 -", 1.0, _NONE)


@dataclass(frozen=True)
class Unit:
    """A physical unit: ``scale`` × Π base^exponent, with base units g, mol, L, h, m, cell.

    Parameters
    ----------
    scale : float
        Size relative to the product of base units.
    dims : tuple of Fraction
        Exponents of (g, mol, L, h, m, cell).
    text : str
        The text it was parsed from (for messages); not used in comparisons.
    """

    scale: float
    dims: tuple[Fraction, ...]
    text: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Unit):
            return NotImplemented
        return self.dims == other.dims and math.isclose(self.scale, other.scale, rel_tol=1e-12)

    def __hash__(self) -> int:
        return hash(self.dims)

    def __mul__(self, other: Unit) -> Unit:
        return Unit(
            self.scale * other.scale,
            tuple(a + b for a, b in zip(self.dims, other.dims, strict=True)),
            f"{self.text}*{other.text}",
        )

    def __truediv__(self, other: Unit) -> Unit:
        return Unit(
            self.scale / other.scale,
            tuple(a - b for a, b in zip(self.dims, other.dims, strict=True)),
            f"{self.text}/({other.text})",
        )

    def __pow__(self, power: Fraction | int | float) -> Unit:
        p = Fraction(power).limit_denominator(1000)
        return Unit(self.scale ** float(p), tuple(a * p for a in self.dims), f"({self.text})^{p}")

    @property
    def dimensionless(self) -> bool:
        """True when all exponents are zero (the scale may differ from 1, e.g. %)."""
        return all(d == 0 for d in self.dims)

    def same_dimension(self, other: Unit) -> bool:
        """True when ``other`` measures the same kind of quantity."""
        return self.dims == other.dims

    def factor_to(self, other: Unit) -> float:
        """Multiply a value in this unit by the returned factor to express it in ``other``.

        Raises
        ------
        UnitError
            If the dimensions differ.
        """
        if self.dims != other.dims:
            raise UnitError(
                f"cannot convert {self.describe()} to {other.describe()}: they measure different quantities"
            )
        return float(f"{self.scale / other.scale:.14g}")  # scales are exact decimals: drop float noise

    def describe(self) -> str:
        """The unit as written, or its base-unit form when it was derived."""
        if self.text and "(" not in self.text:
            return f"'{self.text}'"
        return f"'{self.base_form()}'"

    def base_form(self) -> str:
        """The unit in base units, e.g. ``1e-06 g/L``."""
        num = [f"{n}^{d}" if d != 1 else n for n, d in zip(DIMENSIONS, self.dims, strict=True) if d > 0]
        den = [f"{n}^{-d}" if d != -1 else n for n, d in zip(DIMENSIONS, self.dims, strict=True) if d < 0]
        body = "*".join(num) or "1"
        if den:
            body += "/" + "/".join(den)
        return body if math.isclose(self.scale, 1.0) else f"{self.scale:g} {body}"


DIMENSIONLESS = Unit(1.0, tuple(Fraction(0) for _ in DIMENSIONS), "1")
HOUR = Unit(1.0, tuple(Fraction(d) for d in _TIME), "h")

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<sym>[A-Za-zµμ%]+|-)|(?P<op>[*/^()]))")


def parse_unit(text: str) -> Unit:
    """Parse a unit string.

    Grammar: ``unit := factor (('*' | '/') factor)*``, ``factor := atom ('^' integer)?``,
    ``atom := number | symbol | '(' unit ')'``; ``·`` and ``×`` mean ``*``.

    Parameters
    ----------
    text : str
        E.g. ``"mg"``, ``"L/h"``, ``"10^9/L"``, ``"µg·h/mL"``, ``"1/(mg*h)"``, ``"1"``.

    Returns
    -------
    Unit

    Raises
    ------
    UnitError
        Empty text, unknown symbols (naming them and listing the known ones) or bad syntax.

    Examples
    --------
    >>> parse_unit("10^9/L").scale
    1000000000.0
    >>> parse_unit("1/(mg*h)") == parse_unit("1/mg/h")
    True
    >>> parse_unit("furlong")
    Traceback (most recent call last):
    ...
    pkmodel.errors.UnitError: unknown unit symbol 'furlong' in unit 'furlong'; known symbols: %, -, 1, Da, L, ...
    """
    if not isinstance(text, str) or not text.strip():
        raise UnitError("a unit is required and may not be empty; write e.g. 'mg', 'L/h' or '1' for none")
    return _parse_unit(text)


@functools.lru_cache(maxsize=4096)
def _parse_unit(text: str) -> Unit:
    """:func:`parse_unit` of a non-empty string, remembered (a Unit is immutable; a text that does not
    parse raises every time, since errors are not cached).  Dose conversions parse the same few unit
    strings for every dose event of every subject."""
    source = text
    s = text.replace("·", "*").replace("×", "*").strip()
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise UnitError(f"cannot read unit {source!r} at position {pos}: unexpected {s[pos]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
        while pos < len(s) and s[pos] == " ":
            pos += 1
    index = 0

    def peek() -> tuple[str, str, int] | None:
        return tokens[index] if index < len(tokens) else None

    def take() -> tuple[str, str, int]:
        nonlocal index
        tok = peek()
        if tok is None:
            raise UnitError(f"unit {source!r} ends too early: expected a unit symbol or number")
        index += 1
        return tok

    def atom() -> Unit:
        kind, value, at = take()
        if kind == "num":
            return Unit(float(value), DIMENSIONLESS.dims, value)
        if kind == "sym":
            if value not in _BASE:
                known = ", ".join(sorted(_BASE))
                raise UnitError(f"unknown unit symbol {value!r} in unit {source!r}; known symbols: {known}")
            scale, dims = _BASE[value]
            return Unit(scale, tuple(Fraction(d) for d in dims), value)
        if value == "(":
            inner = product()
            closing = take()
            if closing[1] != ")":
                raise UnitError(f"cannot read unit {source!r} at position {closing[2]}: expected ')'")
            return inner
        raise UnitError(f"cannot read unit {source!r} at position {at}: unexpected {value!r}")

    def factor() -> Unit:
        base = atom()
        tok = peek()
        if tok is not None and tok[1] == "^":
            take()
            sign = 1
            nxt = take()
            if nxt[1] == "-":
                sign, nxt = -1, take()
            if nxt[0] != "num" or not nxt[1].isdigit():
                raise UnitError(
                    f"cannot read unit {source!r} at position {nxt[2]}: an exponent must be an integer"
                )
            power = sign * int(nxt[1])
            if base.dimensionless and base.text and base.text[0].isdigit():
                return Unit(base.scale**power, base.dims, f"{base.text}^{power}")
            return base**power
        return base

    def product() -> Unit:
        result = factor()
        while (tok := peek()) is not None and tok[1] in "*/":
            take()
            result = result * factor() if tok[1] == "*" else result / factor()
        return result

    result = product()
    if index != len(tokens):
        raise UnitError(f"cannot read unit {source!r} at position {tokens[index][2]}: expected '*' or '/'")
    return Unit(result.scale, result.dims, source)


def convert_amount(value, from_unit: str | Unit, to_unit: str | Unit, molar_mass: float | None = None):
    """Convert an amount between mass and molar units.

    Parameters
    ----------
    value : float or ndarray
        Amount in ``from_unit``.
    from_unit, to_unit : str or Unit
        Mass (g, mg, ...) or molar (mol, nmol, ...) units.
    molar_mass : float, optional
        g/mol; required when converting between mass and amount of substance.

    Returns
    -------
    float or ndarray

    Examples
    --------
    >>> round(convert_amount(1.0, "mg", "nmol", molar_mass=160000.0), 12)
    6.25
    """
    src = parse_unit(from_unit) if isinstance(from_unit, str) else from_unit
    dst = parse_unit(to_unit) if isinstance(to_unit, str) else to_unit
    if src.same_dimension(dst):
        return value * src.factor_to(dst)
    mass = parse_unit("g")
    mol = parse_unit("mol")
    if {src.dims, dst.dims} == {mass.dims, mol.dims}:
        if molar_mass is None or not molar_mass > 0:
            raise UnitError(
                f"converting {src.describe()} to {dst.describe()} needs the molar mass (g/mol); "
                "declare molar_mass on the compartment"
            )
        if src.dims == mass.dims:
            return value * src.factor_to(mass) / molar_mass * mol.factor_to(dst)
        return value * src.factor_to(mol) * molar_mass * mass.factor_to(dst)
    raise UnitError(f"cannot convert an amount in {src.describe()} to {dst.describe()}")
