"""Regimen comparison (pkmodel.compare) and its report.

Oracles
-------
* Dose intensity by hand: 16 mg/kg every 21 days = 16/3 = 5.333 mg/kg/week; 12 mg/kg on days 1, 8, 15 of
  28-day cycles = 36/4 = 9 mg/kg/week; the matched regimen's dose = 5.333 · 4/3 = 7.111 mg/kg.
* Linear PK (issue 5): at steady state the AUC per week of every analyte of a linear model is the dose
  intensity times the AUC of a unit dose to infinity (superposition), so for the *same* subject
  12 mg/kg D1,8,15 q4w gives 9/5.333 = 1.6875 times the weekly AUC of 16 mg/kg Q3W, whatever the
  subject's parameters — checked per subject, for TAb, ADC and free SN-38.
* Clopper–Pearson intervals from the beta quantiles (scipy.stats.beta), independent of the code's own.
* The report: every table in the HTML equals its CSV cell for cell; every section is present.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta
from test_report import csv_rows, html_tables

from pkmodel.compare import dose_intensity, load_scenario, run_comparison
from pkmodel.dosing import parse_regimen
from pkmodel.errors import PkmodelError, SpecError

SCENARIO = """\
[scenario]
title = "Test: Q3W vs D1,8,15 q4w"
pk_model = "adc_esg401"
pkpd_model = "adc_esg401_friberg"
seed = 7
banner = "Test scenario"

[population]
n = 24
covariates = { WT = { median = 60, cv = 0.2 }, ALB = { median = 38, cv = 0.1 } }

[iiv]
CL = 0.1
CLS = 0.2
SLOPE = 0.176
CIRC0 = 0.107

[[regimens]]
label = "A: 16 mg/kg Q3W"
regimen = "16 mg/kg q3w x4 over 1h"

[[regimens]]
label = "B: 12 mg/kg D1,8,15 q4w"
regimen = "12 mg/kg d1,8,15 q4w x3 over 1h"

[metrics]
analytes = ["TAb", "ADC", "SN38"]
thresholds = { SN38 = 5.0 }

[exposure_response]
candidates = ["SN38:1:Cavg", "SN38:1:Cmax", "ADC:1:Cavg"]

[[matched]]
reference = "A: 16 mg/kg Q3W"
regimen = "d1,8,15 q4w x3 over 1h"

[grid]
step_h = 12.0
"""


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenario")
    (folder / "scenario.toml").write_text(SCENARIO, encoding="utf-8")
    return run_comparison(folder / "scenario.toml")


def test_dose_intensity_by_hand():
    assert dose_intensity(parse_regimen("16 mg/kg q3w x4 over 1h")) == pytest.approx(16 / 3, rel=1e-12)
    assert dose_intensity(parse_regimen("12 mg/kg d1,8,15 q4w x3 over 1h")) == pytest.approx(9.0, rel=1e-12)


def test_weekly_auc_at_steady_state_is_proportional_to_dose_intensity(comparison):
    ex = comparison.tables["exposure_subjects"]
    ss = ex[(ex["cycle"] == "ss") & (ex["metric"] == "AUC_week")]
    wide = ss.pivot_table(index=["analyte", "ID"], columns="regimen", values="value", observed=True)
    ratio = wide["B: 12 mg/kg D1,8,15 q4w"] / wide["A: 16 mg/kg Q3W"]
    assert set(wide.index.get_level_values("analyte")) == {"TAb", "ADC", "SN38"}
    assert len(ratio) == 3 * 24
    np.testing.assert_allclose(ratio.to_numpy(), 9.0 / (16.0 / 3.0), rtol=1e-6)
    assert 9.0 / (16.0 / 3.0) == pytest.approx(1.6875)


def test_matched_regimen_has_the_reference_dose_intensity(comparison):
    di = comparison.tables["dose_intensity"].set_index("regimen")["dose_intensity"]
    assert di["A: 16 mg/kg Q3W"] == pytest.approx(16 / 3, rel=1e-12)
    assert di["B: 12 mg/kg D1,8,15 q4w"] == pytest.approx(9.0, rel=1e-12)
    matched = [label for label in di.index if label.startswith("matched")]
    assert matched == ["matched: 7.11 mg/kg d1,8,15 q4w"]
    assert di[matched[0]] == pytest.approx(16 / 3, rel=1e-3)  # the dose is written with 4 digits
    table = comparison.tables["matched_dose_intensity"].set_index("regimen")
    assert set(table.index) == set(di.index)


def test_incidence_intervals_are_clopper_pearson(comparison):
    inc = comparison.tables["neutropenia_incidence"].set_index("regimen")
    data = comparison.tables["exposure_response_data"]
    for label, row in inc.iterrows():
        worst = data.loc[data["regimen"] == label, "worst_grade"]
        n, k = len(worst), int((worst >= 3).sum())
        assert row["n"] == n == 24 and row["events_ge3"] == k
        assert row["incidence_ge3"] == pytest.approx(k / n)
        lower = 0.0 if k == 0 else beta.ppf(0.05, k, n - k + 1)
        upper = 1.0 if k == n else beta.ppf(0.95, k + 1, n - k)
        assert row["incidence_ge3_lower"] == pytest.approx(lower, rel=1e-9, abs=1e-12)
        assert row["incidence_ge3_upper"] == pytest.approx(upper, rel=1e-9, abs=1e-12)


def test_report_sections_and_every_html_number_equals_its_csv(comparison, tmp_path):
    page = comparison.write(tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    for title in (
        "Summary",
        "Regimens and dose intensity",
        "Exposure",
        "Concentration-time profiles",
        "Neutrophil counts",
        "Exposure-response for grade &gt;=3 neutropenia",
        "Comparison at matched dose intensity",
        "Methods and assumptions",
    ):
        assert f">{title}<" in text, title
    tables = html_tables(page)
    shown = {
        "neutropenia_incidence",
        "dose_intensity",
        "exposure_summary",
        "exposure_response_selection",
        "exposure_response_parameters",
        "exposure_by_quartile",
        "matched_dose_intensity",
    }
    assert {f"tables/{name}.csv" for name in shown} <= set(tables)
    for name, rows in tables.items():
        assert rows == csv_rows(tmp_path / "report" / name), name
    # every table, shown or not, has its CSV; the figures are embedded and saved
    csvs = {p.stem for p in (tmp_path / "report" / "tables").glob("*.csv")}
    assert set(comparison.tables) == csvs
    assert {p.stem for p in (tmp_path / "report" / "figures").glob("*.png")} == {
        "concentration_time",
        "anc",
        "exposure_response",
    }
    assert text.count("data:image/png;base64,") == 3
    provenance = json.loads((tmp_path / "report" / "provenance.json").read_text(encoding="utf-8"))
    assert provenance["seed"] == 7 and provenance["n_subjects"] == 24
    with pytest.raises(PkmodelError, match="exists"):
        comparison.write(tmp_path / "report")


def test_same_seed_same_numbers(comparison):
    again = run_comparison(comparison.scenario)
    pd.testing.assert_frame_equal(again.tables["exposure_summary"], comparison.tables["exposure_summary"])
    pd.testing.assert_frame_equal(
        again.tables["neutropenia_incidence"], comparison.tables["neutropenia_incidence"]
    )


def test_scenario_errors_name_the_key(tmp_path):
    bad = SCENARIO.replace('reference = "A: 16 mg/kg Q3W"', 'reference = "C: nothing"')
    (tmp_path / "bad.toml").write_text(bad, encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad.toml, key 'matched\[0\].reference': must be one of"):
        load_scenario(tmp_path / "bad.toml")
