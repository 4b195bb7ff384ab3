"""Tests of pkmodel.data: the NONMEM-style dataset reader and validator.

Oracles
-------
* Line numbers: every malformed dataset below is written out literally in the test, so its line
  numbers are counted by hand (the header is line 1); the comment next to each case says which line
  is wrong and why.
* Counts and values of the Theoph smoke test: R 4.2.2 ``datasets::Theoph`` as documented in
  /work/shared/reference/theoph/README.md (12 subjects, 132 concentrations, one dose each), and the
  file re-read with Python's ``csv`` module (an independent parser); AMT is checked against the
  file's own DOSE_MGKG × WT columns.
* Regimens: infusion durations are AMT / RATE worked out by hand in the comments; ADDL/II dose times
  are t0 + k·II.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pkmodel.data import (
    MAX_ADDL,
    MAX_LISTED,
    Dataset,
    DatasetReport,
    Problem,
    ValidationReport,
    read_dataset,
    validate_dataset,
)
from pkmodel.dosing import Bolus, Infusion, Regimen
from pkmodel.errors import DatasetError

DATA = Path(__file__).parent / "data" / "datasets"
THEOPH = DATA / "theoph_nonmem.csv"


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def lines(*rows: str) -> str:
    return "\n".join(rows) + "\n"


# A valid base dataset; the malformed cases below change one line of it.
#   line 1: header, lines 2-6: records
HEADER = "ID,TIME,EVID,MDV,AMT,CMT,DV,DVID,WT"
GOOD = [
    "1,0,1,1,100,1,.,.,70",  # line 2: dose
    "1,1,0,0,0,2,5.2,TAb,70",  # line 3: observation
    "1,2,0,0,0,2,3.1,TAb,70",  # line 4
    "2,0,1,1,100,1,.,.,80",  # line 5
    "2,1,0,0,0,2,6.0,TAb,80",  # line 6
]


def variant(line: int, new: str, header: str = HEADER) -> str:
    """The base dataset with file line ``line`` (2-6) replaced by ``new``."""
    rows = list(GOOD)
    rows[line - 2] = new
    return lines(header, *rows)


def test_base_dataset_is_valid(tmp_path):
    data = read_dataset(
        write(tmp_path, lines(HEADER, *GOOD)), outputs=["TAb"], compartments=["gut", "central"]
    )
    assert isinstance(data, Dataset)
    # hand count: 2 doses (lines 2, 5), 3 observations (lines 3, 4, 6), 2 subjects
    assert (data.report.n_doses, data.report.n_observations, data.report.n_subjects) == (2, 3, 2)
    assert data.records["ROW"].tolist() == [2, 3, 4, 5, 6]
    assert data.ids == (1, 2)
    assert data.outputs == ("TAb",)
    assert data.covariate_names == ("WT",)


# --------------------------------------------------------------------------------------------------
# The malformed-dataset corpus: (id, file text, read_dataset kwargs, rule, line, message pattern).
# Each case breaks exactly one rule once, so the whole report must be that single problem.

OUT = {"outputs": ["TAb", "ADC"], "compartments": ["gut", "central"]}

CASES = [
    # -- file and header
    ("no-data-rows", "ID,TIME,DV\n", {}, "no-data-rows", None, r"header \(line 1\) but no data rows"),
    (
        "missing-id-column",
        lines("TIME,DV", "0,1.0"),
        {},
        "missing-column",
        None,
        r"required column ID \(the subject identifier\) is missing \(columns found: TIME, DV\); add it",
    ),
    (
        "missing-time-column",
        lines("ID,DV", "1,1.0"),
        {},
        "missing-column",
        None,
        r"required column TIME \(the time of each record, in h\) is missing",
    ),
    (
        "neither-dv-nor-amt",
        lines("ID,TIME,WT", "1,0,70"),
        {},
        "missing-column",
        None,
        r"neither DV nor AMT is present .*: a dataset needs observations \(DV\) or doses \(AMT\); add",
    ),
    (
        "duplicate-column",
        # columns 9 (WT) and 10 (wt) are the same name case-insensitively
        lines(HEADER + ",wt", *(g + ",70" for g in GOOD)),
        {},
        "duplicate-column",
        None,
        r"line 1 \(header\): column 10 \('wt'\) repeats column 9 \(WT\); column names are case-insensitive",
    ),
    (
        "empty-column-name",
        # a trailing comma on every line makes an unnamed 10th column
        lines(HEADER + ",", *(g + "," for g in GOOD)),
        {},
        "empty-column-name",
        None,
        r"line 1 \(header\): column 10 has no name; name it, or remove the extra delimiter",
    ),
    (
        "wrong-field-count",
        variant(4, "1,2,0,0,0,2,3.1,TAb"),  # line 4 lost its WT field: 8 fields instead of 9
        {},
        "wrong-field-count",
        4,
        r"line 4: has 8 fields but the header \(line 1\) has 9: check for a missing or extra comma",
    ),
    (
        "unbalanced-quotes",
        # line 3 opens a quote in field 8 (DVID: ID,TIME,EVID,MDV,AMT,CMT,DV,DVID) and never closes it
        variant(3, '1,1,0,0,0,2,5.2,"TAb,70'),
        {},
        "unbalanced-quotes",
        3,
        r"line 3: field 8 opens a quote \(\"\) that does not close on this line: close it \(a field must not "
        r"span lines",
    ),
    # -- values
    (
        "non-numeric",
        variant(4, "1,2,0,0,0,2,3.l,TAb,70"),  # line 4: DV typed with a letter l instead of 1
        {},
        "non-numeric",
        4,
        r"line 4: DV value '3\.l' is not a number: enter a number, or \. for a missing value",
    ),
    (
        "non-numeric-covariate",
        # WT has numbers on the other lines, so 'seventy' on line 3 is a typo, not a text category
        variant(3, "1,1,0,0,0,2,5.2,TAb,seventy"),
        {},
        "non-numeric",
        3,
        r"line 3: WT value 'seventy' is not a number: .* \(a covariate column is read as text only when none",
    ),
    (
        "decimal-comma",
        # semicolon-delimited file with a decimal comma on line 3
        variant(3, "1;1;0;0;0;2;5,2;TAb;70", header=HEADER).replace(",", ";").replace("5;2", "5,2"),
        {},
        "non-numeric",
        3,
        r"line 3: DV value '5,2' is not a number \(a decimal comma\? write 5\.2\)",
    ),
    (
        "nan-text",
        variant(3, "1,1,0,0,0,2,NaN,TAb,70"),  # line 3: DV written as NaN
        {},
        "not-finite",
        3,
        r"line 3: DV value 'NaN' is NaN or infinite \(a number beyond ±1\.8e308 also reads as infinite\): "
        r"enter a finite number, or \. \(or an empty field\)",
    ),
    (
        "inf",
        variant(5, "2,0,1,1,inf,1,.,.,80"),  # line 5: AMT inf
        {},
        "not-finite",
        5,
        r"line 5: AMT value 'inf' is NaN or infinite",
    ),
    (
        "missing-time",
        variant(4, "1,,0,0,0,2,3.1,TAb,70"),  # line 4: TIME empty
        {},
        "missing-value",
        4,
        r"line 4: TIME is empty: every record needs its time; fill it in",
    ),
    (
        "missing-id",
        variant(6, ".,1,0,0,0,2,6.0,TAb,80"),  # line 6: ID is '.'
        {},
        "missing-value",
        6,
        r"line 6: ID is empty: every record needs its subject identifier",
    ),
    (
        "missing-evid",
        variant(3, "1,1,,0,0,2,5.2,TAb,70"),  # line 3: EVID empty
        {},
        "missing-value",
        3,
        r"line 3: EVID is empty: give it on every record \(0 observation, 1 dose",
    ),
    # -- time and subjects
    (
        "negative-time",
        variant(2, "1,-1,1,1,100,1,.,.,70"),  # line 2: dose at -1 h
        {},
        "negative-time",
        2,
        r"line 2: TIME -1 is negative: pkmodel starts every subject at TIME 0 h; shift the times",
    ),
    (
        "time-backwards",
        variant(4, "1,0.5,0,0,0,2,3.1,TAb,70"),  # line 4 (0.5 h) comes after line 3 (1 h)
        {},
        "time-backwards",
        4,
        r"line 4: TIME 0\.5 h is earlier than TIME 1 h on the line before \(3\) of ID 1: .*sort them by TIME",
    ),
    (
        "id-split",
        # ID 1 on lines 2-3, ID 2 on line 4, ID 1 again on line 5
        lines(HEADER, GOOD[0], GOOD[1], GOOD[3], "1,2,0,0,0,2,3.1,TAb,70"),
        {},
        "id-split",
        5,
        r"line 5: ID 1 appears again after other subjects \(its records start on line 2\): keep all records",
    ),
    (
        "duplicate-record",
        variant(4, "1,1,0,0,0,2,3.1,TAb,70"),  # line 4 repeats ID/TIME/EVID/CMT/DVID of line 3
        {},
        "duplicate-record",
        4,
        r"line 4: repeats line 3 \(same ID, TIME, EVID, CMT, DVID\): remove the repeated record",
    ),
    # -- events
    (
        "unknown-evid",
        variant(4, "1,2,5,1,0,2,.,.,70"),  # line 4: EVID 5
        {},
        "unknown-evid",
        4,
        r"line 4: EVID 5 is not a NONMEM event type: use 0 \(observation\), 1 \(dose\), 2 \(other\)",
    ),
    (
        "bad-mdv",
        variant(3, "1,1,0,2,0,2,5.2,TAb,70"),  # line 3: MDV 2
        {},
        "bad-mdv",
        3,
        r"line 3: MDV 2 must be 0 \(DV used\) or 1",
    ),
    (
        "evid-mdv-conflict",
        variant(5, "2,0,1,0,100,1,.,.,80"),  # line 5: a dose with MDV 0
        {},
        "evid-mdv-conflict",
        5,
        r"line 5: EVID 1 \(dose\) with MDV 0: only an observation \(EVID 0\) can have a used DV; set MDV",
    ),
    (
        "evid-mdv-conflict-derived",
        # no EVID column: AMT 100 on line 2 makes a dose, but MDV says observation
        lines("ID,TIME,MDV,AMT,DV", "1,0,0,100,.", "1,1,0,0,5.2"),
        {},
        "evid-mdv-conflict",
        2,
        r"line 2: AMT 100 makes this a dose record \(there is no EVID column\) but MDV is 0",
    ),
    # -- doses
    (
        "dose-without-amount",
        variant(5, "2,0,1,1,0,1,.,.,80"),  # line 5: EVID 1 with AMT 0
        {},
        "dose-without-amount",
        5,
        r"line 5: EVID 1 \(dose\) has AMT 0: a dose needs AMT > 0 \(mg\); enter the amount",
    ),
    (
        "dose-without-amount-empty",
        variant(2, "1,0,4,1,.,1,.,.,70"),  # line 2: EVID 4 with AMT empty
        {},
        "dose-without-amount",
        2,
        r"line 2: EVID 4 \(reset and dose\) has no AMT: a dose needs AMT > 0",
    ),
    (
        "negative-amount",
        variant(5, "2,0,1,1,-100,1,.,.,80"),  # line 5: AMT -100
        {},
        "negative-amount",
        5,
        r"line 5: AMT -100 is negative: a dose must be > 0 mg; enter the amount as a positive number",
    ),
    (
        "amount-on-observation",
        variant(3, "1,1,0,0,50,2,5.2,TAb,70"),  # line 3: observation with AMT 50
        {},
        "amount-on-non-dose-record",
        3,
        r"line 3: AMT 50 on an EVID 0 \(observation\) record: only EVID 1 and 4 records give doses",
    ),
]

# cases with the dose columns RATE, DUR, II, ADDL, SS
DOSE_HEADER = "ID,TIME,EVID,AMT,RATE,DUR,II,ADDL,SS,DV"


def dose_file(dose_row: str) -> str:
    """Line 2 is the dose under test, line 3 an observation."""
    return lines(DOSE_HEADER, dose_row, "1,100,0,.,.,.,.,.,.,1.5")


CASES += [
    (
        "rate-and-duration",
        dose_file("1,0,1,100,50,2,.,.,.,."),
        {},
        "rate-and-duration",
        2,
        r"line 2: both RATE 50 and DUR 2 are given: give one of them \(RATE in mg/h or DUR in h\)",
    ),
    (
        "model-defined-duration",
        dose_file("1,0,1,100,-2,.,.,.,.,."),
        {},
        "model-defined-rate",
        2,
        r"line 2: RATE -2 asks for a duration defined in the model \(NONMEM R1/D1\), which pkmodel does "
        r"not support: give the infusion duration in a DUR column",
    ),
    (
        "negative-rate",
        dose_file("1,0,1,100,-5,.,.,.,.,."),
        {},
        "negative-rate",
        2,
        r"line 2: RATE -5 is negative",
    ),
    (
        "negative-duration",
        dose_file("1,0,1,100,.,-1,.,.,.,."),
        {},
        "negative-duration",
        2,
        r"line 2: DUR -1 is negative",
    ),
    (
        "addl-without-ii",
        dose_file("1,0,1,100,.,.,.,3,.,."),
        {},
        "addl-without-ii",
        2,
        r"line 2: ADDL 3 without an interdose interval \(II empty\): set II to the time between doses",
    ),
    (
        "ss-without-ii",
        dose_file("1,0,1,100,.,.,0,.,1,."),
        {},
        "ss-without-ii",
        2,
        r"line 2: SS 1 without an interdose interval \(II 0\): steady state needs II > 0 \(h\)",
    ),
    (
        "bad-ss",
        dose_file("1,0,1,100,.,.,24,.,3,."),
        {},
        "bad-ss",
        2,
        r"line 2: SS 3 must be 0 \(none\), 1 \(reset to steady state\) or 2",
    ),
    (
        "bad-addl",
        dose_file("1,0,1,100,.,.,24,1.5,.,."),
        {},
        "bad-addl",
        2,
        r"line 2: ADDL 1\.5 must be a whole number >= 0",
    ),
    (
        "negative-ii",
        dose_file("1,0,1,100,.,.,-24,.,.,."),
        {},
        "negative-ii",
        2,
        r"line 2: II -24 is negative",
    ),
    (
        "ii-without-addl-or-ss",
        dose_file("1,0,1,100,.,.,24,0,0,."),
        {},
        "ii-without-addl-or-ss",
        2,
        r"line 2: II 24 but ADDL and SS are 0, so the interval is not used",
    ),
    (
        "infusion-longer-than-ii",
        # RATE 2 mg/h for AMT 100 mg lasts 100/2 = 50 h, longer than II = 24 h
        dose_file("1,0,1,100,2,.,24,2,.,."),
        {},
        "infusion-longer-than-ii",
        2,
        r"line 2: the infusion lasts 50 h but repeats every II 24 h",
    ),
    (
        "dose-fields-on-observation",
        lines(DOSE_HEADER, "1,0,1,100,.,.,.,.,.,.", "1,100,0,.,.,1,.,2,.,1.5"),  # line 3: DUR and ADDL
        {},
        "dose-fields-on-non-dose-record",
        3,
        r"line 3: DUR 1, ADDL 2 on an EVID 0 \(observation\) record: these fields describe doses",
    ),
    # -- compartments and outputs
    (
        "unknown-cmt-number",
        variant(5, "2,0,1,1,100,3,.,.,80"),  # line 5: CMT 3 but the model has 2 compartments
        OUT,
        "unknown-cmt",
        5,
        r"line 5: CMT 3 is not a compartment of the model: use a number 1-2 or a name \(1 gut, 2 central\)",
    ),
    (
        "unknown-cmt-name",
        variant(5, "2,0,1,1,100,Central,.,.,80"),  # line 5: wrong case
        OUT,
        "unknown-cmt",
        5,
        r"line 5: CMT 'Central' is not a compartment of the model \(names are case-sensitive: did you "
        r"mean 'central'\?\)",
    ),
    (
        "unknown-dvid",
        variant(4, "1,2,0,0,0,2,3.1,SN38,70"),  # line 4: SN38 is not an output
        OUT,
        "unknown-dvid",
        4,
        r"line 4: DVID 'SN38' is not an output of the model: the outputs are 1 TAb, 2 ADC; correct the DVID",
    ),
    (
        "unknown-dvid-number",
        variant(4, "1,2,0,0,0,2,3.1,3,70"),  # line 4: DVID 3 but there are 2 outputs
        OUT,
        "unknown-dvid",
        4,
        r"line 4: DVID 3 is not an output of the model",
    ),
    (
        "observation-without-dvid",
        variant(4, "1,2,0,0,0,2,3.1,.,70"),  # line 4: DVID empty on an observation
        OUT,
        "observation-without-dvid",
        4,
        r"line 4: observation \(EVID 0\) has no DVID: name the output it measures \(TAb, ADC\)",
    ),
    (
        "missing-dvid-column",
        lines("ID,TIME,AMT,DV", "1,0,100,.", "1,1,0,5.2"),
        {"outputs": ["TAb", "ADC"]},
        "missing-dvid-column",
        None,
        r"there is no DVID column but the model has 2 outputs \(TAb, ADC\): add a DVID column",
    ),
    (
        "observation-without-dv",
        variant(4, "1,2,0,0,0,2,.,TAb,70"),  # line 4: observation, MDV 0, DV empty
        {},
        "observation-without-dv",
        4,
        r"line 4: observation \(EVID 0, MDV 0\) has no DV: enter the measured value, set MDV to 1",
    ),
    # -- covariates
    (
        "missing-covariate-column",
        lines(HEADER, *GOOD),
        {"covariates": ["WT", "alb"]},
        "missing-covariate-column",
        None,
        r"required covariate column ALB is absent \(covariate columns found: WT\): add a ALB column",
    ),
    (
        "missing-covariate",
        variant(4, "1,2,0,0,0,2,3.1,TAb,."),  # line 4: WT missing for ID 1 (1 of its 3 records)
        {"covariates": ["WT"]},
        "missing-covariate",
        4,
        r"line 4: covariate WT is missing for ID 1 on 1 of its 3 records \(lines 4\): the model needs WT on "
        r"every record",
    ),
]

# cases with LLOQ and BLQ
BLQ_HEADER = "ID,TIME,AMT,DV,LLOQ,BLQ"
CASES += [
    (
        "negative-lloq",
        lines(BLQ_HEADER, "1,0,100,.,.,0", "1,1,0,5.2,-0.1,0"),  # line 3: LLOQ -0.1
        {},
        "negative-lloq",
        3,
        r"line 3: LLOQ -0\.1 is negative: the limit of quantification must be >= 0",
    ),
    (
        "blq-without-lloq",
        lines(BLQ_HEADER, "1,0,100,.,.,0", "1,1,0,.,.,1"),  # line 3: BLQ=1 but LLOQ empty
        {},
        "blq-without-lloq",
        3,
        r"line 3: BLQ=1 but LLOQ is empty: a BLQ observation needs its limit of quantification",
    ),
    (
        "blq-without-lloq-column",
        lines("ID,TIME,AMT,DV,BLQ", "1,0,100,.,0", "1,1,0,.,1"),  # line 3: BLQ=1, no LLOQ column
        {},
        "blq-without-lloq",
        3,
        r"line 3: BLQ=1 but there is no LLOQ column",
    ),
    (
        "bad-blq-flag",
        lines(BLQ_HEADER, "1,0,100,.,.,0", "1,1,0,5.2,0.1,2"),  # line 3: BLQ 2
        {},
        "bad-blq-flag",
        3,
        r"line 3: BLQ 2 must be 1 \(below the limit of quantification\) or 0",
    ),
    (
        "blq-flag-conflict",
        lines(BLQ_HEADER, "1,0,100,.,.,0", "1,1,0,0.05,0.1,0"),  # line 3: DV 0.05 < LLOQ 0.1, BLQ 0
        {},
        "blq-flag-conflict",
        3,
        r"line 3: DV 0\.05 is below LLOQ 0\.1 but BLQ is 0: set BLQ to 1, or correct DV or LLOQ",
    ),
    (
        "blq-on-dose",
        lines(BLQ_HEADER, "1,0,100,.,0.1,1", "1,1,0,5.2,0.1,0"),  # line 2: a dose flagged BLQ
        {},
        "blq-on-non-observation",
        2,
        r"line 2: BLQ=1 on an EVID 1 \(dose\) record: only observations can be below the limit",
    ),
]


# hostile files (issue 8): encodings, huge values, mixed types, quotes
CASES += [
    (
        "bom-only",
        "\ufeff",  # a UTF-8 byte-order mark and nothing else: empty once the mark is removed
        {},
        "empty-file",
        None,
        r"the file is empty: a dataset needs a header line \(ID,TIME,\.\.\.\) and data rows",
    ),
    (
        "latin1-encoded",
        # the whole file saved as Latin-1: 'ü' is the byte 0xFC.  Line 3 is "1,1,0,0,0,2,5.2,TAb,70,Zürich":
        # the prefix up to the last comma is 23 characters, so 'Z' is column 24 and 'ü' column 25
        lines(HEADER + ",SITE", GOOD[0] + ",Basel", GOOD[1] + ",Zürich").encode("latin-1"),
        {},
        "not-utf8",
        3,
        r"line 3: byte 0xFC at column 25 is not UTF-8 \(the file is probably Latin-1 or Windows-1252",
    ),
    (
        "mixed-types-amount-with-unit",
        variant(5, "2,0,1,1,100 mg,1,.,.,80"),  # line 5: AMT written with its unit among plain numbers
        {},
        "non-numeric",
        5,
        r"line 5: AMT value '100 mg' is not a number: enter a number, or \. for a missing value",
    ),
    (
        "mixed-types-clock-time",
        variant(4, "1,2:30,0,0,0,2,3.1,TAb,70"),  # line 4: TIME as a clock time among hours
        {},
        "non-numeric",
        4,
        r"line 4: TIME value '2:30' is not a number",
    ),
    (
        "beyond-double-range",
        # 1e309 is above the largest float64 (1.797e308): pandas reads it as inf
        variant(3, "1,1,0,0,0,2,1e309,TAb,70"),
        {},
        "not-finite",
        3,
        r"line 3: DV value 'inf' is NaN or infinite \(a number beyond ±1\.8e308 also reads as infinite\)",
    ),
    (
        "infinite-id",
        variant(6, "inf,1,0,0,0,2,6.0,TAb,80"),  # line 6: ID inf
        {},
        "not-finite",
        6,
        r"line 6: ID value 'inf' is NaN or infinite",
    ),
    (
        "id-too-large",
        # line 6: 20 digits, beyond 2^53 = 9007199254740992; as a float it equals 10^20, as would
        # 100000000000000000002, so two subjects could merge
        variant(6, "100000000000000000001,1,0,0,0,2,6.0,TAb,80"),
        {},
        "id-too-large",
        6,
        r"line 6: ID 100000000000000000001 is too large to be kept exactly \(numeric IDs must be below "
        r"2\^53 = 9007199254740992 in magnitude, or different IDs may merge\): renumber the subjects",
    ),
    (
        "cmt-too-large",
        variant(5, "2,0,1,1,100,1e308,.,.,80"),  # line 5: CMT 1e308 (no model compartments given)
        {},
        "unknown-cmt",
        5,
        r"line 5: CMT 1e\+308 is not a compartment number: use a whole number >= 1 \(below 2\^53\)",
    ),
    (
        "addl-too-large",
        dose_file("1,0,1,100,.,.,24,1e308,.,."),  # line 2: ADDL 1e308
        {},
        "bad-addl",
        2,
        rf"line 2: ADDL 1e\+308 is more than {MAX_ADDL} additional doses on one record: correct it",
    ),
    (
        "dose-times-overflow",
        # line 2: doses at 0, 1e308 and 2e308 h; 2e308 > 1.797e308 overflows to inf
        lines(DOSE_HEADER, "1,0,1,100,.,.,1e308,2,.,.", "1,100,0,.,.,.,.,.,.,1.5"),
        {},
        "dose-time-overflow",
        2,
        r"line 2: the doses of this record end at TIME \+ ADDL x II \+ infusion duration = "
        r"0 \+ 2 x 1e\+308 \+ 0 h, beyond the largest representable time",
    ),
    (
        "infusion-duration-overflow",
        # line 2: 1e308 mg at 1e-308 mg/h lasts 1e616 h, beyond the float64 range
        dose_file("1,0,1,1e308,1e-308,.,.,.,.,."),
        {},
        "dose-time-overflow",
        2,
        r"line 2: AMT 1e\+308 / RATE 1e-308 makes an infusion too long to represent \(over 1\.8e308 h\): "
        r"correct RATE \(mg/h\) or AMT",
    ),
    (
        "stray-quote",
        variant(3, '1,1,0,0,0,2,5.2,T"Ab,70'),  # line 3: a quote inside the unquoted DVID (field 8)
        {},
        "stray-quote",
        3,
        r"line 3: field 8 has a quote character \(\"\) that does not enclose the whole field: remove it, "
        r"or put the whole field in quotes and double the quotes inside",
    ),
    (
        "text-after-closing-quote",
        variant(3, '1,1,0,0,0,2,5.2,"TAb"x,70'),  # line 3: 'x' after the closing quote of field 8
        {},
        "stray-quote",
        3,
        r"line 3: field 8 has a quote character",
    ),
    (
        "quoted-header-unclosed",
        lines('"ID,TIME,EVID,MDV,AMT,CMT,DV,DVID,WT', *GOOD),  # line 1: the header opens a quote
        {},
        "unbalanced-quotes",
        1,
        r"line 1: field 1 opens a quote \(\"\) that does not close on this line",
    ),
    (
        "duplicate-column-before-bad-rows",
        # TIME twice, and line 3 full of bad values: only the header is reported, no row is read
        lines("ID,TIME,time,AMT,DV", "1,0,0,100,.", "x,inf,abc,-5,NaN"),
        {},
        "duplicate-column",
        None,
        r"line 1 \(header\): column 3 \('time'\) repeats column 2 \(TIME\)",
    ),
]


@pytest.mark.parametrize(
    ("text", "kwargs", "rule", "line", "pattern"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_malformed_dataset_reports_rule_line_and_fix(tmp_path, text, kwargs, rule, line, pattern):
    path = write(tmp_path, text)
    report = validate_dataset(path, **kwargs)
    assert [(p.rule, p.row) for p in report.problems] == [(rule, line)], report.messages()
    assert re.search(pattern, report.problems[0].message), report.problems[0].message
    assert report.dataset is None
    with pytest.raises(DatasetError, match=pattern) as info:
        read_dataset(path, **kwargs)
    assert info.value.file == str(path)
    assert str(info.value).startswith(f"{path}: ")


def test_corpus_covers_at_least_forty_kinds_and_forty_rules():
    # issue 8 asks for at least 40 kinds of malformed dataset; each kind is one case id
    assert len({case[0] for case in CASES}) == len(CASES) >= 40
    assert len({case[3] for case in CASES}) >= 40


def test_empty_file(tmp_path):
    path = write(tmp_path, b"")
    with pytest.raises(DatasetError, match=r"the file is empty: a dataset needs a header line"):
        read_dataset(path)


def test_file_of_blank_and_comment_lines_has_no_header(tmp_path):
    path = write(tmp_path, "\n# only a comment\n   \n")
    with pytest.raises(DatasetError, match=r"no header line, only blank or comment lines"):
        read_dataset(path)


def test_undecodable_bytes_name_line_and_column(tmp_path):
    # line 3 holds the Latin-1 byte 0xE9 (é) as the 4th character of "Montréal"; 'SITE' is column 10:
    # "1,1,0,0,0,2,5.2,TAb,70," is 23 characters, so 'M' is column 24 and 0xE9 column 24 + 5 = 29
    text = lines(HEADER + ",SITE", GOOD[0] + ",Paris", GOOD[1] + ",Montreal").encode("utf-8")
    text = text.replace(b"Montreal", b"Montr\xe9al")
    path = write(tmp_path, text)
    report = validate_dataset(path)
    assert [(p.rule, p.row) for p in report.problems] == [("not-utf8", 3)]
    with pytest.raises(
        DatasetError, match=r"line 3: byte 0xE9 at column 29 is not UTF-8 .* re-save the file as UTF-8"
    ):
        read_dataset(path)


def test_space_delimited_file_is_refused_with_the_fix(tmp_path):
    path = write(tmp_path, lines("ID TIME AMT DV", "1 0 100 .", "1 1 0 5.2"))
    report = validate_dataset(path)
    assert [(p.rule, p.row) for p in report.problems] == [("unknown-delimiter", 1)]
    with pytest.raises(
        DatasetError, match=r"line 1: the header \(line 1\) 'ID TIME AMT DV' has no comma, semicolon"
    ):
        read_dataset(path)


def test_directory_is_reported_as_unreadable(tmp_path):
    report = validate_dataset(tmp_path)
    assert [p.rule for p in report.problems] == ["file-unreadable"]
    assert report.problems[0].message.startswith(f"cannot read {tmp_path}: ")


def test_dataframe_without_rows():
    report = validate_dataset(pd.DataFrame({"ID": [], "TIME": [], "DV": []}))
    assert [p.rule for p in report.problems] == ["no-data-rows"]
    assert report.problems[0].message == "the table has columns but no rows: add the records"


def test_missing_mdv_value(tmp_path):
    report = validate_dataset(write(tmp_path, variant(6, "2,1,0,.,0,2,6.0,TAb,80")))  # line 6: MDV empty
    assert [(p.rule, p.row) for p in report.problems] == [("missing-value", 6)]
    assert (
        report.problems[0].message
        == "line 6: MDV is empty: give it on every record (0 when DV is used, 1 when not)"
    )


def test_missing_file_is_a_problem_not_a_crash(tmp_path):
    report = validate_dataset(tmp_path / "nope.csv")
    assert [p.rule for p in report.problems] == ["file-not-found"]
    with pytest.raises(DatasetError, match=r"nope\.csv does not exist; check the path"):
        read_dataset(tmp_path / "nope.csv")


# --------------------------------------------------------------------------------------------------
# collecting every problem


def test_every_problem_is_reported_at_once(tmp_path):
    text = lines(
        HEADER,
        "1,0,1,1,-100,1,.,.,70",  # line 2: negative AMT
        "1,1,0,0,0,2,abc,TAb,70",  # line 3: non-numeric DV
        "1,0.5,0,0,0,2,3.1,XYZ,70",  # line 4: time backwards and unknown DVID
        "2,0,1,0,100,1,.,.,80",  # line 5: EVID 1 with MDV 0
    )
    path = write(tmp_path, text)
    report = validate_dataset(path, outputs=["TAb"])
    found = sorted((p.row, p.rule) for p in report.problems)
    assert found == [
        (2, "negative-amount"),
        (3, "non-numeric"),
        (4, "time-backwards"),
        (4, "unknown-dvid"),
        (5, "evid-mdv-conflict"),
    ]
    with pytest.raises(DatasetError, match=r"5 problems:\n  - ") as info:
        read_dataset(path, outputs=["TAb"])
    assert len(info.value.problems) == 5


def test_many_rows_breaking_one_rule_are_listed_then_summarised(tmp_path):
    n = MAX_LISTED + 5
    # observations at 1..n h without DV on lines 3..n+2
    rows = ["1,0,1,1,100,1,.,.,70"] + [f"1,{k},0,0,0,2,.,TAb,70" for k in range(1, n + 1)]
    report = validate_dataset(write(tmp_path, lines(HEADER, *rows)))
    assert [p.row for p in report.problems[:MAX_LISTED]] == list(range(3, 3 + MAX_LISTED))
    last = report.problems[-1]
    assert len(report.problems) == MAX_LISTED + 1
    assert last.row is None and last.rule == "observation-without-dv"
    # the 5 unlisted lines are 3 + 20 .. 3 + 24 = 23..27
    assert last.message == (
        "5 more lines break the same rule (observation-without-dv) as the 20 above: lines 23, 24, 25, 26, 27"
    )


def test_many_quote_problems_are_listed_then_summarised(tmp_path):
    n = MAX_LISTED + 3
    # lines 3..n+2: a stray quote in the DVID field (field 8); line 2 the dose
    rows = ["1,0,1,1,100,1,.,.,70"] + [f'1,{k},0,0,0,2,5.2,T"Ab,70' for k in range(1, n + 1)]
    report = validate_dataset(write(tmp_path, lines(HEADER, *rows)))
    assert [(p.rule, p.row) for p in report.problems[:MAX_LISTED]] == [
        ("stray-quote", r) for r in range(3, 23)
    ]
    # the 3 unlisted lines are 3 + 20 .. 3 + 22 = 23, 24, 25
    assert report.problems[-1].message == (
        "3 more lines break the same rule (stray-quote) as the 20 above: lines 23, 24, 25"
    )
    assert len(report.problems) == MAX_LISTED + 1


def test_validate_dataset_never_raises_for_data_and_summarises(tmp_path):
    report = validate_dataset(write(tmp_path, variant(4, "1,0.5,0,0,0,2,3.1,TAb,70")))
    assert isinstance(report, ValidationReport)
    assert not report.ok
    assert all(isinstance(p, Problem) for p in report.problems)
    assert report.report is not None and report.report.n_records == 5
    text = report.summary()
    assert "1 problem\n  - line 4: TIME 0.5 h is earlier" in text
    assert "5 records, 2 subjects" in text


# --------------------------------------------------------------------------------------------------
# regressions: inputs that crashed the reader or were silently misread, found by the property tests
# (tests/test_data_properties.py) and by probing the reader with their hostile values.  Each now
# gives exactly these problems; the comment says what happened before.

QUOTE_FIX = 'remove it, or put the whole field in quotes and double the quotes inside, e.g. "5\'10"""'
ADDL_FIX = (
    "additional doses on one record: correct it (a typo?), or split the doses over several dose records"
)
REGRESSIONS = [
    (
        # hypothesis; was pandas IntCastingNaNError (the inf ID cast to int)
        "duplicate-column-and-inf-id",
        "TIME,TIME,ID,AMT\n,,inf,",
        [
            "line 1 (header): column 2 ('TIME') repeats column 1 (TIME); column names are case-insensitive: "
            "rename or remove one of them"
        ],
    ),
    (
        # same root cause without the duplicate column; was IntCastingNaNError.  Line 2 has no AMT and
        # there is no EVID column, so it is an observation, and there is no DV
        "inf-id",
        "TIME,ID,AMT\n1,inf,",
        [
            "line 2: ID value 'inf' is NaN or infinite (a number beyond ±1.8e308 also reads as infinite): "
            "enter a finite number, or . (or an empty field) for a missing value",
            "line 2: observation (EVID 0, MDV 0) has no DV: enter the measured value, set MDV to 1 to keep "
            "the record unused, or mark it BLQ=1 with its LLOQ",
        ],
    ),
    (
        # hypothesis, against the first version of the pre-dose count (IndexError: no valid ID at all)
        "only-empty-fields",
        "ID,TIME,AMT,DV,EVID,MDV\n,,,,,",
        [
            "line 2: ID is empty: every record needs its subject identifier; fill it in",
            "line 2: TIME is empty: every record needs its time; fill it in",
            "line 2: EVID is empty: give it on every record (0 observation, 1 dose, 2 other, 3 reset, 4 reset "
            "and dose)",
            "line 2: MDV is empty: give it on every record (0 when DV is used, 1 when not)",
        ],
    ),
    (
        # was RuntimeWarning 'invalid value encountered in cast' (ADDL 1e308 cast to int64)
        "huge-addl",
        "ID,TIME,AMT,II,ADDL,DV\n1,0,100,24,1e308,.\n1,1,0,.,.,5\n",
        [f"line 2: ADDL 1e+308 is more than {MAX_ADDL} {ADDL_FIX}"],
    ),
    (
        # was accepted: 10^15 + 1 administrations in the report, and a regimen nobody could expand
        "absurd-addl",
        "ID,TIME,AMT,II,ADDL,DV\n1,0,100,24,1e15,.\n1,1,0,.,.,5\n",
        [f"line 2: ADDL 1e+15 is more than {MAX_ADDL} {ADDL_FIX}"],
    ),
    (
        # was RuntimeWarning 'invalid value encountered in cast' (SS 1e308 cast to int64)
        "huge-ss",
        "ID,TIME,AMT,II,SS,DV\n1,0,100,24,1e308,.\n1,1,0,.,.,5\n",
        ["line 2: SS 1e+308 must be 0 (none), 1 (reset to steady state) or 2 (add steady state)"],
    ),
    (
        # was RuntimeWarning 'overflow encountered in divide' (AMT / RATE = 1e616 h)
        "infusion-overflow",
        "ID,TIME,AMT,RATE,DV\n1,0,1e308,1e-308,.\n1,1,0,.,5\n",
        [
            "line 2: AMT 1e+308 / RATE 1e-308 makes an infusion too long to represent (over 1.8e308 h): "
            "correct RATE (mg/h) or AMT"
        ],
    ),
    (
        # was accepted: the second dose at 1e308 + 1e308 = inf h
        "dose-time-overflow",
        "ID,TIME,AMT,II,ADDL,DV\n1,1e308,100,1e308,1,.\n1,1e308,0,.,.,5\n",
        [
            "line 2: the doses of this record end at TIME + ADDL x II + infusion duration = 1e+308 + 1 x "
            "1e+308 + 0 h, beyond the largest representable time (1.8e308 h): correct TIME, II, ADDL or the "
            "infusion"
        ],
    ),
    (
        # was ParserWarning and a silently truncated row: the field count assumed the quotes enclose
        # 'b,c' (4 fields) while pandas read them as literal characters (5 fields)
        "quotes-inside-fields",
        'ID,TIME,DV,SITE\n1,0,5,a"b,c"d\n1,1,3,y\n',
        [f'line 2: field 4 has a quote character (") that does not enclose the whole field: {QUOTE_FIX}'],
    ),
    (
        # was accepted as ONE subject with ID -9223372036854775808: both 20-digit IDs read as the float
        # 1e20, which was then cast to int64
        "ids-beyond-2-53",
        "ID,TIME,AMT,DV\n99999999999999999999,0,100,.\n99999999999999999998,1,0,5\n",
        [
            f"line {line}: ID {value} is too large to be kept exactly (numeric IDs must be below 2^53 = "
            "9007199254740992 in magnitude, or different IDs may merge): renumber the subjects, or use text "
            "IDs such as S001"
            for line, value in ((2, "99999999999999999999"), (3, "99999999999999999998"))
        ],
    ),
    (
        # was accepted with compartment '-9223372036854775808' (1e308 cast to int64)
        "huge-cmt",
        "ID,TIME,AMT,CMT,DV\n1,0,100,1e308,.\n1,1,0,.,5\n",
        [
            "line 2: CMT 1e+308 is not a compartment number: use a whole number >= 1 (below 2^53) or a "
            "compartment name"
        ],
    ),
]


