"""Dose records, regimens, named helpers and the text form."""

from __future__ import annotations

import dataclasses

import pytest

import pkmodel as pk
from pkmodel import Bolus, Infusion, Regimen


def test_q3w_dose_times_are_every_504_hours():
    # 21 days × 24 h = 504 h
    assert pk.q3w(16, cycles=6).dose_times() == tuple(504.0 * k for k in range(6))


def test_d1_8_15_q4w_dose_times():
    # days 1, 8, 15 (0, 168, 336 h) of 28-day (672 h) cycles
    expected = tuple(672.0 * c + d for c in range(3) for d in (0.0, 168.0, 336.0))
    assert pk.d1_8_15_q4w(12, cycles=3).dose_times() == expected
    assert expected[:6] == (0.0, 168.0, 336.0, 672.0, 840.0, 1008.0)


def test_helpers_use_nonmem_records():
    reg = pk.q3w(16, cycles=6, duration=1.0)
    (record,) = reg
    assert isinstance(record, Infusion) and record.ii == 504.0 and record.addl == 5 and record.duration == 1.0
    assert all(isinstance(e, Bolus) for e in pk.q3w(16, cycles=2, duration=None))


@pytest.mark.parametrize(
    ("text", "times", "kind", "duration"),
    [
        ("16 mg/kg q3w x6 over 1h", [504.0 * k for k in range(6)], Infusion, 1.0),
        ("12 mg/kg d1,8,15 q4w x2 over 30min", [0, 168, 336, 672, 840, 1008], Infusion, 0.5),
        ("100 mg q12h x3", [0, 12, 24], Bolus, None),
        ("100 mg once at 2d", [48], Bolus, None),
        ("5 mg/kg q1w x2 rate 2.5", [0, 168], Infusion, 2.0),
        ("50 µg once", [0], Bolus, None),
    ],
)
def test_parse_regimen(text, times, kind, duration):
    reg = pk.parse_regimen(text)
    assert list(reg.dose_times()) == [float(t) for t in times]
    assert all(isinstance(e, kind) for e in reg)
    if duration is not None:
        assert all(e.duration_h == pytest.approx(duration) for e in reg)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty regimen"),
        ("mg/kg q3w", "dose amount"),
        ("16 furlongs once", "unknown dose unit"),
        ("16 mg/kg q3w over 1h rate 5", "not both"),
        ("16 mg/kg once x3", "contradicts"),
        ("16 mg/kg q3w", "needs a count"),
        ("16 mg/kg d1,8,15 x3", "cycle length"),
        ("16 mg/kg q3w x2 x3", "repeats"),
        ("16 mg/kg q3w x2 every", "unknown token 'every'"),
        ("16 mg/kg q3w x2 over soon", "is not a time"),
        ("16 mg/kg d1,8,40 q4w x1", "from 1 to the cycle length 28"),
        ("16 mg/kg d8,1 q4w x1", "strictly increasing"),
        ("16 mg/kg d1,8 q4w x2 ss", "cannot be used with a day list"),
    ],
)
def test_parse_regimen_errors(text, message):
    with pytest.raises(pk.DosingError, match=message):
        pk.parse_regimen(text)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Infusion(0, 10, rate=1, duration=2), "not both"),
        (lambda: Infusion(0, 10), "needs a rate"),
        (lambda: Bolus(0, -1), "amount must be > 0"),
        (lambda: Bolus(-1, 1), "time \\(h\\) must be >= 0"),
        (lambda: Bolus(0, 1, addl=2), "need an interdose interval"),
        (lambda: Bolus(0, 1, ss=1), "steady state needs ii > 0"),
        (lambda: Bolus(0, 1, ss=3, ii=12), "ss must be 0, 1 or 2"),
        (lambda: Bolus(0, 1, addl=1.5, ii=12), "whole number"),
        (lambda: Bolus(0, float("nan")), "finite"),
        (lambda: Bolus(0, 1, unit="mL"), "not a dose unit"),
        (lambda: Infusion(0, 10, duration=30, ii=24, addl=1), "overlapping"),
        (lambda: Regimen([Bolus(0, 1), "dose"]), "not a Bolus or Infusion"),
    ],
)
def test_contradictory_records_are_errors(make, message):
    with pytest.raises(pk.DosingError, match=message):
        make()


def test_records_are_immutable_and_replace_validates():
    b = Bolus(0, 100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.amount = 5  # type: ignore[misc]
    assert b.replace(amount=50).amount == 50
    with pytest.raises(pk.DosingError):
        b.replace(amount=-1)


def test_expand_unrolls_addl_and_keeps_ss_on_first():
    reg = Regimen([Bolus(0, 100, ii=24, addl=2, ss=1)])
    first, *rest = reg.expand()
    assert first.ss == 1 and first.ii == 24
    assert [(e.time, e.ss, e.addl) for e in rest] == [(24.0, 0, 0), (48.0, 0, 0)]


def test_regimen_is_sorted_and_combinable():
    reg = Regimen([Bolus(24, 1), Bolus(0, 2)]) + Regimen([Bolus(12, 3)])
    assert [e.time for e in reg] == [0.0, 12.0, 24.0]
    assert reg.shift(1).dose_times() == (1.0, 13.0, 25.0)
    frame = pk.q3w(2, cycles=2).to_frame()
    assert frame["TIME"].tolist() == [0.0, 504.0] and frame["RATE"].tolist() == [2.0, 2.0]


def test_mg_per_kg_dose_converts_through_weight_and_molar_mass():
    m = pk.load_model("adc_esg401")
    cmt = m.dose_compartment(None)
    mw = m.compartments[cmt].molar_mass
    # 16 mg/kg × 60 kg = 960 mg = 0.96 g / MW (g/mol) = 0.96/MW mol = 0.96e9/MW nmol
    assert m.dose_amount(16.0, "mg/kg", cmt, weight=60.0) == pytest.approx(960e-3 / mw * 1e9, rel=1e-12)
