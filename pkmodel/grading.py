"""CTCAE v5.0 grading of neutrophil and white-blood-cell counts, and summaries of count time courses.

Grades follow the Common Terminology Criteria for Adverse Events v5.0 (NCI, 2017), terms
"Neutrophil count decreased" and "White blood cell decreased", with counts in 10^9/L:

========  ==========================  ==========================
grade     absolute neutrophil count   white blood cells
========  ==========================  ==========================
0         >= LLN                      >= LLN
1         < LLN and >= 1.5            < LLN and >= 3.0
2         < 1.5 and >= 1.0            < 3.0 and >= 2.0
3         < 1.0 and >= 0.5            < 2.0 and >= 1.0
4         < 0.5                       < 1.0
========  ==========================  ==========================

A value equal to a boundary belongs to the milder grade (ANC 1.0 is grade 2, 0.5 is grade 3).

The lower limit of normal (LLN) is laboratory-specific; the defaults here (ANC 2.0, WBC 4.0
×10^9/L) are common adult reference limits, not part of CTCAE.  Pass the LLN of the laboratory
that measured the counts.  A value at or above the LLN is grade 0 even if it is below an absolute
boundary: with an LLN at or below the grade-2 boundary (ANC LLN <= 1.5) grade 1 is empty, and every
value below the LLN is graded 2 or worse by the absolute boundaries.  In general a grade whose
range lies entirely at or above the LLN is empty.

The time-course summaries (:func:`summarize_course`, :func:`summarize_courses`) report the worst
grade and the nadir from the *observed samples*, and the time spent at or beyond each grade from
the course *linearly interpolated* between consecutive samples (no extrapolation before the first
or after the last sample).

References
----------
National Cancer Institute. Common Terminology Criteria for Adverse Events (CTCAE) v5.0,
27 November 2017. https://ctep.cancer.gov/protocoldevelopment/electronic_applications/ctc.htm
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pkmodel.errors import GradingError

__all__ = [
    "ANC_BOUNDARIES",
    "DEFAULT_LLN",
    "WBC_BOUNDARIES",
    "CourseSummary",
    "CourseTables",
    "CycleSummary",
    "grade_anc",
    "grade_counts",
    "grade_thresholds",
    "grade_wbc",
    "summarize_course",
    "summarize_courses",
]

#: Lower bounds (10^9/L) of CTCAE grades 1, 2 and 3 for neutrophil count decreased; grade 4 is below
#: the last one.  Grade 1 starts below the LLN.
ANC_BOUNDARIES: tuple[float, float, float] = (1.5, 1.0, 0.5)

#: Lower bounds (10^9/L) of CTCAE grades 1, 2 and 3 for white blood cell decreased.
WBC_BOUNDARIES: tuple[float, float, float] = (3.0, 2.0, 1.0)

#: Default lower limits of normal (10^9/L), laboratory-specific; override with ``lln=``.
DEFAULT_LLN: Mapping[str, float] = {"anc": 2.0, "wbc": 4.0}

_BOUNDARIES = {"anc": ANC_BOUNDARIES, "wbc": WBC_BOUNDARIES}
_LABEL = {"anc": "ANC", "wbc": "WBC"}
#: Counts above this (10^9/L) are taken as a unit mistake (cells/µL instead of 10^9/L).
_IMPLAUSIBLE = 1000.0


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python scalar, so that messages read ``2``, not ``np.int64(2)``."""
    return value.item() if isinstance(value, np.generic) else value


def _check_kind(kind: str) -> str:
    if kind not in _BOUNDARIES:
        raise GradingError(
            f"kind={kind!r} is not a graded count; use kind='anc' (neutrophil count decreased) "
            "or kind='wbc' (white blood cell decreased)"
        )
    return kind


