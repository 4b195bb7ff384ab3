"""Logistic exposure–response: maximum likelihood, Wald, profile-likelihood and bootstrap intervals.

Model: ``P(y = 1 | x) = expit(a + b·t(x))`` with ``t(x) = x`` (``transform=None``) or ``t(x) = ln x``
(``transform="log"``).  The log-likelihood ``ℓ(a, b) = Σ y_i·η_i − log(1 + e^{η_i})``, ``η_i = a + b·t_i``,
is concave; it is maximised by Newton–Raphson with step halving on the standardised exposure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from pkmodel.errors import EstimationError

__all__ = ["CI_METHODS", "LogisticFit", "fit_logistic", "select_exposure_metric"]

#: Interval methods of :func:`fit_logistic` (``ci=``) and of :meth:`LogisticFit.predict` (``method=``).
CI_METHODS: tuple[str, ...] = ("profile", "bootstrap", "wald")
_TRANSFORMS = (None, "log")
_PARAMETERS = ("intercept", "slope")
_MAX_EXPANSIONS = 60  # doublings of the bracket step before a profile bound is declared infinite


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python scalar, so that messages read ``2``, not ``np.int64(2)``."""
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------------------------------ inputs


def _check_level(level: Any) -> float:
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise EstimationError(
            f"level={level!r} is not a number; pass a confidence level such as 0.95"
        ) from None
    if not 0.0 < value < 1.0:
        raise EstimationError(f"level={level!r} must lie strictly between 0 and 1, e.g. level=0.95")
    return value


def _check_transform(transform: Any) -> str | None:
    if transform not in _TRANSFORMS:
        raise EstimationError(
            f"transform={transform!r} is not supported; use transform=None (exposure as is) or "
            "transform='log' (natural log of the exposure)"
        )
    return transform


def _exposure_vector(values: Any, what: str = "exposure") -> np.ndarray:
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise EstimationError(f"{what} must be numbers; convert it to a numeric array") from None
    if x.ndim != 1:
        raise EstimationError(f"{what} must be 1-D, one value per subject, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise EstimationError(
            f"{what}[{bad[0]}] = {float(x[bad[0]])!r} is not finite ({bad.size} such value(s)); "
            "every subject needs a finite exposure: remove those subjects explicitly or impute them"
        )
    return x


def _transform(x: np.ndarray, transform: str | None, what: str = "exposure") -> np.ndarray:
    if transform is None:
        return x
    bad = np.flatnonzero(x <= 0)
    if bad.size:
        raise EstimationError(
            f"{what}[{bad[0]}] = {float(x[bad[0]])!r} is not positive, so its log is undefined "
            f"({bad.size} such value(s)); use transform=None, or remove the unexposed subjects explicitly"
        )
    return np.log(x)


