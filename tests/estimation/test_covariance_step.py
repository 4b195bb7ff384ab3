"""The covariance step: SEs against the exact likelihood's Hessian, and failure when not identifiable.

Oracle: for a model linear in η with additive error the FOCE objective is the exact marginal likelihood;
here it is written with scipy.stats.multivariate_normal, maximised with scipy.optimize.minimize and
differentiated twice by central differences — all independently of the engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from pkmodel.estimation import (
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
    fit_population,
)
from pkmodel.estimation.covariance import covariance_from_hessian


def linear_subjects(n_subjects=30, seed=11):
    """y = (B + η_B) + (S + η_S)·t + ε, B = 5, S = 0.8, Ω = [[1, .2], [.2, .09]], σ = 0.5."""
    rng = np.random.default_rng(seed)
    omega = np.array([[1.0, 0.2], [0.2, 0.09]])
    subjects = []
    for i in range(n_subjects):
        t = np.array([0.0, 1.0, 2.0, 4.0, 6.0])
        b, s = np.array([5.0, 0.8]) + rng.multivariate_normal([0, 0], omega)
        subjects.append(Subject(i, dv=b + s * t + rng.normal(0, 0.5, t.size), time=t))
    return subjects


def linear_problem(subjects):
    return PopulationProblem(
        subjects,
        [Theta("B", 4.0), Theta("S", 0.5)],
        [
            IndividualParameter("B", theta="B", eta="eta_B", eta_form="additive"),
            IndividualParameter("S", theta="S", eta="eta_S", eta_form="additive"),
        ],
        [OmegaBlock(["eta_B", "eta_S"], [[0.5, 0.0], [0.0, 0.05]], diagonal=False)],
        [ResidualError("additive", additive=1.0)],
        predict=lambda s, p: p["B"] + p["S"] * s.time,
    )


def exact_m2ll(p, subjects):
    """Exact −2 log L at natural parameters p = (B, S, ω_BB, ω_SB, ω_SS, σ): Σ n log 2π + log det V + rᵀV⁻¹r.

    All subjects share the design t = (0, 1, 2, 4, 6), so V is the same for all of them.
    """
    b, s, w11, w21, w22, sd = p
    omega = np.array([[w11, w21], [w21, w22]])
    if sd <= 0 or np.linalg.eigvalsh(omega)[0] <= 0:
        return np.inf
    t = subjects[0].time
    z = np.column_stack([np.ones(t.size), t])
    v = z @ omega @ z.T + sd**2 * np.eye(t.size)
    r = np.array([subj.dv - b - s * t for subj in subjects])
    quad = np.einsum("mi,ij,mj->", r, np.linalg.inv(v), r)
    return len(subjects) * (t.size * math.log(2 * math.pi) + np.linalg.slogdet(v)[1]) + quad


def test_exact_likelihood_helper_agrees_with_scipy():
    subjects = linear_subjects(3)
    p = np.array([5.0, 0.8, 1.0, 0.2, 0.09, 0.5])
    z = np.column_stack([np.ones(5), subjects[0].time])
    cov = z @ np.array([[1.0, 0.2], [0.2, 0.09]]) @ z.T + 0.25 * np.eye(5)
    expected = sum(-2.0 * multivariate_normal.logpdf(s.dv, 5.0 + 0.8 * s.time, cov) for s in subjects)
    assert exact_m2ll(p, subjects) == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def linear_fit():
    subjects = linear_subjects()
    return subjects, fit_population(linear_problem(subjects), "foce-i")


def test_estimates_equal_the_exact_maximum_likelihood(linear_fit):
    subjects, fit = linear_fit
    assert fit.converged and fit.covariance_ok
    start = np.array([5.0, 0.8, 1.0, 0.2, 0.09, 0.5])  # the simulation's values
    options = {"xatol": 1e-9, "fatol": 1e-11, "maxiter": 40000, "maxfev": 40000}
    exact = minimize(exact_m2ll, start, args=(subjects,), method="Nelder-Mead", options=options)
    ours = np.array(
        [
            fit.theta["B"],
            fit.theta["S"],
            fit.omega[0, 0],
            fit.omega[1, 0],
            fit.omega[1, 1],
            fit.sigma["y0_add"],
        ]
    )
    assert fit.minus_2_log_likelihood == pytest.approx(exact.fun, abs=1e-5)
    assert fit.minus_2_log_likelihood <= exact.fun + 1e-6
    np.testing.assert_allclose(ours, exact.x, rtol=2e-3, atol=2e-4)


def test_standard_errors_equal_those_of_the_exact_likelihood_hessian(linear_fit):
    subjects, fit = linear_fit
    p = np.array(
        [
            fit.theta["B"],
            fit.theta["S"],
            fit.omega[0, 0],
            fit.omega[1, 0],
            fit.omega[1, 1],
            fit.sigma["y0_add"],
        ]
    )
    h = 2e-4 * np.array([abs(v) if v else 1.0 for v in p])
    n = p.size
    hess = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ei, ej = np.eye(n)[i] * h[i], np.eye(n)[j] * h[j]
            hess[i, j] = (
                exact_m2ll(p + ei + ej, subjects)
                - exact_m2ll(p + ei - ej, subjects)
                - exact_m2ll(p - ei + ej, subjects)
                + exact_m2ll(p - ei - ej, subjects)
            ) / (4 * h[i] * h[j])
    se_exact = np.sqrt(np.diag(2.0 * np.linalg.inv(hess)))
    names = ["B", "S", "omega(eta_B)", "omega(eta_S,eta_B)", "omega(eta_S)", "y0_add"]
    assert fit.covariance.names == tuple(names)
    np.testing.assert_allclose(fit.covariance.standard_errors, se_exact, rtol=0.01)
    # the tables report the same numbers
    assert fit.theta_table().loc["S", "se"] == pytest.approx(se_exact[1], rel=0.01)
    assert fit.omega_table().loc["omega(eta_S,eta_B)", "se"] == pytest.approx(se_exact[3], rel=0.01)
    assert fit.sigma_table().loc["y0_add", "se_sd"] == pytest.approx(se_exact[5], rel=0.01)
    assert fit.sigma_table().loc["y0_add", "se_variance"] == pytest.approx(2 * p[5] * se_exact[5], rel=0.01)


def test_unidentifiable_parameter_makes_the_covariance_step_fail():
    # only B1 + B2 enters the predictions: the R matrix is singular
    subjects = linear_subjects(12)
    problem = PopulationProblem(
        subjects,
        [Theta("B1", 2.0), Theta("B2", 2.0), Theta("S", 0.5)],
        [
            IndividualParameter("B1", theta="B1", eta="eta_B", eta_form="additive"),
            IndividualParameter("B2", theta="B2"),
            IndividualParameter("S", theta="S"),
        ],
        [OmegaBlock(["eta_B"], [0.5])],
        [ResidualError("additive", additive=1.0)],
        predict=lambda s, p: p["B1"] + p["B2"] + p["S"] * s.time,
    )
    fit = fit_population(problem)
    assert not fit.covariance_ok
    assert "covariance step failed" in fit.covariance_message
    assert "B1" in fit.covariance_message and "B2" in fit.covariance_message
    assert "not identifiable" in fit.covariance_message
    assert fit.covariance_matrix() is None and fit.correlation_matrix() is None
    assert fit.theta_table()["se"].isna().all()
    assert math.isnan(fit.condition_number)


def test_covariance_from_a_known_hessian():
    # R = [[4, 2], [2, 4]]: cov = 2R⁻¹ = [[2/3, −1/3], [−1/3, 2/3]], SE = sqrt(2/3), correlation −0.5,
    # correlation eigenvalues 1.5 and 0.5: condition number 3
    step = covariance_from_hessian(np.array([[4.0, 2.0], [2.0, 4.0]]), np.ones(2), np.ones(2), ["a", "b"])
    assert step.ok
    np.testing.assert_allclose(step.covariance, [[2 / 3, -1 / 3], [-1 / 3, 2 / 3]], rtol=1e-12)
    np.testing.assert_allclose(step.standard_errors, [math.sqrt(2 / 3)] * 2, rtol=1e-12)
    assert step.correlation[0, 1] == pytest.approx(-0.5, rel=1e-12)
    assert step.condition_number == pytest.approx(3.0, rel=1e-12)


def test_indefinite_hessian_is_reported_as_failure():
    step = covariance_from_hessian(np.array([[1.0, 2.0], [2.0, 1.0]]), np.ones(2), np.ones(2), ["a", "b"])
    assert not step.ok
    assert "not positive definite" in step.message
    assert step.standard_errors is None