def _check_lln(lln: float | None, kind: str) -> float:
    if lln is None:
        return DEFAULT_LLN[kind]
    try:
        value = float(lln)
    except (TypeError, ValueError):
        raise GradingError(
            f"{_LABEL[kind]} lower limit of normal lln={lln!r} is not a number; "
            "pass the laboratory's LLN in 10^9/L, e.g. lln=2.0"
        ) from None
    if not (math.isfinite(value) and 0.0 < value <= _IMPLAUSIBLE):
        raise GradingError(
            f"{_LABEL[kind]} lower limit of normal lln={lln!r} must be finite, positive and in "
            f"10^9/L (at most {_IMPLAUSIBLE:g}); pass the laboratory's LLN, e.g. "
            f"lln={DEFAULT_LLN[kind]}"
        )
    return value


def _check_counts(values: Any, kind: str) -> np.ndarray:
    label = _LABEL[kind]
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise GradingError(
            f"{label} values must be numbers in 10^9/L; convert the input to a numeric array"
        ) from None
    bad = ~np.isfinite(arr) | (arr < 0.0)
    if np.any(bad):
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        index = where[0] if len(where) == 1 else where
        raise GradingError(
            f"{label} value {float(arr[where])!r} at index {index} cannot be graded: counts must be finite "
            f"and non-negative ({int(bad.sum())} such value(s)); remove or impute the sample first"
        )
    big = arr > _IMPLAUSIBLE
    if np.any(big):
        where = tuple(int(i) for i in np.argwhere(big)[0])
        index = where[0] if len(where) == 1 else where
        raise GradingError(
            f"{label} value {float(arr[where])!r} at index {index} exceeds {_IMPLAUSIBLE:g} ×10^9/L, "
            "which is not a plausible count; counts must be in 10^9/L (divide cells/µL by 1000)"
        )
    return arr


def grade_thresholds(kind: str = "anc", lln: float | None = None) -> tuple[float, float, float, float]:
    """Return the count below which each CTCAE grade 1-4 (or worse) is reached.

    A value ``v`` has grade ``>= g`` exactly when ``v < thresholds[g - 1]``.  Threshold 1 is the
    LLN; threshold ``g >= 2`` is ``min(LLN, boundary)``, because a value at or above the LLN is
    grade 0.

    Parameters
    ----------
    kind : {"anc", "wbc"}
        Neutrophil count decreased or white blood cell decreased.
    lln : float, optional
        Lower limit of normal in 10^9/L; default ``DEFAULT_LLN[kind]`` (ANC 2.0, WBC 4.0).

    Returns
    -------
    tuple of 4 float
        Thresholds for grades >= 1, >= 2, >= 3 and 4, in 10^9/L, non-increasing.

    Examples
    --------
    >>> grade_thresholds("anc", lln=2.0)
    (2.0, 1.5, 1.0, 0.5)
    >>> grade_thresholds("wbc", lln=3.5)
    (3.5, 3.0, 2.0, 1.0)
    >>> grade_thresholds("anc", lln=1.2)  # grade 1 empty, grade 2 starts below the LLN
    (1.2, 1.2, 1.0, 0.5)
    """
    kind = _check_kind(kind)
    limit = _check_lln(lln, kind)
    b1, b2, b3 = _BOUNDARIES[kind]
    return (limit, min(limit, b1), min(limit, b2), min(limit, b3))


def grade_counts(values: Any, *, kind: str = "anc", lln: float | None = None) -> np.ndarray:
    """Grade blood counts by CTCAE v5.0 (vectorised).

    Parameters
    ----------
    values : array_like, any shape
        Counts in 10^9/L; finite and non-negative.
    kind : {"anc", "wbc"}
        Neutrophil count decreased or white blood cell decreased.
    lln : float, optional
        Laboratory lower limit of normal in 10^9/L; default ``DEFAULT_LLN[kind]``.

    Returns
    -------
    numpy.ndarray of int, same shape as `values`
        Grades 0-4 (a 0-d array for scalar input).

    Raises
    ------
    GradingError
        A value is NaN, infinite, negative or above 1000 (a unit mistake); `lln` invalid.

    Examples
    --------
    >>> grade_counts([4.0, 2.5, 1.9, 0.9], kind="wbc")
    array([0, 2, 3, 4])
    """
    kind = _check_kind(kind)
    thresholds = np.asarray(grade_thresholds(kind, lln))
    arr = _check_counts(values, kind)
    return (arr[..., None] < thresholds).sum(axis=-1).astype(int)