@pytest.mark.parametrize(("text", "messages"), [r[1:] for r in REGRESSIONS], ids=[r[0] for r in REGRESSIONS])
def test_regressions_found_by_property_tests(tmp_path, text, messages):
    path = write(tmp_path, text)
    assert validate_dataset(path).messages() == messages
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    assert info.value.problems == messages


def test_regressions_dataframe_cells_that_are_not_single_real_numbers():
    # a complex DV was cast to float with its imaginary part dropped (numpy ComplexWarning); a list in
    # a cell crashed the reader (TypeError: unhashable type: 'list')
    base = {"ID": [1, 1], "TIME": [0.0, 1.0], "AMT": [10.0, 0.0]}
    complex_dv = pd.DataFrame({**base, "DV": np.array([np.nan, 5 + 1j])})
    assert validate_dataset(complex_dv).messages() == [
        "row 2: DV value '(5+1j)' is not a number: enter a number, or . for a missing value"
    ]
    list_wt = pd.DataFrame({**base, "DV": [np.nan, 5.0], "WT": pd.Series([[70], 70.0], dtype=object)})
    with pytest.raises(DatasetError) as info:
        read_dataset(list_wt)
    assert info.value.problems == [
        "row 1: WT holds a list [70], not a single value: give one number or text per cell"
    ]


