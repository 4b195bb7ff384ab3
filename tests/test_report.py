"""HTML reports: every number in the HTML equals its CSV; atomic writes; no silent overwrite."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from pkmodel.errors import PkmodelError
from pkmodel.report import Figure, Section, Table, write_report


class _Tables(HTMLParser):
    """Collects each <table data-csv=...> as a list of rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._current = None
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "data-csv" in attrs:
            self._current = self.tables.setdefault(attrs["data-csv"], [])
        elif tag == "tr" and self._current is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._current.append(self._row)
            self._row = None
        elif tag == "table":
            self._current = None


def html_tables(path: Path) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.tables


def csv_rows(path: Path) -> list[list[str]]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return [list(frame.columns), *frame.values.tolist()]


def make_sections():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "regimen": ["Q3W", "D1,8,15 q4w"],
            "AUC": rng.lognormal(8, 0.3, 2),
            "n": [10, 12],
            "p": [0.123456789, np.nan],
        }
    )
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    return [
        Section(
            "Exposure",
            ["Median and 90 % interval."],
            [Table("exposure", "Exposure", frame, caption="AUC in µg·h/mL"), Figure("line", "A line", fig)],
        )
    ]


def test_html_numbers_equal_csv_numbers(tmp_path):
    page = write_report(tmp_path / "rep", "Test report", make_sections(), provenance={"seed": 1})
    tables = html_tables(page)
    assert set(tables) == {"tables/exposure.csv"}
    assert tables["tables/exposure.csv"] == csv_rows(tmp_path / "rep" / "tables" / "exposure.csv")
    assert (tmp_path / "rep" / "figures" / "line.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in page.read_text(encoding="utf-8")
    assert '"seed": 1' in (tmp_path / "rep" / "provenance.json").read_text(encoding="utf-8")
    # the formatted value is the 4-significant-digit rendering of the number
    assert csv_rows(tmp_path / "rep" / "tables" / "exposure.csv")[1][3] == "0.1235"


def test_never_overwrites_and_interrupted_write_keeps_previous(tmp_path):
    target = tmp_path / "rep"
    write_report(target, "First", make_sections())
    before = (target / "report.html").read_text(encoding="utf-8")
    with pytest.raises(PkmodelError, match="never overwrites"):
        write_report(target, "Second", make_sections())

    class Exploding:
        def savefig(self, *args, **kwargs):
            raise KeyboardInterrupt  # an interruption in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        write_report(target, "Second", [Section("S", (), [Figure("boom", "Boom", Exploding())])], force=True)
    assert (target / "report.html").read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no half-written folders left
    write_report(target, "Third", make_sections(), force=True)
    assert "Third" in (target / "report.html").read_text(encoding="utf-8")


def test_duplicate_item_names_are_refused(tmp_path):
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(PkmodelError, match="share the names"):
        write_report(
            tmp_path / "r", "T", [Section("S", (), [Table("x", "X", frame), Table("x", "Y", frame)])]
        )