def grade_anc(values: Any, lln: float | None = None) -> np.ndarray:
    """Grade absolute neutrophil counts by CTCAE v5.0 "Neutrophil count decreased".

    Grade 1: < LLN - 1.5; grade 2: < 1.5 - 1.0; grade 3: < 1.0 - 0.5; grade 4: < 0.5 ×10^9/L.
    A value on a boundary takes the milder grade; a value >= LLN is grade 0.

    Parameters
    ----------
    values : array_like, any shape
        Absolute neutrophil counts in 10^9/L; finite and non-negative.
    lln : float, optional
        Laboratory lower limit of normal in 10^9/L (lab-specific); default 2.0.

    Returns
    -------
    numpy.ndarray of int, same shape as `values`
        Grades 0-4.

    Raises
    ------
    GradingError
        A value is NaN, infinite, negative or above 1000 ×10^9/L.

    Examples
    --------
    >>> grade_anc([2.1, 1.5, 1.0, 0.5, 0.49])
    array([0, 1, 2, 3, 4])
    """
    return grade_counts(values, kind="anc", lln=lln)


def grade_wbc(values: Any, lln: float | None = None) -> np.ndarray:
    """Grade white blood cell counts by CTCAE v5.0 "White blood cell decreased".

    Grade 1: < LLN - 3.0; grade 2: < 3.0 - 2.0; grade 3: < 2.0 - 1.0; grade 4: < 1.0 ×10^9/L.
    A value on a boundary takes the milder grade; a value >= LLN is grade 0.

    Parameters
    ----------
    values : array_like, any shape
        White blood cell counts in 10^9/L; finite and non-negative.
    lln : float, optional
        Laboratory lower limit of normal in 10^9/L (lab-specific); default 4.0.

    Returns
    -------
    numpy.ndarray of int, same shape as `values`
        Grades 0-4.

    Raises
    ------
    GradingError
        A value is NaN, infinite, negative or above 1000 ×10^9/L.

    Examples
    --------
    >>> grade_wbc([[4.0, 3.0], [2.0, 0.99]])
    array([[0, 1],
           [2, 4]])
    """
    return grade_counts(values, kind="wbc", lln=lln)


# --------------------------------------------------------------------------------------------------
# time courses


def _time_below(times: np.ndarray, values: np.ndarray, level: float, start: float, end: float) -> float:
    """Measure of {t in [start, end]: v(t) < level} for the piecewise-linear interpolant of the samples.

    On a segment [t0, t1] with values v0, v1 the set where v < level is one interval: the whole
    segment, nothing, or the part before/after the crossing time t0 + (level - v0)/(v1 - v0)·(t1 - t0).
    """
    if end <= start or times.size < 2:
        return 0.0
    t0, t1 = times[:-1], times[1:]
    v0, v1 = values[:-1], values[1:]
    below0, below1 = v0 < level, v1 < level
    lo = t0.copy()
    hi = t1.copy()
    crossing = below0 != below1
    with np.errstate(divide="ignore", invalid="ignore"):
        tc = t0 + (level - v0) / (v1 - v0) * (t1 - t0)
    # falling through the level: below from the crossing to t1; rising: below from t0 to the crossing
    lo = np.where(crossing & ~below0, tc, lo)
    hi = np.where(crossing & below0, tc, hi)
    active = below0 | below1
    lo = np.clip(lo, start, end)
    hi = np.clip(hi, start, end)
    return float(np.sum(np.where(active, np.maximum(hi - lo, 0.0), 0.0)))