# --------------------------------------------------------------------------------------------------
# hostile but valid: documented handling


def test_predose_observations_are_allowed_used_and_counted(tmp_path):
    text = lines(
        "ID,TIME,EVID,AMT,DV",
        "1,0,0,.,0.2",  # line 2: sampled at 0 h before the dose record of 0 h: pre-dose
        "1,0,1,100,.",  # line 3: first dose of ID 1
        "1,1,0,.,5.0",  # line 4: after the dose
        "2,0,0,.,0.1",  # line 5: ID 2 has no dose: both its samples come before any dose
        "2,2,0,.,0.3",  # line 6
        "3,1,0,.,0.4",  # line 7: ID 3 sampled at 1 h, dosed at 2 h: pre-dose
        "3,2,1,100,.",  # line 8
    )
    data = read_dataset(write(tmp_path, text))
    # hand count: used observations on lines 2, 4, 5, 6, 7; pre-dose ones on lines 2, 5, 6, 7
    assert (data.report.n_observations, data.report.n_predose) == (5, 4)
    assert data.observations()["ROW"].tolist() == [2, 4, 5, 6, 7]  # kept and used
    assert data.report.n_excluded == 0
    assert "5 observations (DV: 5), 0 BLQ, 4 pre-dose observations" in data.report.summary()
    # without pre-dose samples the summary does not mention them
    assert "pre-dose" not in read_dataset(write(tmp_path, lines(HEADER, *GOOD), "b.csv")).report.summary()


