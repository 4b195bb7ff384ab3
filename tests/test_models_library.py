"""The model library as a whole, the Friberg myelosuppression model and the Michaelis-Menten variants.

Oracles: provenance rules of the house (every parameter cites a source; assumed values say so), the
steady state of the Friberg model (all compartments at CIRC0 without drug), the linearised Friberg
system (its impulse response, computed here with a matrix exponential, has a nadir at a time proportional
to MTT), the Lambert-W closed form of one-compartment Michaelis-Menten elimination, the closed-form
steady state KM·R/(VMAX − R) under a constant infusion, hand-written ODEs integrated by scipy, and the
linear models the MM variants reduce to when VMAX = 0.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp
from scipy.optimize import minimize_scalar
from scipy.special import lambertw

import pkmodel as pk
from pkmodel import Bolus, Infusion, Regimen

TIGHT = {"method": "BDF", "rtol": 1e-11, "atol": 1e-12}


@functools.cache
def _model(name: str) -> pk.Model:
    return pk.load_model(name)


SHIPPED = [name for name, _ in pk.list_models()]


def test_the_library_has_the_models_of_issue_3():
    expected = {
        "adc_dar8_sn38",
        "adc_dar8_sn38_tmdd",
        "adc_esg401",
        "adc_esg401_friberg",
        "sacituzumab_govitecan",
        "friberg_myelosuppression",
        "friberg_myelosuppression_emax",
        "one_compartment_iv_mm",
        "one_compartment_oral_mm",
        "two_compartment_iv_mm",
    }
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_model_loads_with_description_references_and_sources(name):
    m = _model(name)
    assert m.name == name
    assert m.description and m.references
    for p in m.parameters.values():
        assert p.source.strip(), f"{name}: parameter {p.name} has no source"
        assert p.lower <= p.value <= p.upper


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.endswith("_mm") or "tmdd" in n or "friberg" in n])
def test_saturable_and_feedback_models_are_reported_nonlinear(name):
    lin = _model(name).linearity
    assert not lin
    assert lin.reasons and all("not linear in the amounts" in r for r in lin.reasons)


# ------------------------------------------------------------------------------------------ Friberg


def test_friberg_without_drug_stays_at_baseline():
    m = _model("friberg_myelosuppression")
    t = np.linspace(0, 2000, 101)
    r = pk.simulate(m, None, t, parameters={"CIRC0": 3.7}, engine="ode", **TIGHT)
    np.testing.assert_allclose(r.states[:, 0, :], 3.7, rtol=1e-9)
    np.testing.assert_allclose(r.output("ANC"), 3.7, rtol=1e-9)


def _linearised_nadir(mtt: float, gamma: float, e0: float, k: float, circ0: float) -> float:
    """Nadir time of the Friberg model linearised about CIRC0, for E(t) = e0·exp(-k t).

    Deviations d = X - CIRC0 obey, to first order in E and d,
    dP/dt = ktr(-CIRC0·E - gamma·dC), dT1/dt = ktr(dP - dT1), ..., dC/dt = ktr(dT3 - dC); E is carried as a
    sixth state with dE/dt = -k E, so the response is the matrix exponential of a 6x6 matrix.
    """
    ktr = 4.0 / mtt
    A = np.zeros((6, 6))
    A[0, 4], A[0, 5] = -ktr * gamma, -ktr * circ0
    for i in range(1, 5):
        A[i, i - 1], A[i, i] = ktr, -ktr
    A[5, 5] = -k
    x0 = np.array([0, 0, 0, 0, 0, e0])

    def circ(t):
        return (scipy.linalg.expm(A * t) @ x0)[4]

    grid = np.linspace(1.0, 4 * mtt, 400)
    start = grid[np.argmin([circ(t) for t in grid])]
    res = minimize_scalar(
        circ, bounds=(start - 4 * mtt / 400, start + 4 * mtt / 400), method="bounded", options={"xatol": 1e-6}
    )
    return float(res.x)


def _simulated_nadir(mtt: float, e0: float, k: float) -> float:
    m = _model("friberg_myelosuppression")
    slope = m.parameters["SLOPE"].value
    t = np.arange(0.0, 4 * mtt, 0.25)
    r = pk.simulate(
        m,
        None,
        t,
        parameters={"MTT": mtt},
        inputs={"CONC": lambda s: e0 / slope * np.exp(-k * s)},
        engine="ode",
        **TIGHT,
    )
    anc = r.output("ANC")[:, 0]
    i = int(np.argmin(anc))
    # vertex of the parabola through the three samples around the minimum
    y0, y1, y2 = anc[i - 1], anc[i], anc[i + 1]
    return float(t[i] + 0.25 * 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2))


def test_friberg_nadir_time_scales_with_mtt_as_the_linearised_model_predicts():
    # A short, small drug pulse (E = 0.02·e^(-t/1h)): the linearised system is a function of ktr·t only, apart
    # from the 1-h pulse, so its nadir time is proportional to MTT; the nonlinear model (E small) follows it.
    m = _model("friberg_myelosuppression")
    gamma, circ0 = m.parameters["GAMMA"].value, m.parameters["CIRC0"].value
    e0, k = 0.02, 1.0
    sim = {mtt: _simulated_nadir(mtt, e0, k) for mtt in (90.0, 180.0)}
    lin = {mtt: _linearised_nadir(mtt, gamma, e0, k, circ0) for mtt in (90.0, 180.0)}
    for mtt in sim:
        # the nonlinear terms are O(E) = 2 % of the deviation, which is itself small
        assert abs(sim[mtt] / lin[mtt] - 1) < 1e-3, (mtt, sim[mtt], lin[mtt])
    assert abs(lin[180.0] / lin[90.0] - 2) < 0.01  # proportional up to the pulse width (1 h vs 90 h)
    assert abs(sim[180.0] / sim[90.0] - 2) < 0.01


def test_friberg_emax_variant_matches_linear_variant_at_low_concentration():
    # EMAX/EC50 equals the linear SLOPE; with CONC = EC50/1000 the effects differ by 0.1 %, and so do the
    # responses.
    lin, emax = _model("friberg_myelosuppression"), _model("friberg_myelosuppression_emax")
    p = emax.parameters
    assert abs(p["EMAX"].value / p["EC50"].value / lin.parameters["SLOPE"].value - 1) < 1e-4
    conc = p["EC50"].value / 1000
    t = np.linspace(0, 600, 61)
    drop = {}
    for m in (lin, emax):
        r = pk.simulate(m, None, t, inputs={"CONC": lambda s, c=conc: c * (s < 48)}, engine="ode", **TIGHT)
        drop[m.name] = m.parameters["CIRC0"].value - r.output("ANC")[:, 0]
    ratio = drop["friberg_myelosuppression_emax"][10:] / drop["friberg_myelosuppression"][10:]
    assert np.all(np.abs(ratio - 1) < 3e-3)


# --------------------------------------------------------------------------------- Michaelis-Menten


def test_one_compartment_mm_bolus_matches_lambert_w():
    # dC/dt = -VMAX/V · C/(KM + C)  =>  KM ln(C0/C) + C0 - C = VMAX t / V
    #                                =>  C(t) = KM · W((C0/KM) exp((C0 - VMAX t/V)/KM))
    m = _model("one_compartment_iv_mm")
    vmax, km, v = (m.parameters[k].value for k in ("VMAX", "KM", "V"))
    t = np.linspace(0, 48, 49)
    r = pk.simulate(m, Regimen([Bolus(0, 100.0)]), t, engine="ode", **TIGHT)
    c0 = 100.0 / v
    expected = km * lambertw(c0 / km * np.exp((c0 - vmax * t / v) / km)).real
    np.testing.assert_allclose(r.output("CP")[:, 0], expected, rtol=1e-7)


def test_one_compartment_mm_infusion_reaches_closed_form_steady_state():
    # Under a constant infusion R < VMAX: R = VMAX·Css/(KM + Css)  =>  Css = KM·R/(VMAX - R).
    m = _model("one_compartment_iv_mm")
    vmax, km = m.parameters["VMAX"].value, m.parameters["KM"].value
    rate = 0.5 * vmax
    r = pk.simulate(m, Regimen([Infusion(0, rate * 600, rate=rate)]), [600.0], engine="ode", **TIGHT)
    assert abs(r.output("CP")[0, 0] / (km * rate / (vmax - rate)) - 1) < 1e-7


def test_one_compartment_oral_mm_matches_hand_written_ode():
    m = _model("one_compartment_oral_mm")
    ka, vmax, km, v = (m.parameters[k].value for k in ("KA", "VMAX", "KM", "V"))
    t = np.linspace(0, 72, 73)
    r = pk.simulate(m, Regimen([Bolus(0, 400.0, "DEPOT", ii=24, addl=2)]), t, engine="ode", **TIGHT)

    def rhs(_, y):
        return [-ka * y[0], ka * y[0] - vmax * (y[1] / v) / (km + y[1] / v)]

    pieces, y = [], np.zeros(2)
    for start in (0.0, 24.0, 48.0):  # dose 400 mg into the depot, integrate to the next dose
        sol = solve_ivp(
            rhs,
            (start, start + 24.0),
            y + np.array([400.0, 0.0]),
            method="Radau",
            rtol=1e-12,
            atol=1e-12,
            dense_output=True,
        )
        pieces.append(sol.sol)
        y = sol.y[:, -1]
    # right-continuous: at 24 h and 48 h the value after the dose (start of the next piece)
    expected = np.array([pieces[min(int(s // 24), 2)](s)[1] for s in t]) / v
    np.testing.assert_allclose(r.output("CP")[:, 0], expected, rtol=1e-7, atol=1e-12)


def test_two_compartment_mm_without_saturable_route_is_the_linear_model():
    mm, lin = _model("two_compartment_iv_mm"), _model("two_compartment_iv")
    reg = Regimen([Infusion(0, 50.0, duration=2.0, ii=12, addl=3)])
    t = np.linspace(0, 72, 145)
    a = pk.simulate(mm, reg, t, parameters={"VMAX": 0.0}, engine="ode", **TIGHT)
    b = pk.simulate(lin, reg, t, engine="exact")
    np.testing.assert_allclose(a.output("CP"), b.output("CP"), rtol=1e-6)
    # with the saturable route on, concentrations are lower (an extra elimination pathway)
    c = pk.simulate(mm, reg, t[1:], engine="ode", **TIGHT)
    assert np.all(c.output("CP")[:, 0] < b.output("CP")[1:, 0])