@dataclass(frozen=True)
class CycleSummary:
    """Summary of one treatment cycle of a count time course.

    Attributes
    ----------
    cycle : int
        1-based cycle number.
    start : float
        Cycle start (h); the cycle is ``[start, next start)``, the last one ends at the last sample.
    end : float
        Start of the next cycle (h), or ``inf`` for the last cycle.
    window_start, window_end : float
        Part of the cycle covered by samples and interpolation (h); NaN if the cycle has no coverage.
    n_samples : int
        Samples with ``start <= t < end``.
    worst_grade : int or None
        Worst grade among those samples; None if there are none.
    nadir : float
        Lowest sampled count in the cycle (10^9/L); NaN if no samples.
    time_to_nadir : float
        Time of the (first) nadir sample after the cycle start (h); NaN if no samples.
    hours_at_grade : tuple of 4 float
        Hours of the interpolated course inside the window at grade >= 1, >= 2, >= 3 and 4.
    """

    cycle: int
    start: float
    end: float
    window_start: float
    window_end: float
    n_samples: int
    worst_grade: int | None
    nadir: float
    time_to_nadir: float
    hours_at_grade: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """Flat dictionary (``hours_grade_ge1`` ... ``hours_grade_ge4``), for tables."""
        row: dict[str, Any] = {
            "cycle": self.cycle,
            "start_h": self.start,
            "end_h": self.end,
            "window_start_h": self.window_start,
            "window_end_h": self.window_end,
            "n_samples": self.n_samples,
            "worst_grade": self.worst_grade,
            "nadir": self.nadir,
            "time_to_nadir_h": self.time_to_nadir,
        }
        for grade, hours in enumerate(self.hours_at_grade, start=1):
            row[f"hours_grade_ge{grade}"] = hours
        return row


@dataclass(frozen=True)
class CourseSummary:
    """CTCAE summary of one subject's count time course.

    Attributes
    ----------
    kind : str
        ``"anc"`` or ``"wbc"``.
    lln : float
        Lower limit of normal used (10^9/L).
    thresholds : tuple of 4 float
        Count below which grade >= 1, 2, 3, 4 holds (see :func:`grade_thresholds`).
    baseline : float
        Last sample at or before the first cycle start (10^9/L); NaN if none.
    baseline_grade : int or None
        Grade of `baseline`.
    worst_grade : int
        Worst grade among the on-treatment samples (time >= first cycle start).
    nadir : float
        Lowest on-treatment sample (10^9/L).
    time_to_nadir : float
        Time of the first nadir sample after the first cycle start (h).
    hours_at_grade : tuple of 4 float
        Hours at grade >= 1, >= 2, >= 3 and 4 of the linearly interpolated course between the first
        cycle start (or the first sample, if later) and the last sample.
    cycles : tuple of CycleSummary
        One entry per cycle start.
    """

    kind: str
    lln: float
    thresholds: tuple[float, float, float, float]
    baseline: float
    baseline_grade: int | None
    worst_grade: int
    nadir: float
    time_to_nadir: float
    hours_at_grade: tuple[float, float, float, float]
    cycles: tuple[CycleSummary, ...]

    def to_dict(self) -> dict[str, Any]:
        """Flat dictionary of the subject-level summary (no per-cycle entries)."""
        row: dict[str, Any] = {
            "kind": self.kind,
            "lln": self.lln,
            "baseline": self.baseline,
            "baseline_grade": self.baseline_grade,
            "worst_grade": self.worst_grade,
            "nadir": self.nadir,
            "time_to_nadir_h": self.time_to_nadir,
        }
        for grade, hours in enumerate(self.hours_at_grade, start=1):
            row[f"hours_grade_ge{grade}"] = hours
        return row

    def to_frame(self) -> pd.DataFrame:
        """One-row DataFrame of the subject-level summary (grades as nullable ``Int64``)."""
        return _int_columns(pd.DataFrame([self.to_dict()]), ("baseline_grade", "worst_grade"))

    def cycle_frame(self) -> pd.DataFrame:
        """DataFrame with one row per cycle (grades as nullable ``Int64``)."""
        return _int_columns(
            pd.DataFrame([c.to_dict() for c in self.cycles]), ("cycle", "n_samples", "worst_grade")
        )


def _int_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    for col in columns:
        frame[col] = pd.array(
            [None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in frame[col]],
            dtype="Int64",
        )
    return frame


