"""NONMEM-style datasets: read, validate, and turn into observations, regimens and covariates.

A dataset is a table with one record per event (a dose, an observation, a reset, ...), in the layout
NONMEM made standard.  :func:`read_dataset` reads a CSV file or a :class:`pandas.DataFrame`, checks
every rule below, and either returns a :class:`Dataset` or raises one :class:`~pkmodel.errors.DatasetError`
that lists *every* problem found (not only the first), each with its row and the fix.
:func:`validate_dataset` runs the same checks and returns the problems instead of raising.

Columns
-------
Column names are case-insensitive and normalised to upper case; leading/trailing blanks are ignored.

======  =========================================================================================
ID      Subject identifier (numbers, or text if any value is not a number).  Required.  A numeric ID
        must be below 2^53 in magnitude (beyond that, float64 cannot keep every ID apart).
TIME    Time of the record, h, >= 0.  Required.  Non-decreasing within a subject, except that an
        EVID 3 or 4 (reset) record may restart time.
AMT     Dose amount, in ``dose_unit`` (default ``"mg"``; ``"mg/kg"`` is multiplied by body weight
        at simulation time).  > 0 on dose records, empty or 0 elsewhere.
RATE    Infusion rate, ``dose_unit``/h (0 or empty: bolus).  RATE=-1/-2 (rate or duration defined in
        the model, NONMEM R1/D1) is not supported.
DUR     Infusion duration, h (0 or empty: bolus).  Give RATE *or* DUR on a record, never both.
CMT     Receiving compartment of a dose: a 1-based number into ``compartments`` or a compartment
        name.  Empty on a dose: the model's default dosing compartment.
EVID    0 observation, 1 dose, 2 other (e.g. a covariate change), 3 reset, 4 reset and dose.
MDV     1 when DV is missing or must not be used.  See the EVID/MDV rules below.
DV      Observed value, in the unit of the output it measures.
II      Interdose interval, h; needed with ADDL > 0 or SS > 0, and not allowed without them.
ADDL    Number of additional doses, every II after this one: a whole number from 0 to
        :data:`MAX_ADDL`.
SS      0, 1 (reset to steady state, then dose) or 2 (steady state added to the current state).
DVID    Name of the model output an observation measures (``TAb``, ``ADC``, ``SN38``, ``ANC``, ...),
        or its 1-based number in ``outputs``.  Without a DVID column every observation measures the
        single output (``outputs`` of length 1), or the generic output ``"DV"`` when ``outputs`` is
        not given.
LLOQ    Lower limit of quantification of an observation (DV unit).  DV < LLOQ makes it BLQ.
BLQ     Optional flag: 1 marks a below-the-limit observation (its DV may then be empty); it needs an
        LLOQ > 0 on the record.  BLQ=0 with DV < LLOQ is a contradiction and an error.
other   Covariates (WT, ALB, ...): numbers, or text categories when no value of the column is a number.
        They may change over time within a subject (a time-varying covariate).
======  =========================================================================================

Missing values are empty fields or ``.`` (the NONMEM convention).  The text ``NaN`` or ``inf`` is an
error: write ``.`` for a missing value.  Any finite float64 is accepted (``1e308`` too); a number
beyond ±1.8e308 reads as infinite and is the same error.  Whole-number fields (ID, CMT and DVID
numbers) must be below 2^53, and every dose record must end at a finite time: TIME + ADDL·II plus the
infusion duration (AMT/RATE or DUR) must not overflow.

Rules chosen where NONMEM leaves room
------------------------------------
* **EVID absent**: a record with a non-zero AMT is a dose (EVID 1; a negative AMT is then reported as
  such); otherwise MDV = 1 makes it an "other" record (EVID 2), and the rest are observations (EVID 0).
* **MDV absent**: MDV = 0 for observations (EVID 0), 1 for every other record.
* **EVID 0 with MDV 1** is allowed, as in NONMEM: the observation is kept in :attr:`Dataset.records`
  but excluded from fitting, and counted in ``report.excluded``.  **EVID 1-4 with MDV 0** is an error.
* **Row numbers**: messages about a file say ``line N``, the line number in the file (the header is
  line 1, so the first data record is usually line 2) so that you can open the file at that line.
  Messages about a DataFrame say ``row N``, the 1-based position of the row in the DataFrame.  The
  same number is kept in the ``ROW`` column of :attr:`Dataset.records`.
* Lines starting with ``#`` are comments (a first line ``#ID,TIME,...`` is taken as the header); they
  and blank lines are skipped and counted in ``report.excluded``.  The delimiter is detected from the
  header line among comma, semicolon and tab.  The file must be UTF-8 (a byte-order mark is allowed)
  or UTF-16 with its byte-order mark; another encoding (Latin-1, Windows-1252) is reported at the
  line and column of the first byte that is not UTF-8.  A file holding only a byte-order mark is empty.
* **Repeated column names** (case-insensitive, e.g. ``TIME`` and ``time``) are reported before
  anything else is parsed: which of the two columns is meant cannot be known, so no row is read (and
  no row problem reported) until the header is fixed.
* **Quotes** follow RFC 4180: a quote (``"``) encloses a whole field (blanks around it are allowed),
  and ``""`` inside it stands for one quote.  A quote inside an unquoted field, text after a closing
  quote, or a quote that does not close on its line is reported (rules ``stray-quote`` and
  ``unbalanced-quotes``), since CSV readers disagree on what such a line holds.
* **Pre-dose observations** -- observations before their subject's first dose record, e.g. a
  baseline sample -- are normal: they are kept and used, and counted in
  :attr:`DatasetReport.n_predose` ("pre-dose observations" in the summary).
* No record is dropped silently: observations with MDV=1 and EVID 2 records are kept in
  ``records``, left out of :meth:`Dataset.observations` and :meth:`Dataset.regimens`, and counted by
  reason in :attr:`Dataset.report`.
* When one rule fails on many rows, the first 20 are listed one by one and the others summarised in
  one more message with their row numbers.

Examples
--------
>>> import pandas as pd
>>> table = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 1.0, 2.0], "AMT": [100, 0, 0],
...                       "DV": [None, 5.2, 3.1], "WT": [70, 70, 70]})
>>> data = read_dataset(table)
>>> data.report.n_doses, data.report.n_observations
(1, 2)
>>> data.subject(1).regimen.dose_times()
(0.0,)
>>> data.covariate_names
('WT',)
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .dosing import Bolus, Infusion, Regimen
from .errors import DatasetError, DosingError

__all__ = [
    "STANDARD_COLUMNS",
    "Dataset",
    "DatasetReport",
    "Problem",
    "Subject",
    "ValidationReport",
    "read_dataset",
    "validate_dataset",
]

#: The columns with a NONMEM meaning; every other column is a covariate.
STANDARD_COLUMNS = (
    "ID", "TIME", "EVID", "MDV", "AMT", "RATE", "DUR", "CMT", "II", "ADDL", "SS", "DV", "DVID", "LLOQ", "BLQ",
)  # fmt: skip

#: How many rows breaking one rule are listed one by one before the rest are summarised.
MAX_LISTED = 20

#: The largest ADDL accepted: more additional doses than this on one record is taken for a typo.
MAX_ADDL = 100_000

#: Whole numbers (ID, CMT, DVID) must be below this in magnitude: 2**53, the limit of exact integers
#: in a float64 (beyond it two different IDs can read as the same number).
_MAX_EXACT = 2.0**53

_NUMERIC = ("TIME", "EVID", "MDV", "AMT", "RATE", "DUR", "II", "ADDL", "SS", "DV", "LLOQ", "BLQ")
_NUMBER_OR_TEXT = ("ID", "CMT", "DVID")
_DOSE_FIELDS = ("RATE", "DUR", "II", "ADDL", "SS")
_EVID_MEANING = {0: "observation", 1: "dose", 2: "other event", 3: "reset", 4: "reset and dose"}
_NAN_TEXT = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_DECIMAL_COMMA = re.compile(r"^[-+]?\d*,\d+$")
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
_DEFAULT_OUTPUT = "DV"


# ----------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Problem:
    """One broken rule.

    Parameters
    ----------
    rule : str
        Short identifier of the rule, e.g. ``"time-backwards"`` (stable, for programs and tests).
    message : str
        The full message: where (``line N`` / ``row N``), what is wrong, and the fix.
    row : int or None
        Line number in the file (or 1-based DataFrame row); None for problems of the whole file or
        of a column.
    column : str or None
        The column concerned, when there is one.
    """

    rule: str
    message: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class DatasetReport:
    """Counts of what a dataset holds and of what is not used, by reason.

    Parameters
    ----------
    n_records : int
        Data records (lines other than the header, comments and blank lines).
    n_subjects : int
        Distinct IDs.
    n_observations : int
        Observations used for fitting (EVID 0 and MDV 0), BLQ ones included.
    n_doses : int
        Dose records (EVID 1 or 4).
    n_administrations : int
        Single administrations with ADDL unrolled (sum of ADDL + 1 over dose records).
    n_blq : int
        Used observations below the limit of quantification.
    n_resets : int
        Reset records (EVID 3 or 4).
    observations_by_output : dict of str to int
        Used observations per DVID.
    excluded : dict of str to int
        Records or lines read but not used as an observation, dose or reset, by reason.
    n_predose : int
        Pre-dose observations: used observations recorded before their subject's first dose record
        (all of a subject's observations when it has no dose).  They are kept and used; the count is
        for information.
    """

    n_records: int
    n_subjects: int
    n_observations: int
    n_doses: int
    n_administrations: int
    n_blq: int
    n_resets: int
    observations_by_output: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    n_predose: int = 0

    @property
    def n_excluded(self) -> int:
        """Total of :attr:`excluded`."""
        return sum(self.excluded.values())

    def summary(self) -> str:
        """A few lines of text for people: counts, then what was excluded and why.

        Examples
        --------
        >>> print(DatasetReport(3, 1, 2, 1, 1, 0, 0, {"DV": 2}, {"comment line": 1}).summary())
        3 records, 1 subject
        2 observations (DV: 2), 0 BLQ
        1 dose record (1 administration), 0 resets
        excluded: 1 comment line

        Pre-dose observations are mentioned when there are any:

        >>> print(DatasetReport(3, 1, 2, 1, 1, 0, 0, {"DV": 2}, n_predose=1).summary().splitlines()[1])
        2 observations (DV: 2), 0 BLQ, 1 pre-dose observation
        """

        def plural(n: int, word: str) -> str:
            return f"{n} {word}" + ("" if n == 1 else "s")

        by_output = ", ".join(f"{k}: {v}" for k, v in self.observations_by_output.items())
        lines = [
            f"{plural(self.n_records, 'record')}, {plural(self.n_subjects, 'subject')}",
            f"{plural(self.n_observations, 'observation')}"
            + (f" ({by_output})" if by_output else "")
            + f", {self.n_blq} BLQ"
            + (f", {plural(self.n_predose, 'pre-dose observation')}" if self.n_predose else ""),
            f"{plural(self.n_doses, 'dose record')} ({plural(self.n_administrations, 'administration')}), "
            f"{plural(self.n_resets, 'reset')}",
        ]
        if self.excluded:
            lines.append("excluded: " + ", ".join(f"{n} {reason}" for reason, n in self.excluded.items()))
        else:
            lines.append("excluded: none")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class ValidationReport:
    """The outcome of :func:`validate_dataset`.

    Parameters
    ----------
    problems : tuple of Problem
        Every broken rule, in the order: file, columns, values, records.  Empty when the data are valid.
    file : str or None
        The file read (None for a DataFrame).
    report : DatasetReport or None
        Counts, when the table could be read far enough to count (also when there are problems).
    dataset : Dataset or None
        The dataset, when there are no problems.
    """

    problems: tuple[Problem, ...]
    file: str | None = None
    report: DatasetReport | None = None
    dataset: Dataset | None = None

    @property
    def ok(self) -> bool:
        """True when no rule is broken."""
        return not self.problems

    def messages(self) -> list[str]:
        """The problem messages, one string each."""
        return [p.message for p in self.problems]

    def raise_if_problems(self) -> None:
        """Raise one :class:`~pkmodel.errors.DatasetError` listing every problem, if there are any."""
        if self.problems:
            raise DatasetError(self.messages(), file=self.file)

    def summary(self) -> str:
        """Text for the command line: the verdict, the problems, then the counts."""
        head = f"{self.file}: " if self.file else ""
        if self.ok:
            text = head + "valid dataset"
        else:
            n = len(self.problems)
            text = (
                head
                + f"{n} problem{'s' if n != 1 else ''}\n"
                + "\n".join(f"  - {m}" for m in self.messages())
            )
        if self.report is not None:
            text += "\n" + self.report.summary()
        return text


# ------------------------------------------------------------------------------------ the dataset


@dataclass(frozen=True, eq=False)
class Subject:
    """The records of one subject, with its observations, doses, covariates and resets.

    Parameters
    ----------
    id : int, float or str
        The subject's ID.
    records : pandas.DataFrame
        The subject's normalised records (see :attr:`Dataset.records`), in file order.
    covariate_names : tuple of str
        Covariate columns.
    dose_unit : str
        Unit of AMT.
    where : {"line", "row"}
        What the ROW column counts: lines of a file or rows of a DataFrame (for messages).
    """

    id: object
    records: pd.DataFrame
    covariate_names: tuple[str, ...] = ()
    dose_unit: str = "mg"
    where: str = "line"

    @cached_property
    def observations(self) -> pd.DataFrame:
        """Used observations (EVID 0, MDV 0): columns ROW, TIME (h), DVID, DV, LLOQ, BLQ (bool)."""
        r = self.records
        used = (r["EVID"] == 0) & (r["MDV"] == 0)
        return r.loc[used, ["ROW", "TIME", "DVID", "DV", "LLOQ", "BLQ"]].reset_index(drop=True)

    @property
    def resets(self) -> tuple[float, ...]:
        """Times (h) of the reset records (EVID 3 and 4), in file order."""
        r = self.records
        return tuple(float(t) for t in r.loc[r["EVID"].isin((3, 4)), "TIME"])

    @property
    def time_restarts(self) -> bool:
        """True when TIME goes back at a reset, so the periods have separate time axes."""
        t = self.records["TIME"].to_numpy()
        return bool(np.any(np.diff(t) < 0))

    @cached_property
    def regimen(self) -> Regimen:
        """The doses (EVID 1 and 4) as a :class:`~pkmodel.dosing.Regimen` of Bolus and Infusion.

        RATE > 0 gives an Infusion by rate, DUR > 0 an Infusion by duration, otherwise a Bolus; CMT is
        the compartment name (None: the model's default dosing compartment).

        Raises
        ------
        DatasetError
            When time restarts at a reset: one regimen cannot hold two time axes; use :meth:`periods`.
        """
        if self.time_restarts:
            r = self.records
            back = np.flatnonzero(np.diff(r["TIME"].to_numpy()) < 0) + 1
            line = int(r["ROW"].iloc[back[0]])
            raise DatasetError(
                f"ID {self.id}: TIME restarts at the reset on {self.where} {line}, so one regimen cannot "
                "hold the doses of both periods; use subject.periods() and take each period's regimen"
            )
        r = self.records
        return _regimen(
            {c: r[c].to_numpy() for c in _DOSE_COLUMNS}, self.dose_unit, f"ID {self.id}", self.where
        )

    @property
    def covariates(self) -> dict[str, object]:
        """Baseline covariates: each covariate's first non-missing value (NaN when it has none)."""
        r = self.records
        out: dict[str, object] = {}
        for name in self.covariate_names:
            values = r[name].dropna()
            first = values.iloc[0] if len(values) else np.nan
            out[name] = first.item() if isinstance(first, np.generic) else first
        return out

    @property
    def time_varying(self) -> tuple[str, ...]:
        """Covariates whose value changes within this subject."""
        r = self.records
        return tuple(n for n in self.covariate_names if r[n].dropna().nunique() > 1)

    @property
    def covariate_table(self) -> pd.DataFrame | None:
        """For time-varying covariates: TIME (h) and every covariate, at the records where one changes.

        The first record is always included; a value holds until the next row.  None when no
        covariate changes within the subject.
        """
        if not self.time_varying:
            return None
        r = self.records[["TIME", *self.covariate_names]]
        values = r[list(self.covariate_names)]
        changed = (values.ne(values.shift()) & ~(values.isna() & values.shift().isna())).any(axis=1)
        changed.iloc[0] = True
        return r.loc[changed].reset_index(drop=True)

    def periods(self) -> tuple[Subject, ...]:
        """The subject split at its resets: each period starts at an EVID 3 or 4 record.

        Records before the first reset form the first period (when there are any).
        """
        evid = self.records["EVID"].to_numpy()
        period = np.cumsum(np.isin(evid, (3, 4)))
        return tuple(
            Subject(self.id, self.records.loc[period == k], self.covariate_names, self.dose_unit, self.where)
            for k in np.unique(period)
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """A validated NONMEM-style dataset.  Build it with :func:`read_dataset`.

    Parameters
    ----------
    records : pandas.DataFrame
        Every record, in file order, normalised: ROW (line number in the file, or 1-based DataFrame
        row), ID, TIME (h), EVID, MDV, AMT (``dose_unit``, 0 when empty), RATE (``dose_unit``/h), DUR (h),
        CMT (compartment name, or None), II (h), ADDL, SS, DV, DVID (output name on observations, else
        None), LLOQ, BLQ (bool, True for observations below the limit), then the covariates.
    ids : tuple
        Subject IDs, in order of first appearance.
    covariate_names : tuple of str
        Covariate columns (upper case), in file order.
    outputs : tuple of str
        DVIDs of the used observations, sorted.
    report : DatasetReport
        Counts, and what is excluded and why.
    dose_unit : str
        Unit of AMT.
    compartments : tuple of str or None
        The model's compartments, when given.
    file : str or None
        The file read.
    where : {"line", "row"}
        What ROW counts: ``"line"`` (file line numbers) or ``"row"`` (1-based DataFrame rows).
    """

    records: pd.DataFrame
    ids: tuple
    covariate_names: tuple[str, ...]
    outputs: tuple[str, ...]
    report: DatasetReport
    dose_unit: str = "mg"
    compartments: tuple[str, ...] | None = None
    file: str | None = None
    where: str = "line"

    @cached_property
    def _positions(self) -> dict[object, np.ndarray]:
        return self.records.groupby("ID", sort=False).indices

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every column of :attr:`records` as a numpy array, computed once (read it, do not modify it).

        With :meth:`rows_of`, a subject's values without building its table (``arrays["DV"][rows]``).
        """
        return {c: self.records[c].to_numpy() for c in self.records.columns}

    def rows_of(self, id: object) -> np.ndarray:
        """Positions (0-based, in :attr:`records` and :attr:`arrays`) of one subject's records, in file
        order; ``id`` as in :attr:`ids`.

        Examples
        --------
        >>> import pandas as pd
        >>> t = pd.DataFrame({"ID": [7, 7, 8], "TIME": [0, 2, 0], "AMT": [10, 0, 10], "DV": [None, 1.5, None]})
        >>> read_dataset(t).rows_of(8).tolist()
        [2]
        """
        positions = self._positions.get(id)
        if positions is None:
            raise DatasetError(f"ID {id!r} is not in the dataset", self.file)
        return positions

    def subject(self, id: object) -> Subject:
        """The records of one subject as a :class:`Subject`.

        Parameters
        ----------
        id : int, float or str
            The subject's ID as in the ID column.

        Examples
        --------
        >>> import pandas as pd
        >>> t = pd.DataFrame({"ID": [7, 7], "TIME": [0, 2], "AMT": [10, 0], "DV": [None, 1.5]})
        >>> read_dataset(t).subject(7).observations[["TIME", "DV"]].values.tolist()
        [[2.0, 1.5]]
        """
        positions = self._positions.get(id)
        if positions is None and isinstance(id, str):
            for candidate in self.ids:
                if str(candidate) == id:
                    positions = self._positions[candidate]
                    id = candidate
                    break
        if positions is None:
            shown = ", ".join(str(i) for i in self.ids[:10]) + (", ..." if len(self.ids) > 10 else "")
            raise DatasetError(
                f"ID {id!r} is not in the dataset; its {len(self.ids)} IDs are {shown}", self.file
            )
        return Subject(id, self.records.iloc[positions], self.covariate_names, self.dose_unit, self.where)

    def observations(self) -> pd.DataFrame:
        """Used observations of every subject (EVID 0, MDV 0), tidy.

        Returns
        -------
        pandas.DataFrame
            Columns ID, TIME (h), DVID, DV, LLOQ, BLQ (bool), ROW; one row per observation, file order.
        """
        r = self.records
        used = (r["EVID"] == 0) & (r["MDV"] == 0)
        return r.loc[used, ["ID", "TIME", "DVID", "DV", "LLOQ", "BLQ", "ROW"]].reset_index(drop=True)

    def regimens(self) -> dict[object, Regimen]:
        """Each subject's doses as a :class:`~pkmodel.dosing.Regimen` (empty for subjects without doses).

        Raises
        ------
        DatasetError
            For a subject whose time restarts at a reset (see :attr:`Subject.regimen`).
        """
        return {i: self.regimen_of(i) for i in self.ids}

    def regimen_of(self, id: object) -> Regimen:
        """One subject's doses, the same as ``subject(id).regimen`` without building its table.

        Raises
        ------
        DatasetError
            For a subject whose time restarts at a reset (see :attr:`Subject.regimen`).
        """
        arrays = self.arrays
        rows = self.rows_of(id)
        if np.any(np.diff(arrays["TIME"][rows]) < 0):  # time restarts: the subject's own message
            return self.subject(id).regimen
        return _regimen({c: arrays[c][rows] for c in _DOSE_COLUMNS}, self.dose_unit, f"ID {id}", self.where)

    def baseline_covariates(self) -> pd.DataFrame:
        """One row per subject (index ID, file order): each covariate's first non-missing value."""
        r = self.records
        if not self.covariate_names:
            return pd.DataFrame(index=pd.Index(list(self.ids), name="ID"))
        return r.groupby("ID", sort=False)[list(self.covariate_names)].first()

    @property
    def time_varying_covariates(self) -> tuple[str, ...]:
        """Covariates whose value changes within at least one subject."""
        r = self.records
        out = []
        for name in self.covariate_names:
            counts = r.groupby("ID", sort=False)[name].nunique()
            if (counts > 1).any():
                out.append(name)
        return tuple(out)

    def __repr__(self) -> str:
        where = f"{self.file!r}, " if self.file else ""
        return (
            f"Dataset({where}{self.report.n_subjects} subjects, {self.report.n_records} records, "
            f"outputs {list(self.outputs)}, covariates {list(self.covariate_names)})"
        )


_DOSE_COLUMNS = ("EVID", "ROW", "TIME", "AMT", "RATE", "DUR", "CMT", "II", "ADDL", "SS")


def _regimen(columns: Mapping[str, np.ndarray], dose_unit: str, name: str, where: str) -> Regimen:
    """The regimen of one subject's records, given as arrays of the ``_DOSE_COLUMNS``."""
    is_dose = np.isin(columns["EVID"], (1, 4))
    # the dose records' fields as Python scalars, column by column (much faster than row tuples)
    doses = zip(*(columns[c][is_dose].tolist() for c in _DOSE_COLUMNS[1:]), strict=True)
    events = []
    for row, time, amt, rate, dur, cmt, ii, addl, ss in doses:
        common = {
            "compartment": cmt if isinstance(cmt, str) else None,
            "unit": dose_unit,
            "ii": float(ii),
            "addl": int(addl),
            "ss": int(ss),
        }
        try:
            if rate > 0:
                events.append(Infusion(float(time), float(amt), rate=float(rate), **common))
            elif dur > 0:
                events.append(Infusion(float(time), float(amt), duration=float(dur), **common))
            else:
                events.append(Bolus(float(time), float(amt), **common))
        except DosingError as err:  # validation should have caught it; say where anyway
            raise DatasetError(f"{where} {row}: {err}") from None
    return Regimen(events, name=name)


# ------------------------------------------------------------------------------------ entry points


def read_dataset(
    source: str | os.PathLike | pd.DataFrame,
    *,
    outputs: Sequence[str] | None = None,
    compartments: Sequence[str] | None = None,
    covariates: Sequence[str] | None = None,
    dose_unit: str = "mg",
) -> Dataset:
    """Read and validate a NONMEM-style dataset.

    Parameters
    ----------
    source : path or pandas.DataFrame
        A CSV file (comma, semicolon or tab separated, UTF-8) or a table.
    outputs : sequence of str, optional
        The model's outputs, i.e. the allowed DVIDs (a numeric DVID k means ``outputs[k-1]``).  When
        given, an unknown DVID is an error.
    compartments : sequence of str, optional
        The model's compartments in model order; CMT numbers are 1-based indices into it and CMT names
        must be in it.  Without it, CMT numbers must be whole numbers >= 1 and are kept as text.
    covariates : sequence of str, optional
        Covariates (case-insensitive) that must be present, non-missing on every record.
    dose_unit : str
        Unit of AMT: ``"mg"`` (default), ``"mg/kg"``, or another unit accepted by
        :class:`~pkmodel.dosing.Bolus`.  RATE is in ``dose_unit`` per hour.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Listing every problem found, each with its line (row) number and the fix.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"ID": [1, 1], "TIME": [0, 1], "AMT": [-5, 0], "DV": [None, 2.0]})
    >>> read_dataset(t)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pkmodel.errors.DatasetError: row 1: AMT -5 is negative: a dose must be > 0 mg; enter ...
    """
    result = validate_dataset(
        source, outputs=outputs, compartments=compartments, covariates=covariates, dose_unit=dose_unit
    )
    result.raise_if_problems()
    assert result.dataset is not None
    return result.dataset


def validate_dataset(
    source: str | os.PathLike | pd.DataFrame,
    *,
    outputs: Sequence[str] | None = None,
    compartments: Sequence[str] | None = None,
    covariates: Sequence[str] | None = None,
    dose_unit: str = "mg",
) -> ValidationReport:
    """Check a dataset against every rule and return the problems; never raises for bad data.

    Parameters are those of :func:`read_dataset`.  A missing or unreadable file is reported as a
    problem too.  Wrong *arguments* (e.g. ``outputs`` not a list of names) raise
    :class:`~pkmodel.errors.DatasetError`.

    Returns
    -------
    ValidationReport
        ``.problems`` (empty when valid), ``.report`` (counts) and ``.dataset`` (when valid).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"ID": [1, 1], "TIME": [2, 1], "DV": [1.0, 2.0]})
    >>> [p.rule for p in validate_dataset(t).problems]
    ['time-backwards']
    """
    outputs_t = _names_argument("outputs", outputs, upper=False)
    compartments_t = _names_argument("compartments", compartments, upper=False)
    covariates_t = _names_argument("covariates", covariates, upper=True)
    for name in covariates_t or ():
        if name in STANDARD_COLUMNS:
            raise DatasetError(
                f"covariates: {name} is a NONMEM column, not a covariate; remove it from the list"
            )
    try:
        Bolus(0.0, 1.0, unit=dose_unit)
    except DosingError as err:
        raise DatasetError(f"dose_unit {dose_unit!r}: {err}") from None

    if isinstance(source, pd.DataFrame):
        file = None
        problems = _Problems("row")
        frame, rows, lines_excluded = _frame_from_dataframe(source, problems)
    elif isinstance(source, (str, os.PathLike)):
        file = str(source)
        problems = _Problems("line")
        frame, rows, lines_excluded = _frame_from_file(Path(source), problems)
    else:
        raise DatasetError(f"source must be a file path or a pandas DataFrame, got {type(source).__name__}")

    records = report = None
    if frame is not None:
        problems.rows = rows
        checked = _Checker(
            frame, problems, outputs_t, compartments_t, covariates_t, dose_unit, lines_excluded
        )
        records, report = checked.run()
    dataset = None
    if not problems.items and records is not None and report is not None:
        cov_names = tuple(c for c in records.columns if c not in STANDARD_COLUMNS and c != "ROW")
        used = (records["EVID"] == 0) & (records["MDV"] == 0)
        dataset = Dataset(
            records=records,
            ids=tuple(pd.unique(records["ID"]).tolist()),
            covariate_names=cov_names,
            outputs=tuple(sorted(records.loc[used, "DVID"].dropna().unique().tolist())),
            report=report,
            dose_unit=dose_unit,
            compartments=compartments_t,
            file=file,
            where=problems.where,
        )
    return ValidationReport(tuple(problems.items), file, report, dataset)


def _names_argument(label: str, value: Sequence[str] | None, *, upper: bool) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise DatasetError(f"{label} must be a list of names, e.g. ['TAb', 'ADC'], got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise DatasetError(f"{label} must be a list of non-empty names; {item!r} is not one")
        out.append(item.strip().upper() if upper else item.strip())
    repeated = sorted({n for n in out if out.count(n) > 1})
    if repeated:
        raise DatasetError(f"{label} lists {', '.join(repeated)} more than once; give each name once")
    return tuple(out)


# ----------------------------------------------------------------------------- problem collection


class _Problems:
    """Collects problems; rows breaking a rule are listed up to MAX_LISTED, then summarised."""

    def __init__(self, where: str):
        self.where = where
        self.items: list[Problem] = []
        self.rows: np.ndarray = np.zeros(0, dtype=np.int64)

    def add(self, rule: str, message: str, row: int | None = None, column: str | None = None) -> None:
        text = f"{self.where} {row}: {message}" if row is not None else message
        self.items.append(Problem(rule, text, row, column))

    def rows_where(
        self, rule: str, mask: np.ndarray, message: Callable[[int], str], column: str | None = None
    ) -> None:
        """One problem per True position of ``mask`` (capped); ``message(i)`` builds the text of row i."""
        positions = np.flatnonzero(mask)
        for i in positions[:MAX_LISTED]:
            self.add(rule, message(int(i)), row=int(self.rows[i]), column=column)
        rest = self.rows[positions[MAX_LISTED:]]
        if rest.size:
            shown = ", ".join(str(r) for r in rest[:10]) + (", ..." if rest.size > 10 else "")
            self.add(
                rule,
                f"{rest.size} more {self.where}s break the same rule ({rule}) as the {MAX_LISTED} above: "
                f"{self.where}s {shown}",
                column=column,
            )


def _fmt(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.10g}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(value)


# ------------------------------------------------------------------------------------ file reading


def _frame_from_file(
    path: Path, problems: _Problems
) -> tuple[pd.DataFrame | None, np.ndarray, dict[str, int]]:
    """Read a CSV file into a table of raw values, with the file line number of every row."""
    none = (None, np.zeros(0, dtype=np.int64), {})
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.add("file-not-found", f"file {path} does not exist; check the path")
        return none
    except OSError as err:
        problems.add(
            "file-unreadable", f"cannot read {path}: {err.strerror or err}; check the path and permissions"
        )
        return none

    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            raw = raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            problems.add("not-utf8", "the file starts like UTF-16 but cannot be decoded; re-save it as UTF-8")
            return none
    elif raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        problems.add(
            "not-utf8",
            f"byte 0x{raw[err.start]:02X} at column {column} is not UTF-8 (the file is probably Latin-1 or "
            "Windows-1252, e.g. from Excel): re-save the file as UTF-8 (CSV UTF-8)",
            row=line,
        )
        return none
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    arr = np.frombuffer(raw, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], newlines + 1)).astype(np.int64)
    if starts[-1] == len(raw):  # trailing newline: no line after it
        starts = starts[:-1]
    n_lines = len(starts)
    if n_lines == 0:
        problems.add(
            "empty-file", "the file is empty: a dataset needs a header line (ID,TIME,...) and data rows"
        )
        return none
    ends = np.concatenate((starts[1:] - 1, [len(raw) if raw[-1:] != b"\n" else len(raw) - 1]))
    bounds = np.concatenate((starts, [len(raw)]))  # line i is raw[bounds[i]:bounds[i + 1]], newline included

    def text_of(i: int) -> str:
        return raw[starts[i] : ends[i]].decode("utf-8")

    def per_line(positions: np.ndarray) -> np.ndarray:
        """How many of the sorted byte positions fall on each line."""
        return np.diff(np.searchsorted(positions, bounds))

    blank = ends == starts
    first_byte = arr[np.minimum(starts, len(raw) - 1)]
    comment = (first_byte == ord("#")) & ~blank
    for i in np.flatnonzero(~blank & ((first_byte == 32) | (first_byte == 9))):  # rare: leading blanks
        stripped = text_of(int(i)).strip()
        blank[i] = not stripped
        comment[i] = stripped.startswith("#")

    header_index = None
    excluded: dict[str, int] = {}
    for i in range(n_lines):
        if blank[i]:
            continue
        if comment[i] and not _looks_like_header(text_of(i).lstrip("#")):
            continue
        header_index = i
        break
    if header_index is None:
        problems.add(
            "empty-file",
            "the file has no header line, only blank or comment lines: add a header "
            "(ID,TIME,...) and data rows",
        )
        return none
    header_text = text_of(header_index).lstrip().lstrip("#")
    delimiter = max(_DELIMITERS, key=lambda d: header_text.count(d))  # ties: comma first
    if header_text.count(delimiter) == 0:
        delimiter = ","
    if '"' in header_text and _bad_quote_lines(header_text.encode("utf-8"), delimiter).size:
        rule, message = _quote_problem(header_text, delimiter)  # the header without its '#'
        problems.add(rule, message, row=header_index + 1)
        return none
    names = next(csv.reader([header_text], delimiter=delimiter, skipinitialspace=True))
    n_fields = len(names)
    if n_fields == 1 and len(names[0].split()) > 1:
        problems.add(
            "unknown-delimiter",
            f"the header (line {header_index + 1}) {header_text.strip()!r} has no comma, semicolon or tab: "
            "pkmodel reads comma-, semicolon- or tab-separated files; convert the file (e.g. save as CSV)",
            row=header_index + 1,
        )
        return none
    columns = _normalise_columns(names, problems, where=f"line {header_index + 1} (header)")
    if any(p.rule == "duplicate-column" for p in problems.items):
        return none  # which of two same-named columns is meant is unknowable: no row is read

    data = np.arange(n_lines) > header_index
    n_comment = int(np.sum(comment & data)) + int(np.sum(comment[:header_index]))
    n_blank = int(np.sum(blank & data)) + int(np.sum(blank[:header_index]))
    if n_comment:
        excluded["comment line"] = n_comment
    if n_blank:
        excluded["blank line"] = n_blank
    candidate = data & ~blank & ~comment

    delimiters = np.flatnonzero(arr == ord(delimiter))
    quotes = np.flatnonzero(arr == ord('"'))
    unbalanced = np.zeros(n_lines, bool)
    if quotes.size:
        # lines whose quotes break the CSV rules: reported, and not read (pandas would read them in
        # another way than the field count below assumes)
        bad_quotes = np.zeros(n_lines, bool)
        bad_quotes[np.searchsorted(starts, _bad_quote_lines(raw, delimiter))] = True
        unbalanced = candidate & bad_quotes
        # count only the delimiters outside quoted fields ("" inside a field keeps the parity)
        odd = per_line(quotes) % 2 == 1
        if odd.any():  # parity from the start of each delimiter's own line
            line_of = np.searchsorted(starts, delimiters, side="right") - 1
            inside = (np.searchsorted(quotes, delimiters) - np.searchsorted(quotes, starts)[line_of]) % 2 == 1
        else:  # every line is balanced: the parity since the start of the file is the same
            inside = np.searchsorted(quotes, delimiters) % 2 == 1
        delimiters = delimiters[~inside]
    fields = per_line(delimiters) + 1
    wrong = candidate & ~unbalanced & (fields != n_fields)

    problems.rows = np.arange(1, n_lines + 1)
    if unbalanced.any():  # which field, and whether it is unclosed or stray, line by line
        found = {int(i): _quote_problem(text_of(int(i)), delimiter) for i in np.flatnonzero(unbalanced)}
        for rule in ("unbalanced-quotes", "stray-quote"):
            mask = np.zeros(n_lines, bool)
            mask[[i for i, (r, _) in found.items() if r == rule]] = True
            problems.rows_where(rule, mask, lambda i: found[i][1])
    problems.rows_where(
        "wrong-field-count",
        wrong,
        lambda i: (
            f"has {fields[i]} fields but the header (line {header_index + 1}) has {n_fields}: "
            f"check for a missing or extra {_DELIMITERS[delimiter]} (the delimiter of this file)"
        ),
    )
    good = candidate & ~wrong & ~unbalanced
    if not np.any(candidate):
        problems.add(
            "no-data-rows",
            f"the file has a header (line {header_index + 1}) but no data rows: add the records",
        )
        return none
    if not np.any(good):
        return none

    first = int(np.flatnonzero(data)[0])
    if np.all(good[first:]):
        body = raw[starts[first] :]
    else:
        lengths = np.diff(np.concatenate((starts, [len(raw)])))
        body = arr[np.repeat(good, lengths)].tobytes()
    if not body.endswith(b"\n"):
        body += b"\n"
    options = dict(
        sep=delimiter,
        header=None,
        names=columns,
        index_col=False,
        na_values=[".", ""],
        keep_default_na=False,
        skipinitialspace=True,
        skip_blank_lines=False,
        low_memory=False,
        encoding="utf-8",
        quotechar='"',
    )
    frame = pd.read_csv(io.BytesIO(body), **options)
    logical = [name for name in frame.columns if pd.api.types.is_bool_dtype(frame[name].dtype)]
    if logical:
        # pandas reads a column of only True/False text as booleans, which would become 1/0 silently:
        # read those columns as text, so that 'True' is reported as not a number like any other word
        frame = pd.read_csv(io.BytesIO(body), dtype=dict.fromkeys(logical, str), **options)
    rows = np.flatnonzero(good) + 1
    if len(frame) != len(rows):  # pragma: no cover - guarded by the quote check above
        problems.add("unreadable", "the rows could not be matched with the file's lines; check quoting")
        return none
    return frame, rows, excluded


@functools.cache
def _quote_patterns(delimiter: str) -> tuple[re.Pattern[bytes], re.Pattern[str], re.Pattern[str]]:
    """Bad lines (bytes, multiline), and a quoted and a plain field (text), for one delimiter."""
    d = re.escape(delimiter)
    field = rb' *"(?:[^"\n]|"")*" *|[^"\n' + d.encode() + rb"]*"
    line = rb"(?:" + field + rb")(?:" + d.encode() + rb"(?:" + field + rb"))*"
    bad = re.compile(rb"^(?!" + line + rb"$)", re.MULTILINE)
    return bad, re.compile(r' *"(?:[^"]|"")*" *'), re.compile(f'[^"{d}]*')


def _bad_quote_lines(raw: bytes, delimiter: str) -> np.ndarray:
    """Byte offsets of the lines of ``raw`` whose quotes break the CSV rules (RFC 4180).

    A quote (") may only enclose a whole field (blanks around it allowed), and ``""`` inside such a
    field stands for one quote.  Anything else -- a quote inside an unquoted field, text after a
    closing quote, a quote that does not close on its line -- is read differently by different CSV
    readers, so pkmodel reports it instead of guessing.
    """
    bad = _quote_patterns(delimiter)[0]
    return np.fromiter((m.start() for m in bad.finditer(raw)), dtype=np.int64)


def _quote_problem(line: str, delimiter: str) -> tuple[str, str]:
    """The rule and message for a line that :func:`_bad_quote_lines` reported: which field, and why."""
    _, quoted, plain = _quote_patterns(delimiter)
    pos, k = 0, 1
    while True:
        match = quoted.match(line, pos) or plain.match(line, pos)
        end = match.end() if match else pos
        if end < len(line) and line[end] == delimiter:
            pos, k = end + 1, k + 1
            continue
        break
    if line[pos:].lstrip(" ").startswith('"') and not quoted.match(line, pos):
        return "unbalanced-quotes", (
            f'field {k} opens a quote (") that does not close on this line: close it (a field must not '
            'span lines; write "" for a quote inside a quoted field)'
        )
    return "stray-quote", (
        f'field {k} has a quote character (") that does not enclose the whole field: remove it, or put '
        'the whole field in quotes and double the quotes inside, e.g. "5\'10"""'
    )


def _looks_like_header(text: str) -> bool:
    tokens = {t.strip().strip('"').upper() for t in re.split(r"[,;\t]", text)}
    return "ID" in tokens and "TIME" in tokens


def _normalise_columns(names: Sequence[object], problems: _Problems, where: str) -> list[str]:
    """Upper-case names; report empty and repeated ones (repeats get a suffix and are not used)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for k, raw_name in enumerate(names, start=1):
        name = str(raw_name).strip().strip('"').strip().upper()
        if not name:
            problems.add(
                "empty-column-name",
                f"{where}: column {k} has no name; name it, or remove the extra delimiter at the end of "
                "the lines",
                column=f"#{k}",
            )
            name = f"#{k}"
        if name in seen:
            problems.add(
                "duplicate-column",
                f"{where}: column {k} ({str(raw_name).strip()!r}) repeats column {seen[name]} ({name}); "
                "column names are case-insensitive: rename or remove one of them",
                column=name,
            )
            name = f"{name}#{k}"
        else:
            seen[name] = k
        out.append(name)
    return out


def _frame_from_dataframe(
    source: pd.DataFrame, problems: _Problems
) -> tuple[pd.DataFrame | None, np.ndarray, dict[str, int]]:
    columns = _normalise_columns(list(source.columns), problems, where="DataFrame columns")
    if any(p.rule == "duplicate-column" for p in problems.items):
        return None, np.zeros(0, dtype=np.int64), {}
    frame = source.reset_index(drop=True).copy()
    frame.columns = columns
    rows = np.arange(1, len(frame) + 1)
    return frame, rows, {}


# ------------------------------------------------------------------------------------------ checks


@dataclass
class _Column:
    """One column as numbers (NaN where missing or invalid) and, for text columns, as text."""

    number: np.ndarray
    text: np.ndarray | None  # object array of str/None, when some values are text
    present: np.ndarray  # a value was given (not empty, not '.')
    invalid: np.ndarray  # a value was given but rejected (reported already)


def _split_column(
    series: pd.Series,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Numbers, stripped text, and the present, non-numeric, NaN/inf and not-a-single-value masks of a
    raw column."""
    n = len(series)
    if pd.api.types.is_bool_dtype(series.dtype):
        series = series.astype("float64")
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_complex_dtype(series.dtype):
        number = series.to_numpy(dtype=float, na_value=np.nan).copy()
        present = ~np.isnan(number)
        nonfinite = np.isinf(number)
        text = np.full(n, None, dtype=object)
        text[nonfinite] = np.where(number[nonfinite] > 0, "inf", "-inf")  # for the message
        number[nonfinite] = np.nan  # reported as not-finite; never used as a value
        return number, text, present, np.zeros(n, bool), nonfinite, np.zeros(n, bool)
    # a DataFrame cell may hold a list, dict, array...: not a value of a record (and not hashable)
    nonscalar = np.zeros(n, bool)
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True).startswith("mixed"):
        nonscalar = np.fromiter((not pd.api.types.is_scalar(v) for v in series), dtype=bool, count=n)
        if nonscalar.any():
            text = np.full(n, None, dtype=object)
            text[nonscalar] = [f"{type(v).__name__} {v!r}" for v in series[nonscalar]]
            series = series.where(~nonscalar, None)
    # text: work on the distinct values only (a DVID column has a handful), then spread them out
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    stripped = pd.Series(np.asarray(uniques, dtype=object), dtype=object).astype("string").str.strip()
    stripped = stripped.mask(stripped.isin(["", "."]))
    present = np.append(stripped.notna().to_numpy(dtype=bool), False)
    number = np.append(
        pd.to_numeric(stripped, errors="coerce").to_numpy(dtype=float, na_value=np.nan), np.nan
    )
    nan_text = present & np.append(stripped.str.lower().isin(_NAN_TEXT).to_numpy(dtype=bool), False)
    nonfinite = nan_text | np.isinf(number)
    nonnumeric = present & np.isnan(number) & ~nan_text
    number[nonfinite] = np.nan
    text_of_unique = np.append(stripped.to_numpy(dtype=object, na_value=None), None)
    take = np.where(codes < 0, len(uniques), codes)
    out_text = text_of_unique[take]
    if nonscalar.any():
        out_text[nonscalar] = text[nonscalar]  # for the message
    return number[take], out_text, present[take], nonnumeric[take], nonfinite[take], nonscalar


class _Checker:
    """Runs every record-level rule on a table of raw values (vectorised with numpy/pandas)."""

    def __init__(
        self,
        frame: pd.DataFrame,
        problems: _Problems,
        outputs: tuple[str, ...] | None,
        compartments: tuple[str, ...] | None,
        covariates: tuple[str, ...] | None,
        dose_unit: str,
        lines_excluded: dict[str, int],
    ):
        self.frame = frame
        self.p = problems
        self.outputs = outputs
        self.compartments = compartments
        self.required_covariates = covariates or ()
        self.dose_unit = dose_unit
        self.lines_excluded = lines_excluded
        self.n = len(frame)
        self.cols: dict[str, _Column] = {}
        usable = [c for c in frame.columns if "#" not in c]
        self.covariate_names = [c for c in usable if c not in STANDARD_COLUMNS]
        self.names = set(usable)

    # -- helpers
    def num(self, name: str, default: float = np.nan) -> np.ndarray:
        col = self.cols.get(name)
        return col.number if col is not None else np.full(self.n, default)

    def invalid(self, name: str) -> np.ndarray:
        col = self.cols.get(name)
        return col.invalid if col is not None else np.zeros(self.n, bool)

    def run(self) -> tuple[pd.DataFrame | None, DatasetReport | None]:
        p = self.p
        missing = [c for c in ("ID", "TIME") if c not in self.names]
        found = ", ".join(c for c in self.frame.columns if "#" not in c) or "none"
        for c in missing:
            what = "the subject identifier" if c == "ID" else "the time of each record, in h"
            p.add(
                "missing-column",
                f"required column {c} ({what}) is missing (columns found: {found}); add it",
                column=c,
            )
        if "DV" not in self.names and "AMT" not in self.names:
            p.add(
                "missing-column",
                f"neither DV nor AMT is present (columns found: {found}): a dataset needs observations (DV) "
                "or doses (AMT); add the column",
            )
        if missing or ("DV" not in self.names and "AMT" not in self.names):
            return None, None
        if self.n == 0:
            p.add("no-data-rows", "the table has columns but no rows: add the records")
            return None, None

        self._convert()
        self._events()
        self._doses()
        self._compartments()
        self._observations()
        self._times()
        self._duplicates()
        self._covariates()
        # the normalised records cast EVID, MDV, ADDL, SS and whole-number IDs to integers: build them
        # only when every value passed its rule (the counts of the report are robust to bad values)
        return (None if p.items else self._records()), self._report()

    # -- value conversion
    def _convert(self) -> None:
        p = self.p
        for name in self.frame.columns:
            if "#" in name:
                continue
            number, text, present, nonnumeric, nonfinite, nonscalar = _split_column(self.frame[name])
            p.rows_where(
                "not-a-single-value",
                nonscalar,
                lambda i, name=name, text=text: (
                    f"{name} holds a {text[i]}, not a single value: give one number or text per cell"
                ),
                column=name,
            )
            kind = "number" if name in _NUMERIC else "mixed" if name in _NUMBER_OR_TEXT else "covariate"
            if kind == "covariate" and present.any() and not np.any(present & ~nonnumeric & ~nonfinite):
                kind = "text"  # a categorical covariate: no value is a number
            if kind == "mixed" and name == "ID" and np.any(nonnumeric):
                kind = "text"
            if kind in ("number", "covariate"):

                def message(i: int, name: str = name, text: np.ndarray = text, kind: str = kind) -> str:
                    value = text[i]
                    hint = ""
                    if _DECIMAL_COMMA.match(value):
                        hint = f" (a decimal comma? write {value.replace(',', '.')})"
                    text_rule = (
                        " (a covariate column is read as text only when none of its values is a number)"
                        if kind == "covariate"
                        else ""
                    )
                    return (
                        f"{name} value {value!r} is not a number{hint}: enter a number, or . for a missing "
                        f"value{text_rule}"
                    )

                p.rows_where("non-numeric", nonnumeric, message, column=name)
            p.rows_where(
                "not-finite",
                nonfinite,
                lambda i, name=name, text=text: (
                    f"{name} value {text[i]!r} is NaN or infinite (a number beyond ±1.8e308 also reads "
                    "as infinite): enter a finite number, or . (or an empty field) for a missing value"
                ),
                column=name,
            )
            invalid = nonnumeric if kind in ("number", "covariate") else np.zeros(self.n, bool)
            invalid = invalid | nonfinite | nonscalar
            if kind in ("number", "covariate"):
                number = np.where(invalid, np.nan, number)
                text_out = None
            elif kind == "text":
                text_out = np.where(present & ~nonfinite, text, None)
            else:  # numbers where they parse, text elsewhere (CMT and DVID names)
                text_out = (
                    np.where(present & ~nonfinite & nonnumeric, text, None) if nonnumeric.any() else None
                )
            self.cols[name] = _Column(number, text_out, present & ~nonfinite, invalid)

        for name, what in (("ID", "subject identifier"), ("TIME", "time")):
            col = self.cols[name]
            p.rows_where(
                "missing-value",
                ~col.present & ~col.invalid,
                lambda i, name=name, what=what: f"{name} is empty: every record needs its {what}; fill it in",
                column=name,
            )
        id_col = self.cols["ID"]
        if id_col.text is None:  # numeric IDs: beyond 2**53 distinct IDs can read as the same number
            huge = id_col.present & (np.abs(np.nan_to_num(id_col.number)) >= _MAX_EXACT)
            written = self.frame["ID"]  # as in the file: the float may have lost digits
            p.rows_where(
                "id-too-large",
                huge,
                lambda i: (
                    f"ID {str(written.iloc[i]).strip()} is too large to be kept exactly (numeric IDs must be "
                    "below 2^53 = 9007199254740992 in magnitude, or different IDs may merge): renumber the "
                    "subjects, or use text IDs such as S001"
                ),
                column="ID",
            )
            id_col.present = id_col.present & ~huge
            id_col.invalid = id_col.invalid | huge
        for name in ("EVID", "MDV"):
            col = self.cols.get(name)
            if col is not None:
                p.rows_where(
                    "missing-value",
                    ~col.present & ~col.invalid,
                    lambda i, name=name: (
                        f"{name} is empty: give it on every record "
                        + (
                            "(0 observation, 1 dose, 2 other, 3 reset, 4 reset and dose)"
                            if name == "EVID"
                            else "(0 when DV is used, 1 when not)"
                        )
                    ),
                    column=name,
                )

    # -- EVID and MDV
    def _events(self) -> None:
        p = self.p
        amt = self.num("AMT")
        self.evid_given = "EVID" in self.cols
        if self.evid_given:
            evid = self.cols["EVID"].number.copy()
            bad = ~np.isnan(evid) & ~np.isin(evid, (0, 1, 2, 3, 4))
            p.rows_where(
                "unknown-evid",
                bad,
                lambda i: (
                    f"EVID {_fmt(evid[i])} is not a NONMEM event type: use 0 (observation), 1 (dose), "
                    "2 (other), 3 (reset) or 4 (reset and dose)"
                ),
                column="EVID",
            )
            evid[bad] = np.nan
            self.cols["EVID"].invalid |= bad
        else:
            mdv_raw = self.num("MDV")
            evid = np.where(~np.isnan(amt) & (amt != 0), 1.0, np.where(mdv_raw == 1, 2.0, 0.0))
            evid[np.isnan(amt) & self.invalid("AMT")] = np.nan
        self.evid = evid

        if "MDV" in self.cols:
            mdv = self.cols["MDV"].number.copy()
            bad = ~np.isnan(mdv) & ~np.isin(mdv, (0, 1))
            p.rows_where(
                "bad-mdv",
                bad,
                lambda i: f"MDV {_fmt(mdv[i])} must be 0 (DV used) or 1 (DV missing or not used); correct it",
                column="MDV",
            )
            mdv[bad] = np.nan
            conflict = np.isin(evid, (1, 2, 3, 4)) & (mdv == 0)
            if self.evid_given:
                p.rows_where(
                    "evid-mdv-conflict",
                    conflict,
                    lambda i: (
                        f"EVID {_fmt(evid[i])} ({_EVID_MEANING[int(evid[i])]}) with MDV 0: only an "
                        "observation (EVID 0) can have a used DV; set MDV to 1"
                    ),
                    column="MDV",
                )
            else:
                p.rows_where(
                    "evid-mdv-conflict",
                    conflict,
                    lambda i: (
                        f"AMT {_fmt(amt[i])} makes this a dose record (there is no EVID column) but MDV "
                        "is 0, which marks an observation: set MDV to 1, or add an EVID column"
                    ),
                    column="MDV",
                )
        else:
            mdv = np.where(np.isnan(evid), np.nan, (evid != 0).astype(float))
        self.mdv = mdv
        self.dose = np.isin(evid, (1, 4))
        self.obs = evid == 0
        self.used = self.obs & (mdv == 0)

    # -- doses
    def _doses(self) -> None:
        p = self.p
        evid, dose, unit = self.evid, self.dose, self.dose_unit
        amt = self.num("AMT")
        known = ~np.isnan(evid)
        p.rows_where(
            "negative-amount",
            amt < 0,
            lambda i: (
                f"AMT {_fmt(amt[i])} is negative: a dose must be > 0 {unit}; enter the amount as a "
                "positive number"
            ),
            column="AMT",
        )
        no_amount = dose & (np.isnan(amt) | (amt == 0)) & ~self.invalid("AMT")
        p.rows_where(
            "dose-without-amount",
            no_amount,
            lambda i: (
                f"EVID {_fmt(evid[i])} ({_EVID_MEANING[int(evid[i])]}) has "
                f"{'no AMT' if np.isnan(amt[i]) else 'AMT 0'}: a dose needs AMT > 0 ({unit}); enter the "
                "amount, or use EVID 0 (observation), 2 (other) or 3 (reset) for a record without a dose"
            ),
            column="AMT",
        )
        p.rows_where(
            "amount-on-non-dose-record",
            known & ~dose & (amt > 0),
            lambda i: (
                f"AMT {_fmt(amt[i])} on an EVID {_fmt(evid[i])} ({_EVID_MEANING[int(evid[i])]}) record: "
                "only EVID 1 and 4 records give doses; set EVID to 1 (or 4), or clear AMT"
            ),
            column="AMT",
        )
        values = {f: self.num(f) for f in _DOSE_FIELDS}
        set_fields = {f: ~np.isnan(v) & (v != 0) for f, v in values.items()}
        misplaced = known & ~dose & np.logical_or.reduce(list(set_fields.values()))
        p.rows_where(
            "dose-fields-on-non-dose-record",
            misplaced,
            lambda i: (
                ", ".join(f"{f} {_fmt(values[f][i])}" for f in _DOSE_FIELDS if set_fields[f][i])
                + f" on an EVID {_fmt(evid[i])} ({_EVID_MEANING[int(evid[i])]}) record: these fields "
                "describe doses (EVID 1 or 4); clear them or correct EVID"
            ),
        )
        rate, dur, ii, addl, ss = (values[f] for f in _DOSE_FIELDS)
        model_rate = dose & np.isin(rate, (-1, -2))
        p.rows_where(
            "model-defined-rate",
            model_rate,
            lambda i: (
                f"RATE {_fmt(rate[i])} asks for a {'rate' if rate[i] == -1 else 'duration'} defined in the "
                "model (NONMEM R1/D1), which pkmodel does not support: give the infusion duration in a DUR "
                f"column (h) or the rate in RATE ({unit}/h)"
            ),
            column="RATE",
        )
        p.rows_where(
            "negative-rate",
            dose & (rate < 0) & ~model_rate,
            lambda i: (
                f"RATE {_fmt(rate[i])} is negative: give the infusion rate in {unit}/h (> 0), "
                "or 0 for a bolus"
            ),
            column="RATE",
        )
        p.rows_where(
            "negative-duration",
            dose & (dur < 0),
            lambda i: (
                f"DUR {_fmt(dur[i])} is negative: give the infusion duration in h (> 0), or 0 for a bolus"
            ),
            column="DUR",
        )
        p.rows_where(
            "rate-and-duration",
            dose & (rate > 0) & (dur > 0),
            lambda i: (
                f"both RATE {_fmt(rate[i])} and DUR {_fmt(dur[i])} are given: give one of them (RATE in "
                f"{unit}/h or DUR in h) and set the other to 0 or leave it empty"
            ),
        )
        p.rows_where(
            "negative-ii",
            dose & (ii < 0),
            lambda i: f"II {_fmt(ii[i])} is negative: the interdose interval is in h and must be > 0",
            column="II",
        )
        bad_addl = dose & ~np.isnan(addl) & ((addl < 0) | (addl != np.round(addl)) | (addl > MAX_ADDL))
        p.rows_where(
            "bad-addl",
            bad_addl,
            lambda i: (
                f"ADDL {_fmt(addl[i])} is more than {MAX_ADDL} additional doses on one record: correct it "
                "(a typo?), or split the doses over several dose records"
                if addl[i] > MAX_ADDL
                else f"ADDL {_fmt(addl[i])} must be a whole number >= 0 (the number of additional doses)"
            ),
            column="ADDL",
        )
        bad_ss = dose & ~np.isnan(ss) & ~np.isin(ss, (0, 1, 2))
        p.rows_where(
            "bad-ss",
            bad_ss,
            lambda i: f"SS {_fmt(ss[i])} must be 0 (none), 1 (reset to steady state) or 2 (add steady state)",
            column="SS",
        )
        has_ii = ii > 0
        p.rows_where(
            "addl-without-ii",
            dose & (addl > 0) & ~bad_addl & ~has_ii,
            lambda i: (
                f"ADDL {_fmt(addl[i])} without an interdose interval (II "
                f"{'empty' if np.isnan(ii[i]) else _fmt(ii[i])}): set II to the time between doses (h) or "
                "ADDL to 0"
            ),
            column="ADDL",
        )
        p.rows_where(
            "ss-without-ii",
            dose & (ss > 0) & ~bad_ss & ~has_ii,
            lambda i: (
                f"SS {_fmt(ss[i])} without an interdose interval (II "
                f"{'empty' if np.isnan(ii[i]) else _fmt(ii[i])}): steady state needs II > 0 (h); set II or "
                "SS to 0"
            ),
            column="SS",
        )
        p.rows_where(
            "ii-without-addl-or-ss",
            dose & has_ii & ~(addl > 0) & ~(ss > 0),
            lambda i: (
                f"II {_fmt(ii[i])} but ADDL and SS are 0, so the interval is not used: set ADDL (number of "
                "additional doses) or SS, or clear II"
            ),
            column="II",
        )
        time = self.num("TIME")
        repeats = np.where((addl > 0) & ~bad_addl & has_ii, addl, 0.0)
        interval = np.where(has_ii, ii, 0.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # overflow is a rule below
            duration = np.where(rate > 0, amt / rate, np.where(dur > 0, dur, 0.0))
            end = time + repeats * interval + duration
        p.rows_where(
            "dose-time-overflow",
            dose & np.isinf(end),
            lambda i: (
                f"AMT {_fmt(amt[i])} / RATE {_fmt(rate[i])} makes an infusion too long to represent "
                f"(over 1.8e308 h): correct RATE ({unit}/h) or AMT"
                if np.isinf(duration[i])
                else f"the doses of this record end at TIME + ADDL x II + infusion duration = "
                f"{_fmt(time[i])} + {_fmt(repeats[i])} x {_fmt(interval[i])} + {_fmt(duration[i])} h, beyond "
                "the largest representable time (1.8e308 h): correct TIME, II, ADDL or the infusion"
            ),
        )
        p.rows_where(
            "infusion-longer-than-ii",
            dose & has_ii & ((addl > 0) | (ss > 0)) & (duration > ii) & ~((rate > 0) & (dur > 0)),
            lambda i: (
                f"the infusion lasts {_fmt(duration[i])} h but repeats every II {_fmt(ii[i])} h: overlapping "
                "infusions of one record are not supported; shorten the infusion or lengthen II"
            ),
        )
        self.duration = duration
        self.addl_valid = np.where(np.isnan(addl) | bad_addl, 0.0, addl)

    # -- compartments
    def _compartments(self) -> None:
        p = self.p
        col = self.cols.get("CMT")
        self.cmt = np.full(self.n, None, dtype=object)
        if col is None:
            return
        number, text = col.number, col.text
        comps = self.compartments
        is_number = ~np.isnan(number)
        is_text = col.present & ~is_number
        whole = is_number & (number == np.round(number)) & (number >= 1) & (number < _MAX_EXACT)
        if comps is not None:
            valid_number = whole & (number <= len(comps))
            listing = ", ".join(f"{k} {c}" for k, c in enumerate(comps, start=1))
        else:
            valid_number = whole
            listing = ""
        names = text if text is not None else np.full(self.n, None, dtype=object)
        if comps is not None:
            valid_text = is_text & pd.Series(names).isin(comps).to_numpy()
        else:
            valid_text = is_text
        bad = (is_number & ~valid_number) | (is_text & ~valid_text)

        def message(i: int) -> str:
            value = _fmt(number[i]) if is_number[i] else repr(names[i])
            if comps is None:
                return (
                    f"CMT {value} is not a compartment number: use a whole number >= 1 (below 2^53) or a "
                    "compartment name"
                )
            hint = ""
            if is_text[i]:
                close = [c for c in comps if c.lower() == str(names[i]).lower()]
                if close:
                    hint = f" (names are case-sensitive: did you mean {close[0]!r}?)"
            return (
                f"CMT {value} is not a compartment of the model{hint}: use a number 1-{len(comps)} or a name "
                f"({listing})"
            )

        p.rows_where("unknown-cmt", bad, message, column="CMT")
        out = np.full(self.n, None, dtype=object)
        if comps is not None:
            index = np.where(valid_number, number, 1).astype(np.int64) - 1
            out[valid_number] = np.asarray(comps, dtype=object)[index[valid_number]]
        else:
            out[valid_number] = (
                pd.Series(number[valid_number]).astype(np.int64).astype(str).to_numpy(dtype=object)
            )
        out[valid_text] = names[valid_text]
        self.cmt = out

    # -- observations, DVID and BLQ
    def _observations(self) -> None:
        p = self.p
        obs, used = self.obs, self.used
        dv = self.num("DV")
        lloq = self.num("LLOQ")
        blq_flag = self.num("BLQ")
        self.dvid = np.full(self.n, None, dtype=object)

        # DVID
        outputs = self.outputs
        col = self.cols.get("DVID")
        if col is None:
            if outputs is not None and len(outputs) > 1:
                p.add(
                    "missing-dvid-column",
                    f"there is no DVID column but the model has {len(outputs)} outputs "
                    f"({', '.join(outputs)}): add a DVID column naming the output each observation measures",
                    column="DVID",
                )
            name = outputs[0] if outputs else _DEFAULT_OUTPUT
            self.dvid[obs] = name
        else:
            number = col.number
            text = col.text if col.text is not None else np.full(self.n, None, dtype=object)
            is_number = ~np.isnan(number)
            names = np.full(self.n, None, dtype=object)
            whole = is_number & (number == np.round(number)) & (number >= 1) & (number < _MAX_EXACT)
            if outputs is not None:
                ok_number = whole & (number <= len(outputs))
                idx = np.where(ok_number, number, 1).astype(np.int64) - 1
                names[ok_number] = np.asarray(outputs, dtype=object)[idx[ok_number]]
            else:
                ok_number = whole
                names[ok_number] = (
                    pd.Series(number[ok_number]).astype(np.int64).astype(str).to_numpy(dtype=object)
                )
            is_text = col.present & ~is_number
            names[is_text] = text[is_text]
            known = ok_number | (
                is_text & (pd.Series(text).isin(outputs).to_numpy() if outputs is not None else True)
            )
            p.rows_where(
                "observation-without-dvid",
                obs & ~col.present & ~col.invalid,
                lambda i: (
                    "observation (EVID 0) has no DVID: name the output it measures"
                    + (f" ({', '.join(outputs)})" if outputs else "")
                ),
                column="DVID",
            )

            def message(i: int) -> str:
                value = _fmt(number[i]) if is_number[i] else repr(text[i])
                if outputs is None:
                    return f"DVID {value} must be an output name or a whole number >= 1 (below 2^53)"
                close = [o for o in outputs if not is_number[i] and o.lower() == str(text[i]).lower()]
                hint = f" (names are case-sensitive: did you mean {close[0]!r}?)" if close else ""
                return (
                    f"DVID {value} is not an output of the model{hint}: the outputs are "
                    f"{', '.join(f'{k} {o}' for k, o in enumerate(outputs, start=1))}; correct the DVID"
                )

            unknown = obs & col.present & ~known
            p.rows_where("unknown-dvid", unknown, message, column="DVID")
            self.dvid[obs & ~unknown] = names[obs & ~unknown]

        # LLOQ and BLQ
        p.rows_where(
            "negative-lloq",
            lloq < 0,
            lambda i: f"LLOQ {_fmt(lloq[i])} is negative: the limit of quantification must be >= 0 (DV unit)",
            column="LLOQ",
        )
        has_flag = "BLQ" in self.cols
        bad_flag = ~np.isnan(blq_flag) & ~np.isin(blq_flag, (0, 1))
        p.rows_where(
            "bad-blq-flag",
            bad_flag,
            lambda i: f"BLQ {_fmt(blq_flag[i])} must be 1 (below the limit of quantification) or 0",
            column="BLQ",
        )
        flagged = blq_flag == 1
        has_lloq_col = "LLOQ" in self.cols
        p.rows_where(
            "blq-without-lloq",
            obs & flagged & ~(lloq > 0) & ~self.invalid("LLOQ"),
            lambda i: (
                "BLQ=1 but "
                + (
                    "there is no LLOQ column"
                    if not has_lloq_col
                    else f"LLOQ is {'empty' if np.isnan(lloq[i]) else _fmt(lloq[i])}"
                )
                + ": a BLQ observation needs its limit of quantification; give LLOQ (> 0, DV unit) on the "
                "record"
            ),
            column="BLQ",
        )
        p.rows_where(
            "blq-on-non-observation",
            ~np.isnan(self.evid) & ~obs & flagged,
            lambda i: (
                f"BLQ=1 on an EVID {_fmt(self.evid[i])} ({_EVID_MEANING[int(self.evid[i])]}) record: only "
                "observations can be below the limit; set BLQ to 0 or correct EVID"
            ),
            column="BLQ",
        )
        below = dv < lloq
        if has_flag:
            p.rows_where(
                "blq-flag-conflict",
                obs & below & (blq_flag == 0),
                lambda i: (
                    f"DV {_fmt(dv[i])} is below LLOQ {_fmt(lloq[i])} but BLQ is 0: set BLQ to 1, or correct "
                    "DV or LLOQ"
                ),
                column="BLQ",
            )
        p.rows_where(
            "observation-without-dv",
            used & np.isnan(dv) & ~flagged & ~self.invalid("DV"),
            lambda i: (
                "observation (EVID 0, MDV 0) has no DV: enter the measured value, set MDV to 1 to keep the "
                "record unused, or mark it BLQ=1 with its LLOQ"
            ),
            column="DV",
        )
        self.blq = obs & (below | flagged)

    # -- times and subject blocks
    def _times(self) -> None:
        p = self.p
        time = self.cols["TIME"].number
        id_col = self.cols["ID"]
        ids = id_col.text if id_col.text is not None else id_col.number
        id_ok = id_col.present
        self.ids_raw = ids
        p.rows_where(
            "negative-time",
            time < 0,
            lambda i: (
                f"TIME {_fmt(time[i])} is negative: pkmodel starts every subject at TIME 0 h; shift the "
                "times so that the first record is at 0 or later"
            ),
            column="TIME",
        )
        same = np.zeros(self.n, bool)
        if self.n > 1:
            same[1:] = id_ok[1:] & id_ok[:-1] & (ids[1:] == ids[:-1])
        prev_time = np.concatenate(([np.nan], time[:-1]))
        reset = np.isin(self.evid, (3, 4))
        backwards = same & (time < prev_time) & ~reset
        rows = self.p.rows
        p.rows_where(
            "time-backwards",
            backwards,
            lambda i: (
                f"TIME {_fmt(time[i])} h is earlier than TIME {_fmt(prev_time[i])} h on the {p.where} before "
                f"({rows[i - 1]}) of ID {_fmt(ids[i])}: a subject's records must be in time order (only an "
                "EVID 3 or 4 reset may restart time); sort them by TIME"
            ),
            column="TIME",
        )
        # an ID in two separate blocks
        block_start = id_ok & ~same
        positions = np.flatnonzero(block_start)
        starts = pd.DataFrame({"ID": pd.Series(ids[positions], dtype=object), "pos": positions})
        again = starts.duplicated("ID").to_numpy()
        if again.any():
            first_pos = starts.groupby("ID", sort=False)["pos"].transform("first").to_numpy()
            mask = np.zeros(self.n, bool)
            mask[positions[again]] = True
            first_of = dict(zip(positions[again], first_pos[again], strict=True))
            p.rows_where(
                "id-split",
                mask,
                lambda i: (
                    f"ID {_fmt(ids[i])} appears again after other subjects (its records start on {p.where} "
                    f"{rows[first_of[i]]}): keep all records of a subject together, sorted by TIME"
                ),
                column="ID",
            )

    # -- duplicate records
    def _duplicates(self) -> None:
        p = self.p
        keys = {
            "ID": pd.Series(self.ids_raw, dtype=object),
            "TIME": self.cols["TIME"].number,
            "EVID": self.evid,
        }
        if "CMT" in self.cols:
            keys["CMT"] = pd.Series(self.cmt, dtype=object)
        if "DVID" in self.cols:
            keys["DVID"] = pd.Series(np.where(self.obs, self.dvid, None), dtype=object)
        names = ", ".join(keys)
        # records of different reset periods may share a time: the period is part of the key
        period = np.cumsum(np.isin(self.evid, (3, 4)))
        valid = self.cols["ID"].present & ~np.isnan(self.cols["TIME"].number) & ~np.isnan(self.evid)
        # each key column as numbers (text and None by their factorisation codes): a record repeats an
        # earlier one when its whole row of key numbers does (np.unique over rows, first occurrences)
        columns = [
            pd.factorize(v, use_na_sentinel=False)[0] if v.dtype == object else np.asarray(v, dtype=float)
            for v in keys.values()
        ]
        table = np.column_stack([*columns, period])[valid].astype(float)
        positions = np.flatnonzero(valid)
        _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
        first_position = positions[first[np.ravel(inverse)]]
        repeated = first_position != positions
        if not repeated.any():
            return
        mask = np.zeros(self.n, bool)
        mask[positions[repeated]] = True
        first_of = dict(zip(positions.tolist(), first_position.tolist(), strict=True))
        rows = p.rows
        p.rows_where(
            "duplicate-record",
            mask,
            lambda i: (
                f"repeats {p.where} {rows[first_of[i]]} (same {names}): remove the repeated record, or for "
                "two doses at the same time into the same compartment give one record with the total AMT"
            ),
        )

    # -- covariates
    def _covariates(self) -> None:
        p = self.p
        ids = self.ids_raw
        for name in self.required_covariates:
            col = self.cols.get(name)
            if col is None:
                found = ", ".join(self.covariate_names) or "none"
                p.add(
                    "missing-covariate-column",
                    f"required covariate column {name} is absent (covariate columns found: {found}): add a "
                    f"{name} column with a value on every record",
                    column=name,
                )
                continue
            missing = ~col.present & ~col.invalid & self.cols["ID"].present
            if not missing.any():
                continue
            frame = pd.DataFrame({"ID": pd.Series(ids, dtype=object), "pos": np.arange(self.n)})[missing]
            groups = frame.groupby("ID", sort=False)["pos"]
            first = groups.transform("first").to_numpy()
            count = groups.transform("size").to_numpy()
            totals = pd.Series(ids, dtype=object)[self.cols["ID"].present].value_counts(dropna=False)
            mask = np.zeros(self.n, bool)
            mask[frame["pos"].to_numpy()[frame["pos"].to_numpy() == first]] = True
            count_of = dict(zip(frame["pos"].to_numpy(), count, strict=True))
            rows = p.rows
            positions_by_id = frame.groupby("ID", sort=False)["pos"].apply(list).to_dict()

            def message(
                i: int,
                name=name,
                count_of=count_of,
                positions_by_id=positions_by_id,
                totals=totals,
                rows=rows,
            ) -> str:
                where = positions_by_id[ids[i]]
                listed = ", ".join(str(rows[j]) for j in where[:8]) + (", ..." if len(where) > 8 else "")
                return (
                    f"covariate {name} is missing for ID {_fmt(ids[i])} on {count_of[i]} of its "
                    f"{totals[ids[i]]} records ({p.where}s {listed}): the model needs {name} on every "
                    "record; fill it in (repeat the last value if it does not change)"
                )

            p.rows_where("missing-covariate", mask, message, column=name)

    # -- outputs
    def _records(self) -> pd.DataFrame:
        def filled(name: str) -> np.ndarray:
            return np.nan_to_num(self.num(name), nan=0.0)

        # called only when every rule passed: IDs, EVID, MDV are present and finite, whole-number IDs are
        # below 2**53, ADDL is a whole number 0..MAX_ADDL and SS is 0, 1 or 2 (or empty), so the casts
        # to integers are exact
        id_col = self.cols["ID"]
        if id_col.text is not None:
            ids = id_col.text
        else:
            numbers = id_col.number
            ids = numbers.astype(np.int64) if np.all(numbers == np.round(numbers)) else numbers
        records = pd.DataFrame(
            {
                "ROW": self.p.rows.astype(np.int64),
                "ID": ids,
                "TIME": self.cols["TIME"].number,
                "EVID": self.evid.astype(np.int64),
                "MDV": self.mdv.astype(np.int64),
                "AMT": filled("AMT"),
                "RATE": filled("RATE"),
                "DUR": filled("DUR"),
                "CMT": pd.Series(self.cmt, dtype=object),
                "II": filled("II"),
                "ADDL": np.nan_to_num(self.num("ADDL"), nan=0.0).round().astype(np.int64),
                "SS": np.nan_to_num(self.num("SS"), nan=0.0).round().astype(np.int64),
                "DV": self.num("DV"),
                "DVID": pd.Series(self.dvid, dtype=object),
                "LLOQ": self.num("LLOQ"),
                "BLQ": self.blq,
            }
        )
        if self.covariate_names:
            # joined at once: inserting columns one by one fragments the frame (a pandas
            # PerformanceWarning from about 100 covariate columns on, and quadratic time)
            covariates = pd.DataFrame(
                {
                    name: self.cols[name].number
                    if self.cols[name].text is None
                    else pd.Series(self.cols[name].text, dtype=object)
                    for name in self.covariate_names
                },
                index=records.index,
            )
            records = pd.concat([records, covariates], axis=1)
        return records

    def _report(self) -> DatasetReport:
        evid, used = self.evid, self.used
        excluded: dict[str, int] = {}
        n_mdv = int(np.sum(self.obs & (self.mdv == 1)))
        if n_mdv:
            excluded["observation with MDV=1"] = n_mdv
        n_other = int(np.sum(evid == 2))
        if n_other:
            excluded["EVID 2 record (other event)"] = n_other
        excluded.update(self.lines_excluded)
        by_output = pd.Series(self.dvid[used]).value_counts(dropna=False).sort_index()
        id_col = self.cols["ID"]
        ids = id_col.text if id_col.text is not None else id_col.number
        # pre-dose observations: used observations before their subject's first dose record
        codes, uniques = pd.factorize(pd.Series(ids, dtype=object))
        codes = np.where(id_col.present, codes, -1)
        dose_positions = np.flatnonzero(self.dose & (codes >= 0))
        # one slot per ID plus a last one for records without a valid ID (code -1, never pre-dose)
        first_dose = np.full(len(uniques) + 1, self.n)  # n: no dose, every observation is before it
        first_dose[-1] = -1
        dosed, first = np.unique(codes[dose_positions], return_index=True)
        first_dose[dosed] = dose_positions[first]
        predose = used & (np.arange(self.n) < first_dose[codes])
        return DatasetReport(
            n_records=self.n,
            n_subjects=int(pd.Series(ids[id_col.present], dtype=object).nunique()),
            n_observations=int(np.sum(used)),
            n_doses=int(np.sum(self.dose)),
            n_administrations=int(np.sum(np.where(self.dose, self.addl_valid + 1, 0))),
            n_blq=int(np.sum(self.blq & used)),
            n_resets=int(np.sum(np.isin(evid, (3, 4)))),
            observations_by_output={str(k): int(v) for k, v in by_output.items()},
            excluded=excluded,
            n_predose=int(np.sum(predose)),
        )