def _response_vector(values: Any, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise EstimationError(f"response must be 1-D, one 0/1 value per subject, got shape {arr.shape}")
    if arr.size != n:
        raise EstimationError(
            f"response has {arr.size} values but exposure has {n}; pass one exposure and one response per subject"
        )
    try:
        y = arr.astype(float)
    except (TypeError, ValueError):
        raise EstimationError("response must be 0/1 (or True/False); recode it, e.g. (grade >= 3)") from None
    bad = np.flatnonzero((y != 0.0) & (y != 1.0))
    if bad.size:
        raise EstimationError(
            f"response[{bad[0]}] = {_plain(arr[bad[0]])!r} is not 0 or 1 ({bad.size} such value(s)); "
            "the response is binary: recode it, e.g. (worst_grade >= 3).astype(int)"
        )
    return y


# ------------------------------------------------------------------------------------ likelihood


def _loglik(eta: np.ndarray, y: np.ndarray) -> float:
    """Σ y·η − log(1 + e^η), stable for large |η|."""
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _argmax_1d(offset: np.ndarray | float, z: np.ndarray, y: np.ndarray, start: float) -> tuple[float, float]:
    """Maximise the concave ``c ↦ ℓ(offset + c·z)`` over the scalar c.

    The score ``g(c) = Σ z (y − expit(offset + c z))`` decreases in c; its root is found by Newton
    steps safeguarded by a bracket (bisection whenever a Newton step leaves the bracket).  The caller
    guarantees a finite maximiser (no separation).

    Returns
    -------
    (c, ℓ) : the maximiser and the maximum.
    """

    def score(c: float) -> tuple[float, float]:
        p = special.expit(offset + c * z)
        return float(z @ (y - p)), float((z * z) @ (p * (1.0 - p)))

    c = float(start)
    g, h = score(c)
    if g == 0.0:
        return c, _loglik(offset + c * z, y)
    # bracket the root: g(lo) > 0 > g(hi)
    direction = 1.0 if g > 0 else -1.0
    step = abs(g) / h if h > 0 and math.isfinite(abs(g) / h) else 1.0
    step = max(step, 1e-8 * (1.0 + abs(c)))
    inner = c
    for _ in range(200):
        outer = inner + direction * step
        g_outer, _ = score(outer)
        if g_outer == 0.0:
            return outer, _loglik(offset + outer * z, y)
        if (g_outer > 0) != (g > 0):
            break
        inner, step = outer, 2.0 * step
    else:  # pragma: no cover - excluded by the separation check of the caller
        raise EstimationError("the profile likelihood has no finite maximiser (separation in a sub-problem)")
    lo, hi = (inner, outer) if direction > 0 else (outer, inner)
    c = 0.5 * (lo + hi)
    for _ in range(200):
        g, h = score(c)
        if g == 0.0:
            break
        if g > 0:
            lo = c
        else:
            hi = c
        newton = c + g / h if h > 0 else math.nan
        c_new = newton if lo < newton < hi else 0.5 * (lo + hi)
        if abs(c_new - c) <= 1e-14 * (1.0 + abs(c)) or hi - lo <= 1e-14 * (1.0 + abs(c)):
            c = c_new
            break
        c = c_new
    return c, _loglik(offset + c * z, y)


def _newton_fit(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
    """MLE of (a, b) and its covariance (inverse observed information), by Newton–Raphson.

    Works on the standardised covariate ``z = (t − m)/s`` and maps back: ``b = β/s``,
    ``a = α − β m/s``, covariance ``T Σ_z Tᵀ`` with ``T = [[1, −m/s], [0, 1/s]]``.
    """
    m, s = float(t.mean()), float(t.std())
    z = (t - m) / s
    X = np.column_stack([np.ones_like(z), z])
    ybar = float(y.mean())
    beta = np.array([math.log(ybar / (1.0 - ybar)), 0.0])
    ll = _loglik(X @ beta, y)
    iterations = 0
    for iterations in range(1, 201):  # noqa: B007 - the count is reported
        p = special.expit(X @ beta)
        grad = X.T @ (y - p)
        info = X.T @ (X * (p * (1.0 - p))[:, None])
        step = np.linalg.solve(info, grad)
        scale = 1.0
        for _ in range(60):
            trial = beta + scale * step
            ll_trial = _loglik(X @ trial, y)
            if ll_trial >= ll - 1e-12 * abs(ll):
                break
            scale *= 0.5
        beta, ll = trial, ll_trial
        if np.max(np.abs(scale * step)) <= 1e-11 * (1.0 + np.max(np.abs(beta))):
            break
    else:
        raise EstimationError(
            "the logistic fit did not converge in 200 Newton iterations; the data may be nearly "
            "separated: inspect the exposure of the subjects with and without the response"
        )
    p = special.expit(X @ beta)
    info = X.T @ (X * (p * (1.0 - p))[:, None])
    cov_z = np.linalg.inv(info)
    T = np.array([[1.0, -m / s], [0.0, 1.0 / s]])
    theta = T @ beta
    cov = T @ cov_z @ T.T
    return theta, cov, _loglik(theta[0] + theta[1] * t, y), iterations


def _separation(t: np.ndarray, y: np.ndarray) -> tuple[str, float, str] | None:
    """Detect (quasi-)complete separation of a single covariate.

    Returns ``(kind, boundary, direction)`` or None.  Complete separation: every responder has a
    larger (or every responder a smaller) exposure than every non-responder; quasi-complete: the same
    with ties at one exposure value.
    """
    t0, t1 = t[y == 0], t[y == 1]
    if t0.max() < t1.min():
        return "complete separation", 0.5 * (t0.max() + t1.min()), "increasing"
    if t1.max() < t0.min():
        return "complete separation", 0.5 * (t1.max() + t0.min()), "decreasing"
    if t0.max() == t1.min():
        return "quasi-complete separation", float(t0.max()), "increasing"
    if t1.max() == t0.min():
        return "quasi-complete separation", float(t1.max()), "decreasing"
    return None


def _separated_minus2ll(t: np.ndarray, y: np.ndarray, kind: str, boundary: float) -> float:
    """Supremum of the likelihood under separation, as −2LL (0 for complete separation).

    Under quasi-complete separation the subjects away from the tie value are fitted exactly in the
    limit and the m subjects at the tie value share the probability k/m of their k responders.
    """
    if kind == "complete separation":
        return 0.0
    at = y[t == boundary]
    k, m = float(at.sum()), float(at.size)
    return float(-2.0 * (special.xlogy(k, k / m) + special.xlogy(m - k, 1.0 - k / m)))


def _profile_bounds(
    deviance: Callable[[float], float], estimate: float, se: float, crit: float
) -> tuple[tuple[float, float], list[str]]:
    """Values on either side of ``estimate`` where ``deviance`` rises to ``crit`` (brentq)."""
    notes: list[str] = []
    bounds = []
    step0 = se if math.isfinite(se) and se > 0 else 1.0
    for side in (-1.0, 1.0):
        inner, step = estimate, step0
        for _ in range(_MAX_EXPANSIONS):
            outer = estimate + side * step
            if deviance(outer) > crit:
                break
            inner, step = outer, 2.0 * step
        else:
            bounds.append(side * math.inf)
            notes.append(("lower" if side < 0 else "upper") + " profile bound is infinite")
            continue
        lo, hi = sorted((inner, outer))
        root = optimize.brentq(lambda v: deviance(v) - crit, lo, hi, xtol=1e-10 * step0, rtol=1e-14)
        bounds.append(float(root))
    return (bounds[0], bounds[1]), notes


# ---------------------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class LogisticFit:
    """Result of :func:`fit_logistic`: ``P(response) = expit(intercept + slope·t(exposure))``.

    Attributes
    ----------
    intercept : float
        Logit of the response probability at ``t(exposure) = 0``.
    slope : float
        Change in the logit per exposure unit (``transform=None``) or per unit of ln(exposure)
        (``transform="log"``: the odds ratio of a doubling is ``exp(slope·ln 2)``).
    se_intercept, se_slope : float
        Standard errors from the inverse observed information at the MLE.
    covariance : ndarray, shape (2, 2)
        Covariance of (intercept, slope), inverse observed information.
    wald_ci, profile_ci : dict of str to (float, float)
        Intervals of ``"intercept"`` and ``"slope"``: Wald (estimate ± z·SE) and profile likelihood
        (where the profile deviance rises by ``chi2.ppf(level, 1)``; a bound can be infinite).
    bootstrap_ci : dict of str to (float, float) or None
        Percentile intervals of a nonparametric (case-resampling) bootstrap, if ``ci="bootstrap"``.
    ci : str
        The interval method asked for (``"profile"`` or ``"bootstrap"``); the default of
        :meth:`predict` and :meth:`interval`.
    level : float
        Confidence level of the intervals.
    minus2ll : float
        −2 × maximised log-likelihood (under separation: −2 × its supremum).
    aic : float
        ``minus2ll + 2·2``.
    n, n_events : int
        Subjects and responders.
    transform : str or None
        ``None`` or ``"log"``.
    status : str
        ``"ok"``, ``"complete separation"`` or ``"quasi-complete separation"`` (no finite MLE: the
        estimates, SEs and intervals are NaN and :meth:`predict` raises).
    message : str
        What happened, in words (separation, infinite profile bounds, degenerate bootstrap replicates).
    n_boot_separated, n_boot_degenerate : int
        Bootstrap replicates whose data were separated (slope ±∞) or had no events, only events or a
        constant exposure (no slope information).
    """

    intercept: float
    slope: float
    se_intercept: float
    se_slope: float
    covariance: np.ndarray
    wald_ci: dict[str, tuple[float, float]]
    profile_ci: dict[str, tuple[float, float]]
    bootstrap_ci: dict[str, tuple[float, float]] | None
    ci: str
    level: float
    minus2ll: float
    aic: float
    n: int
    n_events: int
    transform: str | None
    status: str
    message: str
    n_boot_separated: int = 0
    n_boot_degenerate: int = 0
    _t: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    _y: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    _boot: np.ndarray | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ tables

    def interval(self, parameter: str = "slope", method: str | None = None) -> tuple[float, float]:
        """Confidence interval of ``"intercept"`` or ``"slope"`` by ``method`` (default :attr:`ci`)."""
        if parameter not in _PARAMETERS:
            raise EstimationError(f"parameter={parameter!r} is not 'intercept' or 'slope'")
        table = self._table(method or self.ci)
        return table[parameter]

    def _table(self, method: str) -> dict[str, tuple[float, float]]:
        if method == "profile":
            return self.profile_ci
        if method == "wald":
            return self.wald_ci
        if method == "bootstrap":
            if self.bootstrap_ci is None:
                raise EstimationError(
                    "this fit has no bootstrap replicates; refit with ci='bootstrap' to use method='bootstrap'"
                )
            return self.bootstrap_ci
        raise EstimationError(f"method={method!r} is not one of {', '.join(CI_METHODS)}")

    def to_frame(self) -> pd.DataFrame:
        """Parameter table: estimate, SE, Wald, profile (and bootstrap) bounds; index intercept, slope."""
        rows = {}
        for name in _PARAMETERS:
            row = {
                "estimate": getattr(self, name),
                "se": getattr(self, f"se_{name}"),
                "wald_lower": self.wald_ci[name][0],
                "wald_upper": self.wald_ci[name][1],
                "profile_lower": self.profile_ci[name][0],
                "profile_upper": self.profile_ci[name][1],
            }
            if self.bootstrap_ci is not None:
                row["bootstrap_lower"], row["bootstrap_upper"] = self.bootstrap_ci[name]
            rows[name] = row
        return pd.DataFrame.from_dict(rows, orient="index")

    # ------------------------------------------------------------------ prediction

    def predict(self, x: Any, level: float | None = None, method: str | None = None) -> pd.DataFrame:
        """Predicted response probability with a pointwise confidence band.

        Bands by method:

        - ``"profile"`` (default when ``ci="profile"``): the profile-likelihood interval of the
          linear predictor ``η(x0) = a + b·t(x0)`` (profile over the other parameter), mapped through
          expit.  At ``t(x0) = 0`` it is the profile interval of the intercept.
        - ``"wald"``: delta method on the logit scale, ``expit(η ± z·sqrt(c Σ cᵀ))`` with
          ``c = (1, t(x0))``; always inside (0, 1).
        - ``"bootstrap"``: percentiles of ``expit(a* + b*·t(x0))`` over the bootstrap replicates with a
          finite MLE (separated and degenerate replicates are left out; their count is in
          :attr:`message`).

        Parameters
        ----------
        x : array_like, shape (m,)
            Exposures, in the units of the fitted exposure (positive if ``transform="log"``).
        level : float, optional
            Confidence level; default the fit's :attr:`level`.
        method : {"profile", "wald", "bootstrap"}, optional
            Band method; default :attr:`ci`.

        Returns
        -------
        pandas.DataFrame
            Columns ``x``, ``p``, ``lower``, ``upper``; one row per exposure.

        Raises
        ------
        EstimationError
            The fit is separated (no finite MLE), bad exposures, or no bootstrap replicates.

        Examples
        --------
        Binary exposure, 1 of 3 and 2 of 3 responders: at x = 0, η = logit(1/3) = −0.6931 with
        SE sqrt(1/1 + 1/2) = 1.2247, so the 95 % band is expit(−0.6931 ± 1.96·1.2247) = (0.0434, 0.8465).

        >>> fit = fit_logistic([0, 0, 0, 1, 1, 1], [0, 1, 0, 1, 1, 0])
        >>> fit.predict([0.0, 1.0], method="wald").round(4)
             x       p   lower   upper
        0  0.0  0.3333  0.0434  0.8465
        1  1.0  0.6667  0.1535  0.9566
        """
        self._require_ok()
        level = self.level if level is None else _check_level(level)
        method = method or self.ci
        self._table(method)  # validates the method name and bootstrap availability
        xs = np.atleast_1d(_exposure_vector(x, "x"))
        t = _transform(xs, self.transform, "x")
        eta = self.intercept + self.slope * t
        if method == "wald":
            z = stats.norm.ppf(0.5 + level / 2.0)
            c = np.column_stack([np.ones_like(t), t])
            sd = np.sqrt(np.einsum("ij,jk,ik->i", c, self.covariance, c))
            lo, hi = eta - z * sd, eta + z * sd
        elif method == "profile":
            crit = float(stats.chi2.ppf(level, 1))
            lo, hi = np.empty_like(t), np.empty_like(t)
            for k, tk in enumerate(t):
                (lo[k], hi[k]), _ = self._profile_eta(float(tk), crit)
        else:
            assert self._boot is not None
            ok = np.all(np.isfinite(self._boot), axis=1)
            etas = self._boot[ok, 0][:, None] + self._boot[ok, 1][:, None] * t[None, :]
            alpha = 1.0 - level
            lo = np.quantile(etas, alpha / 2.0, axis=0, method="inverted_cdf")
            hi = np.quantile(etas, 1.0 - alpha / 2.0, axis=0, method="inverted_cdf")
        return pd.DataFrame(
            {"x": xs, "p": special.expit(eta), "lower": special.expit(lo), "upper": special.expit(hi)}
        )

    def _require_ok(self) -> None:
        if self.status != "ok":
            raise EstimationError(f"the logistic fit has no finite estimates: {self.message}")

    def _profile_eta(self, t0: float, crit: float) -> tuple[tuple[float, float], list[str]]:
        """Profile-likelihood interval of η(t0) = a + b·t0 (profiling b out)."""
        t, y = self._t, self._y
        ll_hat = -0.5 * self.minus2ll
        z = t - t0
        state = {"b": self.slope}

        def deviance(value: float) -> float:
            b, ll = _argmax_1d(value, z, y, state["b"])
            state["b"] = b
            return 2.0 * (ll_hat - ll)

        c = np.array([1.0, t0])
        se = float(np.sqrt(c @ self.covariance @ c))
        return _profile_bounds(deviance, self.intercept + self.slope * t0, se, crit)


# ------------------------------------------------------------------------------------------ fitting


def _separated_fit(
    t: np.ndarray,
    y: np.ndarray,
    kind: str,
    boundary: float,
    direction: str,
    *,
    ci: str,
    level: float,
    transform,
) -> LogisticFit:
    nan2 = (math.nan, math.nan)
    minus2ll = _separated_minus2ll(t, y, kind, boundary)
    scale = "ln(exposure)" if transform == "log" else "exposure"
    message = (
        f"{kind}: the response is {direction} in {scale} with no overlap"
        + (" except at " if kind.startswith("quasi") else " around ")
        + f"{scale} = {boundary:g}, so the maximum-likelihood slope is infinite (no finite MLE); "
        "estimates are NaN. Use another exposure metric, pool dose groups, or report the observed "
        "proportions by exposure group instead"
    )
    return LogisticFit(
        intercept=math.nan,
        slope=math.nan,
        se_intercept=math.nan,
        se_slope=math.nan,
        covariance=np.full((2, 2), math.nan),
        wald_ci={"intercept": nan2, "slope": nan2},
        profile_ci={"intercept": nan2, "slope": nan2},
        bootstrap_ci=None,
        ci=ci,
        level=level,
        minus2ll=minus2ll,
        aic=minus2ll + 4.0,
        n=int(t.size),
        n_events=int(y.sum()),
        transform=transform,
        status=kind,
        message=message,
        _t=t,
        _y=y,
    )


def _bootstrap(t: np.ndarray, y: np.ndarray, n_boot: int, seed: Any) -> tuple[np.ndarray, int, int]:
    """Case-resampling bootstrap estimates, shape (n_boot, 2); separated replicates get slope ±inf."""
    rng = np.random.default_rng(seed)
    n = t.size
    out = np.full((n_boot, 2), math.nan)
    separated = degenerate = 0
    for r in range(n_boot):
        idx = rng.integers(0, n, size=n)
        tb, yb = t[idx], y[idx]
        k = yb.sum()
        if k == 0 or k == n or tb.min() == tb.max():
            degenerate += 1
            continue
        sep = _separation(tb, yb)
        if sep is not None:
            separated += 1
            out[r, 1] = math.inf if sep[2] == "increasing" else -math.inf
            continue
        out[r], _, _, _ = _newton_fit(tb, yb)
    return out, separated, degenerate


def fit_logistic(
    exposure: Any,
    response: Any,
    *,
    ci: str = "profile",
    level: float = 0.95,
    n_boot: int = 1000,
    seed: Any = None,
    transform: str | None = None,
    on_separation: str = "raise",
) -> LogisticFit:
    r"""Fit a logistic exposure–response model by maximum likelihood.

    .. math::

        \operatorname{logit} P(y_i = 1) = a + b\,t(x_i), \qquad
        \ell(a, b) = \sum_i y_i \eta_i - \log\bigl(1 + e^{\eta_i}\bigr)

    with ``t(x) = x`` or ``t(x) = ln x``.  Standard errors come from the inverse observed information
    ``(Xᵀ W X)⁻¹``, ``W = diag(p(1−p))`` (for the logit link observed and expected information agree).

    Intervals:

    - Wald: ``estimate ± z_{(1+level)/2}·SE`` (always computed).
    - Profile likelihood (always computed): the values where the profile deviance
      ``2[ℓ(â, b̂) − max_other ℓ]`` equals ``chi2.ppf(level, 1)``, found by bracketing and
      :func:`scipy.optimize.brentq`; the inner maximisation over the other parameter is a safeguarded
      Newton iteration.  A bound that the deviance never reaches is reported as ±inf.
    - Bootstrap (``ci="bootstrap"``): ``n_boot`` case-resampling replicates with
      ``numpy.random.default_rng(seed)``; percentile intervals (``inverted_cdf`` quantiles, no
      interpolation).  A replicate whose data are separated counts with slope ±∞ in the slope
      interval and is left out of the intercept interval; a replicate with no events, only events or
      a constant exposure is left out of both.  Both counts are in the result and its message.

    Separation (every responder more exposed than every non-responder, or the reverse; "quasi" with
    ties at one value) means the MLE is infinite.  It is detected before fitting: by default an
    :class:`~pkmodel.errors.EstimationError` is raised; with ``on_separation="return"`` a result with
    ``status`` naming the separation, NaN estimates and the supremum −2LL is returned (used by
    :func:`select_exposure_metric`).

    Parameters
    ----------
    exposure : array_like, shape (n,)
        Exposure per subject (any unit; the slope is per that unit), finite; positive for
        ``transform="log"``.
    response : array_like, shape (n,)
        0/1 (or bool) response per subject, e.g. grade >= 3 neutropenia.
    ci : {"profile", "bootstrap"}
        Interval method used by default in :meth:`LogisticFit.predict` and
        :meth:`LogisticFit.interval`.
    level : float
        Confidence level, in (0, 1).
    n_boot : int
        Bootstrap replicates (``ci="bootstrap"``), >= 100.
    seed : int or numpy.random.Generator, optional
        Seed of the bootstrap resampling.
    transform : {None, "log"}
        Exposure scale of the model.
    on_separation : {"raise", "return"}
        What to do when the data are separated.

    Returns
    -------
    LogisticFit
        Frozen result.

    Raises
    ------
    EstimationError
        Bad input (naming the index and value), fewer than 2 responders and non-responders in total
        (all subjects with the same response), a constant exposure, separation (by default), or a
        fit that does not converge.

    References
    ----------
    Venzon DJ, Moolgavkar SH. A method for computing profile-likelihood-based confidence intervals.
    Appl Stat 1988;37:87-94. doi:10.2307/2347496

    Albert A, Anderson JA. On the existence of maximum likelihood estimates in logistic regression
    models. Biometrika 1984;71:1-10. doi:10.1093/biomet/71.1.1

    Examples
    --------
    A 2×2 table (exposure 0/1): the slope is the log odds ratio.

    >>> x = [0] * 10 + [1] * 10
    >>> y = [1] * 2 + [0] * 8 + [1] * 6 + [0] * 4
    >>> fit = fit_logistic(x, y)
    >>> round(fit.slope, 6), round(float(np.log(6 / 4 / (2 / 8))), 6)
    (1.791759, 1.791759)
    >>> fit.status, fit.n, fit.n_events
    ('ok', 20, 8)
    """
    if ci not in ("profile", "bootstrap"):
        raise EstimationError(f"ci={ci!r} is not supported; use ci='profile' or ci='bootstrap'")
    if on_separation not in ("raise", "return"):
        raise EstimationError(f"on_separation={on_separation!r} must be 'raise' or 'return'")
    level = _check_level(level)
    transform = _check_transform(transform)
    if ci == "bootstrap" and (
        isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 100
    ):
        raise EstimationError(
            f"n_boot={n_boot!r} must be a whole number >= 100 (1000 or more for a 95 % interval)"
        )
    x = _exposure_vector(exposure)
    t = _transform(x, transform)
    y = _response_vector(response, x.size)
    n, k = int(y.size), int(y.sum())
    if k == 0 or k == n:
        which = "no subject has" if k == 0 else "every subject has"
        raise EstimationError(
            f"{which} the response ({k} of {n}), so an exposure–response slope cannot be estimated; "
            "check the response coding (1 = event) or report the proportion instead"
        )
    if t.min() == t.max():
        raise EstimationError(
            f"the exposure is the same for all {n} subjects ({float(x[0]):g}), so no slope can be "
            "estimated; use an exposure metric that varies between subjects"
        )
    sep = _separation(t, y)
    if sep is not None:
        result = _separated_fit(t, y, *sep, ci=ci, level=level, transform=transform)
        if on_separation == "raise":
            raise EstimationError(result.message + " (or pass on_separation='return' to get this status)")
        return result

    theta, cov, ll_hat, _ = _newton_fit(t, y)
    a, b = float(theta[0]), float(theta[1])
    se_a, se_b = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
    zq = float(stats.norm.ppf(0.5 + level / 2.0))
    crit = float(stats.chi2.ppf(level, 1))
    wald = {"intercept": (a - zq * se_a, a + zq * se_a), "slope": (b - zq * se_b, b + zq * se_b)}

    state = {"a": a}

    def deviance_slope(value: float) -> float:
        a_opt, ll = _argmax_1d(value * t, np.ones_like(t), y, state["a"])
        state["a"] = a_opt
        return 2.0 * (ll_hat - ll)

    slope_bounds, notes_b = _profile_bounds(deviance_slope, b, se_b, crit)
    partial = LogisticFit(
        intercept=a,
        slope=b,
        se_intercept=se_a,
        se_slope=se_b,
        covariance=cov,
        wald_ci=wald,
        profile_ci={},
        bootstrap_ci=None,
        ci=ci,
        level=level,
        minus2ll=-2.0 * ll_hat,
        aic=-2.0 * ll_hat + 4.0,
        n=n,
        n_events=k,
        transform=transform,
        status="ok",
        message="",
        _t=t,
        _y=y,
    )
    intercept_bounds, notes_a = partial._profile_eta(0.0, crit)
    notes = [f"intercept: {s}" for s in notes_a] + [f"slope: {s}" for s in notes_b]
    profile = {"intercept": intercept_bounds, "slope": slope_bounds}

    boot_ci = None
    boot = None
    n_sep = n_deg = 0
    if ci == "bootstrap":
        boot, n_sep, n_deg = _bootstrap(t, y, int(n_boot), seed)
        alpha = 1.0 - level
        boot_ci = {}
        for j, name in enumerate(_PARAMETERS):
            values = boot[:, j]
            values = values[~np.isnan(values)]
            if values.size == 0:
                boot_ci[name] = (math.nan, math.nan)
                continue
            boot_ci[name] = (
                float(np.quantile(values, alpha / 2.0, method="inverted_cdf")),
                float(np.quantile(values, 1.0 - alpha / 2.0, method="inverted_cdf")),
            )
        if n_sep or n_deg:
            notes.append(
                f"bootstrap: {n_sep} of {n_boot} replicates separated (slope ±inf, counted in the slope "
                f"interval, left out of the intercept interval and the band) and {n_deg} degenerate "
                "(no events, only events or constant exposure; left out)"
            )
    message = "converged" + ("; " + "; ".join(notes) if notes else "")
    return LogisticFit(
        intercept=a,
        slope=b,
        se_intercept=se_a,
        se_slope=se_b,
        covariance=cov,
        wald_ci=wald,
        profile_ci=profile,
        bootstrap_ci=boot_ci,
        ci=ci,
        level=level,
        minus2ll=-2.0 * ll_hat,
        aic=-2.0 * ll_hat + 4.0,
        n=n,
        n_events=k,
        transform=transform,
        status="ok",
        message=message,
        n_boot_separated=n_sep,
        n_boot_degenerate=n_deg,
        _t=t,
        _y=y,
        _boot=boot,
    )


# ---------------------------------------------------------------------------------- metric selection


def _check_frame_columns(frame: Any, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise EstimationError(
            f"{what} needs a pandas DataFrame with one row per subject, got {type(frame).__name__}"
        )
    if len(frame) == 0:
        raise EstimationError(f"the frame passed to {what} has no rows; pass one row per subject")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EstimationError(
            f"column(s) {missing} not in the frame (columns: {list(frame.columns)}); "
            "name the exposure and response columns exactly"
        )
    for col in columns:
        na = frame[col].isna().to_numpy()
        if na.any():
            label = frame.index[int(np.flatnonzero(na)[0])]
            raise EstimationError(
                f"row {_plain(label)!r}: column {col!r} is missing ({int(na.sum())} missing in total); "
                "every subject needs every candidate exposure and the response so that the fits are "
                "comparable: drop or impute those rows explicitly before the call"
            )


def select_exposure_metric(
    frame: pd.DataFrame,
    candidates: Sequence[str],
    response: str,
    *,
    transform: str | Mapping[str, str | None] | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """Rank candidate exposure metrics by the likelihood of a logistic exposure–response fit.

    Every candidate is fitted to the same subjects with :func:`fit_logistic` (profile intervals).
    All models have two parameters, so ranking by −2LL and by AIC agree; ``delta_aic`` is the AIC
    difference to the best fitted candidate.  A candidate whose data are separated has no finite
    MLE: it is listed with its status and supremum −2LL but is not chosen (see its message).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per subject, with every candidate column and the response column; no missing values.
    candidates : sequence of str
        Exposure column names, e.g. ``["SN38_CAVG_C1", "SN38_CMAX_C1", "ADC_CAVG_C1"]``.
    response : str
        The 0/1 response column, e.g. grade >= 3 neutropenia.
    transform : None, "log" or mapping of str to None/"log"
        Exposure scale for all candidates or per candidate (missing keys: None).
    level : float
        Level of the profile-likelihood interval of the slope.

    Returns
    -------
    pandas.DataFrame
        One row per candidate, best first: ``rank``, ``metric``, ``transform``, ``n``, ``n_events``,
        ``intercept``, ``slope``, ``se_slope``, ``slope_lower``, ``slope_upper`` (profile),
        ``minus2ll``, ``aic``, ``delta_aic``, ``chosen`` (True for exactly one row), ``status``.

    Raises
    ------
    EstimationError
        Missing columns or values (naming the row), no or repeated candidates, bad input for a fit, or
        no candidate with a finite MLE.

    Examples
    --------
    >>> df = pd.DataFrame({"cavg": [1, 2, 3, 4, 5, 6, 7, 8], "cmax": [4, 8, 2, 6, 5, 1, 3, 7],
    ...                    "g3": [0, 0, 1, 0, 1, 0, 1, 1]})
    >>> table = select_exposure_metric(df, ["cmax", "cavg"], "g3")
    >>> table[["rank", "metric", "chosen"]].to_string(index=False)
    ' rank metric  chosen\\n    1   cavg    True\\n    2   cmax   False'
    """
    names = list(candidates) if not isinstance(candidates, str) else [candidates]
    if not names:
        raise EstimationError("no candidate exposure metric given; pass candidates=['SN38_CAVG_C1', ...]")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise EstimationError(f"candidate metric(s) {repeated} are listed more than once; list each once")
    _check_frame_columns(frame, [*names, response], "select_exposure_metric")
    if isinstance(transform, Mapping):
        unknown = sorted(set(transform) - set(names))
        if unknown:
            raise EstimationError(f"transform names metric(s) {unknown} that are not candidates {names}")
        scales = {c: transform.get(c) for c in names}
    else:
        scales = dict.fromkeys(names, transform)
    y = frame[response].to_numpy()
    rows = []
    for name in names:
        try:
            fit = fit_logistic(
                frame[name].to_numpy(), y, level=level, transform=scales[name], on_separation="return"
            )
        except EstimationError as err:
            raise EstimationError(f"candidate {name!r}: {err}") from None
        rows.append(
            {
                "metric": name,
                "transform": scales[name] or "none",
                "n": fit.n,
                "n_events": fit.n_events,
                "intercept": fit.intercept,
                "slope": fit.slope,
                "se_slope": fit.se_slope,
                "slope_lower": fit.profile_ci["slope"][0],
                "slope_upper": fit.profile_ci["slope"][1],
                "minus2ll": fit.minus2ll,
                "aic": fit.aic,
                "status": fit.status,
            }
        )
    table = pd.DataFrame(rows).sort_values("minus2ll", kind="stable").reset_index(drop=True)
    ok = table["status"] == "ok"
    if not ok.any():
        raise EstimationError(
            "no candidate metric has a finite maximum-likelihood fit (all separated: "
            + ", ".join(f"{m}: {s}" for m, s in zip(table["metric"], table["status"], strict=True))
            + "); report observed proportions by exposure group instead"
        )
    best = int(np.flatnonzero(ok.to_numpy())[0])
    table["delta_aic"] = table["aic"] - table.loc[best, "aic"]
    table["chosen"] = False
    table.loc[best, "chosen"] = True
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    columns = [
        "rank",
        "metric",
        "transform",
        "n",
        "n_events",
        "intercept",
        "slope",
        "se_slope",
        "slope_lower",
        "slope_upper",
        "minus2ll",
        "aic",
        "delta_aic",
        "chosen",
        "status",
    ]
    return table[columns]