def _check_times(times: Any, n: int, what: str) -> np.ndarray:
    try:
        t = np.asarray(times, dtype=float)
    except (TypeError, ValueError):
        raise GradingError(f"{what} must be numbers in h; convert them to a numeric array") from None
    if t.ndim != 1:
        raise GradingError(f"{what} must be 1-D (times along axis 0), got shape {t.shape}")
    if t.size != n:
        raise GradingError(f"times has {t.size} entries but values has {n}; pass one time (h) per sample")
    if n == 0:
        raise GradingError("the course has no samples; pass at least one (time, value) pair")
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise GradingError(
            f"{what}[{bad[0]}] = {float(t[bad[0]])!r} is not finite; every sample needs a time in h"
        )
    step = np.diff(t)
    bad = np.flatnonzero(step <= 0)
    if bad.size:
        i = int(bad[0])
        rule = "duplicates" if step[i] == 0 else "is earlier than"
        raise GradingError(
            f"{what}[{i + 1}] = {float(t[i + 1])!r} {rule} {what}[{i}] = {float(t[i])!r}; times must be "
            "strictly increasing: sort the samples and merge or remove repeated times"
        )
    return t


def _check_cycle_starts(cycle_starts: Any, last_time: float) -> np.ndarray:
    if cycle_starts is None:
        starts = np.array([0.0])
    else:
        try:
            starts = np.atleast_1d(np.asarray(cycle_starts, dtype=float))
        except (TypeError, ValueError):
            raise GradingError("cycle_starts must be numbers (h); pass e.g. cycle_starts=[0, 504]") from None
    if starts.ndim != 1 or starts.size == 0:
        raise GradingError(
            f"cycle_starts must be a non-empty 1-D sequence of times in h, got shape {starts.shape}"
        )
    if not np.all(np.isfinite(starts)):
        raise GradingError(f"cycle_starts {starts.tolist()} contain a non-finite value; give times in h")
    if np.any(np.diff(starts) <= 0):
        raise GradingError(
            f"cycle_starts {starts.tolist()} must be strictly increasing; sort them and remove repeats"
        )
    if starts[0] > last_time:
        raise GradingError(
            f"the first cycle starts at {starts[0]:g} h, after the last sample ({last_time:g} h): "
            "there is no on-treatment sample; check cycle_starts and the time origin of the samples"
        )
    return starts


def _summarize_window(
    t: np.ndarray, v: np.ndarray, grades: np.ndarray, thresholds: Sequence[float], start: float, end: float
) -> tuple[int, int | None, float, float, float, float, tuple[float, float, float, float]]:
    """Samples in [start, end) and interpolated durations over the covered part of [start, end]."""
    inside = (t >= start) & (t < end) if math.isfinite(end) else t >= start
    n = int(inside.sum())
    if n:
        idx = np.flatnonzero(inside)
        k = idx[int(np.argmin(v[idx]))]  # argmin returns the first minimum: first nadir sample
        worst: int | None = int(grades[idx].max())
        nadir, time_to_nadir = float(v[k]), float(t[k] - start)
    else:
        worst, nadir, time_to_nadir = None, math.nan, math.nan
    lo, hi = max(start, t[0]), min(end, t[-1])
    if hi < lo or (hi == lo and n == 0):
        lo = hi = math.nan
        hours = (0.0, 0.0, 0.0, 0.0)
    else:
        h = [_time_below(t, v, level, lo, hi) for level in thresholds]
        hours = (h[0], h[1], h[2], h[3])
    return n, worst, nadir, time_to_nadir, lo, hi, hours


