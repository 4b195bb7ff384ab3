"""Per-observation likelihood terms of the residual error models, vectorised.

For an observation with prediction ``f`` the models give a mean ``μ`` and a standard deviation ``s`` on
the scale the observation is compared on:

* additive, proportional, combined: ``μ = f``, ``s² = a² + b²·f_v²``;
* log-additive: ``μ = log f``, ``s = a``, and the observation is ``log(DV)``;

where ``f_v`` is the prediction the variance is evaluated at (``f`` itself with interaction, the
population prediction without).  The contribution to ``−2 log L`` (without the constant ``log 2π``) is

* observed (Gaussian): ``ℓ = log s² + (y − μ)²/s²``;
* censored below ``LLOQ`` (Beal 2001, method M3): ``ℓ = −2 log Φ(z)``, ``z = (LLOQ' − μ)/s`` with
  ``LLOQ'`` the LLOQ on the comparison scale.

Besides ``ℓ`` the functions here return ``dℓ/df`` and a non-negative curvature weight ``w`` such that
``Σ w·g·gᵀ`` (``g = ∂f/∂η``) approximates ``∇²Σℓ`` with first derivatives of ``f`` only (the
Gauss–Newton / FOCE convention):

* observed value: ``w = 2μ'²/s² + (ds²/df)²/s⁴``, the expected (Fisher) information of ``−2 log p``
  about ``f``; its half is the ``gᵀR⁻¹g + ½ tr(R⁻¹ ∂R R⁻¹ ∂R)`` term of NONMEM's FOCE-I Hessian
  (Almquist et al. 2015).  Without interaction ``ds²/df = 0`` and it reduces to ``2μ'²/s²``;
* censored value: ``w = 2 m(z)(z + m(z))·(dz/df)²`` with ``m = φ/Φ``; ``m(z)(z + m(z))`` (between 0
  and 1) is the exact second derivative of ``−log Φ(z)`` in ``z``.

References
----------
Beal SL (2001) Ways to fit a PK model with some data below the quantification limit.
J Pharmacokinet Pharmacodyn 28:481–504. doi:10.1023/A:1012299115260

Almquist J, Leander J, Jirstrand M (2015) Using sensitivity equations for computing gradients of the
FOCE and FOCEI approximations to the population likelihood. J Pharmacokinet Pharmacodyn 42:191–209.
doi:10.1007/s10928-015-9409-1
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import log_ndtr

__all__ = ["LOG_2PI", "ObservationTerms", "observation_terms"]

LOG_2PI = math.log(2.0 * math.pi)


class ObservationTerms(NamedTuple):
    """Likelihood terms of a set of observations (all arrays of the broadcast input shape).

    Attributes
    ----------
    ell : ndarray
        ``−2 log p`` without ``log 2π`` (NaN where the prediction is invalid, e.g. ``f <= 0`` on a log scale).
    dell_df : ndarray
        ``dℓ/df``.
    weight : ndarray
        Curvature weight ``w`` (see the module docstring): ``Σ w·g·gᵀ ≈ ∇²Σℓ``.
    d2ell_df2 : ndarray
        The exact second derivative ``d²ℓ/df²`` (for Newton steps; may be negative).
    weighted_residual : ndarray
        ``(y − μ)/s`` (the individual weighted residual for observed values; ``z`` for censored ones).
    sd : ndarray
        ``s``, the residual SD on the comparison scale.
    """

    ell: np.ndarray
    dell_df: np.ndarray
    weight: np.ndarray
    d2ell_df2: np.ndarray
    weighted_residual: np.ndarray
    sd: np.ndarray


def observation_terms(
    y: np.ndarray,
    f: np.ndarray,
    f_var: np.ndarray,
    additive_sd: np.ndarray,
    proportional_sd: np.ndarray,
    is_log: np.ndarray,
    censored: np.ndarray,
    interaction: bool,
) -> ObservationTerms:
    """Evaluate ``−2 log p`` of observations, its derivative in ``f`` and curvature weights.

    Parameters
    ----------
    y : ndarray
        Observation on the comparison scale (``log DV`` for log-additive outputs); for a censored
        observation, the LLOQ on that scale.
    f : ndarray
        Predictions (natural scale).
    f_var : ndarray
        Predictions the residual variance is evaluated at (``f`` with interaction).
    additive_sd, proportional_sd : ndarray
        ``a`` and ``b`` of each observation (0 where the model has no such component; ``b`` must be 0
        on log-additive outputs).
    is_log, censored : ndarray of bool
        Log-additive output; censored (BLQ, M3) observation.
    interaction : bool
        True when ``f_var`` is ``f`` (the variance moves with the prediction, so ``dℓ/df`` includes
        ``d s²/df``).

    Returns
    -------
    ObservationTerms
        All arrays of the broadcast shape.

    Examples
    --------
    >>> t = observation_terms(np.array([1.0]), np.array([0.5]), np.array([0.5]), np.array([0.5]),
    ...                       np.array([0.0]), np.array([False]), np.array([False]), True)
    >>> round(float(t.ell[0]), 6)  # log(0.25) + (0.5/0.5)**2
    -0.386294
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if np.any(is_log):
            mu = np.where(is_log, np.log(f), f)
            dmu = np.where(is_log, 1.0 / f, 1.0)
            d2mu = np.where(is_log, -1.0 / (f * f), 0.0)
        else:
            mu, dmu, d2mu = f, np.ones_like(f), np.zeros_like(f)
        s2 = additive_sd**2 + proportional_sd**2 * f_var**2
        sd = np.sqrt(s2)
        r = y - mu
        z = r / sd
        if interaction and np.any(proportional_sd):
            ds2 = 2.0 * proportional_sd**2 * f_var
            d2s2 = 2.0 * proportional_sd**2 * np.ones_like(s2)
            rel = ds2 / s2
            # observed values (Gaussian); exact d²ℓ/df² uses r' = −μ', r'' = −μ''
            ell = np.log(s2) + z * z
            dell = rel - 2.0 * r * dmu / s2 - z * z * rel
            weight = 2.0 * dmu * dmu / s2 + rel**2
            d2ell = (
                d2s2 / s2
                - rel**2
                + 2.0 * (dmu * dmu - r * d2mu) / s2
                + 4.0 * r * dmu * ds2 / s2**2
                - r * r * d2s2 / s2**2
                + 2.0 * z * z * rel**2
            )
        else:
            ds2 = d2s2 = rel = np.zeros_like(s2)
            ell = np.log(s2) + z * z
            dell = -2.0 * r * dmu / s2
            weight = 2.0 * dmu * dmu / s2
            d2ell = 2.0 * (dmu * dmu - r * d2mu) / s2
        if np.any(censored):
            # censored values (M3): ℓ = −2 log Φ(z)
            log_phi = log_ndtr(z)
            mills = np.exp(-0.5 * z * z - 0.5 * LOG_2PI - log_phi)
            curvature = np.clip(mills * (z + mills), 0.0, 1.0)
            dz = -dmu / sd - 0.5 * z * rel
            d2z = -d2mu / sd + 0.5 * dmu * rel / sd - 0.5 * dz * rel - 0.5 * z * (d2s2 / s2 - rel**2)
            weight_c = 2.0 * curvature * dz * dz
            ell = np.where(censored, -2.0 * log_phi, ell)
            dell = np.where(censored, -2.0 * mills * dz, dell)
            weight = np.where(censored, weight_c, weight)
            d2ell = np.where(censored, weight_c - 2.0 * mills * d2z, d2ell)
            # a censored record whose residual SD is 0 (a proportional error where the prediction is 0,
            # e.g. a pre-dose sample below the LLOQ): Y = f exactly, so P(Y < LLOQ) = 1 when LLOQ > f —
            # the limit of Φ(z) as z → +∞, with every derivative → 0 (not ∞·0)
            point = censored & (sd == 0)
            if np.any(point):
                ell = np.where(point, np.where(y > mu, 0.0, np.inf), ell)
                dell = np.where(point, 0.0, dell)
                weight = np.where(point, 0.0, weight)
                d2ell = np.where(point, 0.0, d2ell)
        ell = np.where(np.isfinite(ell), ell, np.nan)
        return ObservationTerms(
            ell=ell,
            dell_df=dell,
            weight=weight,
            d2ell_df2=d2ell,
            weighted_residual=z,
            sd=sd,
        )
