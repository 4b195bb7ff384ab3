"""Tests of pkmodel.grading: CTCAE v5.0 grades of ANC/WBC and count time-course summaries.

Oracles: the CTCAE v5.0 boundary table (NCI CTCAE v5.0, 2017; transcribed in
shared/reference/literature/README.md section 5), crossing times of piecewise-linear courses computed
by hand in the comments, and a dense-grid measure of {t: v(t) < x} with numpy.interp.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pkmodel.errors import GradingError, PkmodelError
from pkmodel.grading import (
    grade_anc,
    grade_counts,
    grade_thresholds,
    grade_wbc,
    summarize_course,
    summarize_courses,
)

# --------------------------------------------------------------------------------------------------
# boundary tables (CTCAE v5.0; a value on a boundary takes the milder grade)

ANC_TABLE = [  # (value ×10^9/L, grade) with LLN 2.0
    (2.50, 0),
    (2.00, 0),  # = LLN: normal
    (1.99, 1),
    (1.50, 1),  # boundary 1.5 belongs to grade 1
    (1.49, 2),
    (1.00, 2),  # boundary 1.0 belongs to grade 2
    (0.99, 3),
    (0.50, 3),  # boundary 0.5 belongs to grade 3
    (0.49, 4),
    (0.00, 4),
]

WBC_TABLE = [  # with LLN 4.0
    (5.00, 0),
    (4.00, 0),
    (3.99, 1),
    (3.00, 1),
    (2.99, 2),
    (2.00, 2),
    (1.99, 3),
    (1.00, 3),
    (0.99, 4),
    (0.00, 4),
]


@pytest.mark.parametrize(("value", "grade"), ANC_TABLE)
def test_anc_boundary_table(value, grade):
    assert grade_anc([value], lln=2.0).tolist() == [grade]


@pytest.mark.parametrize(("value", "grade"), WBC_TABLE)
def test_wbc_boundary_table(value, grade):
    assert grade_wbc([value], lln=4.0).tolist() == [grade]


def test_vectorised_grading_keeps_shape_and_int_dtype():
    values = np.array([v for v, _ in ANC_TABLE]).reshape(2, 5)
    grades = grade_anc(values, lln=2.0)
    assert grades.shape == (2, 5)
    assert np.issubdtype(grades.dtype, np.integer)
    assert grades.ravel().tolist() == [g for _, g in ANC_TABLE]
    assert grade_wbc(2.5).shape == ()
    assert int(grade_wbc(2.5)) == 2


def test_default_lln_is_documented_value():
    # defaults: ANC LLN 2.0, WBC LLN 4.0 (×10^9/L); 1.9 < 2.0 is grade 1, 3.9 < 4.0 grade 1
    assert grade_anc([1.9, 2.0]).tolist() == [1, 0]
    assert grade_wbc([3.9, 4.0]).tolist() == [1, 0]


def test_lab_specific_lln_moves_only_grade_1():
    # LLN 1.8: 1.85 is normal, 1.75 grade 1; the absolute boundaries do not move
    assert grade_anc([1.85, 1.75, 1.49], lln=1.8).tolist() == [0, 1, 2]
    assert grade_wbc([3.6, 3.4, 2.99], lln=3.5).tolist() == [0, 1, 2]


def test_grade_1_is_empty_when_lln_is_at_or_below_grade_2_boundary():
    # ANC LLN 1.4 <= 1.5: values >= 1.4 are normal, every value below 1.4 is grade >= 2
    grid = np.linspace(0.0, 3.0, 3001)
    grades = grade_anc(grid, lln=1.4)
    assert 1 not in set(grades.tolist())
    assert grade_anc([1.45, 1.40, 1.39, 1.0, 0.99], lln=1.4).tolist() == [0, 0, 2, 2, 3]
    assert grade_thresholds("anc", lln=1.4) == (1.4, 1.4, 1.0, 0.5)
    # LLN exactly 1.5: 1.5 is normal, 1.49 grade 2
    assert grade_anc([1.5, 1.49], lln=1.5).tolist() == [0, 2]


def test_grade_counts_matches_kind_specific_functions():
    values = np.array([4.2, 3.1, 2.4, 1.7, 1.2, 0.7, 0.2])
    assert grade_counts(values, kind="anc", lln=2.0).tolist() == grade_anc(values, lln=2.0).tolist()
    assert grade_counts(values, kind="wbc", lln=4.0).tolist() == grade_wbc(values, lln=4.0).tolist()


# --------------------------------------------------------------------------------------------------
# grading errors


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        (
            [1.0, 2.0, np.nan],
            r"ANC value nan at index 2 cannot be graded: counts must be finite and non-negative",
        ),
        ([1.0, -0.1], r"ANC value -0.1 at index 1 cannot be graded"),
        ([np.inf], r"ANC value inf at index 0 cannot be graded"),
        ([[1.0, 2.0], [3.0, np.nan]], r"ANC value nan at index \(1, 1\)"),
        ([1.2, 1500.0], r"ANC value 1500.0 at index 1 exceeds 1000 ×10\^9/L.*divide cells/µL by 1000"),
    ],
)
def test_grade_anc_rejects_bad_values_with_location_and_fix(values, pattern):
    with pytest.raises(GradingError, match=pattern):
        grade_anc(values)


def test_grading_error_is_a_pkmodel_error_and_names_the_fix():
    with pytest.raises(PkmodelError, match=r"remove or impute the sample first"):
        grade_wbc([np.nan])
    with pytest.raises(GradingError, match=r"WBC value nan at index 0"):
        grade_wbc([np.nan])


@pytest.mark.parametrize(
    ("lln", "pattern"),
    [
        (0.0, r"ANC lower limit of normal lln=0.0 must be finite, positive"),
        (np.nan, r"ANC lower limit of normal lln=nan must be finite"),
        (2000.0, r"lln=2000.0 must be finite, positive and in 10\^9/L"),
        ("high", r"lln='high' is not a number"),
    ],
)
def test_bad_lln_rejected(lln, pattern):
    with pytest.raises(GradingError, match=pattern):
        grade_anc([1.0], lln=lln)


def test_unknown_kind_rejected():
    with pytest.raises(GradingError, match=r"kind='plt' is not a graded count; use kind='anc'"):
        grade_counts([1.0], kind="plt")


# --------------------------------------------------------------------------------------------------
# time below thresholds (linear interpolation)

# ANC course (LLN 2.0; thresholds 2.0, 1.5, 1.0, 0.5) with crossings worked by hand:
#   24 -> 48 h:  2.0 -> 0.2, slope -0.075/h: below 1.5 from 24 + 0.5/0.075 = 30 2/3 h,
#                below 1.0 from 24 + 1.0/0.075 = 37 1/3 h, below 0.5 from 24 + 1.5/0.075 = 44 h
#                (below 2.0 from 24 h: 2.0 itself is not below)
#   48 -> 96 h:  0.2 -> 0.8, slope 0.0125/h: above 0.5 from 48 + 0.3/0.0125 = 72 h
#   96 -> 144 h: 0.8 -> 1.6, slope 1/60 per h: above 1.0 from 96 + 0.2·60 = 108 h,
#                above 1.5 from 96 + 0.7·60 = 138 h
#   144 -> 192 h: 1.6 -> 3.0, slope 1.4/48: above 2.0 from 144 + 0.4·48/1.4 = 157 5/7 h
# so hours at grade >= 1: 157 5/7 - 24; >= 2: 138 - 30 2/3; >= 3: 108 - 37 1/3; 4: 72 - 44.
COURSE_T = [0.0, 24.0, 48.0, 96.0, 144.0, 192.0]
COURSE_V = [4.0, 2.0, 0.2, 0.8, 1.6, 3.0]
COURSE_HOURS = (157 + 5 / 7 - 24, 138 - (30 + 2 / 3), 108 - (37 + 1 / 3), 72.0 - 44.0)


def test_hours_at_grade_on_piecewise_linear_course():
    s = summarize_course(COURSE_T, COURSE_V, kind="anc", lln=2.0)
    np.testing.assert_allclose(s.hours_at_grade, COURSE_HOURS, rtol=1e-12)
    assert s.worst_grade == 4
    assert s.nadir == 0.2
    assert s.time_to_nadir == 48.0
    assert s.baseline == 4.0
    assert s.baseline_grade == 0
    assert s.thresholds == (2.0, 1.5, 1.0, 0.5)


def test_hours_at_grade_match_dense_grid_measure():
    # independent oracle: fraction of a fine midpoint grid on which numpy.interp(course) < threshold;
    # error at most one grid step per crossing.
    rng = np.random.default_rng(20240611)
    step = 0.001
    for _ in range(5):
        times = np.sort(rng.choice(np.arange(0.0, 400.0, 4.0), size=12, replace=False))
        values = rng.uniform(0.1, 3.5, size=12)
        s = summarize_course(times, values, kind="anc", lln=2.0, cycle_starts=[times[0]])
        grid = np.arange(times[0] + step / 2, times[-1], step)
        dense = np.interp(grid, times, values)
        for hours, level in zip(s.hours_at_grade, s.thresholds, strict=True):
            assert hours == pytest.approx(step * np.count_nonzero(dense < level), abs=12 * step)


def test_interpolation_does_not_extend_beyond_samples():
    # one cycle from 0 h, samples 24..72 h all below LLN: only 24..72 h counted, not 0..24 h
    s = summarize_course([24.0, 48.0, 72.0], [1.8, 1.7, 1.9], kind="anc", lln=2.0)
    assert s.hours_at_grade == (48.0, 0.0, 0.0, 0.0)
    assert math.isnan(s.baseline)
    assert s.baseline_grade is None
    assert s.cycles[0].window_start == 24.0
    assert s.cycles[0].window_end == 72.0


# --------------------------------------------------------------------------------------------------
# cycles

# three 21-day (504 h) cycles; a pre-treatment sample at -24 h
CYCLE_T = [-24.0, 0.0, 168.0, 336.0, 504.0, 672.0, 840.0, 1008.0, 1260.0, 1344.0]
CYCLE_V = [5.0, 3.0, 1.2, 2.5, 2.2, 0.4, 1.8, 2.1, 0.9, 1.9]
#           pre  c1: 0  g2   0    c2: 0  g4  g1   c3: 0  g3   g1


def test_per_cycle_worst_grade_nadir_and_time_to_nadir():
    s = summarize_course(CYCLE_T, CYCLE_V, kind="anc", lln=2.0, cycle_starts=[0.0, 504.0, 1008.0])
    assert [c.worst_grade for c in s.cycles] == [2, 4, 3]
    assert [c.nadir for c in s.cycles] == [1.2, 0.4, 0.9]
    assert [c.time_to_nadir for c in s.cycles] == [168.0, 168.0, 252.0]  # after each cycle start
    # half-open cycles: the sample at 504 h belongs to cycle 2, the one at 1008 h to cycle 3
    assert [c.n_samples for c in s.cycles] == [3, 3, 3]
    assert [c.end for c in s.cycles] == [504.0, 1008.0, math.inf]
    # overall: on-treatment only; the -24 h sample is the baseline (last at or before 0 h is 0 h)
    assert s.worst_grade == 4
    assert s.nadir == 0.4
    assert s.time_to_nadir == 672.0
    assert s.baseline == 3.0


def test_cycle_hours_partition_the_overall_hours():
    # cycles are disjoint and cover [0, last sample]; interpolation is shared, so they add up
    s = summarize_course(CYCLE_T, CYCLE_V, kind="anc", lln=2.0, cycle_starts=[0.0, 504.0, 1008.0])
    per_cycle = np.sum([c.hours_at_grade for c in s.cycles], axis=0)
    np.testing.assert_allclose(per_cycle, s.hours_at_grade, rtol=1e-12)
    # cycle 2 by hand: 504->672 h, 2.2 -> 0.4 (slope -1.8/168): below 2.0 from 504 + 0.2·168/1.8
    # = 522 2/3 h; 672->840 h, 0.4 -> 1.8 (slope 1.4/168): still below 2.0 at 840 h; 840->1008 h,
    # 1.8 -> 2.1: above 2.0 from 840 + 0.2·168/0.3 = 952 h.  Grade >= 1 for 952 - 522 2/3 h.
    assert s.cycles[1].hours_at_grade[0] == pytest.approx(952.0 - (522 + 2 / 3), rel=1e-12)


def test_cycle_without_samples_is_reported_empty():
    s = summarize_course([0.0, 168.0, 336.0], [3.0, 1.2, 2.5], cycle_starts=[0.0, 504.0], lln=2.0)
    empty = s.cycles[1]
    assert empty.n_samples == 0
    assert empty.worst_grade is None
    assert math.isnan(empty.nadir)
    assert math.isnan(empty.window_start)
    assert empty.hours_at_grade == (0.0, 0.0, 0.0, 0.0)
    frame = s.cycle_frame()
    assert frame["worst_grade"].dtype == "Int64"
    assert frame["worst_grade"].isna().tolist() == [False, True]
    assert frame["worst_grade"].iloc[0] == 2


def test_to_frame_has_one_row_with_units_in_names():
    s = summarize_course(COURSE_T, COURSE_V, kind="anc", lln=2.0)
    frame = s.to_frame()
    assert len(frame) == 1
    assert frame.loc[0, "worst_grade"] == 4
    assert frame.loc[0, "time_to_nadir_h"] == 48.0
    assert frame.loc[0, "hours_grade_ge4"] == pytest.approx(28.0, rel=1e-12)


def test_wbc_course_uses_wbc_boundaries():
    # WBC LLN 4.0: 3.5 grade 1, 2.5 grade 2, 1.5 grade 3; below 2.0 between the crossings
    # 24 + (2.5-2.0)/(2.5-1.5)·24 = 36 h and 48 + (2.0-1.5)/(3.5-1.5)·24 = 54 h -> 18 h
    s = summarize_course([0.0, 24.0, 48.0, 72.0], [3.5, 2.5, 1.5, 3.5], kind="wbc")
    assert s.worst_grade == 3
    assert s.lln == 4.0
    assert s.hours_at_grade[2] == pytest.approx(18.0, rel=1e-12)


# --------------------------------------------------------------------------------------------------
# course errors


@pytest.mark.parametrize(
    ("times", "values", "starts", "pattern"),
    [
        ([0, 24, 12], [3, 2, 1], None, r"times\[2\] = 12.0 is earlier than times\[1\] = 24.0; .*sort"),
        ([0, 24, 24], [3, 2, 1], None, r"times\[2\] = 24.0 duplicates times\[1\] = 24.0"),
        ([0, 24], [3, 2, 1], None, r"times has 2 entries but values has 3"),
        ([0, np.nan], [3, 2], None, r"times\[1\] = nan is not finite"),
        ([0, 24], [3, np.nan], None, r"ANC value nan at index 1 cannot be graded"),
        ([0, 24], [3, 2], [0, 504, 300], r"cycle_starts \[0.0, 504.0, 300.0\] must be strictly increasing"),
        ([0, 24], [3, 2], [48], r"first cycle starts at 48 h, after the last sample \(24 h\)"),
        ([], [], None, r"the course has no samples"),
    ],
)
def test_summarize_course_errors(times, values, starts, pattern):
    with pytest.raises(GradingError, match=pattern):
        summarize_course(times, values, cycle_starts=starts)


# --------------------------------------------------------------------------------------------------
# many subjects


def _two_subjects() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "ID": [1] * len(COURSE_T) + [2] * len(CYCLE_T),
            "TIME": COURSE_T + CYCLE_T,
            "value": COURSE_V + CYCLE_V,
        }
    )
    return frame.sample(frac=1.0, random_state=7)  # shuffled rows: the helper sorts by time


def test_summarize_courses_one_row_per_subject_and_cycle_table():
    starts = {1: [0.0], 2: [0.0, 504.0, 1008.0]}
    tables = summarize_courses(_two_subjects(), kind="anc", cycle_starts=starts, lln=2.0)
    subjects = tables.subjects.set_index("ID")
    assert subjects.loc[1, "worst_grade"] == 4
    assert subjects.loc[1, "nadir"] == 0.2
    assert subjects.loc[2, "time_to_nadir_h"] == 672.0
    assert subjects.loc[1, "hours_grade_ge2"] == pytest.approx(COURSE_HOURS[1], rel=1e-12)
    cycles = tables.cycles
    assert cycles[cycles["ID"] == 2]["worst_grade"].tolist() == [2, 4, 3]
    assert cycles.groupby("ID").size().to_dict() == {1: 1, 2: 3}


def test_summarize_courses_common_cycle_starts():
    # with cycles [0, 504] subject 1 (last sample 192 h) has an empty second cycle
    tables = summarize_courses(_two_subjects(), cycle_starts=[0.0, 504.0], lln=2.0)
    c1 = tables.cycles[tables.cycles["ID"] == 1]
    assert c1["n_samples"].tolist() == [6, 0]
    assert c1["worst_grade"].isna().tolist() == [False, True]


def test_summarize_courses_errors_name_row_subject_and_fix():
    frame = _two_subjects()
    with pytest.raises(GradingError, match=r"column\(s\) \['ANC'\] not in the frame"):
        summarize_courses(frame, value_col="ANC")
    broken = frame.copy()
    broken.loc[broken.index[3], "value"] = np.nan
    with pytest.raises(GradingError, match=rf"row {broken.index[3]}: column 'value' is missing"):
        summarize_courses(broken)
    dup = pd.concat([frame, frame[frame["ID"] == 2].head(1)])
    with pytest.raises(
        GradingError, match=r"subject ID=2 \(rows sorted by time\): times\[\d+\] = .* duplicates"
    ):
        summarize_courses(dup)
    with pytest.raises(GradingError, match=r"subject ID=2 has no entry in cycle_starts"):
        summarize_courses(frame, cycle_starts={1: [0.0]})
    with pytest.raises(GradingError, match=r"the frame has no rows"):
        summarize_courses(frame.iloc[0:0])