def test_huge_finite_values_are_read_exactly(tmp_path):
    big = 1.7976931348623157e308  # the largest float64 (sys.float_info.max)
    text = lines(
        "ID,TIME,AMT,II,ADDL,DV,WT",
        f"9007199254740991,0,{big!r},24,{MAX_ADDL},.,-1e308",  # ID 2^53 - 1, the largest exact one
        "9007199254740991,1,0,.,.,1e308,-1e308",
    )
    data = read_dataset(write(tmp_path, text))
    assert data.ids == (2**53 - 1,)
    (dose,) = data.subject(2**53 - 1).regimen.events
    assert (dose.amount, dose.addl) == (big, MAX_ADDL)
    assert data.report.n_administrations == MAX_ADDL + 1
    assert data.observations()["DV"].tolist() == [float("1e308")]
    assert data.baseline_covariates()["WT"].tolist() == [-1e308]


def test_million_row_file(tmp_path):
    # 10 000 subjects x the same 100-line block (ID and WT filled in): written as text, which is much
    # faster than DataFrame.to_csv, so the test times the reader, not the writer
    rng = np.random.default_rng(20240101)
    block = []
    for k in range(100):  # doses at k = 0, 20, 40, 60, 80; observations at the other 95
        dose = k % 20 == 0
        dv = "." if dose else f"{rng.lognormal():.4g}"
        block.append(f"{{0}},{2 * k},{int(dose)},{100 if dose else 0},{dv},{'TAb' if k % 2 else 'ADC'},{{1}}")
    template = "\n".join(block) + "\n"
    path = tmp_path / "million.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("ID,TIME,EVID,AMT,DV,DVID,WT\n")
        handle.writelines(template.format(i, f"{w:.1f}") for i, w in enumerate(rng.normal(70, 10, 10_000), 1))
    data = read_dataset(path, outputs=["TAb", "ADC"], covariates=["WT"])
    assert data.report.n_records == 1_000_000
    assert (data.report.n_subjects, data.report.n_doses, data.report.n_observations) == (
        10_000,
        50_000,
        950_000,
    )
    # the last record (row 999 999, 0-based) is on line 1 000 001 (line 1 is the header)
    assert data.records["ROW"].iloc[-1] == 1_000_001
    # per subject: odd k (50 of them) are TAb observations; even k are ADC, less the 5 doses: 45
    assert data.report.observations_by_output == {"ADC": 10_000 * 45, "TAb": 10_000 * 50}


