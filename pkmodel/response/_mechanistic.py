"""Mechanistic route: neutropenia incidence per regimen from a PK/PD (Friberg) model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pkmodel.dosing import Regimen
from pkmodel.errors import GradingError, PkmodelError, SimulationError
from pkmodel.grading import summarize_courses
from pkmodel.model import Model

from ._logistic import _check_level
from ._proportions import clopper_pearson

__all__ = ["NeutropeniaIncidence", "default_times", "neutropenia_incidence"]

#: Follow-up after the last dose (h) for regimens without a repeat interval.
FOLLOW_UP_H = 21 * 24.0
#: Spacing (h) of the default output grid.
GRID_STEP_H = 12.0


class NeutropeniaIncidence(NamedTuple):
    """Result of :func:`neutropenia_incidence` with ``return_courses=True``.

    Attributes
    ----------
    summary : pandas.DataFrame
        One row per regimen (as returned with ``return_courses=False``).
    subjects : pandas.DataFrame
        One row per regimen and subject: ``regimen``, ``ID``, (replicate), ``baseline``,
        ``baseline_grade``, ``worst_grade``, ``nadir``, ``time_to_nadir_h``, ``cycle1_worst_grade``,
        ``cycle1_nadir``, ``cycle1_time_to_nadir_h``.
    courses : pandas.DataFrame
        Long table of the simulated counts: ``regimen``, ``ID``, (replicate), ``TIME`` (h) and the
        output column (10^9/L).
    """

    summary: pd.DataFrame
    subjects: pd.DataFrame
    courses: pd.DataFrame


def _cycle_starts(regimen: Regimen) -> np.ndarray:
    """Start times (h) of the cycles: the administrations of the earliest dose record."""
    return np.asarray(regimen.events[0].times(), dtype=float)


def default_times(regimen: Regimen, step: float = GRID_STEP_H) -> np.ndarray:
    """Default output grid of :func:`neutropenia_incidence` for one regimen, h.

    Every `step` h from 0 to ``FOLLOW_UP_H`` (21 days) after the last administration, rounded up to
    a whole step: 2016 h for 4 cycles of Q3W (last dose at 1512 h), ``672·c + 168`` h for c cycles
    of D1,8,15 q4w (last dose on day 15 of cycle c).  The rule does not depend on how the regimen was
    written (one record with ADDL or one record per dose).

    Parameters
    ----------
    regimen : Regimen
        Non-empty.
    step : float
        Grid spacing, h.

    Returns
    -------
    ndarray, shape (n_times,)

    Examples
    --------
    >>> from pkmodel import q3w, d1_8_15_q4w
    >>> float(default_times(q3w(16, cycles=4))[-1]), float(default_times(d1_8_15_q4w(12, cycles=2))[-1])
    (2016.0, 1512.0)
    """
    if not isinstance(regimen, Regimen) or len(regimen) == 0:
        raise SimulationError("the regimen has no doses; give at least one dose record")
    end = max(regimen.dose_times()) + FOLLOW_UP_H
    n_steps = math.ceil(end / step - 1e-9)
    return np.arange(n_steps + 1, dtype=float) * step


def _check_population(model: Model, population: Any, replicate_col: str | None) -> pd.DataFrame:
    if not isinstance(population, pd.DataFrame):
        raise SimulationError(
            "population must be a pandas DataFrame with one row per virtual subject (individual "
            f"parameters and WT), got {type(population).__name__}"
        )
    if len(population) == 0:
        raise SimulationError("the population has no rows; give one row per virtual subject")
    allowed = {*model.argument_names, "WT", "ID"}
    if replicate_col is not None:
        if replicate_col not in population.columns:
            raise SimulationError(
                f"replicate_col={replicate_col!r} is not a population column (columns: {list(population.columns)})"
            )
        allowed.add(replicate_col)
    unknown = [c for c in population.columns if c not in allowed]
    if unknown:
        raise SimulationError(
            f"population column(s) {unknown} are not parameters or covariates of model {model.name}; "
            f"known: {', '.join(model.argument_names)}; drop them first (population.drop(columns=[...]))"
        )
    if "ID" in population.columns:
        keys = [population["ID"]] if replicate_col is None else [population[replicate_col], population["ID"]]
        dup = pd.MultiIndex.from_arrays(keys).duplicated()
        if dup.any():
            row = population.index[int(np.flatnonzero(dup)[0])]
            what = "ID" if replicate_col is None else f"({replicate_col}, ID)"
            raise SimulationError(
                f"population row {row!r} repeats an {what} of an earlier row; give each subject once"
            )
    return population.reset_index(drop=True)


def _check_grades(grades: Any) -> list[int]:
    try:
        items = list(grades)
    except TypeError:
        raise GradingError(
            f"grades={grades!r} must be a sequence of CTCAE grades 1-4, e.g. grades=(3, 4)"
        ) from None
    for g in items:
        if isinstance(g, bool) or not isinstance(g, int | np.integer) or not 1 <= g <= 4:
            raise GradingError(
                f"grades={grades!r} contain {g!r}, not a CTCAE grade; use whole grades from 1 to 4, e.g. (3, 4)"
            )
    return sorted({int(g) for g in items} | {1})


def _simulate_chunk(
    model: Model,
    regimen: Regimen,
    times: np.ndarray,
    params: pd.DataFrame,
    output: str,
    method: str,
    rtol: float,
    atol: float,
    engine: str,
) -> np.ndarray:
    from pkmodel.simulation import simulate

    result = simulate(
        model,
        regimen,
        times,
        parameters=params,
        engine=engine,
        method=method,
        rtol=rtol,
        atol=atol,
        outputs=[output],
        keep_states=False,
    )
    return result.output(output)


def neutropenia_incidence(
    model: Model | str,
    regimens: Mapping[str, Regimen],
    population: pd.DataFrame,
    times: Sequence[float] | np.ndarray | None = None,
    *,
    grades: Sequence[int] = (3, 4),
    level: float = 0.90,
    lln: float | None = None,
    output: str = "ANC",
    replicate_col: str | None = None,
    chunk_size: int = 200,
    engine: str = "auto",
    method: str = "BDF",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    return_courses: bool = False,
) -> pd.DataFrame | NeutropeniaIncidence:
    """Predicted CTCAE neutropenia incidence per regimen from a PK/PD model and a virtual population.

    Every subject of `population` is simulated under every regimen (the same subjects, so regimens
    are compared on common random numbers) with the engine chosen by ``engine``, `chunk_size` subjects at a time
    stacked in one system (memory is bounded by the chunk; only per-subject summaries are kept unless
    ``return_courses=True``).  The simulated count (`output`, 10^9/L) on the grid `times` is graded
    with :func:`pkmodel.grading.summarize_courses` (CTCAE v5.0, "Neutrophil count decreased"): the
    worst grade over the samples from the first dose to the end of the grid, the nadir and the time
    to nadir (from the first dose; cycle 1 from its start).  A subject whose baseline is already
    below the LLN is graded >= 1 from the start: the incidences are of the worst grade on treatment,
    not of treatment-emergent worsening.  Nadirs are taken on the grid (default every 12 h; the
    Friberg count changes slowly, with transit time ~5 days), so a true minimum between grid points
    is not seen.

    The interval of an incidence is the Clopper–Pearson interval of the simulated proportion k/n at
    `level`: the Monte Carlo precision of the model-predicted incidence in the population the virtual
    subjects represent, *given* the model and its parameter values.  It shrinks as n grows; it does
    not contain the uncertainty of the parameters, nor the sampling variation of the proportion seen
    in a real trial of a given size.  For parameter uncertainty, pass a population drawn in
    replicates (each with its own parameter draw) and name the replicate column: the summary then
    also holds the `level` interval of the per-replicate incidences (``*_rep_lower``/``*_rep_upper``).

    Parameters
    ----------
    model : Model or str
        A model with the count output, e.g. ``"adc_esg401_friberg"`` (ANC in 10^9/L).
    regimens : mapping of str to Regimen
        Label -> regimen, e.g. ``{"16 mg/kg Q3W": q3w(16, cycles=4)}``.
    population : pandas.DataFrame, shape (n_subjects, n_columns)
        One row per virtual subject: model parameters and covariates (``WT`` in kg for mg/kg doses);
        optional ``ID`` and replicate columns.  Missing parameters take the model's typical values.
        Any other column is an error.
    times : array_like, shape (n_times,), optional
        Output grid (h) for all regimens; default :func:`default_times` of each regimen.
    grades : sequence of int
        Grades g for which the incidence of worst grade >= g is reported; grade >= 1 ("any grade")
        is always reported.
    level : float
        Level of the intervals (default 0.90).
    lln : float, optional
        Lower limit of normal of the count (10^9/L); default that of :mod:`pkmodel.grading` (2.0).
    output : str
        The count output of the model.
    replicate_col : str, optional
        Population column numbering parameter-uncertainty replicates.
    chunk_size : int
        Subjects simulated together.
    engine : {"auto", "hybrid", "ode"}
        Simulation engine (see :func:`pkmodel.simulate`); ``"auto"`` takes the hybrid engine for linear
        PK driving a nonlinear PD model (exact PK, the PD by an explicit Runge–Kutta method).
    method, rtol, atol
        Solver settings (see :func:`pkmodel.simulate`; ``method`` applies to the ODE engine).
    return_courses : bool
        Also return the per-subject table and the simulated count time courses.

    Returns
    -------
    pandas.DataFrame or NeutropeniaIncidence
        One row per regimen: ``regimen``, ``n``, then for every reported grade g
        ``events_ge{g}``, ``incidence_ge{g}``, ``incidence_ge{g}_lower``, ``incidence_ge{g}_upper``
        (and ``incidence_ge{g}_rep_lower``/``_rep_upper`` with replicates), ``nadir_median``,
        ``nadir_lower``, ``nadir_upper`` (central `level` range of the individual nadirs, 10^9/L),
        ``time_to_nadir_median_h``, ``cycle1_time_to_nadir_median_h`` and ``horizon_h`` (end of the
        grid).  With ``return_courses=True`` a :class:`NeutropeniaIncidence`.

    Raises
    ------
    SimulationError
        Bad model, regimens or population (naming the column or row), or a solver failure.
    GradingError
        Bad grades or LLN, or a simulated count that cannot be graded.

    Examples
    --------
    >>> import pandas as pd
    >>> from pkmodel import q3w
    >>> pop = pd.DataFrame({"WT": [70.0, 70.0], "SLOPE": [0.0, 0.0]})  # no drug effect
    >>> s = neutropenia_incidence("adc_esg401_friberg", {"Q3W": q3w(16, cycles=1)}, pop)
    >>> s[["regimen", "n", "incidence_ge1", "incidence_ge3", "nadir_median"]]
      regimen  n  incidence_ge1  incidence_ge3  nadir_median
    0     Q3W  2            0.0            0.0           5.0
    """
    from pkmodel.model import load_model

    if isinstance(model, str):
        try:
            model = load_model(model)
        except PkmodelError as err:
            raise SimulationError(f"model {model!r} cannot be loaded: {err}") from None
    if not isinstance(model, Model):
        raise SimulationError(f"model must be a Model or a model name, got {type(model).__name__}")
    if output not in model.outputs:
        raise SimulationError(
            f"model {model.name} has no output {output!r} (outputs: {', '.join(model.outputs)}); "
            "use a PK/PD model with a neutrophil count, e.g. adc_esg401_friberg, or pass output="
        )
    if not isinstance(regimens, Mapping) or not regimens:
        raise SimulationError("regimens must be a non-empty mapping of label -> Regimen")
    for label, regimen in regimens.items():
        if not isinstance(regimen, Regimen) or len(regimen) == 0:
            raise SimulationError(f"regimens[{label!r}] must be a Regimen with at least one dose")
    reported = _check_grades(grades)
    level = _check_level(level)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise SimulationError(f"chunk_size={chunk_size!r} must be a whole number >= 1, e.g. 200")
    pop = _check_population(model, population, replicate_col)
    weighted = [label for label, reg in regimens.items() if any(e.unit == "mg/kg" for e in reg.expand())]
    if weighted and "WT" not in pop.columns:
        raise SimulationError(
            f"regimen {weighted[0]!r} doses in mg/kg but the population has no WT column; add each "
            "subject's body weight in kg (the model's reference weight is not used silently)"
        )
    ids = pop["ID"].to_numpy() if "ID" in pop.columns else np.arange(1, len(pop) + 1)
    reps = pop[replicate_col].to_numpy() if replicate_col is not None else None
    params = pop.drop(columns=[c for c in ("ID", replicate_col) if c is not None and c in pop.columns])
    user_times = None if times is None else np.asarray(times, dtype=float)

    subject_frames, course_frames, summary_rows = [], [], []
    for label, regimen in regimens.items():
        grid = default_times(regimen) if user_times is None else user_times
        starts = _cycle_starts(regimen)
        if np.any(starts <= grid[-1]):  # cycles after the end of the grid have no samples
            starts = starts[starts <= grid[-1]]
        tables = []
        for begin in range(0, len(pop), int(chunk_size)):
            chunk = params.iloc[begin : begin + int(chunk_size)].reset_index(drop=True)
            try:
                counts = _simulate_chunk(model, regimen, grid, chunk, output, method, rtol, atol, engine)
            except SimulationError as err:
                raise SimulationError(
                    f"regimen {label!r}, population rows {begin}-{begin + len(chunk) - 1}: {err}"
                ) from None
            rows = np.arange(begin, begin + len(chunk))
            long = pd.DataFrame(
                {
                    "ROW": np.tile(rows, grid.size),
                    "TIME": np.repeat(grid, len(chunk)),
                    "value": counts.reshape(-1),
                }
            )
            try:
                summary = summarize_courses(long, id_col="ROW", cycle_starts=starts, lln=lln, kind="anc")
            except GradingError as err:
                raise GradingError(
                    f"regimen {label!r}: the simulated {output} cannot be graded ({err}); if a count is "
                    "slightly negative, tighten rtol/atol"
                ) from None
            subj = summary.subjects.set_index("ROW")
            cyc1 = summary.cycles[summary.cycles["cycle"] == 1].set_index("ROW")
            table = pd.DataFrame(
                {
                    "baseline": subj["baseline"],
                    "baseline_grade": subj["baseline_grade"],
                    "worst_grade": subj["worst_grade"],
                    "nadir": subj["nadir"],
                    "time_to_nadir_h": subj["time_to_nadir_h"],
                    "cycle1_worst_grade": cyc1["worst_grade"],
                    "cycle1_nadir": cyc1["nadir"],
                    "cycle1_time_to_nadir_h": cyc1["time_to_nadir_h"],
                }
            ).reindex(rows)
            tables.append(table)
            if return_courses:
                course = pd.DataFrame(
                    {
                        "regimen": label,
                        "ID": np.repeat(ids[rows], grid.size),
                        "TIME": np.tile(grid, len(chunk)),
                        output: counts.T.reshape(-1),
                    }
                )
                if reps is not None:
                    course.insert(2, replicate_col, np.repeat(reps[rows], grid.size))
                course_frames.append(course)
        subjects = pd.concat(tables).reset_index(drop=True)
        subjects.insert(0, "ID", ids)
        if reps is not None:
            subjects.insert(1, replicate_col, reps)
        subjects.insert(0, "regimen", label)
        subject_frames.append(subjects)
        summary_rows.append(_summarize(label, subjects, reported, level, replicate_col, float(grid[-1])))

    summary = pd.DataFrame(summary_rows)
    if not return_courses:
        return summary
    return NeutropeniaIncidence(
        summary=summary,
        subjects=pd.concat(subject_frames, ignore_index=True),
        courses=pd.concat(course_frames, ignore_index=True),
    )


def _summarize(
    label: str,
    subjects: pd.DataFrame,
    grades: list[int],
    level: float,
    replicate_col: str | None,
    horizon: float,
) -> dict[str, Any]:
    worst = subjects["worst_grade"].to_numpy(dtype=int)
    n = worst.size
    row: dict[str, Any] = {"regimen": label, "n": n}
    alpha = 1.0 - level
    for g in grades:
        k = int(np.sum(worst >= g))
        lo, hi = clopper_pearson(k, n, level)
        row[f"events_ge{g}"] = k
        row[f"incidence_ge{g}"] = k / n
        row[f"incidence_ge{g}_lower"] = lo
        row[f"incidence_ge{g}_upper"] = hi
        if replicate_col is not None:
            per_rep = (subjects["worst_grade"].to_numpy(dtype=int) >= g).astype(float)
            by_rep = pd.Series(per_rep).groupby(subjects[replicate_col].to_numpy()).mean().to_numpy()
            row[f"incidence_ge{g}_rep_lower"] = float(np.quantile(by_rep, alpha / 2.0))
            row[f"incidence_ge{g}_rep_upper"] = float(np.quantile(by_rep, 1.0 - alpha / 2.0))
    if replicate_col is not None:
        row["n_replicates"] = int(subjects[replicate_col].nunique())
    nadir = subjects["nadir"].to_numpy(dtype=float)
    row["nadir_median"] = float(np.median(nadir))
    row["nadir_lower"] = float(np.quantile(nadir, alpha / 2.0))
    row["nadir_upper"] = float(np.quantile(nadir, 1.0 - alpha / 2.0))
    row["time_to_nadir_median_h"] = float(np.median(subjects["time_to_nadir_h"].to_numpy(dtype=float)))
    row["cycle1_time_to_nadir_median_h"] = float(
        np.median(subjects["cycle1_time_to_nadir_h"].to_numpy(dtype=float))
    )
    row["horizon_h"] = horizon
    return row