def summarize_course(
    times: Any,
    values: Any,
    *,
    kind: str = "anc",
    cycle_starts: Any = None,
    lln: float | None = None,
) -> CourseSummary:
    """Summarise one subject's ANC or WBC time course by CTCAE v5.0 grade, overall and per cycle.

    Cycle ``k`` covers ``[cycle_starts[k], cycle_starts[k+1])`` (half-open: a sample at the next start,
    such as a pre-dose count, belongs to the next cycle); the last cycle ends at the last sample.
    Samples before the first cycle start are pre-treatment: they give `baseline` and are not part of
    the on-treatment summary.  Worst grade and nadir come from the observed samples; the hours at
    grade >= g are the time the course, linearly interpolated between consecutive samples, spends
    below ``thresholds[g-1]`` (crossing time ``t0 + (x - v0)/(v1 - v0)·(t1 - t0)``), counted only
    between the first cycle start (or first sample, if later) and the last sample.  Because the
    interpolation joins samples across a cycle boundary, a cycle can accrue hours at a grade that none
    of its own samples shows.

    Parameters
    ----------
    times : array_like, shape (n,)
        Sample times in h, strictly increasing, same time origin as `cycle_starts`.
    values : array_like, shape (n,)
        Counts in 10^9/L, finite and non-negative.
    kind : {"anc", "wbc"}
        Neutrophil count decreased or white blood cell decreased.
    cycle_starts : array_like of float, shape (m,), optional
        Cycle start (dose) times in h, strictly increasing; default ``[0.0]`` (one cycle from a dose
        at time 0).  Time to nadir is relative to the first start (overall) or the cycle's start.
    lln : float, optional
        Laboratory lower limit of normal in 10^9/L; default ``DEFAULT_LLN[kind]``.

    Returns
    -------
    CourseSummary
        Frozen; ``to_frame()`` gives one row, ``cycle_frame()`` one row per cycle.

    Raises
    ------
    GradingError
        Bad values (see :func:`grade_counts`), times not strictly increasing or not matching the
        values, bad cycle starts, or no sample at or after the first cycle start.

    Examples
    --------
    >>> s = summarize_course([0, 100, 200, 300], [3.0, 0.5, 1.5, 3.0], cycle_starts=[0, 300])
    >>> s.worst_grade, s.nadir, s.time_to_nadir
    (3, 0.5, 100.0)
    >>> [c.worst_grade for c in s.cycles]
    [3, 0]
    >>> round(s.hours_at_grade[2], 9)  # below 1.0 from 80 h to 150 h
    70.0
    """
    kind = _check_kind(kind)
    thresholds = grade_thresholds(kind, lln)
    v = _check_counts(values, kind)
    if v.ndim != 1:
        raise GradingError(f"values must be 1-D (times along axis 0), got shape {v.shape}")
    t = _check_times(times, v.size, "times")
    starts = _check_cycle_starts(cycle_starts, float(t[-1]))
    grades = (v[:, None] < np.asarray(thresholds)).sum(axis=1)

    pre = np.flatnonzero(t <= starts[0])
    baseline = float(v[pre[-1]]) if pre.size else math.nan
    baseline_grade = int(grades[pre[-1]]) if pre.size else None

    _, worst, nadir, ttn, _, _, hours = _summarize_window(t, v, grades, thresholds, starts[0], math.inf)
    assert worst is not None  # _check_cycle_starts guarantees a sample at or after the first start
    ends = [*starts[1:].tolist(), math.inf]
    cycles = []
    for number, (start, end) in enumerate(zip(starts.tolist(), ends, strict=True), start=1):
        n, cw, cn, ct, lo, hi, ch = _summarize_window(t, v, grades, thresholds, start, end)
        cycles.append(CycleSummary(number, start, end, lo, hi, n, cw, cn, ct, ch))
    return CourseSummary(
        kind=kind,
        lln=thresholds[0],
        thresholds=thresholds,
        baseline=baseline,
        baseline_grade=baseline_grade,
        worst_grade=worst,
        nadir=nadir,
        time_to_nadir=ttn,
        hours_at_grade=hours,
        cycles=tuple(cycles),
    )


class CourseTables(NamedTuple):
    """Result of :func:`summarize_courses`: a subject table and a cycle table (both tidy)."""

    subjects: pd.DataFrame
    cycles: pd.DataFrame


