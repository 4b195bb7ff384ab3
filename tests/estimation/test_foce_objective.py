"""The population objective functions against independent computations.

Oracles:
* NONMEM's objective values for Wang's (2007) example (Table 2; reproduced by the Pumas and nlmixr test
  suites), and NONMEM's η̂, IPRED, IWRES and CWRES for the FOCE-I proportional case (NONMEM output
  tabulated in nlmixr's tests/testthat/test-focei-wang2007.R);
* for a model linear in η with additive error, the exact marginal −2 log-likelihood
  (scipy.stats.multivariate_normal), which FO, FOCE and FOCE-I all equal;
* for nonlinear models, the formulas written out here independently (η̂ by scipy, ∂f/∂η by sympy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
from scipy.optimize import minimize_scalar
from scipy.stats import multivariate_normal

from pkmodel.errors import EstimationError
from pkmodel.estimation import (
    CovariateEffect,
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
    fit_population,
    population_objective,
)

# Wang (2007) Table 1: y at t = 0 and 1 h after 10 units, f = 10·exp(−K·exp(η)·t)
WANG_Y = np.array(
    [
        [10.68, 3.6837],
        [10.402, 6.454],
        [9.8814, 5.8565],
        [9.3408, 5.6209],
        [10.082, 6.7583],
        [9.8938, 6.5049],
        [9.8908, 6.9557],
        [10.234, 6.4488],
        [9.9882, 6.7112],
        [9.6736, 6.6402],
    ]
)
WANG_T = np.array([0.0, 1.0])
# NONMEM's η̂, FOCE-I, proportional error, at θ = 0.5, ω² = 0.04, σ² = 0.1
NONMEM_ETA_FOCEI_PROP = [
    0.071545,
    0.0057045,
    0.024947,
    0.03195,
    -0.0047874,
    0.0039789,
    -0.011804,
    0.0058801,
    -0.0031367,
    -0.00066641,
]


WANG_SD = math.sqrt(0.1)  # σ² = 0.1


def wang_problem(model: str, theta=0.5, omega=0.04, sd=WANG_SD) -> PopulationProblem:
    subjects = [Subject(i + 1, dv=WANG_Y[i], time=WANG_T) for i in range(len(WANG_Y))]
    kwargs = {"additive": sd} if model == "additive" else {"proportional": sd}
    return PopulationProblem(
        subjects,
        [Theta("K", theta, lower=0.0)],
        [IndividualParameter("K", theta="K", eta="eta_K")],
        [OmegaBlock(["eta_K"], [omega])],
        [ResidualError(model, **kwargs)],
        predict_batch=lambda s, p: 10.0 * np.exp(-np.outer(p["K"], s.time)),
    )


@pytest.mark.parametrize(
    ("model", "method", "nonmem_ofv"),
    [
        ("additive", "fo", 0.026),
        ("additive", "foce", -2.059),
        ("additive", "foce-i", -2.059),  # FOCE = FOCE-I for additive error
        ("proportional", "fo", 39.213),
        ("proportional", "foce-i", 39.458),
    ],
)
def test_wang_2007_table_2_nonmem_objective_values(model, method, nonmem_ofv):
    value = population_objective(wang_problem(model), method)
    assert value.ofv == pytest.approx(nonmem_ofv, abs=0.0005)
    assert value.inner_failures == 0


def test_wang_2007_nonmem_eta_hat_foce_i_proportional():
    value = population_objective(wang_problem("proportional"), "foce-i")
    np.testing.assert_allclose(value.eta[:, 0], NONMEM_ETA_FOCEI_PROP, atol=5e-7, rtol=5e-5)


# NONMEM's $TABLE at those parameters (5 significant digits), same source
NONMEM_IPRED = [10, 5.8445, 10, 6.048, 10, 5.9892, 10, 5.9676, 10, 6.0798, 10, 6.0532, 10, 6.101, 10, 6.0474]
NONMEM_IPRED += [10, 6.0748, 10, 6.0673]
NONMEM_IWRES = [
    0.21503,
    -1.1691,
    0.12712,
    0.21229,
    -0.037505,
    -0.070055,
    -0.20846,
    -0.18374,
    0.025931,
    0.3529,
]
NONMEM_IWRES += [
    -0.033583,
    0.23596,
    -0.034532,
    0.44301,
    0.073997,
    0.20987,
    -0.0037315,
    0.33128,
    -0.10322,
    0.29858,
]
NONMEM_CWRES = [
    0.21503,
    -1.2221,
    0.12712,
    0.19366,
    -0.037505,
    -0.10511,
    -0.20846,
    -0.22425,
    0.025931,
    0.34381,
]
NONMEM_CWRES += [
    -0.033583,
    0.21888,
    -0.034532,
    0.44045,
    0.073997,
    0.19108,
    -0.0037315,
    0.32066,
    -0.10322,
    0.28571,
]


def test_wang_2007_nonmem_table_ipred_iwres_cwres_foce_i_proportional():
    # all parameters fixed: the "fit" evaluates the tables at NONMEM's parameter values
    problem = wang_problem("proportional").replace(
        thetas=[Theta("K", 0.5, fixed=True)],
        omega=[OmegaBlock(["eta_K"], [0.04], fixed=True)],
        residual=[ResidualError("proportional", proportional=WANG_SD, fix_proportional=True)],
    )
    fit = fit_population(problem, covariance=False)
    table = fit.observations()
    np.testing.assert_allclose(table["IPRED"], NONMEM_IPRED, rtol=1e-4)
    np.testing.assert_allclose(table["IWRES"], NONMEM_IWRES, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(table["CWRES"], NONMEM_CWRES, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(table["PRED"], np.tile([10.0, 10.0 * math.exp(-0.5)], 10), rtol=1e-12)


# ---- linear in η: the objective is the exact marginal likelihood --------------------------------------


def _linear_problem(omega: np.ndarray, sigma: float, theta: tuple[float, float, float]):
    """f_ij = B_i + S_i·t_ij, B_i = θ_B·(WT/70)^θ_WT + η_B, S_i = θ_S + η_S; additive error."""
    rng = np.random.default_rng(20240607)
    subjects = []
    for i, n in enumerate([3, 4, 5, 2, 6, 4]):
        t = np.sort(rng.uniform(0, 10, n))
        subjects.append(
            Subject(i, dv=5.0 + 0.8 * t + rng.normal(0, 1.5, n), time=t, covariates={"WT": 50.0 + 8.0 * i})
        )
    problem = PopulationProblem(
        subjects,
        [Theta("B", theta[0]), Theta("S", theta[1]), Theta("B_WT", theta[2])],
        [
            IndividualParameter(
                "B",
                theta="B",
                eta="eta_B",
                eta_form="additive",
                covariates=[CovariateEffect("WT", "B_WT", 70.0)],
            ),
            IndividualParameter("S", theta="S", eta="eta_S", eta_form="additive"),
        ],
        [OmegaBlock(["eta_B", "eta_S"], omega, diagonal=False)],
        [ResidualError("additive", additive=sigma)],
        predict=lambda s, p: p["B"] + p["S"] * s.time,
    )
    return problem


def _exact_marginal_m2ll(problem: PopulationProblem, omega, sigma, theta) -> float:
    total = 0.0
    for s in problem.subjects:
        z = np.column_stack([np.ones(s.n_obs), s.time])
        mean = theta[0] * (s.covariates["WT"] / 70.0) ** theta[2] + theta[1] * s.time
        cov = z @ omega @ z.T + sigma**2 * np.eye(s.n_obs)
        total += -2.0 * multivariate_normal.logpdf(s.dv, mean, cov)
    return total


@pytest.mark.parametrize("method", ["fo", "foce", "foce-i"])
def test_linear_model_objective_is_the_exact_marginal_likelihood(method):
    omega = np.array([[1.2, -0.15], [-0.15, 0.05]])
    sigma, theta = 1.3, (4.5, 0.7, 0.4)
    problem = _linear_problem(omega, sigma, theta)
    value = population_objective(problem, method)
    exact = _exact_marginal_m2ll(problem, omega, sigma, theta)
    assert value.minus_2_log_likelihood == pytest.approx(exact, abs=1e-8)
    # and at other parameter values than the initial ones
    omega2 = np.array([[0.4, 0.1], [0.1, 0.2]])
    value2 = population_objective(
        problem, method, theta={"B": 5.5, "S": 0.9, "B_WT": -0.2}, omega=omega2, sigma={"y0_add": 0.8}
    )
    assert value2.minus_2_log_likelihood == pytest.approx(
        _exact_marginal_m2ll(problem, omega2, 0.8, (5.5, 0.9, -0.2)), abs=1e-8
    )


# ---- nonlinear models: the documented formulas, written out independently -------------------------


def _wang_symbols():
    k, eta, t = sympy.symbols("k eta t", real=True)
    f = 10 * sympy.exp(-k * sympy.exp(eta) * t)
    return sympy.lambdify((k, eta, t), f), sympy.lambdify((k, eta, t), sympy.diff(f, eta))


def test_foce_additive_equals_linearised_marginal_of_wang_2007():
    # no interaction: OFV_i = log det V + ỹᵀV⁻¹ỹ, ỹ = y − f(η̂) + gη̂, V = ω g gᵀ + σ² I
    theta, omega, sd = 0.6, 0.09, 0.4
    f, dfdeta = _wang_symbols()
    total = 0.0
    for y in WANG_Y:
        res = minimize_scalar(
            lambda e, y=y: np.sum((y - f(theta, e, WANG_T)) ** 2) / sd**2 + e * e / omega,
            bracket=(-1, 1),
            tol=1e-12,
        )
        eta = res.x
        g = dfdeta(theta, eta, WANG_T)
        ytilde = y - f(theta, eta, WANG_T) + g * eta
        v = omega * np.outer(g, g) + sd**2 * np.eye(2)
        total += np.linalg.slogdet(v)[1] + ytilde @ np.linalg.solve(v, ytilde)
    value = population_objective(wang_problem("additive", theta, omega, sd), "foce")
    assert value.ofv == pytest.approx(total, abs=1e-7)


def test_foce_i_proportional_equals_laplace_with_interaction_term():
    # OFV_i = Σ[log R + r²/R] + η̂²/ω + log ω + log(1/ω + Σ[g²/R + ½(∂R/∂η)²/R²]), R = σ²f², at η̂
    theta, omega, sd = 0.45, 0.1, 0.2
    f, dfdeta = _wang_symbols()

    def conditional(e, y):
        fi = f(theta, e, WANG_T)
        r2 = (sd * fi) ** 2
        return np.sum(np.log(r2) + (y - fi) ** 2 / r2) + e * e / omega

    total = 0.0
    for y in WANG_Y:
        eta = minimize_scalar(lambda e, y=y: conditional(e, y), bracket=(-1, 1), tol=1e-12).x
        fi, g = f(theta, eta, WANG_T), dfdeta(theta, eta, WANG_T)
        r2 = (sd * fi) ** 2
        dr2 = 2 * sd**2 * fi * g
        hessian = 1 / omega + np.sum(g * g / r2 + 0.5 * (dr2 / r2) ** 2)
        total += conditional(eta, y) + math.log(omega) + math.log(hessian)
    value = population_objective(wang_problem("proportional", theta, omega, sd), "foce-i")
    assert value.ofv == pytest.approx(total, abs=1e-7)


def test_foce_proportional_evaluates_residual_variance_at_population_prediction():
    # FOCE without interaction: R = σ²·f(η=0)²; objective = linearised marginal at η̂
    theta, omega, sd = 0.45, 0.1, 0.2
    f, dfdeta = _wang_symbols()
    total = 0.0
    for y in WANG_Y:
        r2 = (sd * f(theta, 0.0, WANG_T)) ** 2
        eta = minimize_scalar(
            lambda e, y=y, r2=r2: np.sum((y - f(theta, e, WANG_T)) ** 2 / r2) + e * e / omega,
            bracket=(-1, 1),
            tol=1e-12,
        ).x
        g = dfdeta(theta, eta, WANG_T)
        ytilde = y - f(theta, eta, WANG_T) + g * eta
        v = omega * np.outer(g, g) + np.diag(r2)
        total += np.linalg.slogdet(v)[1] + ytilde @ np.linalg.solve(v, ytilde)
    value = population_objective(wang_problem("proportional", theta, omega, sd), "foce")
    assert value.ofv == pytest.approx(total, abs=1e-7)


def test_unknown_method_is_refused():
    with pytest.raises(EstimationError, match="method 'laplace' is unknown; use one of foce-i, foce, fo"):
        population_objective(wang_problem("additive"), "laplace")
