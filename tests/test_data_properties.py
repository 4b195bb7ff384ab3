"""Property-based tests of the dataset reader: generated CSV files either read or raise DatasetError."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pkmodel.data import read_dataset, validate_dataset
from pkmodel.dosing import Regimen
from pkmodel.errors import DatasetError

COLUMNS = [
    "ID",
    "TIME",
    "AMT",
    "DV",
    "EVID",
    "MDV",
    "CMT",
    "RATE",
    "DUR",
    "II",
    "ADDL",
    "SS",
    "DVID",
    "LLOQ",
    "BLQ",
    "WT",
    "id",
    "time",
    " Amt ",
    '"DV"',
    "",
    "SEX",
]
CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "0",
            "1",
            "2",
            "3",
            "4",
            "-1",
            "1e308",
            "1e999",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "abc",
            "1,5",
            "CP",
            "TAb",
            "  7 ",
            "\u00a0",
            "1.0.0",
            "0x10",
            "True",
            "-1e308",
            "1e-308",
            "5e-324",
            "9007199254740993",
            "99999999999999999999",
            "18446744073709551615",
            "-9223372036854775809",
            "+1",
            "-0",
            "1.5",
            "#",
            '"',
            "\ufeff",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 1000).map(str),
    st.text(max_size=6),
)


@st.composite
def csv_texts(draw):
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=8))
    n_rows = draw(st.integers(0, 8))
    sep = draw(st.sampled_from([",", ";", "\t"]))
    lines = [sep.join(header)]
    for _ in range(n_rows):
        width = draw(st.integers(max(0, len(header) - 1), len(header) + 1))
        lines.append(sep.join(draw(CELLS).replace(sep, " ").replace("\n", " ") for _ in range(width)))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return bom + "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=csv_texts(), encoding=st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1", "cp1252"]))
def test_generated_files_read_or_raise_dataset_error(tmp_path, text, encoding):
    path = tmp_path / "generated.csv"
    path.write_bytes(text.encode(encoding, errors="replace"))
    try:
        data = read_dataset(path)
    except DatasetError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(data.records, pd.DataFrame)
    report = validate_dataset(path)
    assert isinstance(report.ok, bool)


# Structured tables: a header with ID, TIME and DV or AMT, rows of the right width holding coherent dose
# or observation records, then about one cell in twenty swapped for a hostile value or for another
# column's plausible value.  So the generated data get past the header and reach the record rules, the
# normalised records and the Subject/Regimen views (some read, most break one or two rules).
DOSE_ROW = {
    "AMT": ["100", "16.5"],
    "DV": ["", "."],
    "EVID": ["1", "4"],
    "MDV": ["1"],
    "CMT": ["", "1", "central"],
    "RATE": ["", "0", "50"],
    "DUR": ["", "0"],
    "SS": ["", "0"],
    "DVID": ["", "."],
    "LLOQ": [""],
    "BLQ": ["", "0"],
}
OBSERVATION_ROW = {
    "AMT": ["", "0", "."],
    "DV": ["5.2", "0.05", "1e308"],
    "EVID": ["0"],
    "MDV": ["0", "1"],
    "CMT": ["", "2"],
    "RATE": [""],
    "DUR": [""],
    "SS": [""],
    "DVID": ["TAb", "1", "ADC"],
    "LLOQ": ["", "0.01"],
    "BLQ": ["", "0"],
}
COVARIATES = {"WT": ["70", "80.5"], "SEX": ["M", "F"]}
OPTIONAL = [*DOSE_ROW, "II", "ADDL", *COVARIATES]


@st.composite
def structured_rows(draw):
    """(column names, rows of cell texts)."""
    header = ["ID", "TIME", *draw(st.sampled_from([["AMT", "DV"], ["AMT", "DV"], ["AMT"], ["DV"]]))]
    header += [
        c for c in draw(st.lists(st.sampled_from(OPTIONAL), max_size=7, unique=True)) if c not in header
    ]
    header = draw(st.permutations(header))
    n_rows = draw(st.integers(1, 6))
    rows = []
    for k in range(n_rows):
        dose = "AMT" in header and ("DV" not in header or draw(st.booleans()))
        repeat = dose and draw(st.booleans())
        record = {
            "ID": "1" if k < (n_rows + 1) // 2 else "S2",
            "TIME": str(2 * k),
            "II": "24" if repeat else "",
            "ADDL": "2" if repeat else "",
        }
        for column, values in (*(DOSE_ROW if dose else OBSERVATION_ROW).items(), *COVARIATES.items()):
            record[column] = draw(st.sampled_from(values))
        row = []
        for name in header:
            swap = draw(st.integers(0, 40))
            if swap == 0:
                cell = draw(CELLS).replace(",", " ").replace("\n", " ").replace("\r", " ")
            elif swap == 1:
                cell = (
                    draw(st.sampled_from([*DOSE_ROW[name], *OBSERVATION_ROW[name]]))
                    if name in DOSE_ROW
                    else "."
                )
            else:
                cell = record[name]
            row.append(cell)
        rows.append(row)
    return header, rows


@st.composite
def structured_texts(draw):
    header, rows = draw(structured_rows())
    return "\n".join(",".join(line) for line in [header, *rows]) + "\n"


OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "outputs": st.sampled_from([["TAb"], ["TAb", "ADC"]]),
        "compartments": st.just(["gut", "central"]),
        "covariates": st.sampled_from([["WT"], ["SEX"]]),
    },
)


def exercise(data) -> None:
    """Use every view of a dataset that read: none may raise anything but DatasetError."""
    assert isinstance(data.records, pd.DataFrame) and len(data.records) == data.report.n_records
    assert 0 <= data.report.n_predose <= data.report.n_observations
    data.observations()
    data.baseline_covariates()
    assert isinstance(data.time_varying_covariates, tuple)
    assert data.report.summary() and repr(data)
    for subject_id in data.ids:
        subject = data.subject(subject_id)
        assert isinstance(subject.observations, pd.DataFrame)
        assert set(subject.covariates) == set(data.covariate_names)
        assert subject.covariate_table is None or len(subject.covariate_table) >= 1
        for period in subject.periods():
            assert isinstance(period.regimen, Regimen)
        try:
            assert isinstance(subject.regimen, Regimen)
        except DatasetError as exc:  # time restarts at a reset: one regimen cannot hold both periods
            assert "TIME restarts at the reset" in str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=structured_texts(), options=OPTIONS)
def test_structured_files_read_or_raise_dataset_error(tmp_path, text, options):
    path = tmp_path / "structured.csv"
    path.write_text(text, encoding="utf-8")
    report = validate_dataset(path, **options)
    assert report.ok == (report.dataset is not None)
    if report.ok:
        exercise(report.dataset)
    else:
        assert all(p.message for p in report.problems)
        with pytest.raises(DatasetError):
            read_dataset(path, **options)


CELL_OBJECTS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", ".", "TAb", "abc", "inf"]),
    st.complex_numbers(max_magnitude=1e3),
    st.lists(st.integers(0, 3), max_size=2),  # not a single value: unhashable
    st.tuples(st.integers(0, 3)),  # not a single value, though hashable
    st.dictionaries(st.sampled_from("ab"), st.integers(0, 1), max_size=1),
)


def _as_object(cell: str) -> object:
    """A cell text as a Python object: None when empty, a float when it reads as one, else the text."""
    if cell in ("", "."):
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


@st.composite
def dataframes(draw):
    """Structured rows as a DataFrame: columns of text, of objects, or converted to float/int dtypes."""
    header, rows = draw(structured_rows())
    columns = {}
    for k in range(len(header)):
        cells = [row[k] for row in rows]
        kind = draw(st.sampled_from(["text", "objects", "numeric"] * 3 + ["hostile", "complex"]))
        if kind == "text":
            column = pd.Series(cells, dtype=object)
        elif kind == "objects":
            column = pd.Series([_as_object(c) for c in cells], dtype=object)
        elif kind == "numeric":  # what pandas makes of it: float64, or int64 when it can
            column = pd.to_numeric(
                pd.Series(cells, dtype=object).replace({"": None, ".": None}), errors="coerce"
            )
            if column.notna().all() and (column == column.round()).all() and column.abs().max() < 2**62:
                column = column.astype(np.int64)
        elif kind == "complex":
            column = pd.to_numeric(pd.Series(cells, dtype=object), errors="coerce").astype(complex)
        else:
            column = pd.Series(
                draw(st.lists(CELL_OBJECTS, min_size=len(rows), max_size=len(rows))), dtype=object
            )
        columns[k] = column
    frame = pd.DataFrame(columns)
    frame.columns = [
        draw(st.sampled_from([name] * 6 + [name.lower(), f" {name}", 0, None])) for name in header
    ]
    return frame


@settings(max_examples=100, deadline=None)
@given(frame=dataframes())
def test_generated_dataframes_read_or_raise_dataset_error(frame):
    report = validate_dataset(frame)
    assert report.ok == (report.dataset is not None)
    if report.ok:
        exercise(report.dataset)
    else:
        with pytest.raises(DatasetError):
            read_dataset(frame)


# Quoting: a text column whose fields are plain, properly quoted (delimiters and doubled quotes inside),
# or hostile (a quote inside an unquoted field, text after a closing quote, an unclosed quote).  The
# oracle for a file that reads is Python's csv module (an independent CSV reader): same field values.
NOTE_TEXT = st.text(alphabet='ab ,;"', max_size=6)
NOTE_FIELDS = st.one_of(
    NOTE_TEXT,  # raw: hostile when it holds a quote or a delimiter
    NOTE_TEXT.map(lambda t: '"' + t.replace('"', '""') + '"'),
    st.tuples(st.sampled_from(["", " ", "  "]), NOTE_TEXT, st.sampled_from(["", " "])).map(
        lambda p: p[0] + '"' + p[1].replace('"', '""') + '"' + p[2]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(notes=st.lists(NOTE_FIELDS, min_size=1, max_size=5), sep=st.sampled_from([",", ";"]))
def test_quoted_fields_read_as_the_csv_module_reads_them_or_are_reported(tmp_path, notes, sep):
    lines = [sep.join(["ID", "TIME", "DV", "NOTE"])]
    lines += [sep.join(["1", str(k), "1.5", note]) for k, note in enumerate(notes)]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "quoted.csv"
    path.write_text(text, encoding="utf-8")
    report = validate_dataset(path)
    if not report.ok:
        assert {p.rule for p in report.problems} <= {"unbalanced-quotes", "stray-quote", "wrong-field-count"}
        return
    rows = list(csv.reader(io.StringIO(text), delimiter=sep, skipinitialspace=True))
    assert all(len(row) == 4 for row in rows)
    expected = [row[3].strip() for row in rows[1:]]
    expected = [None if value in ("", ".") else value for value in expected]
    got = report.dataset.records["NOTE"].tolist() if "NOTE" in report.dataset.records else []
    if all(value is None for value in expected):  # an all-missing column is numeric (NaN)
        assert all(pd.isna(value) for value in got)
    else:
        assert [None if pd.isna(value) else value for value in got] == expected
    assert report.dataset.records["TIME"].tolist() == list(range(len(notes)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_or_raise_dataset_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("bytes") / "raw.csv"
    path.write_bytes(raw)
    try:
        read_dataset(path)
    except DatasetError:
        pass
