"""The main job, ``pkmodel demo``: fit the shipped example, then compare the regimens in a report.

One demo run (module fixture, 40 virtual subjects per regimen instead of the scenario's 200) serves
every test here, so the 35-patient FOCE-I fit runs once.

Oracles
-------
* Recovery (issue 5): the example dataset was simulated from a documented truth
  (pkmodel/examples/esg401_phase1.md): CL 0.015088 L/h, V1 2.8152 L, KDEC 0.014257 1/h, CLS 3.5957 L/h.
  The fixed effects must come back within 15 %.
* Exposure–response (issue 5): the logistic slope of grade >= 3 neutropenia on cycle-1 free SN-38 Cavg,
  estimated from the 35 example patients (exposure from their empirical Bayes estimates), must contain in
  its 95 % profile-likelihood interval the slope of the same analysis on 280 other patients simulated
  from the same truth by the generator (make_esg401_phase1.simulate_study, another seed), whose exposure
  comes from their true individual parameters.
* The report: sections present; every table in the HTML equals its CSV; the fit section shows the
  estimates the fit wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_report import csv_rows, html_tables

from pkmodel.demo import run_demo
from pkmodel.errors import PkmodelError
from pkmodel.examples import dataset_path
from pkmodel.exposure import exposure_metrics
from pkmodel.response import fit_logistic

pytestmark = pytest.mark.slow

TRUTH = {"CL": 0.015088, "V1": 2.8152, "KDEC": 0.014257, "CLS": 3.5957}
PK_PARAMETERS = ["CL", "V1", "KDEC", "CLS"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "pkmodel-demo"
    page = run_demo(out, n=40)
    return out, page


def _cycle1_sn38_cavg(patients: pd.DataFrame) -> pd.Series:
    """Cycle-1 free SN-38 Cavg (ng/mL) of each patient under the patient's own regimen and dose."""
    values = []
    for (regimen, dose), group in patients.groupby(["REGIMEN", "DOSE"]):
        text = (
            f"{dose:g} mg/kg q3w x6 over 1h" if regimen == "A" else f"{dose:g} mg/kg d1,8,15 q4w x4 over 1h"
        )
        from pkmodel import parse_regimen

        frame = exposure_metrics(
            "adc_esg401",
            parse_regimen(text),
            parameters=group[["ID", "WT", "ALB", *PK_PARAMETERS]].reset_index(drop=True),
            analytes="SN38",
            cycles=(1,),
        )
        cavg = frame[(frame["metric"] == "Cavg") & (frame["cycle"] == "1")].set_index("ID")["value"]
        values.append(cavg)
    return pd.concat(values)


def test_demo_fits_the_example_and_recovers_the_truth(demo):
    out, _ = demo
    results = json.loads((out / "fit" / "results.json").read_text(encoding="utf-8"))
    assert results["status"] == "success", results["status_message"]
    assert results["method"] == "foce-i"
    for name, truth in TRUTH.items():
        entry = results["theta"][name]
        assert entry["estimate"] == pytest.approx(truth, rel=0.15), name
        assert entry["ci95_lower"] <= truth <= entry["ci95_upper"], name  # the 95 % CI covers the truth
    notes = " ".join(results["notes"])
    assert "667 observation(s) of DVID ANC left out" in notes and "362 BLQ" in notes


def test_logistic_exposure_response_contains_the_truth(demo):
    out, _ = demo
    from pkmodel.examples.make_esg401_phase1 import simulate_study

    raw = pd.read_csv(dataset_path(), comment="#")
    patients = raw.groupby("ID")[["REGIMEN", "DOSE", "WT", "ALB", "NEUTGR"]].first().reset_index()
    ebe = pd.read_csv(out / "fit" / "individual_parameters.csv")[["ID", *PK_PARAMETERS]]
    example = patients.merge(ebe, on="ID")
    assert len(example) == 35
    x = _cycle1_sn38_cavg(example).reindex(example["ID"]).to_numpy()
    fit = fit_logistic(x, (example["NEUTGR"] >= 3).astype(int).to_numpy(), level=0.95)
    lower, upper = fit.profile_ci["slope"]

    study = simulate_study(seed=20261125, replicates=8).patients
    truth_x = _cycle1_sn38_cavg(study).reindex(study["ID"]).to_numpy()
    truth = fit_logistic(truth_x, (study["NEUTGR"] >= 3).astype(int).to_numpy(), level=0.95)
    assert truth.slope > 0  # more free SN-38, more grade >= 3 neutropenia
    assert lower <= truth.slope <= upper, (lower, truth.slope, upper)


def test_report_has_every_section_and_its_numbers_are_the_csvs(demo):
    out, page = demo
    assert page == out / "report" / "report.html"
    text = page.read_text(encoding="utf-8")
    for title in (
        "Summary",
        "Regimens and dose intensity",
        "Population PK estimates used",
        "Exposure",
        "Concentration-time profiles",
        "Neutrophil counts",
        "Comparison at matched dose intensity",
        "Methods and assumptions",
    ):
        assert f">{title}<" in text, title
    tables = html_tables(page)
    assert "tables/fit_estimates.csv" in tables
    for name, rows in tables.items():
        assert rows == csv_rows(out / "report" / name), name
    # the estimates shown are the ones the fit wrote
    results = json.loads((out / "fit" / "results.json").read_text(encoding="utf-8"))
    shown = pd.read_csv(out / "report" / "tables" / "fit_estimates.csv").set_index("parameter")
    for name in TRUTH:
        assert shown.loc[name, "estimate"] == pytest.approx(results["theta"][name]["estimate"], rel=5e-4)
    inc = pd.read_csv(out / "report" / "tables" / "neutropenia_incidence.csv")
    assert set(inc["regimen"]) >= {"A: 16 mg/kg Q3W", "B: 12 mg/kg D1,8,15 q4w"}
    assert (inc["n"] == 40).all()


def test_demo_never_overwrites(demo):
    out, _ = demo
    before = (out / "fit" / "results.json").read_bytes()
    with pytest.raises(PkmodelError, match=r"exists.*--force"):
        run_demo(out, n=40)
    assert (out / "fit" / "results.json").read_bytes() == before


def test_fitted_population_uses_the_fit(demo):
    out, _ = demo
    pop = pd.read_csv(out / "report" / "tables" / "population.csv")
    results = json.loads((out / "fit" / "results.json").read_text(encoding="utf-8"))
    # log-normal IIV around the fitted typical values: the median CL of 40 subjects (WT and ALB effects
    # included) is within a factor 1.5 of θ̂ (ω² of CL about 0.06: SD of the median ≈ 0.25/√40 ≈ 4 %)
    assert np.median(pop["CL"]) == pytest.approx(results["theta"]["CL"]["estimate"], rel=0.5)
    assert {"SLOPE", "CIRC0", "MTT"} <= set(pop.columns)  # the scenario's Friberg variability
    # WT and ALB resampled (whole rows) from the 35 example patients
    raw = pd.read_csv(dataset_path(), comment="#")
    patients = set(map(tuple, raw.groupby("ID")[["WT", "ALB"]].first().to_numpy().tolist()))
    assert set(map(tuple, pop[["WT", "ALB"]].to_numpy().tolist())) <= patients
