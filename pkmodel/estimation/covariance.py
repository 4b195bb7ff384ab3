"""The covariance step: numerical Hessian of −2 log L and the standard errors derived from it.

``R`` is the Hessian of the objective (−2 log L) with respect to the free natural parameters, by central
finite differences with relative steps; the asymptotic covariance of the estimates is ``2·R⁻¹``
(NONMEM's ``$COVARIANCE MATRIX=R``).  The step fails — and says so — when ``R`` is not positive
definite or is numerically singular.  ``D·R·D`` (``D`` = parameter magnitudes) is unit-free: an
eigenvalue ``λ`` of it means that the corresponding combination of relative parameter changes has a
standard error ``sqrt(2/λ)``.  Its smallest eigenvalue must exceed both ``1e-8`` times the largest and
the noise floor of the finite-difference Hessian, ``4ε/h²`` for an objective computed to ``ε`` with
relative step ``h`` (population fits: ``ε = 1e-8``, ``h = 1e-3``, floor 0.04 — a combination with a
relative SE above about 700 % is indistinguishable from an unidentifiable one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CovarianceStep", "central_hessian", "covariance_from_hessian"]

_SINGULAR_RATIO = 1.0e-8
_RELATIVE_STEP = 1.0e-3
_POPULATION_OFV_NOISE = 1.0e-8


@dataclass(frozen=True)
class CovarianceStep:
    """Outcome of a covariance step.

    Attributes
    ----------
    ok : bool
        True only if ``R`` is positive definite and not numerically singular.
    message : str
        What happened (on failure: why, and which parameters are involved).
    names : tuple of str
        Names of the free parameters, the order of all matrices.
    estimates : ndarray, shape (n,)
        The natural parameter values differentiated at.
    hessian : ndarray, shape (n, n)
        ``R``, the Hessian of −2 log L.
    covariance, correlation : ndarray, shape (n, n), or None when not ok
    standard_errors : ndarray, shape (n,), or None when not ok
    condition_number : float
        Largest / smallest eigenvalue of the correlation matrix (NaN when not ok).
    """

    ok: bool
    message: str
    names: tuple[str, ...]
    estimates: np.ndarray
    hessian: np.ndarray
    covariance: np.ndarray | None
    correlation: np.ndarray | None
    standard_errors: np.ndarray | None
    condition_number: float


def central_hessian(
    fun: Callable[[np.ndarray], float] | Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    steps: np.ndarray,
    vectorized: bool = False,
) -> np.ndarray:
    """Hessian of a scalar function by central differences, second-order accurate.

    ``H_kk = (f(x+h_k) − 2f(x) + f(x−h_k))/h_k²`` and, with the same points and two more per pair,
    ``H_kl = (f(x+h_k+h_l) + f(x−h_k−h_l) − f(x+h_k) − f(x−h_k) − f(x+h_l) − f(x−h_l) + 2f(x))/(2 h_k h_l)``
    (Abramowitz & Stegun 1964, 25.3.27; the odd and the ``h_k²``, ``h_l²`` terms of the Taylor series cancel,
    leaving an error of order ``h²`` as with the four-point formula); ``n(n + 1) + 1`` evaluations instead
    of the four-point formula's ``2n² + 1`` (a 6-parameter population fit: 43 instead of 73).  Rounding
    noise ``ε`` of ``f`` gives an error of about ``1.6ε/(h_k h_l)``.

    Parameters
    ----------
    fun : callable
        ``fun(x) -> float``; with ``vectorized``, ``fun(points) -> values`` for points of shape (k, n)
        and values of shape (k,) (the whole stencil is then one call).
    x : ndarray, shape (n,)
    steps : ndarray, shape (n,)
        Step per coordinate.
    vectorized : bool
        ``fun`` takes all points at once.

    Returns
    -------
    ndarray, shape (n, n)
        Symmetric; NaN entries where the function was not finite.

    References
    ----------
    Abramowitz M, Stegun IA (1964) Handbook of Mathematical Functions, formula 25.3.27.

    Examples
    --------
    >>> fun = lambda v: v[0] ** 2 * v[1] + 3 * v[1] ** 2
    >>> h = central_hessian(fun, np.array([1.0, 2.0]), np.array([1e-3, 1e-3]))
    >>> np.round(h, 6).tolist()
    [[4.0, 2.0], [2.0, 6.0]]
    """
    x = np.asarray(x, dtype=float)
    steps = np.asarray(steps, dtype=float)
    n = x.size
    shifts = np.diag(steps)
    pairs = [(k, m) for k in range(n) for m in range(k)]
    points = [x]
    for k in range(n):
        points += [x + shifts[k], x - shifts[k]]
    for k, m in pairs:
        points += [x + shifts[k] + shifts[m], x - shifts[k] - shifts[m]]
    stencil = np.array(points)
    values = np.asarray(fun(stencil) if vectorized else [fun(p) for p in stencil], dtype=float)
    f0 = values[0]
    plus, minus = values[1 : 1 + 2 * n : 2], values[2 : 2 + 2 * n : 2]
    hess = np.diag((plus - 2.0 * f0 + minus) / steps**2)
    along = plus + minus  # f(x + h_k) + f(x − h_k)
    for c, (k, m) in enumerate(pairs):
        pp, mm = values[1 + 2 * n + 2 * c : 3 + 2 * n + 2 * c]
        hess[k, m] = hess[m, k] = (pp + mm - along[k] - along[m] + 2.0 * f0) / (2.0 * steps[k] * steps[m])
    hess[~np.isfinite(hess)] = np.nan
    return hess


def covariance_from_hessian(
    hessian: np.ndarray,
    estimates: np.ndarray,
    scale: np.ndarray,
    names: Sequence[str],
    noise_floor: float = 0.0,
) -> CovarianceStep:
    """Turn ``R`` (Hessian of −2 log L) into a covariance step result (``cov = 2·R⁻¹``).

    Parameters
    ----------
    hessian : ndarray, shape (n, n)
    estimates : ndarray, shape (n,)
    scale : ndarray, shape (n,)
        Parameter magnitudes used to make ``R`` unit-free for the singularity test.
    names : sequence of str
    noise_floor : float
        Eigenvalues of the scaled ``R`` at or below this are treated as zero (finite-difference noise).

    Returns
    -------
    CovarianceStep

    Examples
    --------
    >>> step = covariance_from_hessian(np.array([[2.0, 0.0], [0.0, 8.0]]), np.array([1.0, 1.0]),
    ...                                np.ones(2), ["a", "b"])
    >>> step.ok, step.standard_errors.tolist()
    (True, [1.0, 0.5])
    >>> covariance_from_hessian(np.array([[1.0, 1.0], [1.0, 1.0]]), np.ones(2), np.ones(2), ["a", "b"]).ok
    False
    """
    names = tuple(names)
    n = len(names)

    def failed(message: str) -> CovarianceStep:
        return CovarianceStep(False, message, names, estimates, hessian, None, None, None, math.nan)

    if n == 0:
        return failed("no free parameters: nothing to estimate a covariance for")
    if not np.all(np.isfinite(hessian)):
        bad = sorted({names[i] for i in np.argwhere(~np.isfinite(hessian)).ravel()})
        return failed(
            "covariance step failed: the objective was not finite next to the estimates when "
            f"differentiating with respect to {', '.join(bad)} (a parameter at a bound or Ω near singular?)"
        )
    sym = 0.5 * (hessian + hessian.T)
    scaled = sym * np.outer(scale, scale)
    eigval, eigvec = np.linalg.eigh(scaled)
    if eigval[-1] <= 0 or eigval[0] <= max(_SINGULAR_RATIO * eigval[-1], noise_floor):
        involved = eigvec[:, 0]
        order = np.argsort(-np.abs(involved))
        top = [names[i] for i in order if abs(involved[i]) > 0.2][:4]
        kind = "not positive definite" if eigval[0] <= 0 else "numerically singular"
        return failed(
            f"covariance step failed: the R matrix (Hessian of −2LL) is {kind} (eigenvalues of the scaled "
            f"matrix from {eigval[0]:.3g} to {eigval[-1]:.3g}, noise floor {noise_floor:.2g}); the "
            f"direction of the smallest eigenvalue involves {', '.join(top)}: these parameters are not "
            "identifiable from the data (fix one, simplify the model, or give more informative data)"
        )
    inv_scaled = eigvec @ np.diag(1.0 / eigval) @ eigvec.T
    cov = 2.0 * inv_scaled * np.outer(scale, scale)
    se = np.sqrt(np.diag(cov))
    corr = cov / np.outer(se, se)
    corr_eig = np.linalg.eigvalsh(corr)
    return CovarianceStep(
        ok=True,
        message="covariance step successful",
        names=names,
        estimates=np.asarray(estimates, dtype=float),
        hessian=sym,
        covariance=cov,
        correlation=corr,
        standard_errors=se,
        condition_number=float(corr_eig[-1] / corr_eig[0]),
    )


def covariance_step(
    engine,
    theta: np.ndarray,
    omega: np.ndarray,
    sigma: np.ndarray,
    eta: np.ndarray,
    eta_start: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    extrapolate: float = 0.0,
) -> CovarianceStep:
    """Covariance step of a population fit at (θ, Ω, σ) with η̂ ``eta`` (private use).

    The whole stencil of the Hessian is one batched evaluation of the objective (its η̂ found together),
    warm-started at ``eta_start(θ, Ω, σ)`` for the stencil's points (B, ...) → (B, n_subjects, n_eta)
    (default: all at ``eta``); η̂ searches whose Newton decrement falls below ``extrapolate`` end with an
    extrapolated step (``PopulationObjective.solve_eta``).
    """
    space = engine.space
    p0 = space.to_p(theta, omega, sigma)
    scale = space.p_scale(p0, omega)

    def objectives(points: np.ndarray) -> np.ndarray:
        th, om, sg = space.from_p(points)
        inside = np.flatnonzero(space.theta_in_bounds(th))
        th, om, sg = th[inside], om[inside], sg[inside]
        starts = eta if eta_start is None else eta_start(th, om, sg)
        values = np.full(len(points), math.nan)
        values_inside = engine.evaluate_many(th, om, sg, starts, extrapolate=extrapolate)
        for j, value in zip(inside, values_inside, strict=True):
            values[j] = value.ofv if math.isfinite(value.ofv) else math.nan
        return values

    hessian = central_hessian(objectives, p0, _RELATIVE_STEP * scale, vectorized=True)
    floor = 4.0 * _POPULATION_OFV_NOISE / _RELATIVE_STEP**2
    return covariance_from_hessian(hessian, p0, scale, space.p_names, noise_floor=floor)
