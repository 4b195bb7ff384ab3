"""The abstract estimation problem: subjects, parameter model, random effects and residual error.

Nothing here knows about compartments, doses or files.  A caller describes

* the data of each subject (:class:`Subject`): observations, which output (analyte) each one belongs to,
  a lower limit of quantification per observation, covariates and an opaque payload (times, doses, ...)
  that only the caller's prediction function reads;
* the fixed effects (:class:`Theta`) and how they, the random effects and the covariates make the
  individual parameters (:class:`IndividualParameter`, :class:`CovariateEffect`);
* the random-effect covariance (:class:`OmegaBlock`) and the residual error of each output
  (:class:`ResidualError`);
* a prediction function ``predict(subject, params) -> ndarray (n_obs,)`` and, optionally, a batched one
  ``predict_batch(subject, params_with_arrays) -> ndarray (k, n_obs)`` and one for many subjects at once,
  ``predict_many(subjects, params_with_arrays) -> ndarray (M, k, L)``.

All objects are frozen and check themselves on construction; bad input raises
:class:`pkmodel.errors.EstimationError` naming the item, the rule and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from pkmodel.errors import EstimationError

__all__ = [
    "CovariateEffect",
    "IndividualParameter",
    "OmegaBlock",
    "PopulationProblem",
    "ResidualError",
    "Subject",
    "Theta",
]

RESIDUAL_MODELS = ("additive", "proportional", "combined", "log-additive")
COVARIATE_FORMS = ("power", "linear", "exponential")
ETA_FORMS = ("exponential", "additive")


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _as_float_vector(values: Any, what: str, n: int | None = None) -> np.ndarray:
    array = np.array(values, dtype=float, copy=True)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise EstimationError(
            f"{what}: expected a 1-D array, got shape {array.shape}; pass one value per row"
        )
    if n is not None and array.shape[0] != n:
        raise EstimationError(
            f"{what}: has {array.shape[0]} values but there are {n} observations; pass one per observation"
        )
    return array


@dataclass(frozen=True)
class Subject:
    """The observations of one subject, as the estimation engine sees them.

    Parameters
    ----------
    id : str or int
        Subject identifier (used in messages and output tables).
    dv : array_like, shape (n_obs,)
        Observed values, in the unit of their output (e.g. µg/mL).  For a censored (BLQ) observation the
        value is not used and may be NaN.
    time : array_like, shape (n_obs,), optional
        Observation times (h); only copied to the output tables.  NaN when not given.
    output : array_like of int, shape (n_obs,), optional
        Which output (analyte) each observation belongs to; each output has its own residual error model
        (:class:`ResidualError`).  Default: all 0.
    lloq : array_like, shape (n_obs,), optional
        Lower limit of quantification of each observation, same unit as ``dv``; NaN where there is none.
    blq : array_like of bool, shape (n_obs,), optional
        True where the observation is below the LLOQ and is to be treated as censored (Beal's M3:
        likelihood ``Φ((LLOQ − f)/sd)``).  Default: ``dv < lloq`` wherever an LLOQ is given.
    covariates : mapping of str to float, optional
        Subject-level covariates (e.g. ``{"WT": 70.0}``).
    data : object, optional
        Anything the prediction function needs (times, doses, ...); the engine passes it through untouched.

    Raises
    ------
    EstimationError
        On shape mismatches, non-finite observed values, BLQ flags without an LLOQ, or an observation
        below its LLOQ that is not flagged BLQ (contradiction: flag it, or remove the LLOQ).

    Examples
    --------
    >>> s = Subject(id=1, dv=[2.0, 1.0, 0.1], time=[1.0, 2.0, 8.0], lloq=[0.2, 0.2, 0.2])
    >>> s.blq.tolist(), s.n_obs
    ([False, False, True], 3)
    """

    id: str | int
    dv: np.ndarray
    time: np.ndarray | None = None
    output: np.ndarray | None = None
    lloq: np.ndarray | None = None
    blq: np.ndarray | None = None
    covariates: Mapping[str, float] = field(default_factory=dict)
    data: Any = None

    def __post_init__(self) -> None:
        where = f"subject {self.id!r}"
        dv = _as_float_vector(self.dv, f"{where}: dv")
        n = dv.shape[0]
        if n == 0:
            raise EstimationError(f"{where}: has no observations; drop the subject from the problem")
        time = np.full(n, np.nan) if self.time is None else _as_float_vector(self.time, f"{where}: time", n)
        if self.output is None:
            output = np.zeros(n, dtype=int)
        else:
            raw = np.asarray(self.output)
            if raw.ndim != 1 or raw.shape[0] != n:
                raise EstimationError(f"{where}: output must have one integer per observation ({n})")
            if not np.all(np.equal(np.mod(raw, 1), 0)) or np.any(raw < 0):
                raise EstimationError(f"{where}: output indices must be non-negative integers, got {raw}")
            output = raw.astype(int)
        lloq = np.full(n, np.nan) if self.lloq is None else _as_float_vector(self.lloq, f"{where}: lloq", n)
        if np.any(np.isinf(lloq)):
            raise EstimationError(f"{where}: lloq must be finite or NaN (no LLOQ); got an infinite value")
        has_lloq = np.isfinite(lloq)
        with np.errstate(invalid="ignore"):
            below = has_lloq & (dv < lloq)
        if self.blq is None:
            blq = below
        else:
            blq = np.asarray(self.blq)
            if blq.ndim != 1 or blq.shape[0] != n or blq.dtype != bool:
                raise EstimationError(f"{where}: blq must be a boolean array with one flag per observation")
            blq = blq.copy()
            missing = np.flatnonzero(blq & ~has_lloq)
            if missing.size:
                raise EstimationError(
                    f"{where}: observation(s) {missing.tolist()} (0-based) are flagged BLQ but have no LLOQ; "
                    "give their lloq or clear the flag"
                )
            unflagged = np.flatnonzero(below & ~blq)
            if unflagged.size:
                raise EstimationError(
                    f"{where}: observation(s) {unflagged.tolist()} (0-based) are below their LLOQ but not "
                    "flagged BLQ; flag them (censored, M3) or remove their LLOQ"
                )
        bad = np.flatnonzero(~blq & ~np.isfinite(dv))
        if bad.size:
            raise EstimationError(
                f"{where}: observation(s) {bad.tolist()} (0-based) have a non-finite dv and are not BLQ; "
                "remove them or flag them BLQ with an LLOQ"
            )
        covariates = {}
        for key, value in dict(self.covariates).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise EstimationError(f"{where}: covariate {key!r}={value!r} is not a number") from None
            if not math.isfinite(number):
                raise EstimationError(f"{where}: covariate {key!r}={value!r} is not finite; impute it first")
            covariates[key] = number
        object.__setattr__(self, "dv", _readonly(dv))
        object.__setattr__(self, "time", _readonly(time))
        object.__setattr__(self, "output", _readonly(output))
        object.__setattr__(self, "lloq", _readonly(lloq))
        object.__setattr__(self, "blq", _readonly(blq))
        object.__setattr__(self, "covariates", covariates)

    @property
    def n_obs(self) -> int:
        """Number of observation records (including BLQ ones)."""
        return int(self.dv.shape[0])

    def replace(self, **changes: Any) -> Subject:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Theta:
    """A fixed-effect parameter (THETA).

    Parameters
    ----------
    name : str
        Unique name, e.g. ``"CL"``.
    initial : float
        Initial estimate; must lie strictly inside the bounds.
    lower, upper : float
        Bounds.  The optimiser works on a transformed scale: ``log(θ − lower)`` when only a lower bound is
        given (``lower=0`` makes ``log θ``), a logit when both are finite, θ itself when neither.
    fixed : bool
        Keep the value fixed at ``initial``.

    Examples
    --------
    >>> Theta("CL", 0.04, lower=0.0).initial
    0.04
    """

    name: str
    initial: float
    lower: float = -math.inf
    upper: float = math.inf
    fixed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise EstimationError(f"theta name must be a non-empty string, got {self.name!r}")
        for attr in ("initial", "lower", "upper"):
            value = getattr(self, attr)
            try:
                object.__setattr__(self, attr, float(value))
            except (TypeError, ValueError):
                raise EstimationError(f"theta {self.name!r}: {attr}={value!r} is not a number") from None
        if math.isnan(self.lower) or math.isnan(self.upper) or not math.isfinite(self.initial):
            raise EstimationError(f"theta {self.name!r}: initial must be finite and bounds not NaN")
        if not self.lower < self.upper:
            raise EstimationError(
                f"theta {self.name!r}: lower={self.lower} is not below upper={self.upper}; fix the bounds "
                "(they are never swapped silently)"
            )
        if not self.fixed and not (self.lower < self.initial < self.upper):
            raise EstimationError(
                f"theta {self.name!r}: initial={self.initial} is not strictly inside "
                f"({self.lower}, {self.upper}); move the initial value inside the bounds"
            )


@dataclass(frozen=True)
class CovariateEffect:
    """How one covariate multiplies a typical value.

    ``power``: ``(cov/reference)**θ``; ``linear``: ``1 + θ·(cov − reference)``;
    ``exponential``: ``exp(θ·(cov − reference))``, where θ is the theta named ``theta``.

    Examples
    --------
    >>> CovariateEffect("WT", theta="CL_WT", reference=70.0).form
    'power'
    """

    covariate: str
    theta: str
    reference: float
    form: Literal["power", "linear", "exponential"] = "power"

    def __post_init__(self) -> None:
        if self.form not in COVARIATE_FORMS:
            raise EstimationError(
                f"covariate effect of {self.covariate!r}: form {self.form!r} is unknown; use one of "
                f"{', '.join(COVARIATE_FORMS)}"
            )
        reference = float(self.reference)
        if not math.isfinite(reference) or (self.form == "power" and reference <= 0):
            raise EstimationError(
                f"covariate effect of {self.covariate!r}: reference={self.reference!r} must be finite "
                "(and > 0 for a power model)"
            )
        object.__setattr__(self, "reference", reference)


@dataclass(frozen=True)
class IndividualParameter:
    """How one individual parameter is built from thetas, a random effect and covariates.

    Typical value: ``θ[theta] · Π effect(cov)`` (see :class:`CovariateEffect`), or, when ``typical`` is a
    callable, ``typical(thetas, covariates)`` with both arguments dicts of name → float.
    Individual value: ``typical · exp(η)`` (``eta_form="exponential"``, log-normal, the default),
    ``typical + η`` (``"additive"``), or the typical value when ``eta`` is None.

    Parameters
    ----------
    name : str
        The name the prediction function receives, e.g. ``"CL"``.
    theta : str, optional
        Name of the theta that is the typical value (required unless ``typical`` is given).
    eta : str, optional
        Name of the random effect (declared in an :class:`OmegaBlock`).
    covariates : sequence of CovariateEffect
        Multiplicative covariate effects on the typical value (only with ``theta``).
    typical : callable, optional
        ``typical(thetas: dict, covariates: dict) -> float``, replacing theta and covariates.
    eta_form : {"exponential", "additive"}
        How the random effect enters.

    Examples
    --------
    >>> IndividualParameter("CL", theta="CL", eta="eta_CL").eta_form
    'exponential'
    """

    name: str
    theta: str | None = None
    eta: str | None = None
    covariates: Sequence[CovariateEffect] = ()
    typical: Callable[[Mapping[str, float], Mapping[str, float]], float] | None = None
    eta_form: Literal["exponential", "additive"] = "exponential"

    def __post_init__(self) -> None:
        if (self.theta is None) == (self.typical is None):
            raise EstimationError(
                f"parameter {self.name!r}: give exactly one of theta (typical value = θ·covariate effects) "
                "or typical (a callable)"
            )
        if self.typical is not None and self.covariates:
            raise EstimationError(
                f"parameter {self.name!r}: covariate effects are only applied with theta; put them inside "
                "the typical callable instead"
            )
        if self.eta_form not in ETA_FORMS:
            raise EstimationError(
                f"parameter {self.name!r}: eta_form {self.eta_form!r} is unknown; use one of "
                f"{', '.join(ETA_FORMS)}"
            )
        effects = tuple(self.covariates)
        for effect in effects:
            if not isinstance(effect, CovariateEffect):
                raise EstimationError(f"parameter {self.name!r}: covariates must be CovariateEffect objects")
        object.__setattr__(self, "covariates", effects)


@dataclass(frozen=True)
class OmegaBlock:
    """Random effects and their covariance (a block of Ω).

    Parameters
    ----------
    etas : sequence of str
        Names of the random effects in this block.
    initial : array_like
        Initial variances, shape (k,) (diagonal) or a full covariance matrix, shape (k, k) (block).
    diagonal : bool, optional
        True: independent etas (only variances estimated).  False: a full block (variances and
        covariances).  Default: True when ``initial`` is 1-D, False when it is 2-D.
    fixed : bool
        Keep the whole block at its initial value.

    Examples
    --------
    >>> OmegaBlock(("eta_KA", "eta_CL"), [0.4, 0.03]).matrix.tolist()
    [[0.4, 0.0], [0.0, 0.03]]
    """

    etas: Sequence[str]
    initial: Any
    diagonal: bool | None = None
    fixed: bool = False

    def __post_init__(self) -> None:
        etas = tuple(self.etas)
        if not etas or len(set(etas)) != len(etas):
            raise EstimationError(f"omega block {etas}: needs at least one eta and no duplicate names")
        k = len(etas)
        initial = np.array(self.initial, dtype=float, copy=True)
        if initial.ndim == 0:
            initial = initial.reshape(1)
        if initial.ndim == 1:
            if initial.shape != (k,):
                raise EstimationError(f"omega block {etas}: {initial.shape[0]} variances for {k} etas")
            matrix = np.diag(initial)
        elif initial.ndim == 2 and initial.shape == (k, k):
            matrix = initial
        else:
            raise EstimationError(
                f"omega block {etas}: initial has shape {initial.shape}; use ({k},) or ({k},{k})"
            )
        diagonal = (initial.ndim == 1) if self.diagonal is None else bool(self.diagonal)
        if not np.all(np.isfinite(matrix)) or not np.allclose(matrix, matrix.T, rtol=1e-12, atol=0):
            raise EstimationError(f"omega block {etas}: initial matrix must be finite and symmetric")
        if diagonal and np.any(matrix[~np.eye(k, dtype=bool)] != 0):
            raise EstimationError(
                f"omega block {etas}: diagonal=True but the initial matrix has non-zero covariances; "
                "use diagonal=False for a full block"
            )
        try:
            np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            raise EstimationError(
                f"omega block {etas}: initial matrix is not positive definite (eigenvalues "
                f"{np.linalg.eigvalsh(matrix).round(6).tolist()}); give positive variances and "
                "correlations inside (−1, 1)"
            ) from None
        object.__setattr__(self, "etas", etas)
        object.__setattr__(self, "initial", _readonly(matrix.copy()))
        object.__setattr__(self, "diagonal", diagonal)

    @property
    def matrix(self) -> np.ndarray:
        """The initial covariance matrix, shape (k, k)."""
        return np.array(self.initial)


@dataclass(frozen=True)
class ResidualError:
    """Residual error model of one output (analyte).

    ===============  ==============================  ============================
    model            SD of an observation            parameters (SDs)
    ===============  ==============================  ============================
    additive         ``a``                           ``additive``
    proportional     ``b·f``                         ``proportional``
    combined         ``sqrt(a² + b²·f²)``            ``additive``, ``proportional``
    log-additive     ``a`` on ``log(DV)`` vs ``log f``  ``additive``
    ===============  ==============================  ============================

    ``a`` has the unit of the observations (on the log scale for log-additive it is dimensionless, ≈ CV);
    ``b`` is dimensionless (a CV).  Both are estimated as standard deviations; results also report the
    variances (NONMEM's SIGMA when EPS enters as ``a·EPS``).

    Parameters
    ----------
    model : {"additive", "proportional", "combined", "log-additive"}
    additive, proportional : float, optional
        Initial SDs (required exactly for the components of ``model``).
    output : int
        The output index (``Subject.output``) this model applies to.
    name : str, optional
        Label used in parameter names and tables (default ``f"y{output}"``).
    fix_additive, fix_proportional : bool
        Keep a component at its initial value.

    Examples
    --------
    >>> ResidualError("combined", additive=0.1, proportional=0.2).parameter_names
    ('y0_add', 'y0_prop')
    """

    model: Literal["additive", "proportional", "combined", "log-additive"]
    additive: float | None = None
    proportional: float | None = None
    output: int = 0
    name: str | None = None
    fix_additive: bool = False
    fix_proportional: bool = False

    def __post_init__(self) -> None:
        if self.model not in RESIDUAL_MODELS:
            raise EstimationError(
                f"residual error model {self.model!r} is unknown; use one of {', '.join(RESIDUAL_MODELS)}"
            )
        needs_add = self.model in ("additive", "combined", "log-additive")
        needs_prop = self.model in ("proportional", "combined")
        label = self.name if self.name is not None else f"y{self.output}"
        where = f"residual error of output {self.output} ({label!r}, {self.model})"
        for attr, needed in (("additive", needs_add), ("proportional", needs_prop)):
            value = getattr(self, attr)
            if needed and value is None:
                raise EstimationError(f"{where}: needs an initial {attr} SD; give {attr}=...")
            if not needed and value is not None:
                raise EstimationError(f"{where}: has no {attr} component; drop {attr}={value!r}")
            if needed and not (math.isfinite(float(value)) and float(value) > 0):
                raise EstimationError(f"{where}: {attr} SD must be finite and > 0, got {value!r}")
        if not isinstance(self.output, int | np.integer) or self.output < 0:
            raise EstimationError(f"{where}: output must be a non-negative int")
        object.__setattr__(self, "name", label)

    @property
    def components(self) -> tuple[str, ...]:
        """The SD components of this model: a subset of ``("add", "prop")``."""
        return tuple(
            c
            for c, present in (("add", self.additive is not None), ("prop", self.proportional is not None))
            if present
        )

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the SD parameters, e.g. ``("y0_add", "y0_prop")``."""
        return tuple(f"{self.name}_{c}" for c in self.components)


@dataclass(frozen=True)
class PopulationProblem:
    """A complete population estimation problem.

    Parameters
    ----------
    subjects : sequence of Subject
    thetas : sequence of Theta
    parameters : sequence of IndividualParameter
        The individual parameters passed to the prediction function, by name.
    omega : sequence of OmegaBlock
        The blocks of Ω (block-diagonal overall); may be empty (no random effects).
    residual : sequence of ResidualError
        One per output index used by the subjects.
    predict : callable, optional
        ``predict(subject, params: dict[str, float]) -> ndarray (n_obs,)``, the prediction of each
        observation of ``subject`` (in its output's unit) for one set of individual parameters.
    predict_batch : callable, optional
        ``predict_batch(subject, params: dict[str, ndarray (k,)]) -> ndarray (k, n_obs)``: k parameter sets
        at once (much faster: the engine evaluates finite-difference stencils in one call).  At least one
        of ``predict`` and ``predict_batch`` is required.
    predict_many : callable, optional
        ``predict_many(subjects, params: dict[str, ndarray (M, K)]) -> ndarray (M, K, L)``: K parameter
        sets for each of M subjects at once, ``L >= max n_obs`` (entries past a subject's ``n_obs`` are
        ignored; so are the predictions of NaN parameter sets, which pad subjects with fewer sets).  When given, the population engine uses it for every prediction (one call per
        estimation step instead of one per subject); :class:`pkmodel.fitting.FitProblem` provides it
        for linear models.  It must agree with ``predict_batch``/``predict``.

    Raises
    ------
    EstimationError
        On duplicate names, references to undeclared thetas/etas/covariates, etas that no parameter uses,
        outputs without a residual model, or no prediction function.

    Examples
    --------
    >>> import numpy as np
    >>> subjects = [Subject(i, dv=[1.0 + i, 2.0 + i]) for i in range(3)]
    >>> problem = PopulationProblem(
    ...     subjects, thetas=[Theta("BASE", 1.0)],
    ...     parameters=[IndividualParameter("B", theta="BASE", eta="eta_B", eta_form="additive")],
    ...     omega=[OmegaBlock(["eta_B"], [1.0])], residual=[ResidualError("additive", additive=1.0)],
    ...     predict=lambda subject, p: np.full(subject.n_obs, p["B"]))
    >>> problem.n_obs, problem.eta_names
    (6, ('eta_B',))
    """

    subjects: Sequence[Subject]
    thetas: Sequence[Theta]
    parameters: Sequence[IndividualParameter]
    omega: Sequence[OmegaBlock]
    residual: Sequence[ResidualError]
    predict: Callable[[Subject, dict[str, float]], np.ndarray] | None = None
    predict_batch: Callable[[Subject, dict[str, np.ndarray]], np.ndarray] | None = None
    predict_many: Callable[[Sequence[Subject], dict[str, np.ndarray]], np.ndarray] | None = None

    def __post_init__(self) -> None:
        subjects = tuple(self.subjects)
        thetas = tuple(self.thetas)
        parameters = tuple(self.parameters)
        omega = tuple(self.omega)
        residual = tuple(self.residual)
        if not subjects:
            raise EstimationError("the problem has no subjects; give at least one Subject")
        ids = [s.id for s in subjects]
        duplicates = sorted({str(i) for i in ids if ids.count(i) > 1})
        if duplicates:
            raise EstimationError(f"subject ids must be unique; duplicated: {', '.join(duplicates)}")
        theta_names = [t.name for t in thetas]
        _unique(theta_names, "theta")
        _unique([p.name for p in parameters], "individual parameter")
        eta_names = [e for block in omega for e in block.etas]
        _unique(eta_names, "eta")
        used_etas = set()
        for p in parameters:
            if p.theta is not None and p.theta not in theta_names:
                raise EstimationError(
                    f"parameter {p.name!r}: theta {p.theta!r} is not declared; declared thetas: {theta_names}"
                )
            for effect in p.covariates:
                if effect.theta not in theta_names:
                    raise EstimationError(
                        f"parameter {p.name!r}: covariate effect of {effect.covariate!r} uses theta "
                        f"{effect.theta!r}, which is not declared"
                    )
                missing = [s.id for s in subjects if effect.covariate not in s.covariates]
                if missing:
                    raise EstimationError(
                        f"parameter {p.name!r}: covariate {effect.covariate!r} is missing for subject(s) "
                        f"{missing[:5]}; add it to Subject.covariates"
                    )
            if p.eta is not None:
                if p.eta not in eta_names:
                    raise EstimationError(
                        f"parameter {p.name!r}: eta {p.eta!r} is not in any OmegaBlock; declared: {eta_names}"
                    )
                used_etas.add(p.eta)
        unused = [e for e in eta_names if e not in used_etas]
        if unused:
            raise EstimationError(
                f"eta(s) {unused} are declared in omega but no parameter uses them; remove them or "
                "attach them to a parameter"
            )
        outputs = [r.output for r in residual]
        _unique([str(o) for o in outputs], "residual error output")
        _unique([n for r in residual for n in r.parameter_names], "residual error parameter")
        for s in subjects:
            missing = sorted(set(s.output.tolist()) - set(outputs))
            if missing:
                raise EstimationError(
                    f"subject {s.id!r}: output(s) {missing} have no ResidualError; add one per output"
                )
            log_outputs = [r.output for r in residual if r.model == "log-additive"]
            bad = np.flatnonzero(np.isin(s.output, log_outputs) & ~s.blq & ~(s.dv > 0))
            if bad.size:
                raise EstimationError(
                    f"subject {s.id!r}: observation(s) {bad.tolist()} (0-based) are <= 0 but their output "
                    "has a log-additive error model; flag them BLQ with an LLOQ, or use another model"
                )
            lloq_bad = np.flatnonzero(np.isin(s.output, log_outputs) & s.blq & ~(s.lloq > 0))
            if lloq_bad.size:
                raise EstimationError(
                    f"subject {s.id!r}: BLQ observation(s) {lloq_bad.tolist()} have LLOQ <= 0 on a "
                    "log-additive output; the LLOQ must be > 0"
                )
        if self.predict is None and self.predict_batch is None:
            raise EstimationError("the problem has no prediction function; give predict or predict_batch")
        object.__setattr__(self, "subjects", subjects)
        object.__setattr__(self, "thetas", thetas)
        object.__setattr__(self, "parameters", parameters)
        object.__setattr__(self, "omega", omega)
        object.__setattr__(self, "residual", residual)

    @property
    def theta_names(self) -> tuple[str, ...]:
        """Names of all thetas, in declaration order."""
        return tuple(t.name for t in self.thetas)

    @property
    def eta_names(self) -> tuple[str, ...]:
        """Names of all etas, in the order of the omega blocks (the order of Ω's rows)."""
        return tuple(e for block in self.omega for e in block.etas)

    @property
    def n_obs(self) -> int:
        """Number of observation records (including BLQ)."""
        return sum(s.n_obs for s in self.subjects)

    def replace(self, **changes: Any) -> PopulationProblem:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _unique(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise EstimationError(f"{what} name {name!r} is declared twice; names must be unique")
        seen.add(name)