# --------------------------------------------------------------------------------------------------
# choices where NONMEM leaves room, and nothing dropped silently


def test_evid0_with_mdv1_is_kept_but_excluded_and_counted(tmp_path):
    data = read_dataset(write(tmp_path, variant(4, "1,2,0,1,0,2,.,TAb,70")))  # line 4: MDV 1, DV empty
    assert data.report.n_observations == 2
    assert data.report.excluded == {"observation with MDV=1": 1}
    assert 4 in data.records["ROW"].tolist()
    assert 4 not in data.observations()["ROW"].tolist()
    assert "excluded: 1 observation with MDV=1" in data.report.summary()


def test_evid2_records_are_counted_as_excluded(tmp_path):
    data = read_dataset(write(tmp_path, variant(4, "1,2,2,1,0,.,.,.,72")))
    assert data.report.excluded == {"EVID 2 record (other event)": 1}
    assert (data.report.n_observations, data.report.n_doses) == (2, 2)


def test_comments_blank_lines_bom_crlf_semicolon(tmp_path):
    body = ["# exported 2024-01-01", "#ID;TIME;AMT;DV", "1;0;100;.", "", "# a comment", "1;1;0;5.2"]
    raw = "\ufeff" + "\r\n".join(body) + "\r\n"
    data = read_dataset(write(tmp_path, raw.encode("utf-8")))
    # line 1 comment, line 2 header ('#' prefix), lines 3 and 6 records, line 4 blank, line 5 comment
    assert data.records["ROW"].tolist() == [3, 6]
    assert data.report.excluded == {"comment line": 2, "blank line": 1}
    assert data.records["DV"].iloc[1] == 5.2


