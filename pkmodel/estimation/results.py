"""The frozen result of a population fit, with its tables as pandas DataFrames."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg import solve_triangular

from pkmodel.estimation.covariance import CovarianceStep
from pkmodel.estimation.residual import observation_terms

__all__ = ["PopulationResult"]


@dataclass(frozen=True)
class PopulationResult:
    """Estimates, diagnostics and tables of a population fit (see :func:`fit_population`).

    Attributes
    ----------
    method : str
        ``"foce-i"``, ``"foce"`` or ``"fo"``.
    converged : bool
        The optimiser met its gradient tolerance and every η̂ converged.
    message : str
        Optimiser messages.
    covariance_ok : bool
        The covariance step succeeded (False when not run).
    covariance_message : str
    ofv : float
        Objective function value without the constant (NONMEM's OFV).
    minus_2_log_likelihood : float
        ``ofv + n_obs·log 2π`` (``n_obs`` = uncensored observations).
    aic, bic : float
        ``−2LL + 2k`` and ``−2LL + k·log(n_records)`` (``k`` = number of estimated parameters,
        ``n_records`` = observation records including BLQ).
    n_obs, n_blq, n_subjects, n_parameters : int
    theta : dict of str to float
    omega : ndarray, shape (n_eta, n_eta)
        Ω (variances and covariances of η).
    sigma : dict of str to float
        Residual error parameters as standard deviations (variances: ``sigma_table()``).
    eta_names : tuple of str
    shrinkage : dict of str to float
        η-shrinkage ``1 − SD(η̂)/ω`` per eta (fraction, Savic & Karlsson 2009; SD with ddof=1).
    epsilon_shrinkage : float
        ``1 − SD(IWRES)`` over uncensored observations.
    condition_number : float
        Of the correlation matrix of the estimates (NaN if the covariance step failed).
    n_iterations, n_evaluations : int
    estimation_seconds, total_seconds : float
        Wall time of the estimation, and including the covariance step.

    Examples
    --------
    >>> import numpy as np
    >>> from pkmodel.estimation import (IndividualParameter, OmegaBlock, PopulationProblem, ResidualError,
    ...                                 Subject, Theta, fit_population)
    >>> rng = np.random.default_rng(7)
    >>> subjects = [Subject(i, dv=3 + rng.normal(0, 1) + rng.normal(0, 0.5, 3)) for i in range(15)]
    >>> result = fit_population(PopulationProblem(
    ...     subjects, [Theta("B", 2.0)],
    ...     [IndividualParameter("B", theta="B", eta="eta", eta_form="additive")],
    ...     [OmegaBlock(["eta"], [0.5])], [ResidualError("additive", additive=1.0)],
    ...     predict=lambda s, p: np.full(s.n_obs, p["B"])))
    >>> list(result.theta_table().columns)
    ['estimate', 'se', 'rse_percent', 'lower', 'upper', 'fixed']
    >>> list(result.observations().columns)
    ['ID', 'TIME', 'OUTPUT', 'DV', 'BLQ', 'LLOQ', 'PRED', 'IPRED', 'IWRES', 'CWRES']
    """

    method: str
    converged: bool
    message: str
    covariance_ok: bool
    covariance_message: str
    ofv: float
    minus_2_log_likelihood: float
    aic: float
    bic: float
    n_obs: int
    n_blq: int
    n_subjects: int
    n_parameters: int
    theta: dict[str, float]
    omega: np.ndarray
    sigma: dict[str, float]
    eta_names: tuple[str, ...]
    shrinkage: dict[str, float]
    epsilon_shrinkage: float
    condition_number: float
    n_iterations: int
    n_evaluations: int
    estimation_seconds: float
    total_seconds: float
    covariance: CovarianceStep | None = field(repr=False)
    _fixed: dict[str, bool] = field(repr=False)
    _bounds: dict[str, tuple[float, float]] = field(repr=False)
    _sigma_info: dict[str, tuple[int, str]] = field(repr=False)
    _subjects: dict[str, np.ndarray] = field(repr=False)  # columns of subjects() (a table on request)
    _observations: dict[str, np.ndarray] = field(repr=False)  # columns of observations()

    # ---- standard errors ----------------------------------------------------------------------
    def _se(self, name: str) -> float:
        step = self.covariance
        if step is None or not step.ok or name not in step.names:
            return math.nan
        return float(step.standard_errors[step.names.index(name)])

    def theta_table(self) -> pd.DataFrame:
        """Thetas: estimate, SE, RSE (%), bounds, fixed; indexed by name."""
        rows = []
        for name, value in self.theta.items():
            se = self._se(name)
            lower, upper = self._bounds[name]
            rows.append(
                {
                    "name": name,
                    "estimate": value,
                    "se": se,
                    "rse_percent": 100.0 * se / abs(value) if value != 0 else math.nan,
                    "lower": lower,
                    "upper": upper,
                    "fixed": self._fixed[name],
                }
            )
        return pd.DataFrame(rows).set_index("name")

    def omega_table(self) -> pd.DataFrame:
        """Ω elements: variance/covariance, SD (diagonal) or correlation (off-diagonal), SEs, shrinkage.

        ``se`` is the SE of the variance/covariance; ``se_sd`` the SE of the SD by the delta method
        (``se/(2·SD)``).
        """
        rows = []
        q = len(self.eta_names)
        for a in range(q):
            for b in range(a + 1):
                value = float(self.omega[a, b])
                name = (
                    f"omega({self.eta_names[a]})"
                    if a == b
                    else f"omega({self.eta_names[a]},{self.eta_names[b]})"
                )
                if a != b and value == 0.0 and name not in self._fixed:
                    continue
                se = self._se(name)
                if a == b:
                    sd = math.sqrt(value)
                    rows.append(
                        {
                            "name": name,
                            "estimate": value,
                            "sd": sd,
                            "correlation": math.nan,
                            "se": se,
                            "rse_percent": 100.0 * se / value if value else math.nan,
                            "se_sd": se / (2.0 * sd) if sd else math.nan,
                            "shrinkage_percent": 100.0 * self.shrinkage[self.eta_names[a]],
                            "fixed": self._fixed.get(name, True),
                        }
                    )
                else:
                    corr = value / math.sqrt(self.omega[a, a] * self.omega[b, b])
                    rows.append(
                        {
                            "name": name,
                            "estimate": value,
                            "sd": math.nan,
                            "correlation": corr,
                            "se": se,
                            "rse_percent": 100.0 * se / abs(value) if value else math.nan,
                            "se_sd": math.nan,
                            "shrinkage_percent": math.nan,
                            "fixed": self._fixed.get(name, True),
                        }
                    )
        columns = [
            "name",
            "estimate",
            "sd",
            "correlation",
            "se",
            "rse_percent",
            "se_sd",
            "shrinkage_percent",
            "fixed",
        ]
        return pd.DataFrame(rows, columns=columns).set_index("name")

    def sigma_table(self) -> pd.DataFrame:
        """Residual error parameters: SD estimate, variance, SEs of both (delta method), output, component."""
        rows = []
        for name, sd in self.sigma.items():
            se = self._se(name)
            output, component = self._sigma_info[name]
            rows.append(
                {
                    "name": name,
                    "output": output,
                    "component": "additive" if component == "add" else "proportional",
                    "sd": sd,
                    "se_sd": se,
                    "rse_percent": 100.0 * se / sd,
                    "variance": sd * sd,
                    "se_variance": 2.0 * sd * se,
                    "fixed": self._fixed[name],
                }
            )
        return pd.DataFrame(rows).set_index("name")

    def covariance_matrix(self) -> pd.DataFrame | None:
        """Covariance matrix of the free natural parameters (None if the covariance step failed)."""
        step = self.covariance
        if step is None or not step.ok:
            return None
        return pd.DataFrame(step.covariance, index=list(step.names), columns=list(step.names))

    def correlation_matrix(self) -> pd.DataFrame | None:
        """Correlation matrix of the estimates (None if the covariance step failed)."""
        step = self.covariance
        if step is None or not step.ok:
            return None
        return pd.DataFrame(step.correlation, index=list(step.names), columns=list(step.names))

    def subjects(self) -> pd.DataFrame:
        """Per subject: η̂ (EBEs, columns named after the etas), individual parameters, OFV_i."""
        return pd.DataFrame(self._subjects).set_index("ID")

    def observations(self) -> pd.DataFrame:
        """Per observation: ID, TIME, OUTPUT, DV, BLQ, LLOQ, PRED (η=0), IPRED (η̂), IWRES, CWRES.

        Residuals are on the comparison scale (log scale for log-additive outputs) and NaN for BLQ
        records.  CWRES follows Hooker et al. (2007): ``L⁻¹(y − f(η̂) + Gη̂)`` with ``L`` the Cholesky
        factor of ``GΩGᵀ + R``, the linearisation around η̂ (FO: around 0, which is WRES).
        """
        return pd.DataFrame(self._observations)

    def summary(self) -> str:
        """A short text summary."""
        lines = [
            f"method {self.method}: converged={self.converged}, covariance_ok={self.covariance_ok}",
            f"OFV {self.ofv:.4f} (−2LL {self.minus_2_log_likelihood:.4f}), "
            f"AIC {self.aic:.3f}, BIC {self.bic:.3f}",
            f"{self.n_subjects} subjects, {self.n_obs} observations ({self.n_blq} BLQ), "
            f"{self.n_parameters} parameters, {self.estimation_seconds:.2f} s",
            self.message,
            self.covariance_message,
        ]
        return "\n".join(lines)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _sd_ddof1(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if values.size > 1 else math.nan


def _cwres(data: Any, g: np.ndarray, ipred: np.ndarray, sd: np.ndarray, eta: np.ndarray, omega: np.ndarray):
    """CWRES (N, nmax): ``L⁻¹ỹ`` with ``L`` the Cholesky factor of ``V = GΩGᵀ + diag(s²)`` and
    ``ỹ = y − μ(η̂) + Gη̂`` over each subject's uncensored observations (NaN elsewhere); ``G = ∂μ/∂η``.

    All subjects at once, their observations padded to ``nmax`` with uncoupled unit entries (which leave
    the factor and the forward substitution of the others unchanged); subject by subject when a ``V`` is
    not positive definite (that subject's CWRES stay NaN)."""
    keep = data.mask & ~data.censored  # (N, nmax)
    q = eta.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        dmu = np.where(data.is_log, 1.0 / ipred, 1.0)
        mu = np.where(data.is_log, np.log(ipred), ipred)
        G = np.where(keep[:, :, None], np.swapaxes(g * dmu[:, None, :], 1, 2), 0.0)  # (N, nmax, q)
        ytilde = np.where(keep, data.y - mu + (G @ eta[:, :, None])[:, :, 0] if q else data.y - mu, 0.0)
        cov = np.zeros((*keep.shape, keep.shape[1]))
        idx = np.arange(keep.shape[1])
        cov[:, idx, idx] = np.where(keep, sd**2, 1.0)
        if q:
            cov += G @ omega @ np.swapaxes(G, 1, 2)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        cwres = np.full(keep.shape, np.nan)
        for i in range(keep.shape[0]):
            try:
                chol_i = np.linalg.cholesky(cov[i])
            except np.linalg.LinAlgError:
                continue
            cwres[i] = np.where(keep[i], solve_triangular(chol_i, ytilde[i], lower=True), np.nan)
        return cwres
    # (numpy's batched general solve on the triangular factors: one call for all subjects)
    return np.where(keep, np.linalg.solve(chol, ytilde[:, :, None])[:, :, 0], np.nan)


def build_population_result(
    engine: Any,
    value: Any,
    context: Any,
    state: Any,
    converged: bool,
    message: str,
    n_iterations: int,
    covariance: CovarianceStep | None,
    estimation_seconds: float,
    total_seconds: float,
) -> PopulationResult:
    """Assemble a :class:`PopulationResult` (private use by :func:`fit_population`)."""
    space = engine.space
    data = engine.data
    problem = engine.problem
    subjects = problem.subjects
    theta, omega, sigma = context.theta[0], context.omega[0], context.sigma[0]  # (a one-point context)
    eta = value.eta
    q = engine.n_eta
    n = len(subjects)

    # predictions and residuals
    rows = np.arange(n)
    pred = engine.predict_rows(rows, context.typical[:, None, :])[:, 0, :]
    ipred = state.f
    terms = observation_terms(
        data.y, ipred, ipred, context.add_sd, context.prop_sd, data.is_log, data.censored, True
    )
    iwres = np.where(data.censored, np.nan, terms.weighted_residual)
    f_var = ipred if context.f_var is None else context.f_var
    var_terms = observation_terms(
        data.y, ipred, f_var, context.add_sd, context.prop_sd, data.is_log, data.censored, True
    )
    cwres = _cwres(data, state.g, ipred, var_terms.sd, eta, omega)

    used = data.mask  # (N, nmax): each subject's observations, in order
    observations = {
        "ID": [s.id for s in subjects for _ in range(s.n_obs)],
        "TIME": np.concatenate([s.time for s in subjects]),
        "OUTPUT": np.concatenate([s.output for s in subjects]),
        "DV": np.concatenate([s.dv for s in subjects]),
        "BLQ": np.concatenate([s.blq for s in subjects]),
        "LLOQ": np.concatenate([s.lloq for s in subjects]),
        "PRED": pred[used],
        "IPRED": ipred[used],
        "IWRES": iwres[used],
        "CWRES": cwres[used],
    }

    phi = engine.individual(context.typical, eta) if q else context.typical
    subj: dict = {"ID": [s.id for s in subjects]}
    for k, name in enumerate(space.eta_names):
        subj[name] = eta[:, k].copy()
    for p, name in enumerate(engine.param_names):
        subj[name] = phi[:, p].copy()
    subj["OFV"] = np.array(value.subject_ofv)

    shrinkage = {}
    for k, name in enumerate(space.eta_names):
        shrinkage[name] = 1.0 - _sd_ddof1(eta[:, k]) / math.sqrt(omega[k, k])
    observed = iwres[data.mask & ~data.censored]
    eps_shrinkage = 1.0 - _sd_ddof1(observed)

    fixed: dict[str, bool] = {}
    bounds: dict[str, tuple[float, float]] = {}
    for k, name in enumerate(space.theta_names):
        fixed[name] = bool(space.theta_fixed[k])
        bounds[name] = (float(space.theta_lower[k]), float(space.theta_upper[k]))
    for block in space.blocks:
        for a in range(block.size):
            for b in range(a + 1):
                i, j = space.eta_names[block.index[a]], space.eta_names[block.index[b]]
                fixed[f"omega({i})" if a == b else f"omega({i},{j})"] = block.fixed
    for k, name in enumerate(space.sigma_names):
        fixed[name] = bool(space.sigma_fixed[k])

    k_par = space.n_free
    n_records = data.n_observed + data.n_censored
    m2ll = value.minus_2_log_likelihood
    if covariance is None:
        cov_ok, cov_msg, cond = False, "covariance step not run", math.nan
    else:
        cov_ok, cov_msg, cond = covariance.ok, covariance.message, covariance.condition_number
    return PopulationResult(
        method=engine.method,
        converged=converged,
        message=message,
        covariance_ok=cov_ok,
        covariance_message=cov_msg,
        ofv=value.ofv,
        minus_2_log_likelihood=m2ll,
        aic=m2ll + 2.0 * k_par,
        bic=m2ll + k_par * math.log(n_records),
        n_obs=data.n_observed,
        n_blq=data.n_censored,
        n_subjects=n,
        n_parameters=k_par,
        theta=dict(zip(space.theta_names, map(float, theta), strict=True)),
        omega=_readonly(np.array(omega)),
        sigma=dict(zip(space.sigma_names, map(float, sigma), strict=True)),
        eta_names=space.eta_names,
        shrinkage=shrinkage,
        epsilon_shrinkage=eps_shrinkage,
        condition_number=cond,
        n_iterations=n_iterations,
        n_evaluations=engine.n_evaluations,
        estimation_seconds=estimation_seconds,
        total_seconds=total_seconds,
        covariance=covariance,
        _fixed=fixed,
        _bounds=bounds,
        _sigma_info={name: space.sigma_output[k] for k, name in enumerate(space.sigma_names)},
        _subjects=subj,
        _observations=observations,
    )
