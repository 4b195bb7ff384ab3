"""Tests of pkmodel.nca against closed forms and hand-worked arithmetic.

Oracles: integrals of C0·exp(-k t) derived with sympy; a small profile whose AUC, λz and R² are
worked out by hand in the comments; numpy.polyfit (an independent least-squares routine) for the
λz regressions; the geometric series of superposed doses (sympy) for the accumulation ratio.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import sympy as sp

from pkmodel.errors import NCAError
from pkmodel.nca import (
    NCAResult,
    accumulation_ratio,
    accumulation_ratio_from_lambda,
    nca,
    nca_table,
)

LN2 = math.log(2.0)

# --------------------------------------------------------------------------------------------------
# (a) mono-exponential C = 10 exp(-0.1 t)

C0, K = 10.0, 0.1
EXP_T = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 48.0])
EXP_C = C0 * np.exp(-K * EXP_T)


def _exact_auc(a: float, b: float) -> float:
    """∫_a^b C0 exp(-k t) dt, from sympy."""
    t = sp.symbols("t", real=True)
    expr = sp.integrate(sp.Float(C0) * sp.exp(-sp.Float(K) * t), (t, sp.Float(a), sp.Float(b)))
    return float(expr)


def test_monoexponential_lambda_z_is_exact_and_uses_all_points_after_cmax():
    r = nca(EXP_T, EXP_C)
    assert r.lambda_z == pytest.approx(K, rel=1e-12)
    assert r.half_life == pytest.approx(LN2 / K, rel=1e-12)
    # every fit is exact (adjusted R² = 1), so the most points win: all 8 after Cmax (t = 0)
    assert r.lambda_z_n_points == len(EXP_T) - 1
    assert r.lambda_z_interval == (0.5, 48.0)
    assert r.lambda_z_r2_adj == pytest.approx(1.0, abs=1e-12)
    assert r.lambda_z_reason == ""
    assert (r.cmax, r.tmax, r.clast, r.tlast) == (C0, 0.0, EXP_C[-1], 48.0)


def test_log_trapezoid_equals_exact_integral_of_the_exponential():
    # segment by segment: AUC up to each sample time (dropping later samples) vs sympy's integral
    for j in range(1, len(EXP_T)):
        r = nca(EXP_T[: j + 1], EXP_C[: j + 1])
        assert r.auc_last == pytest.approx(_exact_auc(0.0, EXP_T[j]), rel=1e-12)


def test_auc_inf_is_c0_over_k_and_extrapolated_percentage():
    r = nca(EXP_T, EXP_C, dose=200.0)
    assert r.auc_inf == pytest.approx(C0 / K, rel=1e-12)
    # extrapolated part Clast/k = 100 exp(-4.8) of AUC∞ = 100: 100·exp(-4.8) %
    assert r.auc_inf_pct_extrap == pytest.approx(100.0 * math.exp(-K * 48.0), rel=1e-10)
    # clearance = dose / AUC∞ = 200 / 100
    assert r.clearance == pytest.approx(2.0, rel=1e-12)


def test_linear_method_overestimates_by_the_trapezoid_formula():
    # linear trapezoid Σ Δt (c0 + c1)/2 written out; convex decline -> above the exact integral
    expected = sum((EXP_T[i + 1] - EXP_T[i]) * (EXP_C[i] + EXP_C[i + 1]) / 2.0 for i in range(len(EXP_T) - 1))
    r = nca(EXP_T, EXP_C, method="linear")
    assert r.auc_last == pytest.approx(expected, rel=1e-12)
    assert r.auc_last > _exact_auc(0.0, 48.0)
    assert r.lambda_z == pytest.approx(K, rel=1e-12)  # λz does not depend on the AUC method


# --------------------------------------------------------------------------------------------------
# (b) hand-worked profile, linear-up/log-down
#
#   t (h):  0    1    2    4    6    8    12
#   C:      0    4    6    3    3    1.5  0      (BLQ at 12 h entered as 0)
#
# segments to tlast = 8 h (the trailing 0 is after tlast and not in AUClast):
#   0-1  rising      linear  1·(0 + 4)/2          = 2
#   1-2  rising      linear  1·(4 + 6)/2          = 5
#   2-4  falling     log     2·(6 - 3)/ln(6/3)    = 6/ln 2
#   4-6  equal       linear  2·(3 + 3)/2          = 6
#   6-8  falling     log     2·(3 - 1.5)/ln 2     = 3/ln 2
#   AUClast = 13 + 9/ln 2;  linear method: 2 + 5 + 9 + 6 + 4.5 = 26.5
#
# λz: positive points after tmax = 2 h are (4, 3), (6, 3), (8, 1.5): exactly 3, one fit.
#   y = ln 3, ln 3, ln 3 - ln 2 at t = 4, 6, 8; mean t = 6, Σ(t - 6)² = 8
#   slope = [(-2)·ln 3 + 0 + 2·(ln 3 - ln 2)]/8 = -ln 2/4  ->  λz = ln 2/4, t½ = 4 h
#   residuals (b = ln 2): -b/6, b/3, -b/6 -> SSres = b²/6; deviations b/3, b/3, -2b/3 -> SStot = 2b²/3
#   R² = 1 - 1/4 = 3/4; adjusted R² = 1 - (1/4)·(3 - 1)/(3 - 2) = 1/2
#   AUC∞ = AUClast + Clast/λz = 13 + 9/ln 2 + 1.5·4/ln 2 = 13 + 15/ln 2

HAND_T = [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0]
HAND_C = [0.0, 4.0, 6.0, 3.0, 3.0, 1.5, 0.0]


def test_hand_worked_profile_linear_up_log_down():
    r = nca(HAND_T, HAND_C)
    assert r.auc_last == pytest.approx(13.0 + 9.0 / LN2, rel=1e-13)
    assert (r.cmax, r.tmax, r.cmin) == (6.0, 2.0, 0.0)
    assert (r.clast, r.tlast) == (1.5, 8.0)  # trailing zero ignored for tlast
    assert r.lambda_z == pytest.approx(LN2 / 4.0, rel=1e-13)
    assert r.half_life == pytest.approx(4.0, rel=1e-13)
    assert r.lambda_z_n_points == 3
    assert r.lambda_z_interval == (4.0, 8.0)
    assert r.lambda_z_r2 == pytest.approx(0.75, rel=1e-12)
    assert r.lambda_z_r2_adj == pytest.approx(0.5, rel=1e-12)
    assert r.auc_inf == pytest.approx(13.0 + 15.0 / LN2, rel=1e-13)
    assert r.auc_inf_pct_extrap == pytest.approx(100.0 * (6.0 / LN2) / (13.0 + 15.0 / LN2), rel=1e-12)
    assert math.isnan(r.auc_tau) and math.isnan(r.cavg) and math.isnan(r.clearance)


def test_hand_worked_profile_linear_method():
    assert nca(HAND_T, HAND_C, method="linear").auc_last == pytest.approx(26.5, rel=1e-14)


def test_zero_between_measurable_values_is_kept_in_auc_but_not_in_lambda_z():
    # 0-1: 1·(0+4)/2 = 2; 1-2 falls to 0 -> linear 1·(4+0)/2 = 2; 2-3 rises 1·(0+2)/2 = 1;
    # 3-5: 2·(2-1)/ln 2; 5-7: 2·(1-0.5)/ln 2.  AUClast = 5 + 3/ln 2.
    # λz: positive points after tmax (1 h): (3, 2), (5, 1), (7, 0.5) -> exactly ln 2/2
    r = nca([0, 1, 2, 3, 5, 7], [0.0, 4.0, 0.0, 2.0, 1.0, 0.5])
    assert r.auc_last == pytest.approx(5.0 + 3.0 / LN2, rel=1e-13)
    assert r.lambda_z == pytest.approx(LN2 / 2.0, rel=1e-12)
    assert r.lambda_z_interval == (3.0, 7.0)


# --------------------------------------------------------------------------------------------------
# (c) AUC over a dosing interval


def test_auc_tau_beyond_tlast_is_extrapolated_with_lambda_z():
    t = EXP_T[:7]  # samples to 12 h
    r = nca(t, EXP_C[:7], tau=24.0, dose=50.0)
    # ∫_0^24 10 exp(-0.1 t) dt = 100 (1 - exp(-2.4))
    assert r.auc_tau == pytest.approx(_exact_auc(0.0, 24.0), rel=1e-12)
    assert r.cavg == pytest.approx(_exact_auc(0.0, 24.0) / 24.0, rel=1e-12)
    assert r.clearance == pytest.approx(50.0 / _exact_auc(0.0, 24.0), rel=1e-12)
    assert any("extrapolated with λz" in note for note in r.notes)


def test_auc_tau_inside_the_samples_interpolates_the_end():
    # log-down interpolation at 6 h between the 4 h and 8 h samples is exact for an exponential
    r = nca(EXP_T, EXP_C, tau=6.0)
    assert r.auc_tau == pytest.approx(_exact_auc(0.0, 6.0), rel=1e-12)
    assert r.cmin == pytest.approx(C0 * math.exp(-K * 4.0), rel=1e-14)  # lowest sample in [0, 6]
    # hand profile, tau = 1.5 h on the rising 1-2 h segment: C(1.5) = 5 (linear),
    # AUCτ = 2 + 0.5·(4 + 5)/2 = 4.25
    h = nca(HAND_T, HAND_C, tau=1.5, dose=17.0)
    assert h.auc_tau == pytest.approx(4.25, rel=1e-14)
    assert h.clearance == pytest.approx(4.0, rel=1e-14)  # 17 / 4.25


def test_auc_tau_on_hand_profile_past_tlast():
    # tau = 10 h > tlast = 8 h: AUClast + (Clast/λz)(1 - exp(-λz·2)) = 13 + 9/ln 2 + (6/ln 2)(1 - 2^-1/2)
    r = nca(HAND_T, HAND_C, tau=10.0)
    expected = 13.0 + 9.0 / LN2 + (6.0 / LN2) * (1.0 - 2.0**-0.5)
    assert r.auc_tau == pytest.approx(expected, rel=1e-13)


def test_auc_tau_nan_with_reason_when_not_computable():
    no_predose = nca([1.0, 2.0, 4.0, 8.0], [8.0, 6.0, 3.0, 1.5], tau=12.0)
    assert math.isnan(no_predose.auc_tau)
    assert any("no sample at the dose time" in note for note in no_predose.notes)
    assert any("AUC starts at the first sample, 1 h after the dose" in n for n in no_predose.notes)
    no_lambda = nca([0.0, 1.0, 2.0], [0.0, 5.0, 2.0], tau=12.0)
    assert math.isnan(no_lambda.auc_tau)
    assert any("tau = 12 h is after tlast = 2 h and λz is NaN" in note for note in no_lambda.notes)


def test_dose_time_shifts_reported_times():
    r0 = nca(EXP_T, EXP_C, tau=24.0)
    r = nca(EXP_T + 504.0, EXP_C, tau=24.0, dose_time=504.0)
    assert (r.tmax, r.tlast, r.lambda_z_interval) == (r0.tmax, r0.tlast, r0.lambda_z_interval)
    assert r.auc_tau == pytest.approx(r0.auc_tau, rel=1e-12)
    assert r.lambda_z == pytest.approx(K, rel=1e-9)


# --------------------------------------------------------------------------------------------------
# λz selection


def _adj_r2_polyfit(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """λz and adjusted R² from numpy.polyfit (independent of pkmodel)."""
    slope, intercept = np.polyfit(t, y, 1)
    resid = y - (intercept + slope * t)
    r2 = 1.0 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2)
    n = t.size
    return -slope, 1.0 - (1.0 - r2) * (n - 1) / (n - 2)


def _perturbed_profile(eps: float) -> tuple[np.ndarray, np.ndarray]:
    # Cmax at 1 h; after it, ln C = ln 10 - 0.2 t at t = 4, 6, 8, 10 except +eps at t = 4, and a
    # distribution-phase point at t = 2 lying 0.3 above the line.
    t = np.array([0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    y = math.log(10.0) - 0.2 * t
    y[2] += 0.3
    y[3] += eps
    c = np.exp(y)
    c[0], c[1] = 0.0, 20.0
    return t, c


@pytest.mark.parametrize(("eps", "n_expected"), [(0.01, 4), (0.02, 3)])
def test_best_fit_prefers_more_points_within_adj_r2_tolerance(eps, n_expected):
    t, c = _perturbed_profile(eps)
    y = np.log(c[1:])  # c[0] = 0 is never in a regression
    t_pos = t[1:]
    # oracle: the 3-point fit is exact (adj R² 1); the 4-point fit loses
    # adj R² ≈ 0.55e-4 (eps 0.01, within 1e-4) or 2.2e-4 (eps 0.02, outside); 5 points much worse
    fits = {n: _adj_r2_polyfit(t_pos[-n:], y[-n:]) for n in (3, 4, 5)}
    assert fits[3][1] == pytest.approx(1.0, abs=1e-12)
    assert (1.0 - fits[4][1] < 1e-4) == (n_expected == 4)
    assert 1.0 - fits[5][1] > 1e-3
    r = nca(t, c)
    assert r.lambda_z_n_points == n_expected
    # hand: with one log-perturbation eps at t = 4 among t = 4..10 (Σ(t-7)² = 20), the slope moves
    # by (4 - 7)·eps/20, so λz = 0.2 + 0.15·eps for 4 points and exactly 0.2 for 3 points
    expected = 0.2 + 0.15 * eps if n_expected == 4 else 0.2
    assert r.lambda_z == pytest.approx(expected, rel=1e-10)
    assert r.lambda_z == pytest.approx(fits[n_expected][0], rel=1e-10)
    assert r.lambda_z_r2_adj == pytest.approx(fits[n_expected][1], rel=1e-10)


def test_biexponential_selection_matches_polyfit_rule():
    # C = 8 exp(-0.7 t) + 2 exp(-0.05 t), extravascular-like start; the rule applied to polyfit fits
    t = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0, 36.0, 48.0])
    c = 8 * np.exp(-0.7 * t) + 2 * np.exp(-0.05 * t)
    c[0] = 0.0  # pre-dose; Cmax is then at 0.5 h
    i_max = int(np.argmax(c))
    t_after, y_after = t[i_max + 1 :], np.log(c[i_max + 1 :])
    fits = {n: _adj_r2_polyfit(t_after[-n:], y_after[-n:]) for n in range(3, t_after.size + 1)}
    best = max(a for lam, a in fits.values() if lam > 0)
    n_oracle = max(n for n, (lam, a) in fits.items() if lam > 0 and a >= best - 1e-4)
    r = nca(t, c)
    assert r.lambda_z_n_points == n_oracle
    assert r.lambda_z == pytest.approx(fits[n_oracle][0], rel=1e-10)
    assert 0.05 < r.lambda_z < 0.07  # terminal phase dominated by the 0.05/h exponential


def test_fixed_lambda_z_points_uses_last_n():
    t = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0])
    c = 8 * np.exp(-0.7 * t) + 2 * np.exp(-0.05 * t)
    lam, adj = _adj_r2_polyfit(t[-5:], np.log(c[-5:]))
    r = nca(t, c, lambda_z_points=5)
    assert r.lambda_z_n_points == 5
    assert r.lambda_z == pytest.approx(lam, rel=1e-10)
    assert r.lambda_z_r2_adj == pytest.approx(adj, rel=1e-10)
    assert r.lambda_z_interval == (4.0, 24.0)


def test_trailing_blq_zeros_are_excluded_from_lambda_z():
    t = np.append(EXP_T, [72.0, 96.0])
    c = np.append(EXP_C, [0.0, 0.0])
    r = nca(t, c)
    assert r.lambda_z == pytest.approx(K, rel=1e-12)
    assert r.tlast == 48.0
    assert r.lambda_z_interval == (0.5, 48.0)
    assert r.auc_last == pytest.approx(_exact_auc(0.0, 48.0), rel=1e-12)


def test_fewer_than_three_points_gives_nan_with_reason():
    r = nca([0.0, 1.0, 2.0, 4.0, 8.0], [0.0, 8.0, 4.0, 1.0, 0.0])  # 2 positive points after Cmax
    assert math.isnan(r.lambda_z) and math.isnan(r.half_life) and math.isnan(r.auc_inf)
    assert r.lambda_z_n_points == 0
    assert "only 2 positive concentration(s) after Cmax; λz needs at least 3" in r.lambda_z_reason
    assert r.auc_last == pytest.approx(4.0 + 4.0 / LN2 + 6.0 / math.log(4.0), rel=1e-13)
    r5 = nca(EXP_T, EXP_C, lambda_z_points=9)
    assert "λz needs lambda_z_points=9" in r5.lambda_z_reason


def test_rising_terminal_phase_gives_nan_with_reason():
    r = nca([0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 10.0, 2.0, 3.0, 4.0])
    assert math.isnan(r.lambda_z)
    assert "has a decreasing slope (λz > 0)" in r.lambda_z_reason


def test_all_zero_profile():
    r = nca([0.0, 1.0, 2.0], [0.0, 0.0, 0.0], tau=2.0)
    assert (r.cmax, r.clast, r.auc_last, r.auc_tau) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(r.tmax) and math.isnan(r.tlast) and math.isnan(r.lambda_z)
    assert r.lambda_z_reason == "all concentrations are 0"


# --------------------------------------------------------------------------------------------------
# (d) errors


@pytest.mark.parametrize(
    ("times", "conc", "pattern"),
    [
        ([0, 2, 1], [0, 1, 2], r"times\[2\] = 1.0 is earlier than times\[1\] = 2.0; .*sort the samples"),
        ([0, 1, 1], [0, 1, 2], r"times\[2\] = 1.0 duplicates times\[1\]; .*strictly increasing"),
        ([0, 1, 2], [0, -1, 2], r"conc\[1\] = -1.0 \(time 1 h\) is not a finite non-negative.*BLQ as 0"),
        (
            [0, 1, 2],
            [0, np.nan, 2],
            r"conc\[1\] \(time 1 h\) is NaN \(1 NaN in total\).*enter a BLQ value as 0",
        ),
        ([0, 1, 2], [0, np.inf, 2], r"conc\[1\] = inf"),
        ([0, 1], [0, 1, 2], r"times has 2 entries but conc has 3"),
        ([0, np.nan], [0, 1], r"times\[1\] = nan is not finite"),
        ([[0, 1]], [[0, 1]], r"times must be 1-D"),
        ([], [], r"the profile has no samples"),
    ],
)
def test_bad_profiles_raise_with_location_and_fix(times, conc, pattern):
    with pytest.raises(NCAError, match=pattern):
        nca(times, conc)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"method": "log"},
            r"method='log' is not an AUC method; use one of \['linear-up/log-down', 'linear'\]",
        ),
        ({"tau": 0.0}, r"tau=0.0 must be finite and positive \(in h\)"),
        ({"dose": -5}, r"dose=-5 must be finite and positive \(in mg\)"),
        ({"dose": "ten"}, r"dose='ten' is not a number"),
        ({"lambda_z_points": 2}, r"lambda_z_points=2 must be an integer >= 3"),
        ({"lambda_z_points": True}, r"lambda_z_points=True must be an integer >= 3"),
        ({"dose_time": 1.0}, r"times\[0\] = 0 h is before dose_time = 1 h; .*drop the pre-dose samples"),
    ],
)
def test_bad_options_raise(kwargs, pattern):
    with pytest.raises(NCAError, match=pattern):
        nca(EXP_T, EXP_C, **kwargs)


# --------------------------------------------------------------------------------------------------
# accumulation


def test_accumulation_ratio_from_lambda_equals_geometric_series():
    j = sp.symbols("j", integer=True, nonnegative=True)
    for lam, tau in [(0.1, 24.0), (0.0035, 504.0), (2.0, 0.5)]:
        series = sp.summation(sp.exp(-sp.Rational(str(lam)) * sp.Rational(str(tau)) * j), (j, 0, sp.oo))
        assert accumulation_ratio_from_lambda(lam, tau) == pytest.approx(float(series), rel=1e-13)
    arr = accumulation_ratio_from_lambda(np.array([0.1, 0.2]), 10.0)
    assert arr.shape == (2,)
    np.testing.assert_allclose(arr, [1 / (1 - math.exp(-1.0)), 1 / (1 - math.exp(-2.0))], rtol=1e-14)


def test_observed_accumulation_from_nca_matches_theory():
    # IV bolus every 24 h, C after the first dose C0 exp(-k t); at steady state (superposition,
    # geometric series) C0 exp(-k t)/(1 - exp(-k tau)).  Log trapezoids are exact on both.
    tau = 24.0
    t = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0])
    first = nca(t, C0 * np.exp(-K * t), tau=tau)
    ss = nca(t, C0 * np.exp(-K * t) / (1.0 - math.exp(-K * tau)), tau=tau)
    expected = 1.0 / (1.0 - math.exp(-K * tau))
    assert accumulation_ratio(ss.auc_tau, first.auc_tau) == pytest.approx(expected, rel=1e-12)
    assert accumulation_ratio_from_lambda(ss.lambda_z, tau) == pytest.approx(expected, rel=1e-12)
    # at steady state AUCτ equals the single-dose AUC∞ (C0/k)
    assert ss.auc_tau == pytest.approx(C0 / K, rel=1e-12)


def test_accumulation_errors():
    with pytest.raises(NCAError, match=r"auc_tau_first must be finite and positive, got 0.0"):
        accumulation_ratio(10.0, 0.0)
    with pytest.raises(NCAError, match=r"lambda_z must be finite and positive, got nan"):
        accumulation_ratio_from_lambda(np.array([0.1, np.nan]), 24.0)
    with pytest.raises(NCAError, match=r"tau must be finite and positive, got -1.0"):
        accumulation_ratio_from_lambda(0.1, -1.0)


# --------------------------------------------------------------------------------------------------
# result object and table


def test_result_is_frozen_and_flattens():
    r = nca(HAND_T, HAND_C, tau=10.0)
    assert isinstance(r, NCAResult)
    with pytest.raises(AttributeError):
        r.cmax = 1.0  # type: ignore[misc]
    d = r.to_dict()
    assert d["lambda_z_time_first"] == 4.0 and d["lambda_z_time_last"] == 8.0
    assert "lambda_z_interval" not in d
    assert isinstance(d["notes"], str)


def _table() -> pd.DataFrame:
    rows = []
    for subject, scale in ((1, 1.0), (2, 2.0)):
        for period, amt in ((1, 10.0), (2, 20.0)):
            for t, c in zip(HAND_T, HAND_C, strict=True):
                rows.append(
                    {"ID": subject, "PERIOD": period, "TIME": t, "DV": scale * period * c, "AMT": amt}
                )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3)


def test_nca_table_one_row_per_profile():
    out = nca_table(
        _table(), id_col="ID", time_col="TIME", conc_col="DV", group_cols=["PERIOD"], dose_col="AMT"
    )
    assert len(out) == 4
    assert list(out.columns[:2]) == ["ID", "PERIOD"]
    out = out.set_index(["ID", "PERIOD"])
    # concentrations scale by ID·PERIOD factor s, so AUClast = s·(13 + 9/ln 2) and λz is unchanged
    for (subject, period), row in out.iterrows():
        s = (1.0 if subject == 1 else 2.0) * period
        assert row["auc_last"] == pytest.approx(s * (13.0 + 9.0 / LN2), rel=1e-13)
        assert row["lambda_z"] == pytest.approx(LN2 / 4.0, rel=1e-12)
        assert row["clearance"] == pytest.approx(10.0 * period / (s * (13.0 + 15.0 / LN2)), rel=1e-12)


def test_nca_table_errors_name_rows_and_profiles():
    frame = _table()
    with pytest.raises(NCAError, match=r"column\(s\) \['CONC'\] not in the frame"):
        nca_table(frame, conc_col="CONC")
    broken = frame.copy()
    broken.loc[broken.index[5], "DV"] = np.nan
    with pytest.raises(
        NCAError, match=rf"row {broken.index[5]}: column 'DV' is missing.*BLQ concentrations as 0"
    ):
        nca_table(broken, group_cols=["PERIOD"])
    with pytest.raises(
        NCAError, match=r"profile ID=1: column 'AMT' holds 2 distinct doses.*split it with group_cols"
    ):
        nca_table(frame, dose_col="AMT")
    with pytest.raises(
        NCAError, match=r"profile ID=1 \(rows sorted by time\): times\[\d+\] = 0.0 duplicates"
    ):
        nca_table(frame)  # two periods in one profile: repeated times
    no_dose = frame.assign(AMT=np.where(frame["ID"] == 2, np.nan, frame["AMT"]))
    with pytest.raises(NCAError, match=r"profile ID=2, PERIOD=1: column 'AMT' is empty for every row"):
        nca_table(no_dose, group_cols=["PERIOD"], dose_col="AMT")


def test_nca_table_ignores_missing_doses_on_some_rows():
    frame = _table()
    frame.loc[frame["TIME"] > 0, "AMT"] = np.nan  # dose only on the t = 0 row of each profile
    out = nca_table(frame, group_cols=["PERIOD"], dose_col="AMT").set_index(["ID", "PERIOD"])
    assert out.loc[(1, 2), "dose"] == 20.0
    # ID 1, PERIOD 2: concentrations ×2, so CL = 20 / (2·(13 + 15/ln 2))
    assert out.loc[(1, 2), "clearance"] == pytest.approx(20.0 / (2.0 * (13.0 + 15.0 / LN2)), rel=1e-12)