def test_tab_delimited_and_utf16(tmp_path):
    text = lines("id\ttime\tamt\tdv", "1\t0\t100\t.", "1\t1\t0\t5.2")
    data = read_dataset(write(tmp_path, text.encode("utf-16")))
    assert data.records["TIME"].tolist() == [0.0, 1.0]
    assert list(data.records.columns[:3]) == ["ROW", "ID", "TIME"]


def test_quoted_fields_with_delimiters_inside(tmp_path):
    text = lines('"ID","TIME","AMT","DV","SITE"', '1,0,100,.,"Lyon, FR"', '1,1,0,5.2,"Lyon, FR"')
    data = read_dataset(write(tmp_path, text))
    assert data.subject(1).covariates == {"SITE": "Lyon, FR"}


def test_evid_derived_from_amt_and_mdv_when_absent(tmp_path):
    # rule: AMT != 0 -> dose (1); else MDV 1 -> other (2); else observation (0); MDV derived from EVID
    text = lines("ID,TIME,AMT,MDV,DV", "1,0,100,1,.", "1,1,0,1,.", "1,2,.,0,4.0")
    data = read_dataset(write(tmp_path, text))
    assert data.records["EVID"].tolist() == [1, 2, 0]
    no_mdv = read_dataset(write(tmp_path, lines("ID,TIME,AMT,DV", "1,0,100,.", "1,2,0,4.0"), "b.csv"))
    assert no_mdv.records["EVID"].tolist() == [1, 0]
    assert no_mdv.records["MDV"].tolist() == [1, 0]


