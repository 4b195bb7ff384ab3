"""Simulation engines against independent oracles.

Oracles: closed forms derived here with sympy (dsolve of the model's ODEs written by hand, not from
the model file), the ODE engine vs the exact engine, superposition, the accumulation ratio
1/(1 - e^(-k tau)), and mass balance with a sink compartment.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import pkmodel as pk
from pkmodel import Bolus, Infusion, Regimen

T = np.linspace(0.0, 72.0, 145)
TIGHT = {"rtol": 1e-11, "atol": 1e-12, "method": "Radau"}  # ODE tolerances for comparisons with closed forms


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


# ------------------------------------------------------------------------------ closed forms (sympy)


def _one_compartment_closed_forms():
    """Amount in the central compartment, derived by sympy from dA/dt = -k A (+ R)."""
    t, k, dose, dur = sp.symbols("t k dose dur", positive=True)
    A = sp.Function("A")
    bolus = sp.dsolve(sp.Eq(A(t).diff(t), -k * A(t)), A(t), ics={A(0): dose}).rhs
    infusing = sp.dsolve(sp.Eq(A(t).diff(t), dose / dur - k * A(t)), A(t), ics={A(0): 0}).rhs
    after = infusing.subs(t, dur) * sp.exp(-k * (t - dur))
    return (
        sp.lambdify((t, k, dose), bolus),
        sp.lambdify((t, k, dose, dur), infusing),
        sp.lambdify((t, k, dose, dur), after),
    )


def _oral_closed_form(equal: bool):
    t, ka, k, dose = sp.symbols("t ka k dose", positive=True)
    Ad, Ac = sp.Function("Ad"), sp.Function("Ac")
    if equal:
        eqs = [sp.Eq(Ad(t).diff(t), -k * Ad(t)), sp.Eq(Ac(t).diff(t), k * Ad(t) - k * Ac(t))]
        sol = sp.dsolve(eqs, [Ad(t), Ac(t)], ics={Ad(0): dose, Ac(0): 0})
        return sp.lambdify((t, k, dose), next(s for s in sol if s.lhs == Ac(t)).rhs)
    eqs = [sp.Eq(Ad(t).diff(t), -ka * Ad(t)), sp.Eq(Ac(t).diff(t), ka * Ad(t) - k * Ac(t))]
    sol = sp.dsolve(eqs, [Ad(t), Ac(t)], ics={Ad(0): dose, Ac(0): 0})
    return sp.lambdify((t, ka, k, dose), next(s for s in sol if s.lhs == Ac(t)).rhs)


@pytest.mark.parametrize("engine", ["exact", "ode"])
def test_one_compartment_bolus_and_infusion_match_sympy(engine):
    bolus, infusing, after = _one_compartment_closed_forms()
    m = pk.load_model("one_compartment_iv")
    cl, v, dose = 1.3, 12.0, 250.0
    k = cl / v
    r = pk.simulate(m, Regimen([Bolus(0, dose)]), T, parameters={"CL": cl, "V": v}, engine=engine, **TIGHT)
    assert _rel(r.output("CENT")[:, 0], bolus(T, k, dose)) < 1e-7
    dur = 2.5
    r = pk.simulate(
        m,
        Regimen([Infusion(0, dose, duration=dur)]),
        T,
        parameters={"CL": cl, "V": v},
        engine=engine,
        **TIGHT,
    )
    expected = np.where(T <= dur, infusing(T, k, dose, dur), after(T, k, dose, dur))
    assert _rel(r.output("CENT")[1:, 0], expected[1:]) < 1e-7
    assert r.output("CENT")[0, 0] == 0.0


@pytest.mark.parametrize("engine", ["exact", "ode"])
@pytest.mark.parametrize(
    "ka", [1.7, 0.1]
)  # 0.1 = CL/V: the ka = k case where textbook formulas divide by zero
def test_first_order_absorption_matches_sympy(engine, ka):
    m = pk.load_model("one_compartment_oral")
    cl, v, dose = 2.0, 20.0, 320.0
    k = cl / v
    r = pk.simulate(
        m,
        Regimen([Bolus(0, dose, "DEPOT")]),
        T,
        parameters={"KA": ka, "CL": cl, "V": v},
        engine=engine,
        **TIGHT,
    )
    if ka == k:
        expected = _oral_closed_form(True)(T, k, dose)
        assert np.allclose(expected, dose * k * T * np.exp(-k * T))  # the known ka = k limit
    else:
        expected = _oral_closed_form(False)(T, ka, k, dose)
    assert _rel(r.output("CENT")[1:, 0], expected[1:]) < 1e-7


def _two_compartment_closed_form():
    t = sp.symbols("t", positive=True)
    k10, k12, k21, dose = sp.Rational(1, 15), sp.Rational(1, 6), sp.Rational(1, 10), 100
    A1, A2 = sp.Function("A1"), sp.Function("A2")
    eqs = [
        sp.Eq(A1(t).diff(t), -(k10 + k12) * A1(t) + k21 * A2(t)),
        sp.Eq(A2(t).diff(t), k12 * A1(t) - k21 * A2(t)),
    ]
    sol = sp.dsolve(eqs, [A1(t), A2(t)], ics={A1(0): dose, A2(0): 0})
    a1 = next(s for s in sol if s.lhs == A1(t)).rhs
    return sp.lambdify(t, a1), (k10, k12, k21, dose), t, a1


@pytest.mark.parametrize("engine", ["exact", "ode"])
def test_two_compartment_bolus_and_infusion_match_sympy(engine):
    a1, (k10, k12, k21, dose), t, expr = _two_compartment_closed_form()
    v1 = 3.0
    params = {"CL": float(k10) * v1, "V1": v1, "Q": float(k12) * v1, "V2": float(k12) * v1 / float(k21)}
    m = pk.load_model("two_compartment_iv")
    r = pk.simulate(m, Regimen([Bolus(0, float(dose))]), T, parameters=params, engine=engine, **TIGHT)
    assert _rel(r.output("CENT")[:, 0], a1(T)) < 1e-7
    # infusion of duration d = superposition of bolus responses: ∫_0^min(t,d) (dose/d)·unit(t-s) ds
    d = 3.0
    s = sp.symbols("s", positive=True)
    unit = expr / dose
    during = sp.integrate(unit.subs(t, t - s), (s, 0, t)) * dose / d
    later = sp.integrate(unit.subs(t, t - s), (s, 0, d)) * dose / d
    f_during, f_later = sp.lambdify(t, during), sp.lambdify(t, later)
    expected = np.array([f_during(x) if x <= d else f_later(x) for x in T], dtype=float)
    r = pk.simulate(
        m, Regimen([Infusion(0, float(dose), duration=d)]), T, parameters=params, engine=engine, **TIGHT
    )
    assert _rel(r.output("CENT")[1:, 0], expected[1:]) < 1e-7


# ------------------------------------------------------------------ exact vs ODE on every linear model

LINEAR_REGIMENS = {
    "bolus": lambda c: Regimen([Bolus(0, 100, c)]),
    "infusion": lambda c: Regimen([Infusion(0, 100, c, duration=2.0)]),
    "repeated": lambda c: Regimen([Bolus(0, 100, c, ii=12, addl=4), Infusion(30, 50, c, rate=25)]),
    "steady_state": lambda c: Regimen([Infusion(0, 100, c, duration=1.0, ii=24, addl=2, ss=1)]),
    "steady_state_bolus": lambda c: Regimen([Bolus(0, 100, c, ii=24, ss=1)]),
}


def _linear_models():
    """The small linear models (the ADC models are checked the same way in test_models_adc.py)."""
    out = []
    for name, _ in pk.list_models():
        m = pk.load_model(name)
        if m.is_linear and not m.inputs and len(m.compartments) <= 4:
            out.append(name)
    return out


@pytest.mark.parametrize("kind", sorted(LINEAR_REGIMENS))
@pytest.mark.parametrize("name", _linear_models())
def test_exact_engine_agrees_with_ode_engine(name, kind):
    m = pk.load_model(name)
    times = np.concatenate([[0.0], np.geomspace(0.05, 120.0, 80)])
    regimen = LINEAR_REGIMENS[kind](
        m.dose_compartment(None)
        if m.default_dose_compartment
        else next(c for c, v in m.compartments.items() if v.dose)
    )
    params = {"WT": 70.0} if "WT" in m.covariates else None
    exact = pk.simulate(m, regimen, times, parameters=params, engine="exact")
    ode = pk.simulate(
        m, regimen, times, parameters=params, engine="ode", rtol=1e-10, atol=1e-13, method="Radau"
    )
    for name_out in exact.outputs:
        a, b = ode.output(name_out), exact.output(name_out)
        scale = np.max(np.abs(b))
        mask = np.abs(b) > 1e-6 * scale
        assert _rel(a[mask], b[mask]) <= 1e-6, name_out


# ---------------------------------------------------- superposition, accumulation ratio and mass balance


def test_superposition_of_doses():
    m = pk.load_model("two_compartment_iv")
    times = np.linspace(0, 200, 401)
    both = pk.simulate(m, Regimen([Bolus(0, 100), Infusion(50, 60, duration=3)]), times)
    first = pk.simulate(m, Regimen([Bolus(0, 100)]), times)
    second = pk.simulate(m, Regimen([Infusion(50, 60, duration=3)]), times)
    assert np.allclose(both.output("CP"), first.output("CP") + second.output("CP"), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("engine", ["exact", "ode"])
def test_accumulation_ratio_one_compartment(engine):
    m = pk.load_model("one_compartment_iv")
    cl, v, tau = 1.0, 10.0, 12.0
    k = cl / v
    n = 40  # after 40 doses e^(-k tau n) ~ 1e-21: steady state to machine precision
    times = np.array([1.0, (n - 1) * tau + 1.0])
    r = pk.simulate(
        m,
        Regimen([Bolus(0, 100, ii=tau, addl=n - 1)]),
        times,
        parameters={"CL": cl, "V": v},
        engine=engine,
        rtol=1e-11,
        atol=1e-13,
        method="Radau",
    )
    ratio = r.output("CP")[1, 0] / r.output("CP")[0, 0]
    assert ratio == pytest.approx(1.0 / (1.0 - np.exp(-k * tau)), rel=1e-7)
    ss = pk.simulate(
        m,
        Regimen([Bolus(0, 100, ii=tau, ss=1)]),
        [1.0],
        parameters={"CL": cl, "V": v},
        engine=engine,
        rtol=1e-11,
        atol=1e-13,
        method="Radau",
    )
    assert ss.output("CP")[0, 0] == pytest.approx(r.output("CP")[1, 0], rel=1e-7)


SINK_MODEL = {
    "model": {"name": "two_cmt_with_sink"},
    "parameters": {
        "KA": {"value": 0.8, "unit": "1/h"},
        "CL": {"value": 0.4, "unit": "L/h"},
        "V1": {"value": 4.0, "unit": "L"},
        "Q": {"value": 0.9, "unit": "L/h"},
        "V2": {"value": 9.0, "unit": "L"},
    },
    "compartments": {
        "DEPOT": {"unit": "mg", "dose": True},
        "CENT": {"unit": "mg", "dose": True},
        "PERI": {"unit": "mg"},
        "ELIM": {"unit": "mg"},
    },
    "flows": [
        {"from": "DEPOT", "to": "CENT", "rate": "KA*DEPOT"},
        {"from": "CENT", "to": "ELIM", "rate": "CL/V1*CENT"},
        {"from": "CENT", "to": "PERI", "rate": "Q/V1*CENT"},
        {"from": "PERI", "to": "CENT", "rate": "Q/V2*PERI"},
    ],
    "outputs": {"CP": {"expr": "CENT/V1", "unit": "mg/L"}},
}


@pytest.mark.parametrize("engine", ["exact", "ode"])
def test_mass_balance(engine):
    m = pk.load_model(SINK_MODEL)
    regimen = Regimen([Bolus(0, 100, "DEPOT", ii=24, addl=3), Infusion(10, 40, "CENT", duration=5)])
    times = np.linspace(0, 150, 301)
    r = pk.simulate(m, regimen, times, engine=engine, rtol=1e-12, atol=1e-14, method="Radau")
    given = np.array(
        [
            sum(e.amount for e in regimen.expand() if e.time <= t and not isinstance(e, Infusion))
            + sum(
                e.amount * min(max(t - e.time, 0.0), e.duration_h) / e.duration_h
                for e in regimen.expand()
                if isinstance(e, Infusion)
            )
            for t in times
        ]
    )
    present = r.states.sum(axis=2)[:, 0]
    tol = 1e-9 if engine == "exact" else 1e-8
    assert _rel(present[1:], given[1:]) < tol


def test_many_subjects_equal_one_by_one():
    m = pk.load_model("two_compartment_iv")
    cls = np.array([0.1, 0.2, 0.5])
    reg = pk.parse_regimen("10 mg/kg q3w x2 over 1h")
    together = pk.simulate(m, reg, T, parameters={"CL": cls, "WT": [50, 70, 90]})
    for k, (cl, wt) in enumerate(zip(cls, [50, 70, 90], strict=True)):
        alone = pk.simulate(m, reg, T, parameters={"CL": cl}, weight=wt)
        assert np.allclose(together.output("CP")[:, k], alone.output("CP")[:, 0], rtol=1e-13, atol=0)


def test_mg_per_kg_scales_with_weight():
    m = pk.load_model("one_compartment_iv")
    reg = pk.parse_regimen("2 mg/kg once")
    r = pk.simulate(m, reg, [0.0], weight=np.array([50.0, 100.0]))
    assert r.output("CENT")[0].tolist() == [100.0, 200.0]


def test_per_subject_regimens_and_tidy_frame():
    m = pk.load_model("one_compartment_iv")
    regs = {1: pk.parse_regimen("100 mg once"), 2: pk.parse_regimen("50 mg once at 1h")}
    r = pk.simulate(m, regs, [0.0, 2.0], parameters={"ID": [1, 2], "CL": [1.0, 1.0]})
    frame = r.to_frame()
    assert list(frame.columns) == ["ID", "TIME", "output", "value", "unit"]
    cp = frame[frame.output == "CP"].set_index(["ID", "TIME"])["value"]
    assert cp[(1, 0.0)] == 10.0 and cp[(2, 0.0)] == 0.0
    assert cp[(2, 2.0)] == pytest.approx(5.0 * np.exp(-0.1 * 1.0), rel=1e-12)


# ------------------------------------------------------------------------------------------- errors


def test_errors_are_specific():
    m = pk.load_model("one_compartment_iv")
    reg = pk.parse_regimen("100 mg once")
    with pytest.raises(pk.SimulationError, match=r"unknown parameter.*CLL"):
        pk.simulate(m, reg, [1.0], parameters={"CLL": 1.0})
    with pytest.raises(pk.SimulationError, match="strictly increasing"):
        pk.simulate(m, reg, [2.0, 1.0])
    with pytest.raises(pk.SimulationError, match="outside its bounds"):
        pk.simulate(m, reg, [1.0], parameters={"CL": -1.0})
    with pytest.raises(pk.SimulationError, match="no body weight"):
        pk.simulate(m, pk.parse_regimen("1 mg/kg once"), [1.0])
    with pytest.raises(pk.SimulationError, match="not dosable"):
        pk.simulate(pk.load_model("two_compartment_iv"), Regimen([Bolus(0, 1, "PERI")]), [1.0])
    with pytest.raises(pk.SimulationError, match="does not exist"):
        pk.simulate(
            pk.load_model({"compartments": {"A": {"unit": "mg", "dose": True}}}),
            Regimen([Bolus(0, 1, ii=12, ss=1)]),
            [1.0],
            engine="exact",
        )


def test_diverging_model_is_a_clear_error():
    blowup = {
        "parameters": {"K": {"value": 1.0, "unit": "1/(mg*h)"}},
        "compartments": {"A": {"unit": "mg", "dose": True}},
        "flows": [{"to": "A", "rate": "K*A*A"}],  # dA/dt = A²: A(t) = 1/(1 - t) blows up at t = 1 h
    }
    with pytest.raises(pk.SimulationError, match="may be diverging"):
        pk.simulate(pk.load_model(blowup), pk.parse_regimen("1 mg once"), [0.0, 0.5, 2.0])


def test_negative_amounts_are_reported_not_hidden():
    # a zero-order outflow with no floor drives the amount below zero: the model is wrong, and the result says so
    leaky = {
        "parameters": {"R": {"value": 1.0, "unit": "mg/h"}},
        "compartments": {"A": {"unit": "mg", "dose": True}},
        "flows": [{"from": "A", "rate": "R"}],
    }
    r = pk.simulate(pk.load_model(leaky), pk.parse_regimen("1 mg once"), [0.0, 2.0])
    assert not r.ok and "went negative" in r.warnings[0] and "compartment A" in r.warnings[0]
    clean = pk.simulate("one_compartment_iv", pk.parse_regimen("1 mg once"), [0.0, 2.0])
    assert clean.ok and clean.warnings == ()


@pytest.mark.parametrize("engine", ["exact", "ode"])
def test_selected_outputs_without_states_match_closed_form(engine):
    # two subjects on different regimens (two groups): 100 mg at 0 h, and 50 mg at 5 h.  One compartment,
    # k = CL/V = 0.1/h, V = 10 L: CP = D/V·e^(−k(t − t_dose)) after the dose, 0 before (hand computation).
    b, _, _ = _one_compartment_closed_forms()
    regimens = {1: Regimen([Bolus(0.0, 100.0, unit="mg")]), 2: Regimen([Bolus(5.0, 50.0, unit="mg")])}
    par = {"ID": [1, 2], "CL": [1.0, 1.0], "V": [10.0, 10.0]}
    t = np.array([0.0, 2.0, 5.0, 12.0, 24.0])
    opts = TIGHT if engine == "ode" else {}
    r = pk.simulate(
        "one_compartment_iv",
        regimens,
        t,
        parameters=par,
        engine=engine,
        outputs=["CP"],
        keep_states=False,
        **opts,
    )
    assert list(r.outputs) == ["CP"] and r.states.shape == (5, 2, 0) and r.ok
    assert _rel(r.output("CP")[:, 0], b(t, 0.1, 100.0) / 10.0) < 1e-8
    late = np.where(t >= 5.0, b(np.maximum(t - 5.0, 0.0), 0.1, 50.0) / 10.0, 0.0)
    assert np.allclose(r.output("CP")[:, 1], late, rtol=1e-8, atol=1e-12)
    with pytest.raises(
        pk.SimulationError, match=r"'CENT' is a state and the amounts were not kept.*keep_states=True"
    ):
        r.output("CENT")


def test_unknown_output_selection_is_an_error():
    with pytest.raises(
        pk.SimulationError, match=r"unknown output\(s\) AUC of model one_compartment_iv; outputs: CP"
    ):
        pk.simulate("one_compartment_iv", pk.parse_regimen("1 mg once"), [1.0], outputs=["AUC"])


def test_negative_amounts_are_reported_without_states():
    # the same zero-order leak, with only an output asked for and no states kept: still reported
    leaky = {
        "parameters": {"R": {"value": 1.0, "unit": "mg/h"}},
        "compartments": {"A": {"unit": "mg", "dose": True}},
        "flows": [{"from": "A", "rate": "R"}],
        "outputs": {"AOUT": {"expr": "A", "unit": "mg"}},
    }
    r = pk.simulate(pk.load_model(leaky), pk.parse_regimen("1 mg once"), [0.0, 2.0], keep_states=False)
    # A(t) = 1 − t mg (hand computation): −1 mg at 2 h
    assert not r.ok and "compartment A went negative (-1 at t=2 h, subject index 0)" in r.warnings[0]
    assert np.allclose(r.output("AOUT")[:, 0], [1.0, -1.0], rtol=1e-8)


def test_mg_per_kg_doses_never_use_the_model_reference_weight():
    # adc_esg401 declares WT (reference 70 kg) as a covariate; a mg/kg dose without an explicit weight must
    # be an error, not a silent 70-kg patient.  With weight=70 the dose is 16 x 70 = 1120 mg (hand
    # computation), the same as a 1120 mg dose.
    model = pk.load_model("adc_esg401")
    with pytest.raises(pk.SimulationError, match=r"16 mg/kg but no body weight was given: pass weight="):
        pk.simulate(model, pk.q3w(16, cycles=1), [0.0, 24.0])
    per_kg = pk.simulate(model, pk.q3w(16, cycles=1), [0.0, 24.0], weight=70.0).output("TAb")
    in_mg = pk.simulate(model, pk.parse_regimen("1120 mg once over 1h"), [0.0, 24.0]).output("TAb")
    np.testing.assert_allclose(per_kg, in_mg, rtol=1e-12)
