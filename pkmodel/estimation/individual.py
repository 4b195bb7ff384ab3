"""Individual (one-subject) maximum-likelihood fits with lmfit.

The objective is the exact ``−2 log L`` of the subject's observations under the residual error models
of :mod:`pkmodel.estimation.residual` (observed values Gaussian on their comparison scale, BLQ values
censored, Beal M3), with the residual SDs estimated jointly unless fixed.  Several outputs (analytes)
are fitted at once, each with its own error model.  lmfit's BFGS minimises it with a central
finite-difference gradient; standard errors come from ``2·R⁻¹``, ``R`` the numerical Hessian of
``−2 log L`` in the natural parameters (as in the population covariance step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pkmodel.errors import EstimationError

if TYPE_CHECKING:  # lmfit imports matplotlib: numerical modules import it only when fitting
    import lmfit
from pkmodel.estimation.covariance import CovarianceStep, central_hessian, covariance_from_hessian
from pkmodel.estimation.problem import ResidualError, Subject, Theta
from pkmodel.estimation.residual import LOG_2PI, observation_terms

__all__ = ["IndividualResult", "fit_individual", "individual_objective"]

_FD_STEP = 1.0e-6  # relative central-difference step of the gradient
_HESSIAN_STEP = 1.0e-4  # relative step of the covariance Hessian


def _residual_arrays(subject: Subject, residual: Sequence[ResidualError]) -> dict[str, Any]:
    by_output = {r.output: r for r in residual}
    if len(by_output) != len(residual):
        raise EstimationError("two ResidualError objects have the same output; give one per output")
    missing = sorted(set(subject.output.tolist()) - set(by_output))
    if missing:
        raise EstimationError(
            f"subject {subject.id!r}: output(s) {missing} have no ResidualError; add one per output"
        )
    n = subject.n_obs
    is_log = np.array([by_output[int(o)].model == "log-additive" for o in subject.output])
    bad = np.flatnonzero(is_log & ~subject.blq & ~(subject.dv > 0))
    if bad.size:
        raise EstimationError(
            f"subject {subject.id!r}: observation(s) {bad.tolist()} (0-based) are <= 0 on a "
            "log-additive output; flag them BLQ with an LLOQ or use another error model"
        )
    raw = np.where(subject.blq, subject.lloq, subject.dv)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(is_log, np.log(raw), raw)
    add_name = [None] * n
    prop_name = [None] * n
    for j, o in enumerate(subject.output):
        r = by_output[int(o)]
        names = dict(zip(r.components, r.parameter_names, strict=True))
        add_name[j] = names.get("add")
        prop_name[j] = names.get("prop")
    return {"y": y, "is_log": is_log, "add": add_name, "prop": prop_name}


def _minus_2ll(
    subject: Subject, predictions: np.ndarray, values: Mapping[str, float], arrays: Mapping[str, Any]
) -> float:
    add = np.array([values[name] if name else 0.0 for name in arrays["add"]])
    prop = np.array([values[name] if name else 0.0 for name in arrays["prop"]])
    terms = observation_terms(
        arrays["y"], predictions, predictions, add, prop, arrays["is_log"], subject.blq, True
    )
    if not np.all(np.isfinite(terms.ell)):
        return math.inf
    n_observed = int(np.sum(~subject.blq))
    return float(np.sum(terms.ell) + n_observed * LOG_2PI)


def individual_objective(
    subject: Subject,
    predict: Callable[[Subject, dict[str, float]], np.ndarray],
    params: Mapping[str, float],
    residual: Sequence[ResidualError],
) -> float:
    """``−2 log L`` of one subject's observations at given parameters (with the ``log 2π`` constants).

    Observed values contribute ``log(2π s²) + ((y − μ)/s)²``; BLQ values ``−2 log Φ((LLOQ − μ)/s)``
    (comparison scale: log for log-additive outputs).

    Parameters
    ----------
    subject : Subject
    predict : callable
        ``predict(subject, params) -> ndarray (n_obs,)``.
    params : mapping of str to float
        Structural parameters and residual SDs (names as ``ResidualError.parameter_names``).
    residual : sequence of ResidualError
        One per output of the subject.

    Returns
    -------
    float

    Examples
    --------
    >>> s = Subject(1, dv=[1.0, 0.1], lloq=[0.5, 0.5])
    >>> value = individual_objective(s, lambda subj, p: np.full(2, p["B"]), {"B": 1.0, "y0_add": 0.5},
    ...                              [ResidualError("additive", additive=0.5)])
    >>> from scipy.stats import norm
    >>> bool(np.isclose(value, -2 * (norm.logpdf(1.0, 1.0, 0.5) + norm.logcdf(0.5, 1.0, 0.5))))
    True
    """
    arrays = _residual_arrays(subject, residual)
    missing = [n for n in arrays["add"] + arrays["prop"] if n and n not in params]
    if missing:
        raise EstimationError(f"params lacks residual SD(s) {sorted(set(missing))}; add them")
    pred = np.asarray(predict(subject, dict(params)), dtype=float)
    if pred.shape != (subject.n_obs,):
        raise EstimationError(
            f"subject {subject.id!r}: predict returned shape {pred.shape}, expected ({subject.n_obs},)"
        )
    return _minus_2ll(subject, pred, params, arrays)


@dataclass(frozen=True)
class IndividualResult:
    """Result of :func:`fit_individual`.

    Attributes
    ----------
    converged : bool
    message : str
    minus_2_log_likelihood : float
        ``−2 log L`` including the ``log 2π`` constants of uncensored observations.
    aic, bic : float
        ``−2LL + 2k``, ``−2LL + k·log n`` (``k`` estimated parameters including residual SDs, ``n`` records).
    n_obs : int
        Observation records (including BLQ).
    n_parameters : int
    estimates : dict of str to float
        All parameters (structural and residual SDs), fixed ones included.
    standard_errors : dict of str to float
        NaN for fixed parameters or when the covariance step failed.
    covariance_ok : bool
    covariance : CovarianceStep
    lmfit_result : lmfit.minimizer.MinimizerResult
        lmfit's own result (its ``params`` carry our standard errors and correlations).
    """

    converged: bool
    message: str
    minus_2_log_likelihood: float
    aic: float
    bic: float
    n_obs: int
    n_parameters: int
    estimates: dict[str, float]
    standard_errors: dict[str, float]
    covariance_ok: bool
    covariance: CovarianceStep = field(repr=False)
    lmfit_result: Any = field(repr=False)
    _observations: pd.DataFrame = field(repr=False)

    def parameter_table(self) -> pd.DataFrame:
        """Estimate, SE, RSE (%) and fixed flag of every parameter, indexed by name."""
        free = set(self.covariance.names)
        rows = [
            {
                "name": name,
                "estimate": value,
                "se": self.standard_errors[name],
                "rse_percent": 100.0 * self.standard_errors[name] / abs(value) if value else math.nan,
                "fixed": name not in free,
            }
            for name, value in self.estimates.items()
        ]
        return pd.DataFrame(rows).set_index("name")

    def correlation_matrix(self) -> pd.DataFrame | None:
        """Correlation matrix of the estimated parameters (None if the covariance step failed)."""
        if not self.covariance.ok:
            return None
        names = list(self.covariance.names)
        return pd.DataFrame(self.covariance.correlation, index=names, columns=names)

    def observations(self) -> pd.DataFrame:
        """TIME, OUTPUT, DV, BLQ, IPRED and IWRES (comparison scale; NaN for BLQ) per observation."""
        return self._observations.copy()


def _as_lmfit(parameters: Sequence[Theta] | lmfit.Parameters) -> lmfit.Parameters:
    import lmfit

    if isinstance(parameters, lmfit.Parameters):
        for par in parameters.values():
            if par.vary and par.expr is None and (par.value <= par.min or par.value >= par.max):
                raise EstimationError(
                    f"parameter {par.name!r}: initial value {par.value} is at its bound "
                    f"[{par.min}, {par.max}] (lmfit silently clamps values and swaps reversed bounds); "
                    "give an initial value strictly inside the bounds, or pass Theta objects (checked)"
                )
        return parameters.copy()
    out = lmfit.Parameters()
    for theta in parameters:
        if not isinstance(theta, Theta):
            raise EstimationError(
                f"parameters must be Theta objects or lmfit.Parameters, got {type(theta).__name__}"
            )
        out.add(theta.name, value=theta.initial, min=theta.lower, max=theta.upper, vary=not theta.fixed)
    return out


def fit_individual(
    subject: Subject,
    predict: Callable[[Subject, dict[str, float]], np.ndarray],
    parameters: Sequence[Theta] | lmfit.Parameters,
    residual: Sequence[ResidualError],
    *,
    covariance: bool = True,
    max_evaluations: int = 20000,
) -> IndividualResult:
    """Fit one subject by maximum likelihood (lmfit, BFGS), residual SDs estimated unless fixed.

    Parameters
    ----------
    subject : Subject
        Observations (several outputs allowed; BLQ records are censored, M3).
    predict : callable
        ``predict(subject, params: dict[str, float]) -> ndarray (n_obs,)``.
    parameters : sequence of Theta, or lmfit.Parameters
        Structural parameters with initial values, bounds and fixed flags.  Theta objects are checked
        (initial strictly inside the bounds, bounds not reversed); for lmfit.Parameters, whose
        constructor silently clamps and swaps, an initial value on a bound is refused.
    residual : sequence of ResidualError
        One per output; their ``parameter_names`` become extra parameters (SDs, lower bound 0).
    covariance : bool
        Compute standard errors and correlations.
    max_evaluations : int
        Limit on objective evaluations.

    Returns
    -------
    IndividualResult

    Raises
    ------
    EstimationError
        Bad parameters (see above), name clashes with residual parameters, or a non-finite objective at
        the initial values.

    Examples
    --------
    >>> t = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    >>> s = Subject(1, dv=10.0 * np.exp(-0.3 * t), time=t)
    >>> fit = fit_individual(s, lambda subj, p: p["A"] * np.exp(-p["K"] * subj.time),
    ...                      [Theta("A", 5.0, lower=0), Theta("K", 0.1, lower=0)],
    ...                      [ResidualError("additive", additive=0.1, fix_additive=True)])
    >>> round(fit.estimates["A"], 6), round(fit.estimates["K"], 6)
    (10.0, 0.3)
    """
    import lmfit

    params = _as_lmfit(parameters)
    arrays = _residual_arrays(subject, residual)
    for r in residual:
        for component, name in zip(r.components, r.parameter_names, strict=True):
            if name in params:
                raise EstimationError(
                    f"parameter name {name!r} is used by a structural parameter and by the residual error "
                    f"of output {r.output}; rename one (ResidualError(name=...))"
                )
            fixed = r.fix_additive if component == "add" else r.fix_proportional
            value = r.additive if component == "add" else r.proportional
            params.add(name, value=float(value), min=0.0, vary=not fixed)
    n_records = subject.n_obs

    def evaluate(pars: lmfit.Parameters) -> float:
        values = pars.valuesdict()
        pred = np.asarray(predict(subject, values), dtype=float)
        if pred.shape != (n_records,):
            raise EstimationError(
                f"subject {subject.id!r}: predict returned shape {pred.shape}, expected ({n_records},)"
            )
        return _minus_2ll(subject, pred, values, arrays)

    start = evaluate(params)
    if not math.isfinite(start):
        raise EstimationError(
            f"subject {subject.id!r}: −2 log L is not finite at the initial values; check that "
            "predictions are finite (and > 0 on log-additive outputs)"
        )
    var_names = [n for n, p in params.items() if p.vary and p.expr is None]

    def gradient(pars: lmfit.Parameters) -> np.ndarray:
        work = pars.copy()
        grad = np.zeros(len(var_names))
        for k, name in enumerate(var_names):
            value = pars[name].value
            h = _FD_STEP * max(abs(value), 1e-8)
            work[name].value = value + h
            work.update_constraints()
            fp = evaluate(work)
            work[name].value = value - h
            work.update_constraints()
            fm = evaluate(work)
            work[name].value = value
            grad[k] = (fp - fm) / (2.0 * h)
        work.update_constraints()
        return grad

    def penalty(pars: lmfit.Parameters) -> float:
        value = evaluate(pars)
        return value if math.isfinite(value) else 1.0e300

    minimizer = lmfit.Minimizer(penalty, params, max_nfev=max_evaluations)
    fit = minimizer.minimize(method="bfgs", jac=gradient, options={"gtol": 1e-6})
    estimates = {n: float(p.value) for n, p in fit.params.items()}
    m2ll = evaluate(fit.params)

    free = [n for n in var_names]
    p0 = np.array([estimates[n] for n in free])
    scale = np.where(p0 != 0, np.abs(p0), 1.0)

    def objective_p(p: np.ndarray) -> float:
        work = fit.params.copy()
        for name, value in zip(free, p, strict=True):
            par = work[name]
            if not (par.min < value < par.max):
                return math.nan
            par.value = value
        work.update_constraints()
        value = evaluate(work)
        return value if math.isfinite(value) else math.nan

    if covariance and free:
        hessian = central_hessian(objective_p, p0, _HESSIAN_STEP * scale)
        # −2LL is exact here (no inner problem): noise ~1e-12 (absolute) → floor 4e-12/h²
        cov = covariance_from_hessian(hessian, p0, scale, free, noise_floor=4.0e-12 / _HESSIAN_STEP**2)
    else:
        cov = covariance_from_hessian(np.zeros((0, 0)), np.zeros(0), np.zeros(0), [])
    se = dict.fromkeys(estimates, math.nan)
    if cov.ok:
        for k, name in enumerate(free):
            se[name] = float(cov.standard_errors[k])
            fit.params[name].stderr = se[name]
            fit.params[name].correl = {
                other: float(cov.correlation[k, m]) for m, other in enumerate(free) if other != name
            }
    success = bool(getattr(fit, "success", False))
    grad = gradient(fit.params)
    converged = success or bool(np.all(np.abs(grad * scale) < 1e-3))
    k_par = len(free)
    pred = np.asarray(predict(subject, fit.params.valuesdict()), dtype=float)
    add = np.array([estimates[n] if n else 0.0 for n in arrays["add"]])
    prop = np.array([estimates[n] if n else 0.0 for n in arrays["prop"]])
    terms = observation_terms(arrays["y"], pred, pred, add, prop, arrays["is_log"], subject.blq, True)
    observations = pd.DataFrame(
        {
            "TIME": subject.time,
            "OUTPUT": subject.output,
            "DV": subject.dv,
            "BLQ": subject.blq,
            "IPRED": pred,
            "IWRES": np.where(subject.blq, np.nan, terms.weighted_residual),
        }
    )
    return IndividualResult(
        converged=converged,
        message=f"{fit.message} (lmfit BFGS, {fit.nfev} evaluations)",
        minus_2_log_likelihood=m2ll,
        aic=m2ll + 2.0 * k_par,
        bic=m2ll + k_par * math.log(n_records),
        n_obs=n_records,
        n_parameters=k_par,
        estimates=estimates,
        standard_errors=se,
        covariance_ok=cov.ok,
        covariance=cov,
        lmfit_result=fit,
        _observations=observations,
    )
