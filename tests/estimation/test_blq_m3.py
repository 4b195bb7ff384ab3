"""Censored (BLQ) observations, Beal's M3: the likelihood written out with scipy.stats.norm.

Tiny dataset: 2 subjects, 4 observations each, the last one of each below LLOQ = 1.
Model: f = A·exp(−K·exp(η)·t).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
from scipy.integrate import quad
from scipy.optimize import minimize_scalar
from scipy.stats import norm

from pkmodel.errors import EstimationError
from pkmodel.estimation import (
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
    fit_population,
    individual_objective,
    population_objective,
)

T = np.array([1.0, 2.0, 4.0, 8.0])
DV = [np.array([7.1, 5.3, 2.4, 0.3]), np.array([8.0, 6.9, 4.1, 0.2])]
LLOQ = 1.0
K, A, OMEGA = 0.25, 10.0, 0.1


def subjects() -> list[Subject]:
    return [Subject(i + 1, dv=DV[i], time=T, lloq=np.full(4, LLOQ)) for i in range(2)]


def predict(subject, p):
    return p["A"] * np.exp(-p["K"] * subject.time)


def problem(residual: ResidualError) -> PopulationProblem:
    return PopulationProblem(
        subjects(),
        [Theta("K", K, lower=0.0), Theta("A", A, lower=0.0)],
        [IndividualParameter("K", theta="K", eta="eta_K"), IndividualParameter("A", theta="A")],
        [OmegaBlock(["eta_K"], [OMEGA])],
        [residual],
        predict_batch=lambda s, p: p["A"][:, None] * np.exp(-np.outer(p["K"], s.time)),
    )


def test_blq_flags_are_derived_from_the_lloq():
    assert [s.blq.tolist() for s in subjects()] == [[False, False, False, True]] * 2


@pytest.mark.parametrize(
    ("residual", "sd_of"),
    [
        (ResidualError("additive", additive=0.4), lambda f: 0.4 + 0 * f),
        (ResidualError("proportional", proportional=0.15), lambda f: 0.15 * f),
        (ResidualError("combined", additive=0.2, proportional=0.1), lambda f: np.sqrt(0.04 + 0.01 * f**2)),
    ],
)
def test_individual_likelihood_with_blq_by_hand(residual, sd_of):
    for s, k in zip(subjects(), (0.3, 0.22), strict=True):
        params = {"A": A, "K": k}
        for name, component in zip(residual.parameter_names, residual.components, strict=True):
            params[name] = residual.additive if component == "add" else residual.proportional
        f = A * np.exp(-k * T)
        sd = sd_of(f)
        # observed: −2 log φ((y − f)/sd)/sd ; BLQ (last record): −2 log Φ((LLOQ − f)/sd)
        expected = -2.0 * (
            np.sum(norm.logpdf(DV[s.id - 1][:3], f[:3], sd[:3])) + norm.logcdf((LLOQ - f[3]) / sd[3])
        )
        assert individual_objective(s, predict, params, [residual]) == pytest.approx(expected, rel=1e-12)


def test_individual_likelihood_log_additive_blq_by_hand():
    s = subjects()[0]
    f = A * np.exp(-0.3 * T)
    # log(DV) ~ N(log f, 0.2²); BLQ: P(log Y < log LLOQ)
    expected = -2.0 * (
        np.sum(norm.logpdf(np.log(DV[0][:3]), np.log(f[:3]), 0.2))
        + norm.logcdf(math.log(LLOQ), math.log(f[3]), 0.2)
    )
    value = individual_objective(
        s, predict, {"A": A, "K": 0.3, "y0_add": 0.2}, [ResidualError("log-additive", additive=0.2)]
    )
    assert value == pytest.approx(expected, rel=1e-12)


def _hand_laplace(y, blq, sd):
    """FOCE-I (Laplace, first derivatives of f only) for one subject, additive error, written out.

    OFV_i = −2 log p(y|η̂) + η̂²/ω + log ω + log(1/ω + Σ_obs g²/sd² + Σ_blq m(z)(z + m(z)) g²/sd²),
    without log 2π; z = (LLOQ − f)/sd, m = φ(z)/Φ(z); η̂ minimises −2 log p(y|η) + η²/ω.
    """
    k_, e_, t_ = sympy.symbols("k e t", real=True)
    expr = A * sympy.exp(-k_ * sympy.exp(e_) * t_)
    f = sympy.lambdify((k_, e_, t_), expr)
    g = sympy.lambdify((k_, e_, t_), sympy.diff(expr, e_))

    def conditional(eta):
        fi = f(K, eta, T)
        obs = np.sum(np.log(sd**2) + (y[~blq] - fi[~blq]) ** 2 / sd**2)
        cens = -2.0 * np.sum(norm.logcdf((LLOQ - fi[blq]) / sd))
        return obs + cens + eta * eta / OMEGA

    eta = minimize_scalar(conditional, bracket=(-1, 1), tol=1e-12).x
    fi, gi = f(K, eta, T), g(K, eta, T)
    z = (LLOQ - fi[blq]) / sd
    mills = norm.pdf(z) / norm.cdf(z)
    hessian = 1 / OMEGA + np.sum(gi[~blq] ** 2) / sd**2 + np.sum(mills * (z + mills) * gi[blq] ** 2) / sd**2
    return conditional(eta) + math.log(OMEGA) + math.log(hessian), eta, conditional


def test_population_foce_i_with_blq_equals_the_laplace_form_written_out():
    sd = 0.4
    value = population_objective(problem(ResidualError("additive", additive=sd)), "foce-i")
    for i, s in enumerate(subjects()):
        expected, eta, _ = _hand_laplace(s.dv, s.blq, sd)
        assert value.subject_ofv[i] == pytest.approx(expected, abs=1e-7)
        assert value.eta[i, 0] == pytest.approx(eta, abs=1e-6)
    # −2LL adds log 2π for the 3 uncensored observations of each subject only
    assert value.minus_2_log_likelihood - value.ofv == pytest.approx(6 * math.log(2 * math.pi), rel=1e-12)


def test_laplace_with_blq_is_close_to_the_exact_marginal_likelihood():
    # exact: −2 log ∫ p(y|η) N(η; 0, ω) dη by adaptive quadrature.  The Laplace (FOCE) approximation
    # is not exact; for these subjects its error was 0.025 and 0.081 when this test was written.
    sd = 0.4
    value = population_objective(problem(ResidualError("additive", additive=sd)), "foce-i")
    for i, s in enumerate(subjects()):

        def likelihood(eta, s=s):
            f = A * np.exp(-K * math.exp(eta) * T)
            log_p = np.sum(norm.logpdf(s.dv[~s.blq], f[~s.blq], sd)) + np.sum(norm.logcdf(LLOQ, f[s.blq], sd))
            return math.exp(log_p + norm.logpdf(eta, 0.0, math.sqrt(OMEGA)))

        exact = -2.0 * math.log(quad(likelihood, -5, 5, points=[0.0], epsrel=1e-12, limit=200)[0])
        laplace = value.subject_ofv[i] + 3 * math.log(2 * math.pi)
        assert laplace == pytest.approx(exact, abs=0.15)


def test_without_blq_the_laplace_form_reduces_to_the_gaussian_one():
    # same data with the LLOQ removed from the BLQ records: treated as ordinary observations; with
    # additive error the Laplace form equals log det V + ỹᵀV⁻¹ỹ (linearised marginal) at η̂
    sd = 0.4
    plain = [Subject(i + 1, dv=DV[i], time=T) for i in range(2)]
    value = population_objective(
        problem(ResidualError("additive", additive=sd)).replace(subjects=plain), "foce-i"
    )
    k_, e_, t_ = sympy.symbols("k e t", real=True)
    expr = A * sympy.exp(-k_ * sympy.exp(e_) * t_)
    f = sympy.lambdify((k_, e_, t_), expr)
    g = sympy.lambdify((k_, e_, t_), sympy.diff(expr, e_))
    for i, y in enumerate(DV):
        eta = value.eta[i, 0]
        gi = g(K, eta, T)
        ytilde = y - f(K, eta, T) + gi * eta
        v = OMEGA * np.outer(gi, gi) + sd**2 * np.eye(4)
        expected = np.linalg.slogdet(v)[1] + ytilde @ np.linalg.solve(v, ytilde)
        assert value.subject_ofv[i] == pytest.approx(expected, abs=1e-7)


def test_fo_refuses_blq_records():
    with pytest.raises(EstimationError, match="method 'fo' cannot use the 2 BLQ"):
        population_objective(problem(ResidualError("additive", additive=0.4)), "fo")


def test_blq_fit_runs_and_reports_censored_records():
    fit = fit_population(problem(ResidualError("additive", additive=0.4)), covariance=False)
    assert (fit.n_obs, fit.n_blq) == (6, 2)
    table = fit.observations()
    assert table["BLQ"].sum() == 2
    assert table.loc[table["BLQ"], ["IWRES", "CWRES"]].isna().all().all()
    assert table.loc[~table["BLQ"], ["IWRES", "CWRES"]].notna().all().all()


def test_blq_flag_without_lloq_is_an_error():
    with pytest.raises(
        EstimationError, match=r"subject 7: observation\(s\) \[1\] .* flagged BLQ but have no LLOQ"
    ):
        Subject(7, dv=[1.0, 0.1], blq=np.array([False, True]))


def test_value_below_lloq_not_flagged_is_an_error():
    with pytest.raises(EstimationError, match=r"below their LLOQ but not flagged BLQ; flag them"):
        Subject(7, dv=[1.0, 0.1], lloq=[0.5, 0.5], blq=np.array([False, False]))


@pytest.mark.parametrize("method", ["foce-i", "foce"])
def test_pre_dose_blq_with_proportional_error_contributes_probability_one(method):
    # f = A·K·t·e^(−K·t) is 0 at t = 0, so a proportional error has SD 0 there: the model says Y = 0
    # exactly and a record below LLOQ = 0.5 has probability 1 (−2 log 1 = 0, no information on η).
    # Oracle: the same data without the t = 0 records.  (Before the fix the objective was infinite.)
    t = np.array([0.0, 1.0, 2.0, 4.0, 8.0])
    dv = [np.array([0.0, 2.0, 3.1, 2.9, 1.2]), np.array([0.0, 1.7, 2.6, 3.3, 1.5])]

    def predict(s, p):
        with np.errstate(invalid="ignore", over="ignore"):  # K = ∞ at η far out in a line search
            return p["A"][:, None] * p["K"][:, None] * s.time[None] * np.exp(-np.outer(p["K"], s.time))

    def build(first: int) -> PopulationProblem:
        return PopulationProblem(
            [
                Subject(i + 1, dv=dv[i][first:], time=t[first:], lloq=np.full(5 - first, 0.5))
                for i in range(2)
            ],
            [Theta("K", 0.3, lower=0.0), Theta("A", 10.0, lower=0.0)],
            [IndividualParameter("K", theta="K", eta="eta_K"), IndividualParameter("A", theta="A")],
            [OmegaBlock(["eta_K"], [0.1])],
            [ResidualError("proportional", proportional=0.15)],
            predict_batch=predict,
        )

    with_pre_dose, without = build(0), build(1)
    assert with_pre_dose.subjects[0].blq[0]
    a, b = population_objective(with_pre_dose, method), population_objective(without, method)
    assert math.isfinite(a.ofv)
    assert a.ofv == pytest.approx(b.ofv, rel=1e-12)
    np.testing.assert_allclose(a.eta, b.eta, rtol=0, atol=1e-10)
    fit_a = fit_population(with_pre_dose, method=method, covariance=False)
    fit_b = fit_population(without, method=method, covariance=False)
    assert fit_a.ofv == pytest.approx(fit_b.ofv, rel=1e-9)
    for name in ("K", "A"):
        assert fit_a.theta[name] == pytest.approx(fit_b.theta[name], rel=1e-6)
