"""Property-based tests of the dataset reader: generated CSV files either read or raise DatasetError."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pkmodel.data import read_dataset, validate_dataset
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
@given(text=csv_texts())
def test_generated_files_read_or_raise_dataset_error(tmp_path, text):
    path = tmp_path / "generated.csv"
    path.write_text(text, encoding="utf-8")
    try:
        data = read_dataset(path)
    except DatasetError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(data.records, pd.DataFrame)
    report = validate_dataset(path)
    assert isinstance(report.ok, bool)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_or_raise_dataset_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("bytes") / "raw.csv"
    path.write_bytes(raw)
    try:
        read_dataset(path)
    except DatasetError:
        pass
