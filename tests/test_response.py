"""Tests of pkmodel.response: logistic exposure–response, exact binomial intervals, the standard plot
and the mechanistic neutropenia incidence.

Oracles
-------
- 2×2 tables (binary exposure): the logistic MLE has a closed form, slope = log odds ratio,
  intercept = logit(p0), SE(slope) = sqrt(1/a + 1/b + 1/c + 1/d) (Woolf), and the likelihood
  factorises into two binomials, so the profile interval of the intercept (and of the linear
  predictor at x = 1) is the likelihood-ratio interval of one binomial group, solved in the test.
- Continuous exposure: the explicit log-likelihood maximised by scipy.optimize.minimize in the test,
  and its Hessian by central finite differences (independent of the Newton code under test).
- Profile interval of the slope: the profile deviance computed in the test by brute-force
  constrained optimisation (scipy.optimize.minimize_scalar over the intercept at fixed slope).
- Coverage: a seeded simulation with known truth, the count of covering intervals checked against
  the Binomial(200, 0.95) distribution.
- Clopper–Pearson: scipy.stats.binomtest(k, n).proportion_ci(method="exact").
- Mechanistic route: SLOPE = 0 leaves the Friberg model at its baseline (no drug effect), and a
  population of identical typical subjects must match one subject simulated directly and graded
  with grade_anc (an independent path that does not use summarize_courses or chunking).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special, stats

from pkmodel import d1_8_15_q4w, load_model, parse_regimen, q3w, simulate
from pkmodel.errors import EstimationError, GradingError, SimulationError
from pkmodel.grading import grade_anc
from pkmodel.response import (
    LogisticFit,
    clopper_pearson,
    default_times,
    fit_logistic,
    incidence_by_quantile,
    neutropenia_incidence,
    plot_exposure_response,
    select_exposure_metric,
)

CRIT95 = stats.chi2.ppf(0.95, 1)  # 3.841458820694124


# --------------------------------------------------------------------------------------------------
# independent helpers (explicit formulas, no code under test)


def loglik(a: float, b: float, x: np.ndarray, y: np.ndarray) -> float:
    """Bernoulli log-likelihood y·log p + (1 − y)·log(1 − p), with log p = −log(1 + e^{−η}) in a form
    that does not overflow when an optimiser tries far-off parameters."""
    eta = a + b * np.asarray(x, dtype=float)
    log_p, log_q = -np.logaddexp(0.0, -eta), -np.logaddexp(0.0, eta)
    return float(np.sum(y * log_p + (1 - y) * log_q))


def scipy_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MLE by scipy.optimize.minimize on the explicit negative log-likelihood (standardised x)."""
    m, s = x.mean(), x.std()
    res = optimize.minimize(
        lambda th: -loglik(th[0], th[1], (x - m) / s, y),
        x0=[0.0, 0.0],
        method="BFGS",
        options={"gtol": 1e-10},
    )
    alpha, beta = res.x
    return np.array([alpha - beta * m / s, beta / s])


