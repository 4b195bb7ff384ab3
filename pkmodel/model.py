"""Model files: loading, validation, and the symbolic model derived from them.

A model file (TOML, see ``docs/model-files.md``) declares parameters, covariates, compartments,
flows with rate expressions, derived quantities, outputs and external inputs.  :func:`load_model`
reads it with :mod:`tomllib`, expands indexed species, parses every expression through the
allow-listed walk of :mod:`pkmodel.expressions` (never ``eval``), checks names and units, and
returns an immutable :class:`Model`.  Everything numerical — the right-hand side, its Jacobian, the
linear rate matrix and input vector, and the linearity verdict — is derived from the compartments
and flows with sympy.

Examples
--------
>>> from pkmodel import load_model
>>> m = load_model("one_compartment_iv")
>>> m.state_names
('CENT',)
>>> m.is_linear
True
>>> m.linear_system()[0]
Matrix([[-CL/V]])
"""

from __future__ import annotations

import keyword
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import sympy

from . import _templates
from .errors import ExpressionError, ModelFileError, PkmodelError, UnitError
from .expressions import ALLOWED_FUNCTIONS, TIME_SYMBOL, parse_expression_with_unit
from .units import HOUR, Unit, convert_amount, parse_unit

__all__ = [
    "Compartment",
    "Covariate",
    "Flow",
    "Input",
    "Model",
    "Parameter",
    "Quantity",
    "list_models",
    "load_model",
    "models_dir",
]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # used with fullmatch: '$' would accept a trailing newline
_RESERVED = {"t", "sum", *ALLOWED_FUNCTIONS, "pi", "e", "inf", "nan"}
_TOP_KEYS = {
    "model",
    "parameters",
    "covariates",
    "derived",
    "compartments",
    "flows",
    "outputs",
    "inputs",
    "compose",
}


def models_dir() -> Path:
    """The folder of shipped model files (``models/`` of the source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models", here / "models_data"):
        if candidate.is_dir():
            return candidate
    return here.parent / "models"


def fits_dir() -> Path:
    """The folder of shipped fit and scenario specifications (``fits/`` of the source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "fits", here / "fits_data"):
        if candidate.is_dir():
            return candidate
    return here.parent / "fits"


def list_models() -> list[tuple[str, str]]:
    """Names and one-line descriptions of the shipped models.

    Returns
    -------
    list of (str, str)
        ``(name, description)`` sorted by name.
    """
    out = []
    for path in sorted(models_dir().glob("*.toml")):
        try:
            with path.open("rb") as fh:
                meta = tomllib.load(fh).get("model", {})
            out.append(
                (
                    path.stem,
                    (
                        str(meta.get("description", "")).strip().splitlines()[0:1]
                        and str(meta.get("description", "")).strip().splitlines()[0]
                    )
                    or "",
                )
            )
        except (OSError, tomllib.TOMLDecodeError):
            out.append((path.stem, "(unreadable)"))
    return out


# ---------------------------------------------------------------------------------- value objects


@dataclass(frozen=True)
class Parameter:
    """A model parameter: typical value, unit, bounds, provenance."""

    name: str
    value: float
    unit: str
    lower: float = -math.inf
    upper: float = math.inf
    description: str = ""
    source: str = ""
    fixed: bool = False


@dataclass(frozen=True)
class Covariate:
    """A subject covariate with its reference (default) value."""

    name: str
    value: float
    unit: str
    description: str = ""


@dataclass(frozen=True)
class Compartment:
    """A state of the model: an amount (or a count) in ``unit``."""

    name: str
    unit: str
    dose: bool = False
    molar_mass: float | None = None
    initial: str = "0"
    description: str = ""


@dataclass(frozen=True)
class Flow:
    """A transfer at ``rate`` from ``source`` to ``target`` (either may be None), with extra products."""

    source: str | None
    target: str | None
    rate: str
    produces: tuple[tuple[str, float], ...] = ()
    key: str = ""
    description: str = ""

    def label(self) -> str:
        """E.g. ``CENT -> PERI`` or ``CENT -> (eliminated)``."""
        return f"{self.source or '(input)'} -> {self.target or '(eliminated)'}"


@dataclass(frozen=True)
class Quantity:
    """A derived quantity or an output: a named expression with a unit."""

    name: str
    expr: str
    unit: str
    description: str = ""


@dataclass(frozen=True)
class Input:
    """An external time-varying input (e.g. a drug concentration driving a PD model)."""

    name: str
    unit: str
    default: float = 0.0
    description: str = ""


@dataclass(frozen=True)
class Linearity:
    """Whether a model is linear in its states with constant coefficients, and if not, why."""

    is_linear: bool
    reasons: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.is_linear