def summarize_courses(
    frame: pd.DataFrame,
    *,
    id_col: str = "ID",
    time_col: str = "TIME",
    value_col: str = "value",
    kind: str = "anc",
    cycle_starts: Any = None,
    lln: float | None = None,
) -> CourseTables:
    """Summarise many subjects' count time courses (see :func:`summarize_course`).

    Rows are grouped by `id_col` and sorted by time within each subject (stable sort; the input
    frame is not modified).

    Parameters
    ----------
    frame : pandas.DataFrame
        Long format: one row per sample, with columns `id_col`, `time_col` (h) and `value_col`
        (10^9/L).
    id_col, time_col, value_col : str
        Column names.
    kind : {"anc", "wbc"}
        Neutrophil count decreased or white blood cell decreased.
    cycle_starts : array_like or mapping, optional
        Cycle start times in h, common to all subjects, or a mapping ``{subject id: starts}`` that
        must cover every subject.  Default ``[0.0]``.
    lln : float, optional
        Laboratory lower limit of normal in 10^9/L; default ``DEFAULT_LLN[kind]``.

    Returns
    -------
    CourseTables
        ``subjects``: one row per subject (first column `id_col`), ``cycles``: one row per subject
        and cycle.

    Raises
    ------
    GradingError
        Missing columns, a missing or invalid value (naming the frame row label), repeated times
        within a subject, or a subject missing from a `cycle_starts` mapping.

    Examples
    --------
    >>> df = pd.DataFrame({"ID": [1, 1, 1, 2, 2], "TIME": [0, 168, 336, 0, 168],
    ...                    "value": [3.0, 0.4, 2.5, 2.5, 1.2]})
    >>> tables = summarize_courses(df)
    >>> tables.subjects[["ID", "worst_grade", "nadir"]].to_string(index=False)
    ' ID  worst_grade  nadir\\n  1            4    0.4\\n  2            2    1.2'
    """
    kind = _check_kind(kind)
    if len(frame) == 0:
        raise GradingError("the frame has no rows; pass one row per sample (subject, time in h, count)")
    missing = [c for c in (id_col, time_col, value_col) if c not in frame.columns]
    if missing:
        raise GradingError(
            f"column(s) {missing} not in the frame (columns: {list(frame.columns)}); "
            "pass id_col=, time_col=, value_col= naming the subject, time (h) and count columns"
        )
    for col in (id_col, time_col, value_col):
        na = frame[col].isna().to_numpy()
        if na.any():
            label = frame.index[int(np.flatnonzero(na)[0])]
            raise GradingError(
                f"row {_plain(label)!r}: column {col!r} is missing ({int(na.sum())} missing in total); "
                "every sample needs a subject, a time and a count: drop or impute those rows"
            )
    subject_rows: list[dict[str, Any]] = []
    cycle_rows: list[dict[str, Any]] = []
    for subject, group in frame.groupby(id_col, sort=True):
        key = subject[0] if isinstance(subject, tuple) else subject
        group = group.sort_values(time_col, kind="stable")
        if isinstance(cycle_starts, Mapping):
            if key not in cycle_starts:
                raise GradingError(
                    f"subject {id_col}={_plain(key)!r} has no entry in cycle_starts; "
                    "add its cycle start times (h)"
                )
            starts = cycle_starts[key]
        else:
            starts = cycle_starts
        try:
            summary = summarize_course(
                group[time_col].to_numpy(dtype=float),
                group[value_col].to_numpy(dtype=float),
                kind=kind,
                cycle_starts=starts,
                lln=lln,
            )
        except GradingError as err:
            raise GradingError(f"subject {id_col}={_plain(key)!r} (rows sorted by time): {err}") from None
        except (TypeError, ValueError):
            raise GradingError(
                f"subject {id_col}={_plain(key)!r}: columns {time_col!r} and {value_col!r} must be numeric"
            ) from None
        subject_rows.append({id_col: key, **summary.to_dict()})
        cycle_rows.extend({id_col: key, **c.to_dict()} for c in summary.cycles)
    subjects = _int_columns(pd.DataFrame(subject_rows), ("baseline_grade", "worst_grade"))
    cycles = _int_columns(pd.DataFrame(cycle_rows), ("cycle", "n_samples", "worst_grade"))
    return CourseTables(subjects=subjects, cycles=cycles)