def test_dataframe_source_uses_row_positions():
    table = pd.DataFrame(
        {"id": [1, 1, 1], "Time": [0.0, 2.0, 1.0], "AMT": [10.0, 0, 0], "DV": [None, 1.0, 2.0]}
    )
    report = validate_dataset(table)
    # the third row (position 3, 1-based) goes back in time
    assert [(p.rule, p.row) for p in report.problems] == [("time-backwards", 3)]
    assert report.problems[0].message.startswith(
        "row 3: TIME 1 h is earlier than TIME 2 h on the row before (2)"
    )
    assert report.file is None


def test_dataframe_with_nan_text_and_inf():
    table = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 1.0], "AMT": [10.0, 0.0], "DV": [np.nan, np.inf]})
    report = validate_dataset(table)
    assert [(p.rule, p.row) for p in report.problems] == [("not-finite", 2)]
    assert "DV value 'inf' is NaN or infinite" in report.problems[0].message


# --------------------------------------------------------------------------------------------------
# DVID, BLQ


def test_dvid_numbers_index_outputs_and_single_output_default(tmp_path):
    text = lines("ID,TIME,AMT,DV,DVID", "1,0,100,.,.", "1,1,0,5.2,1", "1,1,0,0.4,2")
    data = read_dataset(write(tmp_path, text), outputs=["TAb", "ADC"])
    assert data.observations()["DVID"].tolist() == ["TAb", "ADC"]
    assert data.report.observations_by_output == {"ADC": 1, "TAb": 1}
    single = read_dataset(write(tmp_path, lines("ID,TIME,AMT,DV", "1,0,100,.", "1,1,0,5.2"), "b.csv"),
                          outputs=["SN38"])  # fmt: skip
    assert single.outputs == ("SN38",)
    generic = read_dataset(write(tmp_path, lines("ID,TIME,AMT,DV", "1,0,100,.", "1,1,0,5.2"), "c.csv"))
    assert generic.outputs == ("DV",)


def test_blq_from_lloq_and_from_flag(tmp_path):
    text = lines(
        "ID,TIME,AMT,DV,LLOQ,BLQ",
        "1,0,100,.,.,0",
        "1,1,0,5.2,0.1,0",  # above the limit
        "1,2,0,0.05,0.1,.",  # DV < LLOQ, flag empty: BLQ
        "1,3,0,.,0.1,1",  # flagged, DV empty: BLQ
    )
    data = read_dataset(write(tmp_path, text))
    assert data.observations()["BLQ"].tolist() == [False, True, True]
    assert data.report.n_blq == 2


# --------------------------------------------------------------------------------------------------
# subjects and regimens


def test_regimen_bolus_infusions_compartment_names_and_addl(tmp_path):
    text = lines(
        "ID,TIME,EVID,AMT,RATE,DUR,CMT,II,ADDL,SS,DV",
        "1,0,1,100,.,.,1,24,2,0,.",  # bolus into gut, then 2 more every 24 h: 0, 24, 48
        "1,1,0,.,.,.,2,.,.,.,3.0",
        "1,72,1,100,50,.,2,.,.,.,.",  # infusion by rate: 100 mg / 50 mg/h = 2 h
        "1,96,1,60,.,0.5,central,.,.,.,.",  # infusion by duration 0.5 h, CMT by name
    )
    data = read_dataset(write(tmp_path, text), compartments=["gut", "central"])
    regimen = data.subject(1).regimen
    assert isinstance(regimen, Regimen)
    first, second, third = regimen.events
    assert first == Bolus(0.0, 100.0, "gut", "mg", ii=24.0, addl=2)
    assert isinstance(second, Infusion) and second.compartment == "central" and second.duration_h == 2.0
    assert third == Infusion(96.0, 60.0, "central", "mg", duration=0.5)
    assert regimen.dose_times() == (0.0, 24.0, 48.0, 72.0, 96.0)
    assert data.report.n_administrations == 5
    assert data.regimens()[1] == regimen


def test_dose_unit_is_passed_to_the_records(tmp_path):
    data = read_dataset(write(tmp_path, lines("ID,TIME,AMT,DV", "1,0,16,.", "1,1,0,5.2")), dose_unit="mg/kg")
    assert data.subject(1).regimen.events[0].unit == "mg/kg"


def test_covariates_baseline_and_time_varying(tmp_path):
    text = lines(
        "ID,TIME,AMT,DV,WT,ALB,SEX",
        "1,0,100,.,70,40,M",
        "1,24,0,5.2,70,38,M",  # ALB changes at 24 h
        "1,48,0,3.1,70,38,M",
        "2,0,100,.,80,42,F",
        "2,24,0,6.0,80,42,F",
    )
    data = read_dataset(write(tmp_path, text), covariates=["WT", "ALB"])
    assert data.covariate_names == ("WT", "ALB", "SEX")
    assert data.time_varying_covariates == ("ALB",)
    s1, s2 = data.subject(1), data.subject(2)
    assert s1.covariates == {"WT": 70.0, "ALB": 40.0, "SEX": "M"}
    table = s1.covariate_table
    assert table["TIME"].tolist() == [0.0, 24.0]
    assert table["ALB"].tolist() == [40.0, 38.0]
    assert s2.covariate_table is None
    base = data.baseline_covariates()
    assert base.index.tolist() == [1, 2]
    assert base.loc[2, "WT"] == 80.0 and base.loc[1, "ALB"] == 40.0