# ------------------------------------------------------------------------------------------ loading


def _resolve_path(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix != ".toml" and not path.exists():
        shipped = models_dir() / f"{source}.toml"
        if shipped.exists():
            return shipped
        names = ", ".join(n for n, _ in list_models())
        raise ModelFileError(f"no model file '{source}' and no shipped model of that name; shipped: {names}")
    if not path.exists():
        shipped = models_dir() / path.name
        if not path.is_absolute() and shipped.exists():
            return shipped
        raise ModelFileError(f"model file '{source}' does not exist")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = fh.read()
        if raw.startswith(b"\xef\xbb\xbf"):
            raise ModelFileError(
                "starts with a byte-order mark (BOM), which TOML does not allow; save the file as UTF-8 "
                "without BOM",
                file=str(path),
            )
        return tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ModelFileError(f"not valid TOML: {exc}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"not UTF-8 text: {exc}", file=str(path)) from None
    except RecursionError:
        raise ModelFileError(
            "not valid TOML: arrays or tables are nested too deeply to read", file=str(path)
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ModelFileError(f"not valid TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read: {exc}", file=str(path)) from None


def load_model(source: str | Path | Mapping[str, Any], *, name: str | None = None) -> Model:
    """Load and validate a model file.

    Parameters
    ----------
    source : str, Path or mapping
        A path to a ``.toml`` file, the name of a shipped model (``"adc_esg401"``), or the already
        parsed TOML content as a dict.
    name : str, optional
        Label for a dict source in error messages (default ``"<dict>"``).

    Returns
    -------
    Model

    Raises
    ------
    ModelFileError
        Naming the file, the key and the broken rule.

    Examples
    --------
    >>> load_model("one_compartment_iv").parameters["CL"].unit
    'L/h'
    """
    if isinstance(source, Mapping):
        return Model(dict(source), file=name or "<dict>")
    path = _resolve_path(source)
    return Model(_read_toml(path), file=str(path))


# ------------------------------------------------------------------------------------------ helpers


def _check_keys(table: Any, allowed: set[str], required: set[str], where: str, file: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ModelFileError(f"expected a table, got {type(table).__name__} {table!r}", file, where)
    unknown = set(table) - allowed
    if unknown:
        raise ModelFileError(
            f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}; allowed: {', '.join(sorted(allowed))}",
            file,
            where,
        )
    missing = required - set(table)
    if missing:
        raise ModelFileError(f"missing required field(s) {', '.join(sorted(missing))}", file, where)
    return table


def _number(value: Any, where: str, file: str, what: str = "value", finite: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelFileError(f"{what} must be a number, got {value!r}", file, where)
    try:
        number = float(value)
    except OverflowError:
        raise ModelFileError(
            f"{what} must be a finite number, got an integer of {len(str(abs(value)))} digits", file, where
        ) from None
    if finite and not math.isfinite(number):
        raise ModelFileError(f"{what} must be finite, got {number!r}", file, where)
    return number


def _text(value: Any, where: str, file: str, what: str) -> str:
    if not isinstance(value, str):
        raise ModelFileError(f"{what} must be text, got {value!r}", file, where)
    return value


def _unit(value: Any, where: str, file: str) -> Unit:
    if value is None:
        raise ModelFileError('a unit is required; write unit = "L/h" (or "1" for none)', file, where)
    try:
        return parse_unit(_text(value, where, file, "unit"))
    except UnitError as exc:
        raise ModelFileError(str(exc), file, where) from None


# ------------------------------------------------------------------------------------------- model


class Model:
    """A validated compartmental model and its symbolic form.

    Create with :func:`load_model`.  The object is immutable after construction.

    Attributes
    ----------
    name, description : str
    references : tuple of str
    file : str
    parameters : dict of str to Parameter
    covariates : dict of str to Covariate
    derived : dict of str to Quantity
    compartments : dict of str to Compartment
        In state order.
    flows : tuple of Flow
    outputs : dict of str to Quantity
    inputs : dict of str to Input
    connections : tuple of (str, str)
        (output, input) pairs made by composition.
    """

    def __init__(self, data: dict[str, Any], file: str = "<dict>"):
        self.file = file
        data = self._compose(data) if "compose" in data else data
        self._raw = data
        self._load(data)
        self._build_symbols()

    # -- composition -------------------------------------------------------------------------------
    def _compose(self, data: dict[str, Any]) -> dict[str, Any]:
        file = self.file
        spec = _check_keys(data["compose"], {"models", "connect"}, {"models"}, "compose", file)
        models = spec["models"]
        if not isinstance(models, list) or not models:
            raise ModelFileError(
                "compose.models must be a non-empty list of model files", file, "compose.models"
            )
        merged: dict[str, Any] = {
            k: {} for k in ("parameters", "covariates", "derived", "compartments", "outputs", "inputs")
        }
        merged["flows"] = []
        origin: dict[str, str] = {}
        sub_meta: list[dict[str, Any]] = []
        base = Path(file).parent if file != "<dict>" else models_dir()
        for i, item in enumerate(models):
            where = f"compose.models[{i}]"
            if not isinstance(item, str):
                raise ModelFileError("each entry must be a model file name", file, where)
            path = base / item if (base / item).exists() else _resolve_path(item)
            sub = _read_toml(path)
            if "compose" in sub:
                sub = Model(sub, str(path))._raw
            sub = _expand_templates(sub, str(path))
            sub_meta.append(sub.get("model", {}))
            for section in merged:
                if section == "flows":
                    merged["flows"].extend(sub.get("flows", []))
                    continue
                for key, value in sub.get(section, {}).items():
                    if key in origin:
                        raise ModelFileError(
                            f"'{key}' is declared in both {origin[key]} and {path.name}; rename it in one of them",
                            file,
                            where,
                        )
                    origin[key] = path.name
                    merged[section][key] = value
        for i, link in enumerate(spec.get("connect", [])):
            where = f"compose.connect[{i}]"
            _check_keys(link, {"output", "input", "molar_mass"}, {"output", "input"}, where, file)
            out, inp = link["output"], link["input"]
            if out not in merged["outputs"]:
                raise ModelFileError(f"'{out}' is not an output of the composed models", file, where)
            if inp not in merged["inputs"]:
                raise ModelFileError(f"'{inp}' is not an input of the composed models", file, where)
            spec_in = merged["inputs"].pop(inp)
            merged["derived"][inp] = {
                "from_output": out,
                "unit": spec_in.get("unit"),
                "molar_mass": link.get("molar_mass"),
                "description": f"input connected to output {out}",
            }
        for section in ("parameters", "covariates", "derived", "compartments", "outputs", "inputs"):
            for key, value in data.get(section, {}).items():
                if key in merged[section] and section == "parameters" and isinstance(value, dict):
                    merged[section][key] = {**merged[section][key], **value}
                elif key in origin:
                    raise ModelFileError(
                        f"'{key}' is already declared in {origin[key]}; only parameters can be overridden",
                        file,
                        f"{section}.{key}",
                    )
                else:
                    merged[section][key] = value
        merged["flows"].extend(data.get("flows", []))
        meta = dict(data.get("model", {}))
        for key in ("dose_compartment",):
            if key not in meta:
                found = [m[key] for m in sub_meta if key in m]
                if len(found) == 1:
                    meta[key] = found[0]
        refs = list(meta.get("references", []))
        for m in sub_meta:
            refs += [r for r in m.get("references", []) if r not in refs]
        if refs:
            meta["references"] = refs
        merged["model"] = meta
        return merged

    # -- reading the tables ------------------------------------------------------------------------
    def _load(self, data: dict[str, Any]) -> None:
        file = self.file
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ModelFileError(
                f"unknown section(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TOP_KEYS - {'compose'}))}",
                file,
            )
        data = _expand_templates(data, file)
        meta = _check_keys(
            data.get("model", {}),
            {"name", "description", "references", "time_unit", "dose_compartment"},
            set(),
            "model",
            file,
        )
        self.name = str(meta.get("name", Path(file).stem))
        self.description = str(meta.get("description", "")).strip()
        refs = meta.get("references", [])
        self.references = tuple(refs if isinstance(refs, list) else [refs])
        if meta.get("time_unit", "h") != "h":
            raise ModelFileError(
                'time is always in hours; set time_unit = "h" and convert rates to 1/h',
                file,
                "model.time_unit",
            )
        seen: dict[str, str] = {}

        def declare(name: str, where: str) -> None:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ModelFileError(
                    f"'{name}' is not a valid name: use letters, digits and _, starting with a letter",
                    file,
                    where,
                )
            if name in _RESERVED or keyword.iskeyword(name):
                raise ModelFileError(f"'{name}' is a reserved word; choose another name", file, where)
            if name in seen:
                raise ModelFileError(
                    f"'{name}' is declared twice (first as {seen[name]}); names must be unique", file, where
                )
            seen[name] = where

        self.parameters: dict[str, Parameter] = {}
        for name, body in _table(data, "parameters", file).items():
            where = f"parameters.{name}"
            declare(name, where)
            _check_keys(
                body,
                {"value", "unit", "bounds", "description", "source", "fixed"},
                {"value", "unit"},
                where,
                file,
            )
            value = _number(body["value"], where, file)
            _unit(body["unit"], where, file)
            lower, upper = -math.inf, math.inf
            if "bounds" in body:
                b = body["bounds"]
                if not isinstance(b, list) or len(b) != 2:
                    raise ModelFileError("bounds must be [lower, upper]", file, where + ".bounds")
                lower = _number(b[0], where + ".bounds", file, "lower bound")
                upper = _number(b[1], where + ".bounds", file, "upper bound")
                if not lower < upper:
                    raise ModelFileError(
                        f"bounds [{lower:g}, {upper:g}] must have lower < upper", file, where + ".bounds"
                    )
                if not lower <= value <= upper:
                    raise ModelFileError(
                        f"value {value:g} lies outside its bounds [{lower:g}, {upper:g}]; fix the value or the bounds",
                        file,
                        where,
                    )
            if not math.isfinite(value):
                raise ModelFileError(f"value must be finite, got {value!r}", file, where)
            self.parameters[name] = Parameter(
                name,
                value,
                body["unit"],
                lower,
                upper,
                str(body.get("description", "")),
                str(body.get("source", "")),
                bool(body.get("fixed", False)),
            )

        self.covariates: dict[str, Covariate] = {}
        for name, body in _table(data, "covariates", file).items():
            where = f"covariates.{name}"
            declare(name, where)
            _check_keys(body, {"value", "unit", "description"}, {"value", "unit"}, where, file)
            _unit(body["unit"], where, file)
            self.covariates[name] = Covariate(
                name,
                _number(body["value"], where, file, finite=True),
                body["unit"],
                str(body.get("description", "")),
            )

        self.inputs: dict[str, Input] = {}
        for name, body in _table(data, "inputs", file).items():
            where = f"inputs.{name}"
            declare(name, where)
            _check_keys(body, {"unit", "default", "description"}, {"unit"}, where, file)
            _unit(body["unit"], where, file)
            self.inputs[name] = Input(
                name,
                body["unit"],
                _number(body.get("default", 0.0), where, file, "default", finite=True),
                str(body.get("description", "")),
            )

        self.compartments: dict[str, Compartment] = {}
        for name, body in _table(data, "compartments", file).items():
            where = f"compartments.{name}"
            declare(name, where)
            _check_keys(body, {"unit", "dose", "molar_mass", "initial", "description"}, {"unit"}, where, file)
            _unit(body["unit"], where, file)
            mm = body.get("molar_mass")
            if mm is not None and not (
                _number(mm, where + ".molar_mass", file, "molar_mass", finite=True) > 0
            ):
                raise ModelFileError("molar_mass (g/mol) must be > 0", file, where + ".molar_mass")
            init = body.get("initial", "0")
            if isinstance(init, (int, float)) and not isinstance(init, bool):
                init = repr(_number(init, where + ".initial", file, "initial", finite=True))
            self.compartments[name] = Compartment(
                name,
                body["unit"],
                bool(body.get("dose", False)),
                None if mm is None else float(mm),
                _text(init, where + ".initial", file, "initial"),
                str(body.get("description", "")),
            )
        if not self.compartments:
            raise ModelFileError("a model needs at least one compartment", file, "compartments")

        self.derived: dict[str, Quantity] = {}
        self._connections: dict[str, dict[str, Any]] = {}
        for name, body in _table(data, "derived", file).items():
            where = f"derived.{name}"
            declare(name, where)
            if isinstance(body, dict) and "from_output" in body:
                self._connections[name] = body
                self.derived[name] = Quantity(
                    name, f"<output {body['from_output']}>", body["unit"], str(body.get("description", ""))
                )
                continue
            _check_keys(body, {"expr", "unit", "description"}, {"expr", "unit"}, where, file)
            self.derived[name] = Quantity(
                name,
                _text(body["expr"], where + ".expr", file, "expr"),
                body["unit"],
                str(body.get("description", "")),
            )

        self.outputs: dict[str, Quantity] = {}
        for name, body in _table(data, "outputs", file).items():
            where = f"outputs.{name}"
            declare(name, where)
            _check_keys(body, {"expr", "unit", "description"}, {"expr", "unit"}, where, file)
            self.outputs[name] = Quantity(
                name,
                _text(body["expr"], where + ".expr", file, "expr"),
                body["unit"],
                str(body.get("description", "")),
            )

        flows = data.get("flows", [])
        if not isinstance(flows, list):
            raise ModelFileError("flows must be an array of tables: [[flows]]", file, "flows")
        self.flows: tuple[Flow, ...] = ()
        out_flows = []
        for i, body in enumerate(flows):
            where = f"flows[{i}]"
            _check_keys(body, {"from", "to", "rate", "produces", "description"}, {"rate"}, where, file)
            src, dst = body.get("from") or None, body.get("to") or None
            for end, label in ((src, "from"), (dst, "to")):
                if end is not None and end not in self.compartments:
                    raise ModelFileError(
                        f"'{label}' names '{end}', which is not a declared compartment; declared: "
                        f"{', '.join(self.compartments)}",
                        file,
                        f"{where}.{label}",
                    )
            produces = body.get("produces", {})
            if not isinstance(produces, dict):
                raise ModelFileError(
                    "produces must be a table {COMPARTMENT = stoichiometry}", file, where + ".produces"
                )
            produces = {c: _stoichiometry(k) for c, k in produces.items()}
            for cmt, k in produces.items():
                if cmt not in self.compartments:
                    raise ModelFileError(
                        f"produces names '{cmt}', which is not a declared compartment",
                        file,
                        where + ".produces",
                    )
                if not _number(k, where + ".produces", file, "stoichiometry", finite=True) > 0:
                    raise ModelFileError("stoichiometry must be > 0", file, where + ".produces")
            if src is None and dst is None and not produces:
                raise ModelFileError("a flow needs 'from', 'to' or 'produces'", file, where)
            rate = body["rate"]
            if isinstance(rate, (int, float)) and not isinstance(rate, bool):
                rate = repr(_number(rate, where + ".rate", file, "rate", finite=True))
            out_flows.append(
                Flow(
                    src,
                    dst,
                    _text(rate, where + ".rate", file, "rate"),
                    tuple((c, float(k)) for c, k in produces.items()),
                    where,
                    str(body.get("description", "")),
                )
            )
        self.flows = tuple(out_flows)
        dc = meta.get("dose_compartment")
        if dc is not None and dc not in self.compartments:
            raise ModelFileError(
                f"dose_compartment '{dc}' is not a declared compartment", file, "model.dose_compartment"
            )
        dosable = [c.name for c in self.compartments.values() if c.dose]
        self.default_dose_compartment: str | None = dc or (dosable[0] if len(dosable) == 1 else None)

    # -- symbols ------------------------------------------------------------------------------------
    def _build_symbols(self) -> None:
        file = self.file
        self.symbols: dict[str, sympy.Symbol] = {}
        units: dict[str, Unit] = {}
        for group in (self.parameters, self.covariates, self.inputs, self.compartments):
            for name, item in group.items():
                self.symbols[name] = sympy.Symbol(name, real=True)
                units[name] = parse_unit(item.unit)
        namespace: dict[str, sympy.Basic] = dict(self.symbols)
        self._units = units
        self.derived_exprs: dict[str, sympy.Expr] = {}
        self.output_exprs: dict[str, sympy.Expr] = {}
        state = {"visiting": set()}

        def parse(text: str, where: str) -> tuple[sympy.Expr, Unit | None]:
            try:
                return parse_expression_with_unit(text, _LazyNamespace(namespace, resolve), units)
            except ExpressionError as exc:
                raise ModelFileError(str(exc), file, where) from None

        def resolve(name: str) -> bool:
            if name in namespace:
                return True
            if name not in self.derived:
                return False
            if name in state["visiting"]:
                raise ModelFileError(
                    f"'{name}' is defined in terms of itself (a cycle through {', '.join(sorted(state['visiting']))})",
                    file,
                    f"derived.{name}",
                )
            state["visiting"].add(name)
            q = self.derived[name]
            declared = _unit(q.unit, f"derived.{name}", file)
            if name in self._connections:
                expr = output_expr(self._connections[name]["from_output"], f"derived.{name}")
                src = parse_unit(self.outputs[self._connections[name]["from_output"]].unit)
                expr = expr * _concentration_factor(
                    src,
                    declared,
                    self._connections[name].get("molar_mass"),
                    file,
                    f"compose connection to {name}",
                )
            else:
                expr, unit = parse(q.expr, f"derived.{name}.expr")
                _require_unit(unit, declared, file, f"derived.{name}", "its expression")
            state["visiting"].discard(name)
            namespace[name] = expr
            units[name] = declared
            self.derived_exprs[name] = expr
            return True

        def output_expr(name: str, where: str) -> sympy.Expr:
            if name in self.output_exprs:
                return self.output_exprs[name]
            q = self.outputs[name]
            declared = _unit(q.unit, f"outputs.{name}", file)
            expr, unit = parse(q.expr, f"outputs.{name}.expr")
            if unit is not None and not unit.same_dimension(declared):
                raise ModelFileError(
                    f"the expression has unit {unit.describe()} but the output is declared in {declared.describe()}, "
                    "which measures a different quantity; fix the expression (e.g. multiply by a molar mass "
                    "parameter in g/mol) or the unit",
                    file,
                    f"outputs.{name}",
                )
            factor = 1.0 if unit is None else unit.factor_to(declared)
            self.output_exprs[name] = (
                expr if math.isclose(factor, 1.0, rel_tol=1e-13) else expr * _float(factor)
            )
            return self.output_exprs[name]

        for name in self.derived:
            resolve(name)
        for name in self.outputs:
            output_expr(name, f"outputs.{name}")

        self.initial_exprs: dict[str, sympy.Expr] = {}
        for name, cmt in self.compartments.items():
            expr, unit = parse(cmt.initial, f"compartments.{name}.initial")
            if expr.free_symbols & {self.symbols[c] for c in self.compartments}:
                raise ModelFileError(
                    "an initial condition may not depend on compartment amounts",
                    file,
                    f"compartments.{name}.initial",
                )
            _require_unit(unit, units[name], file, f"compartments.{name}.initial", "the initial condition")
            self.initial_exprs[name] = expr

        self.flow_exprs: list[sympy.Expr] = []
        rhs = {name: sympy.Integer(0) for name in self.compartments}
        for flow in self.flows:
            expr, unit = parse(flow.rate, f"{flow.key}.rate")
            ref = flow.source or flow.target or flow.produces[0][0]
            expected = units[ref] / HOUR
            for end in (flow.source, flow.target, *(c for c, _ in flow.produces)):
                if end is not None and not (units[end] / HOUR == expected):
                    raise ModelFileError(
                        f"flow {flow.label()} connects compartments with different units "
                        f"({self.compartments[ref].unit} and {self.compartments[end].unit}); convert amounts "
                        "through a molar mass in a separate flow or use one unit",
                        file,
                        flow.key,
                    )
            _require_unit(unit, expected, file, f"{flow.key}.rate", f"the rate of flow {flow.label()}")
            self.flow_exprs.append(expr)
            if flow.source:
                rhs[flow.source] -= expr
            if flow.target:
                rhs[flow.target] += expr
            for cmt, k in flow.produces:
                rhs[cmt] += _float(k) * expr if k != 1 else expr
        self.rhs_exprs: dict[str, sympy.Expr] = rhs

    # -- public symbolic API -------------------------------------------------------------------------
    @property
    def state_names(self) -> tuple[str, ...]:
        """Compartment names in state order."""
        return tuple(self.compartments)

    @property
    def argument_names(self) -> tuple[str, ...]:
        """Names a simulation takes values for: parameters, covariates, then inputs."""
        return (*self.parameters, *self.covariates, *self.inputs)

    @property
    def connections(self) -> tuple[tuple[str, str], ...]:
        """(output, input) pairs made by composition."""
        return tuple((c["from_output"], name) for name, c in self._connections.items())

    def unit_of(self, name: str) -> str:
        """The unit of a parameter, covariate, input, compartment, derived quantity or output."""
        for group in (
            self.parameters,
            self.covariates,
            self.inputs,
            self.compartments,
            self.derived,
            self.outputs,
        ):
            if name in group:
                return group[name].unit  # type: ignore[attr-defined]
        raise PkmodelError(f"'{name}' is not declared in model {self.name}")

    @cached_property
    def linearity(self) -> Linearity:
        """Linear with constant coefficients?  If not, which flow breaks it and how.

        A model is linear when every flow rate is an affine function of the compartment amounts whose
        coefficients do not depend on amounts, time ``t`` or external inputs.
        """
        states = [self.symbols[s] for s in self.compartments]
        forbidden = {TIME_SYMBOL, *(self.symbols[i] for i in self.inputs)}
        reasons = []
        for flow, expr in zip(self.flows, self.flow_exprs, strict=True):
            try:
                poly = sympy.Poly(expr, *states)
                degree_ok = poly.total_degree() <= 1
            except sympy.PolynomialError:
                degree_ok = False
            if not degree_ok:
                reasons.append(
                    f"{flow.key} ({flow.label()}): rate '{flow.rate}' is not linear in the amounts"
                )
                continue
            depends = expr.free_symbols & forbidden
            if depends:
                names = ", ".join(sorted(str(s) for s in depends))
                reasons.append(f"{flow.key} ({flow.label()}): rate '{flow.rate}' depends on {names}")
        return Linearity(not reasons, tuple(reasons))

    @property
    def is_linear(self) -> bool:
        """True when the exact (matrix-exponential) engine applies."""
        return self.linearity.is_linear

    def linear_system(self) -> tuple[sympy.Matrix, sympy.Matrix]:
        """The rate matrix K and constant input vector b with dA/dt = K·A + b.

        Returns
        -------
        K : sympy.Matrix, shape (n_states, n_states)
        b : sympy.Matrix, shape (n_states, 1)

        Raises
        ------
        PkmodelError
            If the model is nonlinear; the message names the flows that make it so.
        """
        lin = self.linearity
        if not lin:
            raise PkmodelError(f"model {self.name} is nonlinear: " + "; ".join(lin.reasons))
        states = [self.symbols[s] for s in self.compartments]
        rhs = sympy.Matrix([self.rhs_exprs[s] for s in self.compartments])
        K = rhs.jacobian(states)
        b = rhs.subs({s: 0 for s in states})
        return K, b

    def jacobian(self) -> sympy.Matrix:
        """Symbolic Jacobian of the right-hand side with respect to the amounts, shape (n, n)."""
        states = [self.symbols[s] for s in self.compartments]
        return sympy.Matrix([self.rhs_exprs[s] for s in self.compartments]).jacobian(states)

    def dose_compartment(self, name: str | None) -> str:
        """The compartment a dose record goes into (``None`` → the model's default)."""
        if name is None:
            if self.default_dose_compartment is None:
                dosable = [c.name for c in self.compartments.values() if c.dose]
                raise PkmodelError(
                    f"model {self.name} has {'no' if not dosable else 'several'} dosable compartments "
                    f"({', '.join(dosable) or 'none'}): name the compartment in the dose"
                )
            return self.default_dose_compartment
        if name not in self.compartments:
            raise PkmodelError(
                f"dose into '{name}': model {self.name} has no such compartment; "
                f"compartments: {', '.join(self.compartments)}"
            )
        if not self.compartments[name].dose:
            raise PkmodelError(f"compartment '{name}' of model {self.name} is not dosable (dose = false)")
        return name

    def dose_amount(self, amount, unit: str, compartment: str, weight=None):
        """Convert a dose into the amount unit of its compartment.

        Parameters
        ----------
        amount : float or ndarray
            Dose in ``unit``.
        unit : str
            ``"mg/kg"`` (multiplied by ``weight``), or a mass or molar unit.
        compartment : str
            Receiving compartment.
        weight : float or ndarray, optional
            Body weight, kg; required for mg/kg.

        Returns
        -------
        float or ndarray
            Amount in the compartment's unit (through its molar mass when mass and amount of substance
            differ, e.g. mg of ADC into nmol).
        """
        cmt = self.compartments[compartment]
        if unit == "mg/kg":
            if weight is None:
                raise PkmodelError("a mg/kg dose needs the body weight: give covariate WT (kg)")
            amount = amount * weight
            unit = "mg"
        try:
            return convert_amount(amount, unit, cmt.unit, cmt.molar_mass)
        except UnitError as exc:
            raise PkmodelError(f"dose into {compartment}: {exc}") from None

    @cached_property
    def numeric(self):
        """Numerical functions generated from the symbols (see :class:`pkmodel.numerics.CompiledModel`)."""
        from .numerics import CompiledModel

        return CompiledModel(self)

    def __repr__(self) -> str:
        kind = "linear" if self.is_linear else "nonlinear"
        return (
            f"<Model {self.name}: {len(self.compartments)} compartments, {len(self.parameters)} parameters, "
            f"{kind}>"
        )


class _LazyNamespace(Mapping):
    """Names visible to an expression; derived quantities are parsed on first use (cycle-checked)."""

    def __init__(self, namespace: dict[str, sympy.Basic], resolve):
        self._ns = namespace
        self._resolve = resolve

    def __getitem__(self, key: str) -> sympy.Basic:
        if key not in self._ns and not self._resolve(key):
            raise KeyError(key)
        return self._ns[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self._ns or self._resolve(key))

    def __iter__(self):
        return iter(self._ns)

    def __len__(self) -> int:
        return len(self._ns)


def _float(x: float) -> sympy.Float:
    return sympy.Float(x, 17)


def _require_unit(unit: Unit | None, declared: Unit, file: str, where: str, what: str) -> None:
    if unit is None:
        return
    if not unit.same_dimension(declared):
        raise ModelFileError(
            f"{what} has unit {unit.describe()} but {declared.describe()} is required; check the units of the "
            "names it uses",
            file,
            where,
        )
    if not math.isclose(unit.scale, declared.scale, rel_tol=1e-12):
        raise ModelFileError(
            f"{what} is in {unit.describe()} but {declared.describe()} is required (they differ by a factor "
            f"{unit.scale / declared.scale:g}); multiply the expression by that factor or change a unit",
            file,
            where,
        )


def _concentration_factor(src: Unit, dst: Unit, molar_mass, file: str, where: str) -> sympy.Float:
    if src.same_dimension(dst):
        return _float(src.factor_to(dst))
    mass_per_mol = parse_unit("g/mol")
    for a, b, sign in ((src, dst, 1), (dst, src, -1)):
        ratio = a / b
        if ratio.same_dimension(mass_per_mol):
            if molar_mass is None:
                raise ModelFileError(
                    f"connecting {src.describe()} to {dst.describe()} needs molar_mass (g/mol) on the connection",
                    file,
                    where,
                )
            # value_dst = value_src * scale(src)/scale(dst) / M  (mass → molar) or * M (molar → mass)
            factor = src.scale / dst.scale * (molar_mass ** (-sign)) / (mass_per_mol.scale ** (-sign))
            return _float(factor)
    raise ModelFileError(
        f"cannot connect an output in {src.describe()} to an input in {dst.describe()}", file, where
    )


def _stoichiometry(value: Any) -> Any:
    """Stoichiometries may come from an index placeholder, i.e. as text like "3"."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _table(data: dict[str, Any], key: str, file: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ModelFileError(f"[{key}] must be a table", file, key)
    return value


_MAX_EXPANSION = 10_000  # more copies or sum terms than this would make an expression too long anyway


def _check_expansion(body: Any, where: str) -> None:
    """Refuse index ranges and ``sum{...}`` terms whose expansion would be enormous, before expanding.

    Each range is at most 1000 long, but ``for = {a = "0..1000", b = "0..1000", c = "0..1000"}`` or three
    nested sums would expand to 10^9 copies: the product is checked here, so a hostile file is refused at
    once instead of exhausting memory.
    """
    if not isinstance(body, dict):
        return
    spec = body.get("for")
    if isinstance(spec, dict):
        copies = 1
        for var, rng in spec.items():
            copies *= len(_templates.parse_range(rng, f"{where}.for.{var}"))
            if copies > _MAX_EXPANSION:
                raise ModelFileError(
                    f"the index ranges {spec} expand to more than {_MAX_EXPANSION} copies; use shorter ranges",
                    key=where,
                )
    stack: list[Any] = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and _sum_terms(item) > _MAX_EXPANSION:
            raise ModelFileError(
                f"the sums in {item[:60]!r}... expand to more than {_MAX_EXPANSION} terms; use shorter or "
                "fewer nested sum ranges",
                key=where,
            )


def _sum_terms(text: str) -> int:
    """Number of terms the ``sum{i=a..b}(...)`` of ``text`` expand to (nested sums multiply)."""
    matches = list(_templates._SUM.finditer(text))
    if not matches:
        return 0
    closing: dict[int, int] = {}
    opened: list[int] = []
    for i, ch in enumerate(text):
        if ch == "(":
            opened.append(i)
        elif ch == ")" and opened:
            closing[opened.pop()] = i
    total = 0
    enclosing: list[tuple[int, int]] = []  # (end of body, product of the ranges down to here)
    for m in matches:
        while enclosing and enclosing[-1][0] < m.start():
            enclosing.pop()
        n = max(int(m.group(3)) - int(m.group(2)) + 1, 0)
        product = n * (enclosing[-1][1] if enclosing else 1)
        total += product
        if total > _MAX_EXPANSION:
            return total
        enclosing.append((closing.get(m.end() - 1, len(text)), product))
    return total


def _expand_templates(data: dict[str, Any], file: str) -> dict[str, Any]:
    out = dict(data)
    for section in ("parameters", "covariates", "derived", "compartments", "outputs", "inputs"):
        table = data.get(section)
        if not isinstance(table, dict):
            continue
        expanded: dict[str, Any] = {}
        for name, body in table.items():
            try:
                _check_expansion(body, f"{section}.{name}")
                items = _templates.expand_table(name, body, f"{section}.{name}")
            except ModelFileError as exc:
                raise ModelFileError(exc.message, file, exc.key or f"{section}.{name}") from None
            except (ValueError, RecursionError) as exc:  # e.g. an index product of 5000 digits
                raise ModelFileError(
                    f"cannot expand the index placeholders: {exc}", file, f"{section}.{name}"
                ) from None
            for new_name, new_body in items:
                if new_name in expanded:
                    raise ModelFileError(
                        f"'{new_name}' is declared twice after index expansion", file, f"{section}.{name}"
                    )
                expanded[new_name] = new_body
        out[section] = expanded
    flows = data.get("flows")
    if isinstance(flows, list):
        new_flows = []
        for i, body in enumerate(flows):
            try:
                _check_expansion(body, f"flows[{i}]")
                new_flows.extend(_templates.expand_list_item(body, f"flows[{i}]"))
            except ModelFileError as exc:
                raise ModelFileError(exc.message, file, exc.key or f"flows[{i}]") from None
            except (ValueError, RecursionError) as exc:
                raise ModelFileError(
                    f"cannot expand the index placeholders: {exc}", file, f"flows[{i}]"
                ) from None
        out["flows"] = new_flows
    return out
