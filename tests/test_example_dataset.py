"""Tests of the shipped SIMULATED example dataset pkmodel/examples/esg401_phase1.csv.

Oracles
-------
* The published design of the ESG401 phase 1 (literature README section 6; Wang et al., Cell Rep Med
  2024): 35 patients, regimen A 2, 4, 8, 12, 16, 20 mg/kg Q3W, regimen B 12, 14, 16 mg/kg D1,8,15 q4w.
* Record counts worked out by hand from the sampling schedule documented in esg401_phase1.md (below).
* The published incidences (ASCO 2023): neutropenia any grade 69 %, grade >= 3 31 %, leukopenia any
  grade 80 %; recomputed here from the ANC and WBC columns with pkmodel.grading (CTCAE v5.0), a path
  independent of the generator's own grading.  Tolerance ±12 percentage points: with 35 patients one
  patient is 2.9 points, and a binomial SD at 31 % is √(0.31·0.69/35) = 7.8 points.
* Determinism: the committed generator rewrites the identical file.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pkmodel import load_model
from pkmodel.data import read_dataset
from pkmodel.errors import DatasetError
from pkmodel.examples import dataset_path, documentation_path
from pkmodel.grading import summarize_courses

PUBLISHED = {"neutropenia_any": 69.0, "neutropenia_ge3": 31.0, "leukopenia_any": 80.0}
TOLERANCE = 12.0  # percentage points
OUTPUTS = ["TAb", "ADC", "SN38", "ANC"]


@pytest.fixture(scope="module")
def table():
    return pd.read_csv(dataset_path(), comment="#")


@pytest.fixture(scope="module")
def dataset():
    model = load_model("adc_esg401_friberg")
    return read_dataset(dataset_path(), outputs=OUTPUTS, compartments=model.state_names)


def test_labelled_simulated_everywhere():
    text = dataset_path().read_text(encoding="utf-8")
    assert text.startswith("# SIMULATED DATA - NOT PATIENT DATA")
    doc = documentation_path().read_text(encoding="utf-8")
    assert "SIMULATED" in doc.splitlines()[0]
    with pytest.raises(DatasetError, match=r"no example dataset 'x'; the examples are: esg401_phase1"):
        dataset_path("x")


def test_reads_cleanly_with_the_expected_counts(dataset):
    report = dataset.report
    # per patient (schedule in esg401_phase1.md):
    #   A (Q3W x6): PK times 10 in cycle 1 + 2 in each of cycles 2-6 + end of treatment = 21 per analyte;
    #               ANC 3 weekly in each of 6 cycles + day 11 of cycle 1 + end of treatment = 20; 6 doses
    #   B (D1,8,15 q4w x4): PK 13 in cycle 1 + 2 in each of cycles 2-4 + end = 20; ANC 4 x 4 + end = 17;
    #               12 doses
    # 24 patients on A, 11 on B
    assert report.n_subjects == 35
    assert report.n_doses == 24 * 6 + 11 * 12 == 276
    assert report.observations_by_output == {"TAb": 724, "ADC": 724, "SN38": 724, "ANC": 24 * 20 + 11 * 17}
    assert report.n_records == 276 + 3 * 724 + 667
    assert report.excluded == {"comment line": 6}
    assert 0 < report.n_blq < report.n_observations


def test_design_matches_the_published_study(table):
    patients = table.groupby("ID").first()
    assert len(patients) == 35
    cohorts = patients.groupby(["REGIMEN", "DOSE"]).size().to_dict()
    assert set(cohorts) == {("A", d) for d in (2.0, 4.0, 8.0, 12.0, 16.0, 20.0)} | {
        ("B", d) for d in (12.0, 14.0, 16.0)
    }
    assert all(n >= 3 for n in cohorts.values()) and sum(cohorts.values()) == 35
    assert cohorts[("A", 16.0)] == max(cohorts.values())  # more patients at 16 mg/kg Q3W
    doses = table[table.EVID == 1]
    # AMT (mg) = DOSE (mg/kg) x WT (kg) rounded to 0.1 mg; 1-h infusions: RATE (mg/h) = AMT
    assert np.all(np.abs(doses.AMT - doses.DOSE * doses.WT) <= 0.05 + 1e-9)
    assert np.allclose(doses.RATE, doses.AMT)
    assert set(doses.CMT) == {"DAR8_C"}
    expected = {
        "A": [504.0 * k for k in range(6)],
        "B": [672.0 * k + d for k in range(4) for d in (0.0, 168.0, 336.0)],
    }
    for _, group in doses.groupby("ID"):
        assert group.TIME.tolist() == expected[group.REGIMEN.iloc[0]]
    assert 40 <= patients.WT.min() and patients.WT.max() <= 95  # truncation documented in the .md


def test_blq_records_follow_the_reader_convention(table):
    pk = table[(table.EVID == 0) & table.DVID.isin(["TAb", "ADC", "SN38"])]
    blq = pk[pk.BLQ == 1]
    assert len(blq) > 0 and blq.DV.isna().all() and (blq.LLOQ > 0).all()
    assert (pk.loc[pk.BLQ == 0, "DV"] >= pk.loc[pk.BLQ == 0, "LLOQ"]).all()
    # every pre-dose sample of cycle 1 comes from a drug-naive patient: below the limit
    assert (pk.loc[pk.TIME == 0, "BLQ"] == 1).all()
    anc = table[table.DVID == "ANC"]
    assert anc.DV.notna().all() and anc.WBC.notna().all() and (anc.WBC > anc.DV).all()


def incidences(table):
    """Incidences (%) recomputed from the ANC and WBC columns with pkmodel.grading (on-treatment samples)."""
    anc = table[(table.DVID == "ANC") & (table.TIME > 0)]
    neut = summarize_courses(anc, value_col="DV", kind="anc").subjects.set_index("ID")["worst_grade"]
    leuk = summarize_courses(anc, value_col="WBC", kind="wbc").subjects.set_index("ID")["worst_grade"]
    return neut, leuk


def test_incidences_close_to_published(table):
    neut, leuk = incidences(table)
    assert len(neut) == len(leuk) == 35
    achieved = {
        "neutropenia_any": 100 * float((neut >= 1).mean()),
        "neutropenia_ge3": 100 * float((neut >= 3).mean()),
        "leukopenia_any": 100 * float((leuk >= 1).mean()),
    }
    for key, published in PUBLISHED.items():
        assert abs(achieved[key] - published) <= TOLERANCE, (key, achieved[key])
    # the per-patient grade columns agree with pkmodel.grading
    patients = table.groupby("ID").first()
    assert (patients.NEUTGR == neut.reindex(patients.index).astype(int)).all()
    assert (patients.LEUKGR == leuk.reindex(patients.index).astype(int)).all()
    # and the documentation reports these numbers
    doc = documentation_path().read_text(encoding="utf-8")
    for key, value in achieved.items():
        assert re.search(rf"\|\s*{key}\s*\|[^\n]*\|\s*{value:.1f}\s*\|", doc), key


@pytest.mark.slow
def test_generator_rewrites_the_identical_file(tmp_path):
    target = tmp_path / "esg401_phase1.csv"
    done = subprocess.run(
        [sys.executable, "-m", "pkmodel.examples.make_esg401_phase1", "--out", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == dataset_path().read_bytes()


def test_theoph_example_is_the_reference_data_byte_for_byte():
    # the shipped copy lets fits/theoph_foce.toml run from an installed pkmodel; the oracle is the test
    # data copied from ../shared/reference/theoph (R 4.2.2 datasets::Theoph)
    from pathlib import Path

    reference = Path(__file__).parent / "data" / "theoph" / "Theoph_nonmem.csv"
    assert dataset_path("theoph").read_bytes() == reference.read_bytes()
