"""Fit specifications (``fits/*.toml``): reading and validation into a frozen :class:`FitSpec`.

The file is read with :mod:`tomllib`; every table and key is checked against an allow-list, every value
against its rule, and every name against the model (parameters, outputs, compartments).  Checks that need
the dataset (DVIDs, covariate columns, BLQ records) are done when the problem is built
(:mod:`pkmodel.fitting._problem`).  Every failure raises :class:`~pkmodel.errors.SpecError` naming the
file, the key, the rule and the fix.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkmodel.errors import ModelFileError, SpecError
from pkmodel.model import Model, load_model, models_dir

__all__ = [
    "BLQ_METHODS",
    "COVARIATE_KINDS",
    "METHODS",
    "RESIDUAL_MODELS",
    "CovariateSpec",
    "FitSpec",
    "Options",
    "ParameterSpec",
    "ResidualSpec",
    "load_fit_spec",
]

METHODS = ("foce-i", "foce", "fo", "individual")
RESIDUAL_MODELS = ("additive", "proportional", "combined", "log-additive")
COVARIATE_KINDS = ("power", "linear", "exponential")
BLQ_METHODS = ("M3", "drop")
ENGINES = ("auto", "exact", "ode")
DEFAULT_OMEGA = 0.1  # initial variance of an η when [omega.init] does not give one (≈ 32 % CV)

_TOP = {"fit", "options", "data", "parameters", "omega", "residual", "blq"}
_FIT = {"model", "data", "method", "seed", "description"}
_OPTIONS = {"covariance", "gtol", "max_iterations", "fo_start", "engine"}
_EXAMPLE_PREFIX = "example:"  # fit.data = "example:esg401_phase1": a dataset shipped in pkmodel.examples
_DATA = {"compartments", "dvid", "exclude_dvid", "dose_unit", "covariate_values"}
_PARAMETER = {"theta", "bounds", "fixed", "eta", "covariates"}
_COVARIATE = {"kind", "ref", "theta", "estimate", "bounds"}
_OMEGA = {"blocks", "init"}
_RESIDUAL = {"model", "additive", "proportional", "fixed"}
_BLQ = {"method"}


@dataclass(frozen=True)
class CovariateSpec:
    """A covariate effect on a parameter's typical value.

    ``power``: ``(cov/ref)**θ``; ``linear``: ``1 + θ·(cov − ref)``; ``exponential``: ``exp(θ·(cov − ref))``.
    The theta is named ``f"{parameter}_{covariate}"`` (e.g. ``CL_WT``).
    """

    covariate: str
    kind: str
    reference: float
    theta: float
    estimate: bool
    lower: float = -math.inf
    upper: float = math.inf


@dataclass(frozen=True)
class ParameterSpec:
    """One model parameter listed under ``[parameters.NAME]``.

    Attributes
    ----------
    name : str
        The model parameter.
    theta : float
        Initial (or fixed) typical value, in the model's unit divided by any covariate effect's unit
        (e.g. L/h/kg for ``CL = θ·WT``).
    lower, upper : float
        Bounds of θ.
    fixed : bool
        θ is not estimated.
    eta : str or None
        Name of the parameter whose random effect this one carries (itself for its own η; another
        parameter's name to share that η); None without a random effect.
    covariates : tuple of CovariateSpec
    """

    name: str
    theta: float
    lower: float
    upper: float
    fixed: bool = False
    eta: str | None = None
    covariates: tuple[CovariateSpec, ...] = ()

    @property
    def eta_name(self) -> str | None:
        """Name of the η used by the estimation engine (``eta_<owner>``), or None."""
        return None if self.eta is None else f"eta_{self.eta}"


@dataclass(frozen=True)
class ResidualSpec:
    """Residual error model of one model output (``[residual.OUTPUT]``); SDs, not variances."""

    output: str
    model: str
    additive: float | None
    proportional: float | None
    fix_additive: bool = False
    fix_proportional: bool = False


@dataclass(frozen=True)
class Options:
    """Numerical options (``[options]``)."""

    covariance: bool = True
    gtol: float = 1.0e-3
    max_iterations: int = 500
    fo_start: bool = False
    engine: str = "auto"


@dataclass(frozen=True)
class FitSpec:
    """A validated fit specification.

    Attributes
    ----------
    path : Path
        The spec file (absolute).
    sha256 : str
        SHA-256 of the spec file's bytes.
    model : Model
        The loaded model.
    model_path : Path
    data_path : Path
    method : {"foce-i", "foce", "fo", "individual"}
    seed : int or None
        Recorded with the results (the estimation methods draw no random numbers).
    description : str
    options : Options
    compartments : tuple of str
        CMT numbers 1, 2, ... name these compartments (default: the model's state order).
    dvid : dict of str to str, or None
        DVID value (as text) → model output; None: DVIDs must be output names (or the single output).
    exclude_dvid : tuple of str
        DVID values whose observations are left out of the fit (counted and reported in the notes),
        e.g. ``("ANC",)`` for a PK fit of a dataset that also holds blood counts.
    dose_unit : str
        Unit of AMT (``"mg"``, ``"mg/kg"``, ...).
    covariate_values : dict of str to float
        Model covariates given one value for every subject (when the dataset has no such column).
    parameters : tuple of ParameterSpec
        In file order.
    omega_blocks : tuple of tuple of str
        Groups of parameters (each with its own η) whose η are correlated (full Ω block).
    omega_init : dict of tuple of str to float
        Initial variances ``(P,)`` and covariances ``(P, Q)`` of the η, by owning parameter.
    residual : tuple of ResidualSpec
        In file order (the order of the outputs in the estimation problem).
    blq_method : {"M3", "drop"}
    """

    path: Path
    sha256: str
    model: Model = field(repr=False)
    model_path: Path
    data_path: Path
    method: str
    seed: int | None
    description: str
    options: Options
    compartments: tuple[str, ...]
    dvid: dict[str, str] | None
    dose_unit: str
    covariate_values: dict[str, float]
    parameters: tuple[ParameterSpec, ...]
    omega_blocks: tuple[tuple[str, ...], ...]
    omega_init: dict[tuple[str, ...], float]
    residual: tuple[ResidualSpec, ...]
    blq_method: str
    exclude_dvid: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The spec's file name without ``.toml`` (names the default results folder)."""
        return self.path.stem

    @property
    def default_results_dir(self) -> Path:
        """``results/<name>/`` next to the spec file."""
        return self.path.parent / "results" / self.name

    def parameter(self, name: str) -> ParameterSpec:
        """The :class:`ParameterSpec` of a listed parameter."""
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def eta_owners(self) -> tuple[str, ...]:
        """Parameters with their own η, in file order."""
        return tuple(p.name for p in self.parameters if p.eta == p.name)


# ------------------------------------------------------------------------------------------ reading


class _Reader:
    """Helpers that raise SpecError with the file and key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, message: str) -> SpecError:
        where = f"{self.path}: key '{key}'" if key else str(self.path)
        return SpecError(f"{where}: {message}")

    def table(self, value: Any, key: str, allowed: set[str] | None, required: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__} {value!r}; write [{key}]")
        unknown = sorted(set(value) - allowed) if allowed is not None else []
        if unknown:
            raise self.fail(
                f"{key}.{unknown[0]}" if key else unknown[0],
                f"unknown key {unknown[0]!r}; allowed keys here: {', '.join(sorted(allowed))}",
            )
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(key, f"missing required key {missing[0]!r}; add {missing[0]} = ...")
        return value

    def number(self, value: Any, key: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise self.fail(key, f"must be finite, got {value!r}")
        if positive and number <= 0:
            raise self.fail(key, f"must be > 0, got {value!r}")
        return number

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be non-empty text, got {value!r}")
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        text = self.text(value, key)
        if text not in choices:
            close = [c for c in choices if c.lower() == text.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.fail(key, f"{text!r} is not one of {', '.join(choices)}{hint}")
        return text

    def bounds(self, value: Any, key: str) -> tuple[float, float]:
        if not isinstance(value, list) or len(value) != 2:
            raise self.fail(key, f"must be a list [lower, upper], got {value!r}")
        lower, upper = (
            -math.inf if v == "-inf" else math.inf if v == "inf" else self.number(v, f"{key}[{i}]")
            for i, v in enumerate(value)
        )
        if not lower < upper:
            raise self.fail(
                key,
                f"lower bound {value[0]!r} is not below upper bound {value[1]!r}; write [lower, upper] "
                "with lower < upper (bounds are never swapped)",
            )
        return lower, upper


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resolve_model(reader: _Reader, value: Any) -> tuple[Model, Path]:
    text = reader.text(value, "fit.model")
    candidate = (reader.path.parent / text) if text.endswith(".toml") else None
    try:
        if candidate is not None and candidate.exists():
            path = candidate.resolve()
        elif candidate is not None:
            raise reader.fail(
                "fit.model",
                f"model file {text!r} does not exist (looked for {candidate}); give a path relative to the "
                "spec file, or the name of a shipped model without .toml",
            )
        else:
            path = models_dir() / f"{text}.toml"
            if not path.exists():
                from pkmodel.model import list_models

                names = ", ".join(n for n, _ in list_models())
                raise reader.fail(
                    "fit.model",
                    f"no shipped model named {text!r}; shipped models: {names}; or give a path ending in "
                    ".toml relative to the spec file",
                )
        model = load_model(path)
    except ModelFileError as exc:
        raise reader.fail("fit.model", f"the model file is invalid: {exc}") from None
    return model, path


def _read_parameter(
    reader: _Reader, name: str, table: Any, model: Model, method: str
) -> tuple[ParameterSpec, Any]:
    key = f"parameters.{name}"
    if name not in model.parameters:
        listed = ", ".join(n for n, p in model.parameters.items() if not p.fixed)
        raise reader.fail(
            key,
            f"{name!r} is not a parameter of model {model.name}; its parameters are {listed}. Correct the "
            "name (names are case-sensitive)",
        )
    table = reader.table(table, key, _PARAMETER)
    mpar = model.parameters[name]
    fixed = reader.boolean(table.get("fixed", False), f"{key}.fixed")
    if mpar.fixed and not fixed:
        raise reader.fail(
            key,
            f"{name} is a constant of model {model.name} (fixed = true in the model file) and cannot be "
            "estimated; remove the table, or set fixed = true to use another value",
        )
    theta = reader.number(table["theta"], f"{key}.theta") if "theta" in table else float(mpar.value)
    covariates = []
    raw_covs = table.get("covariates", {})
    if not isinstance(raw_covs, dict):
        raise reader.fail(
            f"{key}.covariates",
            'must be a table of covariate name → effect, e.g. { WT = { kind = "power", ref = 70, '
            "theta = 0.75 } }",
        )
    for cov, effect in raw_covs.items():
        ckey = f"{key}.covariates.{cov}"
        effect = reader.table(effect, ckey, _COVARIATE, {"kind", "ref", "theta"})
        kind = reader.choice(effect["kind"], f"{ckey}.kind", COVARIATE_KINDS)
        ref = reader.number(effect["ref"], f"{ckey}.ref", positive=(kind == "power"))
        ctheta = reader.number(effect["theta"], f"{ckey}.theta")
        estimate = reader.boolean(effect.get("estimate", True), f"{ckey}.estimate")
        lower, upper = (
            reader.bounds(effect["bounds"], f"{ckey}.bounds") if "bounds" in effect else (-math.inf, math.inf)
        )
        if estimate and not lower < ctheta < upper:
            raise reader.fail(
                f"{ckey}.theta",
                f"initial value {ctheta} is not strictly inside the bounds [{lower}, {upper}]; move it inside",
            )
        if estimate and method == "individual":
            raise reader.fail(
                f"{ckey}.estimate",
                "a covariate effect cannot be estimated in individual fits (each subject has its own "
                "parameters); set estimate = false or use a population method",
            )
        covariates.append(CovariateSpec(cov.upper(), kind, ref, ctheta, estimate, lower, upper))
    if "bounds" in table:
        lower, upper = reader.bounds(table["bounds"], f"{key}.bounds")
    elif covariates:
        lower, upper = (mpar.lower if mpar.lower == 0 else -math.inf), math.inf
    else:
        lower, upper = mpar.lower, mpar.upper
    if not fixed and not lower < theta < upper:
        raise reader.fail(
            f"{key}.theta",
            f"initial value {theta} is not strictly inside the bounds [{lower}, {upper}]"
            + (" (the model's bounds; no bounds given in the spec)" if "bounds" not in table else "")
            + "; move theta inside or widen the bounds",
        )
    eta_raw = table.get("eta", False)
    if isinstance(eta_raw, bool):
        eta = name if eta_raw else None
    elif isinstance(eta_raw, str):
        eta = eta_raw
    else:
        raise reader.fail(
            f"{key}.eta",
            f"must be true (own log-normal random effect), false, or the name of another parameter whose "
            f"random effect this one shares; got {eta_raw!r}",
        )
    if eta is not None and fixed:
        raise reader.fail(
            f"{key}.eta",
            f"parameter {name} is fixed (fixed = true) but has a random effect; a random effect needs an "
            "estimated typical value: remove eta or set fixed = false",
        )
    if eta is not None and method == "individual":
        raise reader.fail(
            f"{key}.eta",
            'random effects have no meaning in individual fits (method = "individual"); remove eta, or '
            'use method = "foce-i"',
        )
    return ParameterSpec(name, theta, lower, upper, fixed, eta, tuple(covariates)), table


def load_fit_spec(path: str | Path) -> FitSpec:
    """Read and validate a fit specification.

    Parameters
    ----------
    path : str or Path
        A ``.toml`` file.  Model and data paths inside it are relative to the file.

    Returns
    -------
    FitSpec

    Raises
    ------
    SpecError
        Naming the file, the key, the rule and the fix.

    Examples
    --------
    >>> import pkmodel.fitting as fitting
    >>> from pkmodel.model import fits_dir
    >>> spec = fitting.load_fit_spec(fits_dir() / "theoph_foce.toml")
    >>> spec.method, [p.name for p in spec.parameters], spec.eta_owners
    ('foce-i', ['KA', 'CL', 'V'], ('KA', 'CL'))
    """
    path = Path(path).resolve()
    reader = _Reader(path)
    if not path.exists():
        raise SpecError(f"{path}: the fit specification does not exist; check the path")
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from None
    reader.table(raw, "", _TOP, {"fit", "parameters", "residual"})

    fit = reader.table(raw["fit"], "fit", _FIT, {"model", "data"})
    method = reader.choice(fit.get("method", "foce-i"), "fit.method", METHODS)
    seed = fit.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise reader.fail("fit.seed", f"must be a non-negative integer, got {seed!r}")
    description = str(fit.get("description", ""))
    model, model_path = _resolve_model(reader, fit["model"])
    data_text = reader.text(fit["data"], "fit.data")
    if data_text.startswith(_EXAMPLE_PREFIX):
        from pkmodel.examples import EXAMPLES, dataset_path

        name = data_text[len(_EXAMPLE_PREFIX) :]
        if name not in EXAMPLES:
            raise reader.fail(
                "fit.data", f"no shipped example dataset named {name!r}; shipped: {', '.join(EXAMPLES)}"
            )
        data_path = dataset_path(name)
    else:
        data_path = (path.parent / data_text).resolve()
    if not data_path.exists():
        raise reader.fail(
            "fit.data",
            f"dataset {fit['data']!r} does not exist (looked for {data_path}); the path is relative "
            "to the spec file",
        )

    opt = reader.table(raw.get("options", {}), "options", _OPTIONS)
    max_iter = opt.get("max_iterations", 500)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise reader.fail("options.max_iterations", f"must be a whole number >= 1, got {max_iter!r}")
    options = Options(
        covariance=reader.boolean(opt.get("covariance", True), "options.covariance"),
        gtol=reader.number(opt.get("gtol", 1.0e-3), "options.gtol", positive=True),
        max_iterations=max_iter,
        fo_start=reader.boolean(opt.get("fo_start", False), "options.fo_start"),
        engine=reader.choice(opt.get("engine", "auto"), "options.engine", ENGINES),
    )
    if options.engine == "exact" and not model.is_linear:
        raise reader.fail(
            "options.engine",
            f"the exact engine needs a linear model; {model.name} is nonlinear "
            f'({"; ".join(model.linearity.reasons)}); use engine = "auto" or "ode"',
        )

    data = reader.table(raw.get("data", {}), "data", _DATA)
    states = model.state_names
    if "compartments" in data:
        comps = data["compartments"]
        if not isinstance(comps, list) or not comps or not all(isinstance(c, str) for c in comps):
            raise reader.fail("data.compartments", f"must be a list of compartment names, got {comps!r}")
        for i, c in enumerate(comps):
            if c not in states:
                raise reader.fail(
                    f"data.compartments[{i}]",
                    f"{c!r} is not a compartment of model {model.name}; its compartments are "
                    f"{', '.join(states)}",
                )
        compartments = tuple(comps)
    else:
        compartments = states
    dvid = None
    if "dvid" in data:
        if not isinstance(data["dvid"], dict) or not data["dvid"]:
            raise reader.fail(
                "data.dvid", 'must be a table of DVID value → model output, e.g. { 1 = "TAb", 2 = "ADC" }'
            )
        dvid = {}
        for value, output in data["dvid"].items():
            if output not in model.outputs:
                raise reader.fail(
                    f"data.dvid.{value}",
                    f"{output!r} is not an output of model {model.name}; its outputs are "
                    f"{', '.join(model.outputs)}",
                )
            dvid[str(value)] = output
    exclude_raw = data.get("exclude_dvid", [])
    if not isinstance(exclude_raw, list) or not all(isinstance(v, (str, int)) for v in exclude_raw):
        raise reader.fail("data.exclude_dvid", 'must be a list of DVID values, e.g. ["ANC"]')
    exclude_dvid = tuple(str(v) for v in exclude_raw)
    if dvid is not None:
        both = [v for v in exclude_dvid if v in dvid]
        if both:
            raise reader.fail(
                "data.exclude_dvid",
                f"DVID {both[0]!r} is both mapped in [data] dvid and excluded; remove it from one of them",
            )
    dose_unit = reader.text(data.get("dose_unit", "mg"), "data.dose_unit")
    covariate_values = {}
    raw_values = data.get("covariate_values", {})
    if not isinstance(raw_values, dict):
        raise reader.fail(
            "data.covariate_values", "must be a table of model covariate → value, e.g. { ALB = 38 }"
        )
    for cov, value in raw_values.items():
        if cov not in model.covariates:
            raise reader.fail(
                f"data.covariate_values.{cov}",
                f"{cov!r} is not a covariate of model {model.name} (its covariates: "
                f"{', '.join(model.covariates) or 'none'}); remove it",
            )
        covariate_values[cov] = reader.number(value, f"data.covariate_values.{cov}")

    params_raw = reader.table(raw["parameters"], "parameters", None)
    if not params_raw:
        raise reader.fail("parameters", "lists no parameter; add at least one [parameters.NAME] table")
    parameters = [
        _read_parameter(reader, name, table, model, method)[0] for name, table in params_raw.items()
    ]
    by_name = {p.name: p for p in parameters}
    for p in parameters:
        if p.eta is not None and p.eta != p.name:
            owner = by_name.get(p.eta)
            if owner is None or owner.eta != owner.name:
                raise reader.fail(
                    f"parameters.{p.name}.eta",
                    f"shares the random effect of {p.eta!r}, but {p.eta!r} is not a listed parameter with its "
                    f"own random effect; give [parameters.{p.eta}] eta = true, or set eta = true here",
                )
    theta_names = [p.name for p in parameters] + [
        f"{p.name}_{c.covariate}" for p in parameters for c in p.covariates
    ]
    seen = set()
    for t in theta_names:
        if t in seen:
            raise reader.fail(
                "parameters",
                f"theta name {t!r} arises twice (a parameter and a covariate effect of the same name); "
                "rename the covariate column",
            )
        seen.add(t)
    owners = [p.name for p in parameters if p.eta == p.name]
    if method in ("foce-i", "foce", "fo") and not owners:
        raise reader.fail(
            "parameters",
            f"method {method!r} is a population method but no parameter has a random effect; give at least "
            'one parameter eta = true, or use method = "individual"',
        )

    omega = reader.table(raw.get("omega", {}), "omega", _OMEGA)
    blocks: list[tuple[str, ...]] = []
    in_block: dict[str, int] = {}
    raw_blocks = omega.get("blocks", [])
    if not isinstance(raw_blocks, list):
        raise reader.fail("omega.blocks", 'must be a list of lists of parameter names, e.g. [["KA", "CL"]]')
    for b, block in enumerate(raw_blocks):
        bkey = f"omega.blocks[{b}]"
        if not isinstance(block, list) or len(block) < 2 or not all(isinstance(x, str) for x in block):
            raise reader.fail(bkey, f"must list at least two parameter names, got {block!r}")
        for name in block:
            if name not in owners:
                raise reader.fail(
                    bkey,
                    f"{name!r} has no random effect of its own (parameters with eta = true: "
                    f"{', '.join(owners) or 'none'}); list only those",
                )
            if name in in_block:
                raise reader.fail(
                    bkey, f"{name!r} is already in omega.blocks[{in_block[name]}]; list it once"
                )
            in_block[name] = b
        blocks.append(tuple(block))
    init_raw = omega.get("init", {})
    if not isinstance(init_raw, dict):
        raise reader.fail("omega.init", 'must be a table: KA = 0.3 (variance), "KA,CL" = 0.01 (covariance)')
    omega_init: dict[tuple[str, ...], float] = {}
    for k, value in init_raw.items():
        names = tuple(s.strip() for s in k.split(","))
        ikey = f"omega.init.{k}"
        if len(names) == 1:
            if names[0] not in owners:
                raise reader.fail(
                    ikey,
                    f"{names[0]!r} has no random effect of its own; parameters with eta = true: "
                    f"{', '.join(owners) or 'none'}",
                )
            omega_init[names] = reader.number(value, ikey, positive=True)
        elif len(names) == 2:
            a, b2 = names
            if a not in in_block or b2 not in in_block or in_block[a] != in_block[b2] or a == b2:
                raise reader.fail(
                    ikey,
                    f"a covariance needs two different parameters of the same omega block; {a!r} and "
                    f'{b2!r} are not (declare [omega] blocks = [["{a}", "{b2}"]])',
                )
            omega_init[(a, b2)] = reader.number(value, ikey)
        else:
            raise reader.fail(ikey, 'use a parameter name (variance) or "A,B" (covariance)')

    residual_raw = reader.table(raw["residual"], "residual", None)
    residual = []
    for output, table in residual_raw.items():
        rkey = f"residual.{output}"
        if output not in model.outputs:
            raise reader.fail(
                rkey,
                f"{output!r} is not an output of model {model.name}; its outputs are "
                f"{', '.join(model.outputs)}",
            )
        table = reader.table(table, rkey, _RESIDUAL, {"model"})
        kind = reader.choice(table["model"], f"{rkey}.model", RESIDUAL_MODELS)
        needs = {
            "additive": ("additive",),
            "proportional": ("proportional",),
            "combined": ("additive", "proportional"),
            "log-additive": ("additive",),
        }[kind]
        values: dict[str, float | None] = {"additive": None, "proportional": None}
        for comp in ("additive", "proportional"):
            if comp in needs:
                if comp not in table:
                    raise reader.fail(
                        rkey, f"the {kind} model needs an initial SD: add {comp} = ... (a standard deviation)"
                    )
                values[comp] = reader.number(table[comp], f"{rkey}.{comp}", positive=True)
            elif comp in table:
                raise reader.fail(f"{rkey}.{comp}", f"the {kind} model has no {comp} component; remove it")
        fixed_raw = table.get("fixed", False)
        if isinstance(fixed_raw, bool):
            fixed_set = set(needs) if fixed_raw else set()
        elif isinstance(fixed_raw, list) and all(c in needs for c in fixed_raw):
            fixed_set = set(fixed_raw)
        else:
            raise reader.fail(
                f"{rkey}.fixed",
                f"must be true, false or a list of components of this model ({', '.join(needs)})",
            )
        residual.append(
            ResidualSpec(
                output,
                kind,
                values["additive"],
                values["proportional"],
                "additive" in fixed_set,
                "proportional" in fixed_set,
            )
        )
    if not residual:
        raise reader.fail("residual", 'gives no residual error model; add [residual.OUTPUT] model = "..."')

    blq = reader.table(raw.get("blq", {}), "blq", _BLQ)
    blq_method = reader.choice(blq.get("method", "M3"), "blq.method", BLQ_METHODS)

    return FitSpec(
        path=path,
        sha256=_sha256(path),
        model=model,
        model_path=model_path,
        data_path=data_path,
        method=method,
        seed=seed,
        description=description,
        options=options,
        compartments=compartments,
        dvid=dvid,
        exclude_dvid=exclude_dvid,
        dose_unit=dose_unit,
        covariate_values=covariate_values,
        parameters=tuple(parameters),
        omega_blocks=tuple(blocks),
        omega_init=omega_init,
        residual=tuple(residual),
        blq_method=blq_method,
    )
