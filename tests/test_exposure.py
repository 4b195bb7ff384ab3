"""Tests of pkmodel.exposure: exposure metrics per regimen, exact route and from a simulated grid.

Oracles
-------
* Closed forms of the one-compartment IV model (CL 1 L/h, V 10 L, k = 0.1/h), written out below:
  bolus C = (D/V)·e^{−kt}; infusion at rate R over T: C = (R/CL)(1 − e^{−kt}) during, then decay;
  superposition for repeated doses; steady state by the geometric series (AUC_ss = D/CL).
* pkmodel.nca (linear-up/log-down AUCτ, Cmax) of a densely sampled profile from pkmodel.simulate (an
  independent implementation of the exact solution): AUCτ to 0.1 %, as issue 5 requires.
* Linear superposition: at steady state the AUC over a cycle equals the dose per cycle times the
  AUC₀₋∞ of a unit dose, ``c·(−K)⁻¹·e_dose``, with K and c taken from the model's *symbolic*
  equations (sympy) and one linear solve; hence AUC per week ∝ dose intensity (12 mg/kg D1,8,15 q4w,
  9 mg/kg/week, gives 9/(16/3) = 1.6875 × the weekly AUC of 16 mg/kg Q3W).
* For total antibody, AUC₀₋∞ = antibody dose / CL by hand (below).
* Crossing times of free SN-38 through a threshold found by scipy.optimize.brentq on pkmodel.simulate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from scipy.optimize import brentq

from pkmodel import d1_8_15_q4w, load_model, parse_regimen, q3w, simulate
from pkmodel.dosing import Bolus, Infusion, Regimen
from pkmodel.errors import DosingError, SimulationError
from pkmodel.exposure import (
    exposure_from_result,
    exposure_metrics,
    exposure_times,
    linear_outputs,
    regimen_cycles,
)
from pkmodel.nca import nca

K_EL = 0.1  # 1/h, CL/V of one_compartment_iv (1 L/h / 10 L)


@pytest.fixture(scope="module")
def one_cmt():
    return load_model("one_compartment_iv")


@pytest.fixture(scope="module")
def adc():
    return load_model("adc_esg401")


def values(table, analyte=None):
    """{(cycle, metric): value} of a one-subject table (one analyte)."""
    if analyte is not None:
        table = table[table["analyte"] == analyte]
    return {
        (str(c), str(m)): float(v)
        for c, m, v in zip(table["cycle"], table["metric"], table["value"], strict=True)
    }


# ------------------------------------------------------------------------------------------- cycles


def test_cycles_and_dose_intensity_by_hand():
    # Q3W: 16 mg/kg every 21 days = 16/3 mg/kg/week; D1,8,15 q4w: 3 x 12 mg/kg per 28 days = 9 mg/kg/week
    a = regimen_cycles(q3w(16, cycles=6))
    assert a.starts == tuple(504.0 * k for k in range(6)) and a.length == 504.0 and a.periodic
    assert a.dose_intensity == pytest.approx(16 / 3, rel=1e-15) and a.intensity_unit == "mg/kg/week"
    b = regimen_cycles(d1_8_15_q4w(12, cycles=4))
    assert b.starts == (0.0, 672.0, 1344.0, 2016.0) and b.dose_intensity == pytest.approx(9.0, rel=1e-15)
    # 100 mg every 24 h: 700 mg/week; a cycle length given explicitly regroups the doses
    c = regimen_cycles(parse_regimen("100 mg q24h x6"), cycle_length=48)
    assert c.starts == (0.0, 48.0, 96.0) and c.dose_intensity == pytest.approx(700.0) and c.unit == "mg"


def test_cycle_errors_name_the_fix():
    with pytest.raises(DosingError, match=r"single dose has no cycle: pass cycle_length="):
        regimen_cycles(parse_regimen("100 mg once"))
    mixed = Regimen([Bolus(0, 100, unit="mg"), Bolus(24, 1, unit="mg/kg")])
    with pytest.raises(DosingError, match=r"mixes dose units \['mg', 'mg/kg'\]"):
        regimen_cycles(mixed)
    with pytest.raises(DosingError, match=r"steady-state \(SS\) records.*ask for cycle 'ss'"):
        regimen_cycles(parse_regimen("100 mg q12h ss"))
    uneven = Regimen([Bolus(0, 100), Bolus(30, 100), Bolus(100, 100)])
    with pytest.raises(DosingError, match=r"cannot infer the cycle.*pass cycle_length="):
        regimen_cycles(uneven)
    with pytest.raises(DosingError, match=r"cycle_length=-5 must be a positive"):
        regimen_cycles(uneven, cycle_length=-5)
    with pytest.raises(DosingError, match=r"ends after the last cycle"):
        regimen_cycles(Regimen([Infusion(0, 100, duration=30)]), cycle_length=24)


# ------------------------------------------------------------------------------ hand-computed cases


def test_bolus_q24h_closed_forms(one_cmt):
    # D = 100 mg, V = 10 L: C0 = 10 mg/L; r = e^{-k·24} = e^{-2.4}
    r = math.exp(-K_EL * 24)
    table = exposure_metrics(
        one_cmt, parse_regimen("100 mg q24h x3"), cycles=[1, 2, "ss"], threshold={"CP": 5.0}
    )
    v = values(table, "CP")
    assert v[("1", "Cmax")] == pytest.approx(10.0, rel=1e-12)
    assert v[("1", "Ctrough")] == pytest.approx(10 * r, rel=1e-12)
    assert v[("1", "AUC")] == pytest.approx(100 * (1 - r), rel=1e-12)  # ∫0^24 10 e^{-0.1t} dt
    assert v[("1", "AUC_week")] == pytest.approx(100 * (1 - r) * 7, rel=1e-12)
    assert v[("1", "Cavg")] == pytest.approx(100 * (1 - r) / 24, rel=1e-12)
    # 10 e^{-0.1t} = 5 at 10 ln 2 = 6.93 h (Hermite-interpolated crossing, O(h^4) with h = 0.25 h)
    assert v[("1", "time_above_5")] == pytest.approx(10 * math.log(2), rel=1e-7)
    # cycle 2 starts at 10 r and gets another 10 mg/L
    assert v[("2", "Cmax")] == pytest.approx(10 * (1 + r), rel=1e-12)
    assert v[("2", "AUC")] == pytest.approx(100 * (1 + r) * (1 - r), rel=1e-12)
    # steady state: geometric series 10/(1 - r); AUC_ss = D/CL = 100 mg·h/L
    cmax_ss = 10 / (1 - r)
    assert v[("ss", "Cmax")] == pytest.approx(cmax_ss, rel=1e-12)
    assert v[("ss", "Ctrough")] == pytest.approx(cmax_ss * r, rel=1e-12)
    assert v[("ss", "AUC")] == pytest.approx(100.0, rel=1e-12)
    assert v[("ss", "time_above_5")] == pytest.approx(10 * math.log(cmax_ss / 5), rel=1e-7)
    # whole treatment [0, 72 h]: Σ_j 100 (1 − e^{−0.1 (72 − 24 j)}), j = 0, 1, 2
    auc_all = sum(100 * (1 - math.exp(-K_EL * (72 - 24 * j))) for j in range(3))
    assert v[("all", "AUC")] == pytest.approx(auc_all, rel=1e-12)
    assert v[("all", "Cavg")] == pytest.approx(auc_all / 72, rel=1e-12)
    assert values(table, "dose")[("all", "dose_intensity")] == pytest.approx(700.0)  # 100 mg/24 h
    assert set(table.loc[table.metric == "AUC", "unit"]) == {"mg/L·h"}


def infusion_profile(t, rate=50.0, duration=2.0, starts=(0.0, 24.0)):
    """C(t) of 1-h... (here 2-h) infusions at `rate` mg/h by superposition: CL 1, k 0.1."""
    c = 0.0
    for s in starts:
        if t <= s:
            continue
        during = min(t - s, duration)
        c_end = rate / 1.0 * (1 - math.exp(-K_EL * during))  # (R/CL)(1 − e^{−kτ})
        c += c_end * math.exp(-K_EL * (t - s - during))
    return c


def test_infusion_closed_forms_and_per_subject_until(one_cmt):
    # 100 mg over 2 h (R = 50 mg/h) every 24 h, twice
    regimen = parse_regimen("100 mg q24h x2 over 2h")
    cmax1 = 50 * (1 - math.exp(-0.2))  # end of the first infusion
    # AUC over [0, 24]: during 50 (2 − (1 − e^{−0.2})/0.1), after cmax1 (1 − e^{−2.2})/0.1
    auc1 = 50 * (2 - (1 - math.exp(-0.2)) / K_EL) + cmax1 * (1 - math.exp(-2.2)) / K_EL

    # AUC over [0, T] of one infusion started at 0 (T >= 2): the same with e^{−0.1 (T − 2)}
    def auc_one(T):
        return 50 * (2 - (1 - math.exp(-0.2)) / K_EL) + cmax1 * (1 - math.exp(-K_EL * (T - 2))) / K_EL

    until = np.array([30.0, 48.0])  # h, one per subject
    table = exposure_metrics(
        one_cmt, regimen, parameters={"CL": [1.0, 1.0], "V": [10.0, 10.0]}, cycles=[1], until=until
    )
    for sid, T in zip((1, 2), until, strict=True):
        v = values(table[table.ID == sid], "CP")
        assert v[("1", "Cmax")] == pytest.approx(cmax1, rel=1e-9)
        assert v[("1", "Ctrough")] == pytest.approx(infusion_profile(24.0), rel=1e-12)
        assert v[("1", "AUC")] == pytest.approx(auc1, rel=1e-12)
        assert v[("all", "AUC")] == pytest.approx(auc_one(T) + auc_one(T - 24), rel=1e-12)
        assert v[("all", "Cavg")] == pytest.approx((auc_one(T) + auc_one(T - 24)) / T, rel=1e-12)
    # the same from a simulated grid (trapezoids on exposure_times: 0.1 h steps near the peak)
    grid = exposure_times(regimen, until=48.0)
    result = simulate(one_cmt, regimen, grid)
    v = values(exposure_from_result(result, regimen, cycles=[1, 2], until=30.0), "CP")
    assert v[("1", "Cmax")] == pytest.approx(cmax1, rel=1e-12)  # the peak is a grid point
    assert v[("1", "Ctrough")] == pytest.approx(infusion_profile(24.0), rel=1e-12)
    assert v[("1", "AUC")] == pytest.approx(auc1, rel=1e-4)
    assert v[("all", "AUC")] == pytest.approx(auc_one(30) + auc_one(6), rel=1e-4)


def test_exact_peak_between_grid_points_is_refined():
    # one-compartment oral (Bateman): C = D·ka/(V(ka − k))·(e^{−kt} − e^{−ka·t}); with ka = 1, k = 0.1 the
    # peak is at tmax = ln(ka/k)/(ka − k) = ln 10/0.9 = 2.558 h, between the 0.25-h grid points 2.5 and 2.75.
    oral = load_model("one_compartment_oral")
    ka, cl, v, dose = 1.0, 1.0, 10.0, 100.0
    k = cl / v
    tmax = math.log(ka / k) / (ka - k)
    a = dose / v * ka / (ka - k)
    cmax = a * (math.exp(-k * tmax) - math.exp(-ka * tmax))
    table = exposure_metrics(
        oral, parse_regimen("100 mg once"), parameters={"KA": ka, "CL": cl, "V": v}, cycle_length=48
    )
    # cubic Hermite interpolation of exact values and slopes: |error| <= h^4/384 max|d4C/dt4| on the
    # segment (h = 0.25 h); d4C/dt4 = a·(k⁴e^{−kt} − ka⁴e^{−ka·t}), largest in size at t = 2.5 h
    bound = 0.25**4 / 384 * abs(a * (k**4 * math.exp(-k * 2.5) - ka**4 * math.exp(-ka * 2.5)))
    assert values(table, "CP")[("1", "Cmax")] == pytest.approx(cmax, abs=bound)
    assert bound / cmax < 2e-6


# ------------------------------------------------------------------------------- ADC: against NCA


def dense_grid(doses, end):
    pieces = [np.arange(0.0, end + 1e-9, 0.5)]
    for d in doses:
        pieces += [d + np.arange(0.0, 2.0, 0.01), d + np.arange(2.0, 48.0, 0.1)]
    t = np.unique(np.round(np.concatenate(pieces), 9))
    return t[t <= end]


@pytest.mark.parametrize(
    ("regimen", "tau"),
    [(q3w(16, cycles=1), 504.0), (d1_8_15_q4w(12, cycles=1), 672.0)],
    ids=["Q3W", "D1,8,15"],
)
def test_exact_auc_tau_and_cmax_match_nca_of_dense_profile(adc, regimen, tau):
    exact = exposure_metrics(adc, regimen, weight=65.0, cycles=[1], cycle_length=tau)
    t = dense_grid(regimen.dose_times(), tau)
    profile = simulate(adc, regimen, t, weight=65.0)
    for analyte in linear_outputs(adc):
        c = profile.output(analyte)[:, 0]
        reference = nca(t, c, tau=tau, lambda_z_points=3)
        v = values(exact, analyte)
        assert v[("1", "AUC")] == pytest.approx(reference.auc_tau, rel=1e-3), analyte  # issue 5: 0.1 %
        assert v[("1", "Cmax")] == pytest.approx(reference.cmax, rel=1e-3), analyte
        assert v[("1", "Ctrough")] == pytest.approx(c[-1], rel=1e-9), analyte


def test_steady_state_matches_nca_of_the_twentieth_cycle(adc):
    # 20 Q3W cycles (420 days) reach steady state (slowest antibody half-life about 2 weeks)
    exact = exposure_metrics(adc, q3w(16, cycles=20), weight=70.0, cycles=["ss"])
    t = 19 * 504.0 + dense_grid([0.0], 504.0)
    profile = simulate(adc, q3w(16, cycles=20), t, weight=70.0)
    for analyte in ("TAb", "ADC", "SN38"):
        reference = nca(t, profile.output(analyte)[:, 0], tau=504.0, dose_time=19 * 504.0, lambda_z_points=3)
        assert values(exact, analyte)[("ss", "AUC")] == pytest.approx(reference.auc_tau, rel=1e-3)


def test_time_above_threshold_matches_root_finding(adc):
    regimen = q3w(16, cycles=1)
    exact = exposure_metrics(
        adc, regimen, weight=60.0, analytes="SN38", threshold={"SN38": [5.0, 20.0]}, cycle_length=504
    )

    def sn38(t):
        return float(simulate(adc, regimen, [t], weight=60.0).output("SN38")[0, 0])

    for level in (5.0, 20.0):
        up = brentq(lambda t, x=level: sn38(t) - x, 1e-6, 1.0, xtol=1e-10)  # rises during the infusion
        down = brentq(lambda t, x=level: sn38(t) - x, 24.0, 400.0, xtol=1e-10)
        assert values(exact, "SN38")[("1", f"time_above_{level:g}")] == pytest.approx(down - up, abs=2e-4)


# ---------------------------------------------------------------------------- linear superposition


def unit_dose_auc(model, analyte, weight):
    """AUC₀₋∞ per nmol into DAR8_C, c·(−K)⁻¹·e_dose, from the symbolic model (sympy → numpy)."""
    K, _ = model.linear_system()
    states = [model.symbols[s] for s in model.state_names]
    c = sp.Matrix([model.output_exprs[analyte]]).jacobian(states)
    names = [*model.parameters, *model.covariates]
    numbers = {
        **{k: p.value for k, p in model.parameters.items()},
        **{k: c.value for k, c in model.covariates.items()},
    }
    numbers["WT"] = weight
    evaluate = sp.lambdify([model.symbols[k] for k in names], (K, c), "numpy")
    K_sym, c_sym = evaluate(*(numbers[k] for k in names))
    K_num = np.array(K_sym, dtype=float)
    c_num = np.array(c_sym, dtype=float)[0]
    e = np.zeros(len(states))
    e[model.state_names.index("DAR8_C")] = 1.0
    return float(c_num @ np.linalg.solve(-K_num, e))


def test_weekly_auc_proportional_to_dose_intensity(adc):
    weight = 70.0
    a = exposure_metrics(adc, q3w(16, cycles=4), weight=weight, cycles=["ss"])
    b = exposure_metrics(adc, d1_8_15_q4w(12, cycles=4), weight=weight, cycles=["ss"])
    nmol_per_mg = 1e6 / 160000.0  # ADC molar mass 160 kDa
    for analyte in linear_outputs(adc):  # TAb, ADC, acSN38, SN38, SN38G
        week_a = values(a, analyte)[("ss", "AUC_week")]
        week_b = values(b, analyte)[("ss", "AUC_week")]
        assert week_b / week_a == pytest.approx(9.0 / (16.0 / 3.0), rel=1e-9)  # 1.6875
        # and each equals dose per week × AUC∞ of a unit dose (superposition at steady state)
        per_nmol = unit_dose_auc(adc, analyte, weight)
        assert week_a == pytest.approx(16 / 3 * weight * nmol_per_mg * per_nmol, rel=1e-9)
        assert week_b == pytest.approx(9.0 * weight * nmol_per_mg * per_nmol, rel=1e-9)
    # by hand for total antibody: 16 mg/kg × 70 kg = 1120 mg ADC = 7000 nmol = 1036 mg antibody (148 kDa);
    # AUC per cycle at steady state = 1036 mg / CL 0.015088 L/h = 68664.5 µg·h/mL
    assert values(a, "TAb")[("ss", "AUC")] == pytest.approx(7000e-6 * 148000 / 0.015088, rel=1e-9)


# ------------------------------------------------------------------------------- other engines


def test_exposure_from_an_ode_simulation_of_the_pkpd_model(adc):
    # the composed PK/PD model is nonlinear; its PK part is adc_esg401, whose exact metrics are the oracle
    pkpd = load_model("adc_esg401_friberg")
    regimen = q3w(16, cycles=2)
    result = simulate(pkpd, regimen, exposure_times(regimen), weight=60.0, engine="ode")
    grid = values(exposure_from_result(result, regimen, analytes=["SN38", "ANC"], cycles=[1, 2]), "SN38")
    exact = values(exposure_metrics(adc, regimen, weight=60.0, analytes="SN38", cycles=[1, 2]), "SN38")
    for key in (("1", "AUC"), ("2", "AUC"), ("2", "Ctrough"), ("all", "Cavg")):
        assert grid[key] == pytest.approx(exact[key], rel=1e-3)


# ------------------------------------------------------------------------------------------ errors


def test_errors_state_rule_and_fix(one_cmt, adc):
    reg = parse_regimen("100 mg q24h x3 over 1h")
    with pytest.raises(SimulationError, match=r"needs a linear model.*exposure_from_result"):
        exposure_metrics(load_model("one_compartment_iv_mm"), reg)
    with pytest.raises(SimulationError, match=r"output 'DAR' of adc_esg401 is not linear in the amounts"):
        exposure_metrics(adc, q3w(16, cycles=2), weight=70.0, analytes="DAR")
    with pytest.raises(
        SimulationError, match=r"analyte 'CX' is not an output of one_compartment_iv; outputs: CP"
    ):
        exposure_metrics(one_cmt, reg, analytes="CX")
    with pytest.raises(SimulationError, match=r"cycle 4 is not a cycle of this regimen: give 1\.\.3"):
        exposure_metrics(one_cmt, reg, cycles=[4])
    with pytest.raises(SimulationError, match=r"threshold for 'SN38', which is not among the analytes CP"):
        exposure_metrics(one_cmt, reg, threshold={"SN38": 1.0})
    with pytest.raises(SimulationError, match=r"until = -1\.0 h: the end of the exposure window"):
        exposure_metrics(one_cmt, reg, until=-1.0)
    uneven = Regimen([Bolus(0, 100), Bolus(10, 100), Bolus(24, 100), Bolus(48, 100)])
    with pytest.raises(SimulationError, match=r"cycle 'ss' needs every cycle to repeat the same doses"):
        exposure_metrics(one_cmt, uneven, cycle_length=24)

    result = simulate(one_cmt, reg, exposure_times(reg))
    with pytest.raises(SimulationError, match=r"cycle 'ss' \(steady state\) needs the exact route"):
        exposure_from_result(result, reg, cycles=["ss"])
    with pytest.raises(
        SimulationError, match=r"has no time 48 h \(end of cycle 2\); simulate on exposure_times"
    ):
        exposure_from_result(simulate(one_cmt, reg, np.arange(0.0, 40.0, 0.5)), reg, cycles=[2])
    with pytest.raises(SimulationError, match=r"until = 100 h lies after the last simulated time 72 h"):
        exposure_from_result(result, reg, cycles=[1], until=100.0)
    bolus = parse_regimen("100 mg q24h x3")
    with pytest.raises(SimulationError, match=r"cycle 1 has a bolus at 24 h.*use exposure_metrics \(exact\)"):
        exposure_from_result(simulate(one_cmt, bolus, exposure_times(bolus)), bolus, cycles=[1])
