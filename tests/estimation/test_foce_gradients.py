"""Stationarity checks: η̂ zeroes the conditional objective's gradient; the estimates minimise the OFV;
the residual-model derivatives match finite differences and the likelihood matches scipy.stats.

Oracles: the conditional objective written out here with numpy (theophylline closed form), differentiated
by central differences; scipy.stats.norm for the per-observation likelihood.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from pkmodel.estimation import population_objective
from pkmodel.estimation.residual import LOG_2PI, observation_terms


def test_eta_hat_zeroes_the_gradient_of_the_conditional_objective(theoph, theoph_foce_fit):
    fit = theoph_foce_fit
    subjects = theoph.subjects()
    ebes = fit.subjects()
    omega_inv = np.linalg.inv(fit.omega)
    sd = fit.sigma["conc_add"]
    ke, ka, cl = fit.theta["KE"], fit.theta["KA"], fit.theta["CL"]
    for s in subjects:
        eta_hat = ebes.loc[s.id, ["eta_KA", "eta_CL"]].to_numpy(dtype=float)

        def conditional(eta, s=s):
            # −2 log p(y|η) (without constants) + ηᵀΩ⁻¹η, additive error
            f = theoph.concentration(s.data, s.time, ke, ka * math.exp(eta[0]), cl * math.exp(eta[1]))
            return float(np.sum((s.dv - f) ** 2) / sd**2 + eta @ omega_inv @ eta)

        h = 1e-5
        grad = [(conditional(eta_hat + h * e) - conditional(eta_hat - h * e)) / (2 * h) for e in np.eye(2)]
        assert np.max(np.abs(grad)) < 1e-5, (s.id, grad)
        # and it is a minimum, not a saddle
        assert conditional(eta_hat) <= min(conditional(eta_hat + 0.01 * e) for e in (*np.eye(2), *-np.eye(2)))


def test_estimates_are_a_minimum_of_the_objective(theoph, theoph_foce_fit):
    fit = theoph_foce_fit
    problem = theoph.problem()
    omega = fit.omega
    sigma = {"conc_add": fit.sigma["conc_add"]}
    base = population_objective(problem, "foce-i", theta=fit.theta, omega=omega, sigma=sigma).ofv
    assert base == pytest.approx(fit.ofv, abs=1e-7)
    for factor in (0.995, 1.005):
        for name in fit.theta:
            theta = dict(fit.theta)
            theta[name] *= factor
            assert population_objective(problem, "foce-i", theta=theta, omega=omega, sigma=sigma).ofv > base
        for k in range(2):
            changed = omega.copy()
            changed[k, k] *= factor
            assert (
                population_objective(problem, "foce-i", theta=fit.theta, omega=changed, sigma=sigma).ofv
                > base
            )
        bigger = {"conc_add": sigma["conc_add"] * factor}
        assert population_objective(problem, "foce-i", theta=fit.theta, omega=omega, sigma=bigger).ofv > base


CASES = [
    # (is_log, censored, interaction, additive_sd, proportional_sd)
    (False, False, True, 0.3, 0.2),
    (False, False, False, 0.3, 0.2),
    (False, True, True, 0.3, 0.2),
    (False, True, False, 0.3, 0.2),
    (True, False, True, 0.25, 0.0),
    (True, True, True, 0.25, 0.0),
    (False, False, True, 0.0, 0.2),
    (False, True, True, 0.0, 0.2),
]


@pytest.mark.parametrize(("is_log", "censored", "interaction", "a", "b"), CASES)
def test_observation_terms_derivatives_match_finite_differences(is_log, censored, interaction, a, b):
    y_raw = np.array([1.3, 0.4, 2.5])
    y = np.log(y_raw) if is_log else y_raw
    f = np.array([1.1, 0.7, 2.0])
    f_var_fixed = np.array([0.9, 0.5, 2.2])
    shape = f.shape

    def terms(ff):
        return observation_terms(
            y,
            ff,
            ff if interaction else f_var_fixed,
            np.full(shape, a),
            np.full(shape, b),
            np.full(shape, is_log),
            np.full(shape, censored),
            interaction,
        )

    h = 1e-6
    t0, tp, tm = terms(f), terms(f + h), terms(f - h)
    np.testing.assert_allclose(t0.dell_df, (tp.ell - tm.ell) / (2 * h), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(t0.d2ell_df2, (tp.dell_df - tm.dell_df) / (2 * h), rtol=1e-5, atol=1e-6)
    assert np.all(t0.weight >= 0)


@pytest.mark.parametrize(("is_log", "censored"), [(False, False), (False, True), (True, False), (True, True)])
def test_observation_terms_likelihood_matches_scipy(is_log, censored):
    y_raw, f, a, b = np.array([1.3, 0.4]), np.array([1.1, 0.7]), 0.3, (0.0 if is_log else 0.2)
    sd = np.full(2, a) if is_log else np.sqrt(a**2 + (b * f) ** 2)
    mean = np.log(f) if is_log else f
    y = np.log(y_raw) if is_log else y_raw
    t = observation_terms(
        y, f, f, np.full(2, a), np.full(2, b), np.full(2, is_log), np.full(2, censored), True
    )
    if censored:  # y holds the LLOQ: −2 log P(Y < LLOQ)
        expected = -2.0 * norm.logcdf(y, loc=mean, scale=sd)
    else:
        expected = -2.0 * norm.logpdf(y, loc=mean, scale=sd) - LOG_2PI
    np.testing.assert_allclose(t.ell, expected, rtol=1e-12, atol=1e-12)
