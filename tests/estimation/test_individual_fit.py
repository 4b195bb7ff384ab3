"""Individual maximum-likelihood fits (lmfit).

Oracles: noise-free data generated from known parameters (recovered exactly); a replicate simulation
(the spread of the estimates over replicates is what the standard errors claim); scipy.stats.norm for
the likelihood.
"""

from __future__ import annotations

import math

import lmfit
import numpy as np
import pytest
from scipy.stats import norm

from pkmodel.errors import EstimationError
from pkmodel.estimation import ResidualError, Subject, Theta, fit_individual

T = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 24.0])
TRUE = {"KA": 1.5, "CL": 2.8, "V": 32.0, "R": 0.3}


def parent_metabolite(subject, p):
    """Parent: oral one-compartment (dose 320); output 1 is a fraction R of it (a 'metabolite')."""
    ke = p["CL"] / p["V"]
    c = (
        320
        * p["KA"]
        / (p["V"] * (p["KA"] - ke))
        * (np.exp(-ke * subject.time) - np.exp(-p["KA"] * subject.time))
    )
    return np.where(subject.output == 0, c, p["R"] * c)


def two_analyte_subject(dv=None):
    time = np.concatenate([T, T])
    output = np.r_[np.zeros(T.size, int), np.ones(T.size, int)]
    if dv is None:
        dv = parent_metabolite(Subject(0, dv=np.ones(2 * T.size), time=time, output=output), TRUE)
    return Subject(1, dv=dv, time=time, output=output)


STARTS = [
    Theta("KA", 1.0, lower=0.0),
    Theta("CL", 2.0, lower=0.0),
    Theta("V", 20.0, lower=0.0),
    Theta("R", 0.5, lower=0.0),
]


def test_noise_free_two_analytes_recovered_exactly():
    # residual SDs fixed (with noise-free data their ML estimate would be 0); the error models'
    # variances do not depend on f, so the ML estimate is the exact interpolant
    residual = [
        ResidualError("additive", additive=0.1, output=0, fix_additive=True),
        ResidualError("log-additive", additive=0.1, output=1, fix_additive=True),
    ]
    fit = fit_individual(two_analyte_subject(), parent_metabolite, STARTS, residual)
    assert fit.converged, fit.message
    for name, value in TRUE.items():
        assert fit.estimates[name] == pytest.approx(value, rel=1e-6), name
    table = fit.parameter_table()
    assert table.loc["y0_add", "fixed"] and math.isnan(table.loc["y0_add", "se"])
    np.testing.assert_allclose(fit.observations()["IWRES"], 0.0, atol=1e-5)


def test_likelihood_aic_bic_by_hand():
    rng = np.random.default_rng(3)
    truth = two_analyte_subject()
    dv = truth.dv * np.exp(rng.normal(0, 0.1, truth.n_obs))
    residual = [
        ResidualError("proportional", proportional=0.1, output=0),
        ResidualError("log-additive", additive=0.1, output=1),
    ]
    fit = fit_individual(two_analyte_subject(dv), parent_metabolite, STARTS, residual)
    assert fit.converged and fit.covariance_ok
    est = fit.estimates
    f = parent_metabolite(two_analyte_subject(dv), est)
    parent, metab = slice(0, T.size), slice(T.size, None)
    expected = -2.0 * (
        np.sum(norm.logpdf(dv[parent], f[parent], est["y0_prop"] * f[parent]))
        + np.sum(norm.logpdf(np.log(dv[metab]), np.log(f[metab]), est["y1_add"]))
    )
    assert fit.minus_2_log_likelihood == pytest.approx(expected, rel=1e-10)
    assert fit.n_parameters == 6
    assert fit.aic == pytest.approx(expected + 12, rel=1e-10)
    assert fit.bic == pytest.approx(expected + 6 * math.log(18), rel=1e-10)
    corr = fit.correlation_matrix()
    np.testing.assert_allclose(np.diag(corr), 1.0)
    assert fit.lmfit_result.params["CL"].stderr == pytest.approx(fit.standard_errors["CL"])


def test_standard_errors_match_replicate_spread():
    # y = A·exp(−K t) + ε, ε ~ N(0, 0.3²), 10 samples; 80 seeded replicates.  The SD of the estimates
    # over replicates estimates the true SE with ~8 % relative error (1/sqrt(2·79)); the asymptotic SE
    # is also slightly optimistic at n = 10, so the ratio is required within [0.75, 1.33].
    t = np.array([0.5, 1, 1.5, 2, 3, 4, 6, 8, 10, 12.0])
    a, k, sd = 10.0, 0.25, 0.3
    rng = np.random.default_rng(2024)
    estimates, ses = [], []
    for _ in range(80):
        s = Subject(1, dv=a * np.exp(-k * t) + rng.normal(0, sd, t.size), time=t)
        fit = fit_individual(
            s,
            lambda subj, p: p["A"] * np.exp(-p["K"] * subj.time),
            [Theta("A", 8.0, lower=0.0), Theta("K", 0.2, lower=0.0)],
            [ResidualError("additive", additive=0.5)],
        )
        assert fit.converged and fit.covariance_ok
        estimates.append([fit.estimates["A"], fit.estimates["K"]])
        ses.append([fit.standard_errors["A"], fit.standard_errors["K"]])
    spread = np.std(estimates, axis=0, ddof=1)
    claimed = np.sqrt(np.mean(np.square(ses), axis=0))
    ratio = spread / claimed
    assert np.all((ratio > 0.75) & (ratio < 1.33)), ratio
    # and the estimates are unbiased within their Monte-Carlo error
    assert np.all(np.abs(np.mean(estimates, axis=0) - [a, k]) < 3 * spread / math.sqrt(80))


def test_lmfit_parameters_at_a_bound_are_refused():
    params = lmfit.Parameters()
    params.add("A", value=20.0, min=0.0, max=10.0)  # lmfit has silently clamped 20 to 10
    params.add("K", value=0.2, min=0.0)
    s = Subject(1, dv=[5.0, 3.0], time=[1.0, 2.0])
    with pytest.raises(EstimationError, match=r"parameter 'A': initial value 10.0 is at its bound .*clamps"):
        fit_individual(
            s,
            lambda subj, p: p["A"] * np.exp(-p["K"] * subj.time),
            params,
            [ResidualError("additive", additive=1.0)],
        )


def test_theta_outside_bounds_is_refused():
    with pytest.raises(EstimationError, match=r"theta 'K': initial=2.0 is not strictly inside \(0.0, 1.0\)"):
        Theta("K", 2.0, lower=0.0, upper=1.0)
    with pytest.raises(EstimationError, match=r"theta 'K': lower=1.0 is not below upper=0.0; fix the bounds"):
        Theta("K", 0.5, lower=1.0, upper=0.0)


def test_residual_name_clash_is_refused():
    s = Subject(1, dv=[5.0, 3.0], time=[1.0, 2.0])
    with pytest.raises(
        EstimationError, match="'y0_add' is used by a structural parameter and by the residual"
    ):
        fit_individual(
            s,
            lambda subj, p: p["y0_add"] * np.exp(-subj.time),
            [Theta("y0_add", 1.0, lower=0.0)],
            [ResidualError("additive", additive=1.0)],
        )