def test_reset_may_restart_time_and_splits_periods(tmp_path):
    text = lines(
        "ID,TIME,EVID,AMT,DV",
        "1,0,1,100,.",
        "1,2,0,.,4.0",
        "1,0,4,50,.",  # line 4: reset and dose; time restarts at 0
        "1,2,0,.,2.0",
    )
    data = read_dataset(write(tmp_path, text))
    subject = data.subject(1)
    assert subject.resets == (0.0,)
    assert data.report.n_resets == 1
    with pytest.raises(DatasetError, match=r"ID 1: TIME restarts at the reset on line 4"):
        _ = subject.regimen
    first, second = subject.periods()
    assert [e.amount for e in first.regimen] == [100.0]
    assert [e.amount for e in second.regimen] == [50.0]
    assert second.observations["DV"].tolist() == [2.0]


def test_backwards_time_without_reset_is_still_an_error(tmp_path):
    text = lines("ID,TIME,EVID,AMT,DV", "1,0,1,100,.", "1,2,0,.,4.0", "1,1,1,50,.")  # line 4: no reset
    report = validate_dataset(write(tmp_path, text))
    assert [(p.rule, p.row) for p in report.problems] == [("time-backwards", 4)]


def test_unknown_subject_id(tmp_path):
    data = read_dataset(write(tmp_path, lines(HEADER, *GOOD)))
    assert data.subject("2").id == 2
    with pytest.raises(DatasetError, match=r"ID 9 is not in the dataset; its 2 IDs are 1, 2"):
        data.subject(9)


def test_text_ids(tmp_path):
    data = read_dataset(write(tmp_path, lines("ID,TIME,AMT,DV", "S01,0,100,.", "S01,1,0,5.2", "S02,0,80,.")))
    assert data.ids == ("S01", "S02")
    assert data.subject("S02").regimen.events[0].amount == 80.0


# --------------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"outputs": "TAb"}, r"outputs must be a list of names"),
        ({"compartments": ["gut", "gut"]}, r"compartments lists gut more than once"),
        ({"covariates": ["time"]}, r"covariates: TIME is a NONMEM column, not a covariate"),
        ({"dose_unit": "mL"}, r"dose_unit 'mL': .*not a dose unit"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, pattern):
    with pytest.raises(DatasetError, match=pattern):
        validate_dataset(write(tmp_path, lines(HEADER, *GOOD)), **kwargs)


def test_source_type():
    with pytest.raises(DatasetError, match=r"source must be a file path or a pandas DataFrame, got int"):
        read_dataset(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# real data: Theoph (R 4.2.2 datasets::Theoph)


def test_theoph_smoke():
    data = read_dataset(THEOPH, compartments=["depot", "central"], covariates=["WT"])
    # published facts of the dataset: 12 subjects, 132 concentrations, one oral dose each
    assert (data.report.n_subjects, data.report.n_observations, data.report.n_doses) == (12, 132, 12)
    assert data.report.n_excluded == 0
    # independent re-read with the csv module
    with THEOPH.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert data.report.n_records == len(rows) == 144
    observed = [float(r["DV"]) for r in rows if r["EVID"] == "0"]
    assert data.observations()["DV"].tolist() == observed
    regimens = data.regimens()
    for r in (r for r in rows if r["EVID"] == "1"):
        (dose,) = regimens[int(r["ID"])].events
        assert isinstance(dose, Bolus) and dose.compartment == "depot" and dose.time == 0.0
        # AMT (mg) = dose (mg/kg) x weight (kg), to the 3 decimals the file keeps
        assert dose.amount == pytest.approx(float(r["DOSE_MGKG"]) * float(r["WT"]), abs=5e-3)
    assert data.baseline_covariates().loc[5, "WT"] == 54.6


# --------------------------------------------------------------------------------------------------
# scale


def _large_table(n_subjects: int, per_subject: int) -> pd.DataFrame:
    k = np.tile(np.arange(per_subject), n_subjects)
    evid = np.where(k % 20 == 0, 1, 0)
    rng = np.random.default_rng(20240101)
    return pd.DataFrame(
        {
            "ID": np.repeat(np.arange(1, n_subjects + 1), per_subject),
            "TIME": k * 2.0,
            "EVID": evid,
            "AMT": np.where(evid == 1, 100.0, 0.0),
            "DV": np.where(evid == 0, rng.lognormal(size=k.size), np.nan),
            "DVID": np.where(k % 2 == 0, "TAb", "ADC"),
            "WT": np.repeat(rng.normal(70.0, 10.0, n_subjects), per_subject),
        }
    )


def test_two_hundred_thousand_rows_in_memory():
    table = _large_table(2000, 100)
    data = read_dataset(table, outputs=["TAb", "ADC"], covariates=["WT"])
    # per subject: 5 doses (k = 0, 20, 40, 60, 80) and 95 observations
    assert data.report.n_records == 200_000
    assert (data.report.n_doses, data.report.n_observations) == (2000 * 5, 2000 * 95)


def test_large_file_line_numbers_survive_comments(tmp_path):
    table = _large_table(500, 100)
    path = tmp_path / "big.csv"
    table.to_csv(path, index=False, na_rep=".")
    text = path.read_text().splitlines()
    # data row j (0-based) is on line j + 2, i.e. text[j + 1]; rows 30005 and 45007 are observations
    # (k = j mod 100 = 5 and 7 are not multiples of 20).  Columns: ID,TIME,EVID,AMT,DV,DVID,WT
    fields = text[30_006].split(",")
    fields[3] = "-5"  # AMT -5
    text[30_006] = ",".join(fields)
    fields = text[45_008].split(",")
    fields[4] = "NaN"  # DV NaN
    text[45_008] = ",".join(fields)
    text.insert(10, "# inserted comment")  # before line 11: the rows after it move down one line
    path.write_text("\n".join(text) + "\n")
    report = validate_dataset(path, outputs=["TAb", "ADC"])
    # row 30005 -> line 30005 + 2 + 1 = 30008; row 45007 -> line 45010
    assert sorted((p.row, p.rule) for p in report.problems) == [
        (30_008, "negative-amount"),
        (45_010, "not-finite"),
    ]
    assert report.report is not None and report.report.excluded == {"comment line": 1}
    assert report.report.n_records == 50_000


def test_report_summary_text():
    report = DatasetReport(10, 2, 6, 2, 4, 1, 0, {"TAb": 6}, {})
    assert report.summary() == (
        "10 records, 2 subjects\n6 observations (TAb: 6), 1 BLQ\n"
        "2 dose records (4 administrations), 0 resets\nexcluded: none"
    )


def test_regimens_from_the_column_arrays_are_the_subjects_regimens():
    # Dataset.regimen_of slices the dataset's column arrays; oracle: the regimen built from each
    # subject's own table (Subject.regimen), for the example dataset (infusions, 6-12 doses a subject)
    from pkmodel.examples import dataset_path

    data = read_dataset(dataset_path("esg401_phase1"), dose_unit="mg/kg")
    regimens = data.regimens()
    assert list(regimens) == list(data.ids)
    for sid in data.ids:
        assert regimens[sid] == data.subject(sid).regimen
        rows = data.rows_of(sid)
        np.testing.assert_array_equal(data.arrays["TIME"][rows], data.subject(sid).records["TIME"].to_numpy())
    with pytest.raises(DatasetError, match="not in the dataset"):
        data.rows_of("no such ID")