def fd_hessian(x: np.ndarray, y: np.ndarray, theta: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Hessian of the log-likelihood by central finite differences."""
    H = np.empty((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h, np.eye(2)[j] * h
            H[i, j] = (
                loglik(*(theta + ei + ej), x, y)
                - loglik(*(theta + ei - ej), x, y)
                - loglik(*(theta - ei + ej), x, y)
                + loglik(*(theta - ei - ej), x, y)
            ) / (4 * h * h)
    return H


def table_data(n0: int, k0: int, n1: int, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary exposure: n0 subjects at x=0 with k0 events, n1 at x=1 with k1 events."""
    x = np.r_[np.zeros(n0), np.ones(n1)]
    y = np.r_[np.ones(k0), np.zeros(n0 - k0), np.ones(k1), np.zeros(n1 - k1)]
    return x, y


def binomial_lr_interval(k: int, n: int, crit: float) -> tuple[float, float]:
    """Likelihood-ratio interval of logit(p) for k events in n: 2[l(p̂) − l(p)] = crit, by brentq."""

    def ll(eta: float) -> float:
        p = special.expit(eta)
        return k * math.log(p) + (n - k) * math.log(1 - p)

    hat = math.log(k / (n - k))
    f = lambda eta: 2 * (ll(hat) - ll(eta)) - crit  # noqa: E731
    return optimize.brentq(f, hat - 20, hat, xtol=1e-13), optimize.brentq(f, hat, hat + 20, xtol=1e-13)


def simulated(n: int, a: float, b: float, seed: int, *, log: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exposure log-normal around 10 (ng/mL-like), response Bernoulli(expit(a + b·t(x)))."""
    rng = np.random.default_rng(seed)
    x = 10.0 * np.exp(rng.normal(0.0, 0.5, n))
    t = np.log(x) if log else x
    y = (rng.uniform(size=n) < special.expit(a + b * t)).astype(float)
    return x, y


# --------------------------------------------------------------------------------------------------
# (a) maximum likelihood


def test_two_by_two_table_closed_form():
    # x=0: 5 of 20 events; x=1: 9 of 15.  p0 = 1/4, p1 = 3/5.
    x, y = table_data(20, 5, 15, 9)
    fit = fit_logistic(x, y)
    # intercept = logit(1/4) = log(1/3); slope = log OR = log((9/6)/(5/15)) = log(4.5)
    assert fit.intercept == pytest.approx(math.log(1 / 3), abs=1e-9)
    assert fit.slope == pytest.approx(math.log(4.5), abs=1e-9)
    # Woolf: SE(log OR)^2 = 1/5 + 1/15 + 1/9 + 1/6; SE(logit p0)^2 = 1/5 + 1/15
    assert fit.se_slope == pytest.approx(math.sqrt(1 / 5 + 1 / 15 + 1 / 9 + 1 / 6), rel=1e-8)
    assert fit.se_intercept == pytest.approx(math.sqrt(1 / 5 + 1 / 15), rel=1e-8)
    # -2LL = -2 [5 log(1/4) + 15 log(3/4) + 9 log(3/5) + 6 log(2/5)]
    m2ll = -2 * (5 * math.log(0.25) + 15 * math.log(0.75) + 9 * math.log(0.6) + 6 * math.log(0.4))
    assert fit.minus2ll == pytest.approx(m2ll, rel=1e-12)
    assert fit.aic == pytest.approx(m2ll + 4, rel=1e-12)
    assert (fit.n, fit.n_events, fit.status) == (35, 14, "ok")
    # Wald interval: estimate ± 1.959964·SE
    z = stats.norm.ppf(0.975)
    lo, hi = fit.wald_ci["slope"]
    assert (lo, hi) == pytest.approx((math.log(4.5) - z * fit.se_slope, math.log(4.5) + z * fit.se_slope))


def test_continuous_exposure_matches_scipy_optimize_and_finite_difference_information():
    x, y = simulated(60, -4.0, 0.35, seed=11)
    fit = fit_logistic(x, y)
    theta = scipy_fit(x, y)
    assert fit.intercept == pytest.approx(theta[0], abs=1e-5)
    assert fit.slope == pytest.approx(theta[1], abs=1e-6)
    assert fit.minus2ll == pytest.approx(-2 * loglik(*theta, x, y), abs=1e-8)
    cov = np.linalg.inv(-fd_hessian(x, y, np.array([fit.intercept, fit.slope])))
    np.testing.assert_allclose(fit.covariance, cov, rtol=1e-4)
    assert fit.se_slope == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-4)


def test_log_transform_is_logistic_in_log_exposure():
    x, y = simulated(60, -5.0, 2.0, seed=5, log=True)
    fit = fit_logistic(x, y, transform="log")
    theta = scipy_fit(np.log(x), y)
    assert (fit.intercept, fit.slope) == pytest.approx(tuple(theta), abs=1e-5)
    assert fit.transform == "log"
    # prediction uses ln(x): p(x) = expit(a + b ln x)
    p = fit.predict([5.0, 20.0], method="wald")["p"].to_numpy()
    np.testing.assert_allclose(p, special.expit(theta[0] + theta[1] * np.log([5.0, 20.0])), rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# (b) profile likelihood


def brute_profile_deviance_slope(b: float, x: np.ndarray, y: np.ndarray, ll_hat: float) -> float:
    """2[l_hat − max_a l(a, b)] with the inner maximum by bounded scalar minimisation."""
    res = optimize.minimize_scalar(
        lambda a: -loglik(a, b, x, y), bounds=(-30, 30), method="bounded", options={"xatol": 1e-10}
    )
    return 2 * (ll_hat + res.fun)


def test_profile_ci_of_the_slope_against_brute_force_constrained_optimisation():
    x, y = table_data(20, 5, 15, 9)
    fit = fit_logistic(x, y)
    ll_hat = -fit.minus2ll / 2
    lo, hi = fit.profile_ci["slope"]
    # the returned bounds sit where the independently computed profile deviance equals chi2_1(0.95)
    assert brute_profile_deviance_slope(lo, x, y, ll_hat) == pytest.approx(CRIT95, abs=1e-6)
    assert brute_profile_deviance_slope(hi, x, y, ll_hat) == pytest.approx(CRIT95, abs=1e-6)
    # and they are the crossings nearest the estimate: a scan shows D < crit strictly between them
    grid = np.linspace(lo, hi, 41)[1:-1]
    assert all(brute_profile_deviance_slope(b, x, y, ll_hat) < CRIT95 for b in grid)
    assert brute_profile_deviance_slope(lo - 0.01, x, y, ll_hat) > CRIT95
    assert brute_profile_deviance_slope(hi + 0.01, x, y, ll_hat) > CRIT95
    # profile intervals are asymmetric; Wald ones are not
    assert hi - fit.slope != pytest.approx(fit.slope - lo, rel=1e-3)


def test_profile_ci_of_intercept_and_band_factorise_into_binomial_lr_intervals():
    # l(a, b) = l0(a) + l1(a + b): profiling b out leaves the LR interval of group 0 for the
    # intercept, and profiling a out the LR interval of group 1 for eta(1) = a + b.
    x, y = table_data(20, 5, 15, 9)
    fit = fit_logistic(x, y)
    assert fit.profile_ci["intercept"] == pytest.approx(binomial_lr_interval(5, 20, CRIT95), abs=1e-7)
    band = fit.predict([0.0, 1.0])  # default method: profile
    lo1, hi1 = binomial_lr_interval(9, 15, CRIT95)
    assert band["lower"].tolist() == pytest.approx(
        [special.expit(fit.profile_ci["intercept"][0]), special.expit(lo1)], abs=1e-8
    )
    assert band["upper"].tolist() == pytest.approx(
        [special.expit(fit.profile_ci["intercept"][1]), special.expit(hi1)], abs=1e-8
    )
    assert band["p"].tolist() == pytest.approx([0.25, 0.6], abs=1e-9)
    # other level: chi2_1(0.80)
    fit80 = fit_logistic(x, y, level=0.80)
    assert fit80.profile_ci["intercept"] == pytest.approx(
        binomial_lr_interval(5, 20, stats.chi2.ppf(0.8, 1)), abs=1e-7
    )


def test_wald_band_is_the_delta_method_on_the_logit_scale():
    x, y = simulated(80, -3.0, 0.3, seed=3)
    fit = fit_logistic(x, y)
    theta = np.array([fit.intercept, fit.slope])
    cov = np.linalg.inv(-fd_hessian(x, y, theta))  # independent covariance
    x0 = np.array([5.0, 10.0, 20.0])
    c = np.column_stack([np.ones(3), x0])
    sd = np.sqrt(np.einsum("ij,jk,ik->i", c, cov, c))
    eta = theta[0] + theta[1] * x0
    band = fit.predict(x0, method="wald", level=0.9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(band["lower"], special.expit(eta - z * sd), rtol=1e-4)
    np.testing.assert_allclose(band["upper"], special.expit(eta + z * sd), rtol=1e-4)
    assert list(band.columns) == ["x", "p", "lower", "upper"]


def test_profile_interval_coverage_of_a_simulated_truth():
    # 200 seeded data sets (n = 80) from a = -4, b = 0.35 per ng/mL; the 95 % profile interval of the
    # slope must cover b in a count consistent with Binomial(200, 0.95): central 99.9 % range.
    a_true, b_true, reps = -4.0, 0.35, 200
    covered_profile = covered_wald = 0
    for r in range(reps):
        x, y = simulated(80, a_true, b_true, seed=1000 + r)
        fit = fit_logistic(x, y)
        lo, hi = fit.profile_ci["slope"]
        covered_profile += lo <= b_true <= hi
        lo, hi = fit.wald_ci["slope"]
        covered_wald += lo <= b_true <= hi
    lo_count, hi_count = stats.binom.ppf([0.0005, 0.9995], reps, 0.95)
    assert lo_count <= covered_profile <= hi_count, covered_profile
    assert lo_count <= covered_wald <= hi_count, covered_wald  # measured: profile 194, Wald 196


# --------------------------------------------------------------------------------------------------
# (c) the estimated exposure–response contains the truth


@pytest.mark.parametrize("log", [False, True])
def test_estimate_from_simulated_data_contains_the_truth(log):
    a_true, b_true = (-6.0, 2.0) if log else (-4.0, 0.35)
    x, y = simulated(400, a_true, b_true, seed=2024, log=log)
    fit = fit_logistic(x, y, transform="log" if log else None, ci="bootstrap", n_boot=400, seed=7)
    for method in ("profile", "wald", "bootstrap"):
        lo, hi = fit.interval("slope", method)
        assert lo < b_true < hi, (method, lo, hi)
        lo, hi = fit.interval("intercept", method)
        assert lo < a_true < hi, (method, lo, hi)
    # the true probability curve lies inside the band at the exposure quartiles
    x0 = np.quantile(x, [0.25, 0.5, 0.75])
    truth = special.expit(a_true + b_true * (np.log(x0) if log else x0))
    band = fit.predict(x0)
    assert np.all((band["lower"] < truth) & (truth < band["upper"]))


def test_bootstrap_is_seeded_and_agrees_with_the_asymptotics():
    x, y = simulated(400, -4.0, 0.35, seed=99)
    f1 = fit_logistic(x, y, ci="bootstrap", n_boot=300, seed=123)
    f2 = fit_logistic(x, y, ci="bootstrap", n_boot=300, seed=123)
    f3 = fit_logistic(x, y, ci="bootstrap", n_boot=300, seed=124)
    assert f1.bootstrap_ci == f2.bootstrap_ci
    assert f1.bootstrap_ci != f3.bootstrap_ci
    # a nonparametric bootstrap SE of the slope estimates the asymptotic SE: within 20 % at n = 400
    assert np.std(f1._boot[:, 1]) == pytest.approx(f1.se_slope, rel=0.2)
    assert (f1.n_boot_separated, f1.n_boot_degenerate) == (0, 0)
    band = f1.predict([10.0], method="bootstrap", level=0.9)
    assert band["lower"][0] < band["p"][0] < band["upper"][0]
    assert "bootstrap_lower" in f1.to_frame().columns


def test_bootstrap_counts_separated_replicates_as_infinite_slopes():
    # 3 events among 8 with one overlap: many resamples separate; their slope counts at +inf
    x = np.arange(1.0, 9.0)
    y = np.array([0, 0, 0, 1, 0, 0, 1, 1.0])
    fit = fit_logistic(x, y, ci="bootstrap", n_boot=200, seed=1)
    assert fit.n_boot_separated > 0
    assert fit.bootstrap_ci["slope"][1] == math.inf
    assert f"{fit.n_boot_separated} of 200 replicates separated" in fit.message


# --------------------------------------------------------------------------------------------------
# (d) Clopper–Pearson


@pytest.mark.parametrize("level", [0.90, 0.95])
@pytest.mark.parametrize("n", [1, 7, 35])
def test_clopper_pearson_matches_scipy_binomtest(n, level):
    for k in range(n + 1):
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
        lo, hi = clopper_pearson(k, n, level)
        assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    lo, hi = clopper_pearson(np.arange(n + 1), n, level)  # vectorised
    assert lo.shape == (n + 1,) and lo[0] == 0.0 and hi[-1] == 1.0


def test_clopper_pearson_closed_forms_at_the_extremes():
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    assert clopper_pearson(0, 20, 0.9)[1] == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-12)
    assert clopper_pearson(20, 20, 0.9)[0] == pytest.approx(0.05 ** (1 / 20), rel=1e-12)


@pytest.mark.parametrize(
    ("k", "n", "match"),
    [(3, 2, "must lie between 0 and n"), (1, 0, "must be >= 1"), (1.5, 4, "whole numbers")],
)
def test_clopper_pearson_bad_counts(k, n, match):
    with pytest.raises(EstimationError, match=match):
        clopper_pearson(k, n)


def test_incidence_by_quartile_by_hand():
    # 12 subjects, exposures 1..12; quartile cuts (linear): 1, 3.75, 6.5, 9.25, 12
    # groups: {1,2,3} {4,5,6} {7,8,9} {10,11,12}; events 0, 1, 2, 3
    df = pd.DataFrame({"cavg": np.arange(1.0, 13.0), "g3": [0, 0, 0, 1, 0, 0, 1, 0, 1, 1, 1, 1]})
    out = incidence_by_quantile(df, "cavg", "g3", level=0.9)
    assert out["n"].tolist() == [3, 3, 3, 3]
    assert out["events"].tolist() == [0, 1, 2, 3]
    assert out["exposure_median"].tolist() == [2.0, 5.0, 8.0, 11.0]
    assert out["exposure_upper"].tolist() == pytest.approx([3.75, 6.5, 9.25, 12.0])
    for _, row in out.iterrows():
        ref = stats.binomtest(int(row["events"]), 3).proportion_ci(confidence_level=0.9, method="exact")
        assert (row["lower"], row["upper"]) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_incidence_by_quantile_value_on_a_cut_goes_to_the_lower_group():
    # 5 subjects 1..5, 2 groups: cut at the median 3 -> [1, 3] and (3, 5]
    df = pd.DataFrame({"x": [1.0, 2, 3, 4, 5], "y": [0, 0, 1, 1, 1]})
    out = incidence_by_quantile(df, "x", "y", n_bins=2)
    assert out["n"].tolist() == [3, 2]
    assert out["events"].tolist() == [1, 2]


def test_incidence_by_quantile_errors():
    df = pd.DataFrame({"x": [1.0, 1.0, 1.0, 2.0], "y": [0, 1, 0, 1]})
    with pytest.raises(EstimationError, match=r"tied quantile cut points \(1 twice\).*n_bins=3"):
        incidence_by_quantile(df, "x", "y")
    with pytest.raises(EstimationError, match=r"column\(s\) \['dose'\] not in the frame"):
        incidence_by_quantile(df, "dose", "y")
    bad = df.assign(y=[0, 1, 2, 1])
    with pytest.raises(EstimationError, match=r"response\[2\] = 2 is not 0 or 1"):
        incidence_by_quantile(bad, "x", "y", n_bins=1)
    missing = df.assign(x=[1.0, np.nan, 2.0, 3.0])
    with pytest.raises(EstimationError, match=r"row 1: column 'x' is missing"):
        incidence_by_quantile(missing, "x", "y")


# --------------------------------------------------------------------------------------------------
# (e) separation and bad input


def test_complete_separation_raises_with_the_boundary_and_the_fix():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(
        EstimationError,
        match=r"complete separation: the response is increasing in exposure .*3\.5.*infinite.*another exposure metric",
    ):
        fit_logistic(x, y)
    with pytest.raises(EstimationError, match=r"complete separation: the response is decreasing"):
        fit_logistic(x, 1 - y)


def test_separation_status_and_supremum_likelihood():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    fit = fit_logistic(x, [0, 0, 0, 1, 1, 1], on_separation="return")
    assert fit.status == "complete separation"
    assert math.isnan(fit.slope) and math.isnan(fit.intercept)
    assert fit.minus2ll == 0.0  # every subject fitted exactly in the limit
    with pytest.raises(EstimationError, match="no finite estimates: complete separation"):
        fit.predict([3.0])
    # quasi-complete: at x = 3 one event and one non-event; elsewhere perfectly ordered.
    # Supremum: the two tied subjects share p = 1/2, the others fit exactly: -2LL = -2·2·log(1/2)
    xq = np.array([1.0, 2.0, 3.0, 3.0, 4.0, 5.0])
    yq = np.array([0, 0, 0, 1, 1, 1])
    fit = fit_logistic(xq, yq, on_separation="return")
    assert fit.status == "quasi-complete separation"
    assert fit.minus2ll == pytest.approx(4 * math.log(2), rel=1e-12)
    with pytest.raises(EstimationError, match=r"quasi-complete separation.*except at exposure = 3"):
        fit_logistic(xq, yq)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        ([1, 2, 3], [0, 0, 0], {}, r"no subject has the response \(0 of 3\)"),
        ([1, 2, 3], [1, 1, 1], {}, r"every subject has the response \(3 of 3\)"),
        ([2, 2, 2, 2], [0, 1, 0, 1], {}, r"exposure is the same for all 4 subjects \(2\)"),
        ([1, np.nan, 3, 4], [0, 1, 0, 1], {}, r"exposure\[1\] = nan is not finite"),
        ([1, 2, 3, 4], [0, 1, 0.5, 1], {}, r"response\[2\] = 0.5 is not 0 or 1"),
        ([1, 2, 3], [0, 1], {}, r"response has 2 values but exposure has 3"),
        ([0, 2, 3, 4], [0, 1, 0, 1], {"transform": "log"}, r"exposure\[0\] = 0.0 is not positive"),
        ([1, 2, 3, 4], [0, 1, 0, 1], {"transform": "sqrt"}, r"transform='sqrt' is not supported"),
        ([1, 2, 3, 4], [0, 1, 0, 1], {"ci": "jackknife"}, r"ci='jackknife' is not supported"),
        ([1, 2, 3, 4], [0, 1, 0, 1], {"level": 95}, r"level=95 must lie strictly between 0 and 1"),
        (
            [1, 2, 3, 4],
            [0, 1, 0, 1],
            {"ci": "bootstrap", "n_boot": 10},
            r"n_boot=10 must be a whole number >= 100",
        ),
    ],
)
def test_fit_logistic_bad_input(x, y, kwargs, match):
    with pytest.raises(EstimationError, match=match):
        fit_logistic(x, y, **kwargs)


def test_predict_errors():
    fit = fit_logistic([1.0, 2, 3, 4, 5, 6], [0, 1, 0, 1, 0, 1])
    with pytest.raises(EstimationError, match="refit with ci='bootstrap'"):
        fit.predict([1.0], method="bootstrap")
    with pytest.raises(EstimationError, match="method='delta' is not one of profile, bootstrap, wald"):
        fit.predict([1.0], method="delta")
    with pytest.raises(EstimationError, match=r"x\[0\] = inf is not finite"):
        fit.predict([np.inf])


# --------------------------------------------------------------------------------------------------
# metric selection


def exposure_frame() -> pd.DataFrame:
    rng = np.random.default_rng(8)
    n = 120
    cavg = 10.0 * np.exp(rng.normal(0.0, 0.5, n))
    cmax = cavg * np.exp(rng.normal(0.0, 0.6, n))  # correlated, noisier
    adc = np.exp(rng.normal(4.0, 0.4, n))  # unrelated to the response
    y = (rng.uniform(size=n) < special.expit(-4.0 + 0.35 * cavg)).astype(int)
    return pd.DataFrame({"SN38_CAVG": cavg, "SN38_CMAX": cmax, "ADC_CAVG": adc, "G3": y})


def test_select_exposure_metric_ranks_by_the_independent_likelihood():
    df = exposure_frame()
    names = ["ADC_CAVG", "SN38_CMAX", "SN38_CAVG"]
    table = select_exposure_metric(df, names, "G3")
    y = df["G3"].to_numpy(dtype=float)
    ref = {m: -2 * loglik(*scipy_fit(df[m].to_numpy(), y), df[m].to_numpy(), y) for m in names}
    assert table["metric"].tolist() == sorted(names, key=ref.get)
    assert table["metric"][0] == "SN38_CAVG"  # the metric the data were generated from
    np.testing.assert_allclose(table["minus2ll"], [ref[m] for m in table["metric"]], atol=1e-6)
    np.testing.assert_allclose(table["aic"], table["minus2ll"] + 4)
    assert table["delta_aic"][0] == 0.0 and np.all(table["delta_aic"] >= 0)
    assert table["chosen"].tolist() == [True, False, False]
    assert table["rank"].tolist() == [1, 2, 3]


def test_select_exposure_metric_with_log_scale_and_a_separated_candidate():
    df = exposure_frame()
    df["PERFECT"] = np.where(df["G3"] == 1, 100.0, 1.0)  # separates the response
    table = select_exposure_metric(df, ["SN38_CAVG", "PERFECT"], "G3", transform={"SN38_CAVG": "log"})
    row = table.set_index("metric")
    assert row.loc["PERFECT", "status"] == "complete separation"
    assert row.loc["PERFECT", "minus2ll"] == 0.0  # ranked first by likelihood ...
    assert not row.loc["PERFECT", "chosen"]  # ... but not chosen: no finite MLE
    assert row.loc["SN38_CAVG", "chosen"] and row.loc["SN38_CAVG", "transform"] == "log"
    y = df["G3"].to_numpy(dtype=float)
    t = np.log(df["SN38_CAVG"].to_numpy())
    assert row.loc["SN38_CAVG", "minus2ll"] == pytest.approx(-2 * loglik(*scipy_fit(t, y), t, y), abs=1e-6)


def test_select_exposure_metric_errors():
    df = exposure_frame()
    with pytest.raises(EstimationError, match=r"column\(s\) \['AUC'\] not in the frame"):
        select_exposure_metric(df, ["SN38_CAVG", "AUC"], "G3")
    with pytest.raises(EstimationError, match=r"\['SN38_CAVG'\] are listed more than once"):
        select_exposure_metric(df, ["SN38_CAVG", "SN38_CAVG"], "G3")
    with pytest.raises(EstimationError, match="no candidate exposure metric given"):
        select_exposure_metric(df, [], "G3")
    holes = df.copy()
    holes.loc[7, "SN38_CMAX"] = np.nan
    with pytest.raises(EstimationError, match=r"row 7: column 'SN38_CMAX' is missing.*comparable"):
        select_exposure_metric(holes, ["SN38_CAVG", "SN38_CMAX"], "G3")
    df["PERFECT"] = np.where(df["G3"] == 1, 100.0, 1.0)
    with pytest.raises(EstimationError, match="no candidate metric has a finite maximum-likelihood fit"):
        select_exposure_metric(df, ["PERFECT"], "G3")


# --------------------------------------------------------------------------------------------------
# plot


def test_plot_exposure_response_draws_curve_band_quartiles_and_regimen_strips():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = exposure_frame()
    df["REGIMEN"] = np.where(np.arange(len(df)) % 2 == 0, "Q3W", "D1,8,15 q4w")
    fit = fit_logistic(df["SN38_CAVG"], df["G3"], transform="log")
    ax = plot_exposure_response(fit, df, "SN38_CAVG", "G3", regimen_col="REGIMEN")
    try:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels[:2] == ["Q3W", "D1,8,15 q4w"]
        assert ax.get_xscale() == "log"
        curve = ax.get_lines()[0]  # the fitted curve is the first line drawn
        expected = fit.predict(curve.get_xdata())["p"].to_numpy()
        np.testing.assert_allclose(curve.get_ydata(), expected)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("observed by 4-quantile" in t for t in legend)
    finally:
        plt.close(ax.figure)


def test_plot_refuses_a_separated_fit():
    fit = fit_logistic([1.0, 2, 3, 4], [0, 0, 1, 1], on_separation="return")
    df = pd.DataFrame({"x": [1.0, 2, 3, 4], "y": [0, 0, 1, 1]})
    with pytest.raises(EstimationError, match="no finite estimates"):
        plot_exposure_response(fit, df, "x", "y")


def test_logistic_fit_is_frozen():
    fit = fit_logistic([1.0, 2, 3, 4, 5, 6], [0, 1, 0, 1, 0, 1])
    assert isinstance(fit, LogisticFit)
    with pytest.raises(AttributeError):
        fit.slope = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# (f) mechanistic route: ESG401 PK driving the Friberg model


@pytest.fixture(scope="module")
def pkpd():
    return load_model("adc_esg401_friberg")


def test_no_drug_effect_gives_zero_incidence_and_a_flat_anc(pkpd):
    # SLOPE = 0: proliferation is not inhibited, every Friberg state stays at CIRC0
    pop = pd.DataFrame({"WT": [60.0, 90.0], "SLOPE": [0.0, 0.0], "CIRC0": [5.0, 3.0]})
    out = neutropenia_incidence(pkpd, {"Q3W": q3w(16, cycles=1)}, pop, return_courses=True)
    row = out.summary.iloc[0]
    assert row["n"] == 2
    for g in (1, 3, 4):
        assert row[f"events_ge{g}"] == 0 and row[f"incidence_ge{g}"] == 0.0
        # k = 0 of 2 at 90 %: [0, 1 - 0.05^(1/2)]
        assert (row[f"incidence_ge{g}_lower"], row[f"incidence_ge{g}_upper"]) == pytest.approx(
            (0.0, 1 - 0.05**0.5), rel=1e-12
        )
    courses = out.courses
    base = courses["ID"].map({1: 5.0, 2: 3.0})
    np.testing.assert_allclose(courses["ANC"], base, rtol=1e-7)
    assert out.subjects["nadir"].tolist() == pytest.approx([5.0, 3.0], rel=1e-7)
    assert courses["TIME"].max() == 504.0 and row["horizon_h"] == 504.0


def test_baseline_below_lln_counts_as_any_grade(pkpd):
    # CIRC0 1.8 < LLN 2.0 and no drug effect: grade 1 from the start (worst grade on treatment)
    pop = pd.DataFrame({"WT": [70.0] * 3, "SLOPE": [0.0] * 3, "CIRC0": [1.8] * 3})
    row = neutropenia_incidence(pkpd, {"Q3W": q3w(16, cycles=1)}, pop, times=np.arange(0, 505, 24.0)).iloc[0]
    assert row["incidence_ge1"] == 1.0 and row["incidence_ge3"] == 0.0
    # k = n = 3 at 90 %: lower = 0.05^(1/3)
    assert row["incidence_ge1_lower"] == pytest.approx(0.05 ** (1 / 3), rel=1e-12)


def test_identical_typical_subjects_match_a_direct_simulation_graded_with_grade_anc(pkpd):
    # SLOPE 8 L/µmol: the typical 70-kg patient reaches grade 3 (nadir ~0.66) in one 16 mg/kg cycle.
    # neutropenia_incidence simulates with engine="auto" (hybrid); the direct run uses the same engine
    # (hybrid vs ODE is checked in test_incidence_by_the_hybrid_engine_equals_the_ode_engine)
    regimen = q3w(16, cycles=1)
    times = np.arange(0.0, 505.0, 12.0)
    direct = simulate(
        pkpd, regimen, times, parameters={"SLOPE": 8.0, "WT": 70.0}, rtol=1e-6, atol=1e-8, engine="auto"
    )
    anc = direct.output("ANC")[:, 0]
    worst = int(grade_anc(anc).max())
    assert worst == 3  # the case the test is built on: grade >= 3 yes, grade 4 no
    pop = pd.DataFrame({"WT": [70.0] * 3, "SLOPE": [8.0] * 3})
    out = neutropenia_incidence(
        pkpd, {"16 mg/kg Q3W": regimen}, pop, times, chunk_size=2, return_courses=True
    )
    row = out.summary.iloc[0]
    for g in (1, 3, 4):
        assert row[f"incidence_ge{g}"] == float(worst >= g)
    assert row["incidence_ge3_lower"] == pytest.approx(0.05 ** (1 / 3), rel=1e-12)
    assert row["nadir_median"] == pytest.approx(anc.min(), rel=1e-5)
    assert row["time_to_nadir_median_h"] == times[np.argmin(anc)]
    assert out.subjects["worst_grade"].tolist() == [worst] * 3


def test_heterogeneous_subjects_chunked_equal_one_by_one_direct_simulations(pkpd):
    pop = pd.DataFrame(
        {"ID": [11, 12, 13], "WT": [55.0, 70.0, 95.0], "SLOPE": [3.0, 8.0, 20.0], "CIRC0": [4.0, 5.0, 6.0]}
    )
    regimens = {"Q3W": q3w(16, cycles=1), "D1,8,15": d1_8_15_q4w(8, cycles=1)}
    times = np.arange(0.0, 505.0, 12.0)
    out = neutropenia_incidence(
        pkpd, regimens, pop, times, chunk_size=2, grades=(2, 3, 4), return_courses=True
    )
    assert out.summary["regimen"].tolist() == ["Q3W", "D1,8,15"]
    for label, regimen in regimens.items():
        worst, nadirs = [], []
        for _, subject in pop.iterrows():
            params = {"WT": subject["WT"], "SLOPE": subject["SLOPE"], "CIRC0": subject["CIRC0"]}
            anc = simulate(pkpd, regimen, times, parameters=params, rtol=1e-6, atol=1e-8).output("ANC")[:, 0]
            worst.append(int(grade_anc(anc).max()))
            nadirs.append(anc.min())
        got = out.subjects[out.subjects["regimen"] == label]
        assert got["ID"].tolist() == [11, 12, 13]
        assert got["worst_grade"].tolist() == worst
        np.testing.assert_allclose(got["nadir"], nadirs, rtol=1e-4)
        row = out.summary.set_index("regimen").loc[label]
        for g in (1, 2, 3, 4):
            assert row[f"events_ge{g}"] == sum(w >= g for w in worst)
        assert row["nadir_median"] == pytest.approx(np.median(nadirs), rel=1e-4)


def test_replicates_give_an_interval_over_replicate_incidences(pkpd):
    # replicate 1: no drug effect (incidence 0); replicate 2: SLOPE 8 (grade 3, incidence 1).
    # Level 0.9 over the per-replicate incidences [0, 1]: numpy linear quantiles 0.05 and 0.95.
    pop = pd.DataFrame(
        {"REP": [1, 1, 2, 2], "ID": [1, 2, 1, 2], "WT": [70.0] * 4, "SLOPE": [0.0, 0.0, 8.0, 8.0]}
    )
    row = neutropenia_incidence(pkpd, {"Q3W": q3w(16, cycles=1)}, pop, replicate_col="REP").iloc[0]
    assert row["incidence_ge3"] == 0.5 and row["n_replicates"] == 2
    assert (row["incidence_ge3_rep_lower"], row["incidence_ge3_rep_upper"]) == pytest.approx((0.05, 0.95))


def test_default_times_cover_the_treatment():
    # 21 days (504 h) after the last administration, on a 12-h grid
    assert default_times(q3w(16, cycles=4))[-1] == 1512.0 + 504.0  # last dose on day 64
    assert default_times(d1_8_15_q4w(12, cycles=3))[-1] == 2 * 672.0 + 336.0 + 504.0  # day 15 of cycle 3
    assert default_times(parse_regimen("100 mg once"))[-1] == 504.0
    assert default_times(parse_regimen("100 mg q10h x2"))[-1] == 516.0  # 10 + 504 rounded up to 12 h
    assert np.all(np.diff(default_times(q3w(16, cycles=1))) == 12.0)


def test_neutropenia_incidence_errors(pkpd):
    pop = pd.DataFrame({"WT": [70.0], "SLOPE": [0.0]})
    reg = {"Q3W": q3w(16, cycles=1)}
    with pytest.raises(
        SimulationError, match=r"population column\(s\) \['AGE'\] are not parameters.*drop them"
    ):
        neutropenia_incidence(pkpd, reg, pop.assign(AGE=50))
    with pytest.raises(SimulationError, match="has no output 'ANC'"):
        neutropenia_incidence("one_compartment_iv", reg, pd.DataFrame({"CL": [1.0]}))
    with pytest.raises(GradingError, match=r"contain 5, not a CTCAE grade"):
        neutropenia_incidence(pkpd, reg, pop, grades=(3, 5))
    with pytest.raises(SimulationError, match="non-empty mapping of label -> Regimen"):
        neutropenia_incidence(pkpd, {}, pop)
    with pytest.raises(SimulationError, match=r"regimens\['Q3W'\] must be a Regimen"):
        neutropenia_incidence(pkpd, {"Q3W": "16 mg/kg q3w x1"}, pop)
    with pytest.raises(SimulationError, match=r"population row 1 repeats an ID"):
        neutropenia_incidence(pkpd, reg, pd.DataFrame({"ID": [1, 1], "WT": [70.0, 80.0]}))
    with pytest.raises(SimulationError, match=r"regimen 'Q3W' doses in mg/kg but the population has no WT"):
        neutropenia_incidence(pkpd, reg, pd.DataFrame({"SLOPE": [0.0]}))
    with pytest.raises(SimulationError, match=r"chunk_size=0 must be a whole number >= 1"):
        neutropenia_incidence(pkpd, reg, pop, chunk_size=0)
    with pytest.raises(SimulationError, match=r"regimen 'Q3W', population rows 0-0: .*strictly increasing"):
        neutropenia_incidence(pkpd, reg, pop, times=[0.0, 24.0, 12.0])


def test_incidence_by_the_hybrid_engine_equals_the_ode_engine():
    # neutropenia_incidence uses engine="auto" (hybrid: exact PK, explicit Runge–Kutta PD).  Oracle: the
    # ODE engine (BDF on the whole system, no code shared with the exact PK path) on the same subjects.
    from pkmodel.population import sample_population
    from pkmodel.response import neutropenia_incidence

    model = load_model("adc_esg401_friberg")
    pop = sample_population(
        model,
        10,
        seed=3,
        omega={"CL": 0.1, "CLS": 0.2, "SLOPE": 0.3, "CIRC0": 0.1},
        covariates={"WT": {"dist": "normal", "mean": 65.0, "sd": 10.0, "lower": 40.0}},
    )
    regimens = {"q3w": q3w(16, cycles=2), "weekly": d1_8_15_q4w(12, cycles=1)}
    runs = {
        engine: neutropenia_incidence(
            model, regimens, pop, engine=engine, rtol=1e-8, atol=1e-10, return_courses=True
        ).subjects
        for engine in ("auto", "ode")
    }
    assert (runs["auto"]["worst_grade"] == runs["ode"]["worst_grade"]).all()
    np.testing.assert_allclose(runs["auto"]["nadir"], runs["ode"]["nadir"], rtol=1e-5)
    assert runs["auto"]["worst_grade"].max() >= 3  # the check covers severe neutropenia too
