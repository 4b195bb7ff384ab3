"""Case-resampling (nonparametric) bootstrap: subjects drawn with replacement, estimates refitted.

Replicate r draws, with ``numpy.random.default_rng(task_seed(seed, r))``, for each stratum in order
of first appearance (one stratum when not stratified), as many subject indices as the stratum has
subjects (``rng.integers(0, n_s, n_s)``), and builds a dataset of the drawn subjects' records in draw
order, renumbered ID 1, 2, ... so that a subject drawn twice counts as two subjects.  The estimator is
applied to each replicate dataset; a replicate whose estimator raises a
:class:`~pkmodel.errors.PkmodelError` (e.g. a fit that does not converge) is a *failed refit*: it is
counted and listed with its reason, and left out of the intervals (never silently).

Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13): the ``(1 − level)/2`` and
``(1 + level)/2`` quantiles (numpy default) of the successful replicates' estimates.  Replicates are
independent of the scheduler and of the number of workers (:mod:`pkmodel.distributed`).

Examples
--------
>>> import pandas as pd
>>> data = pd.DataFrame({"ID": [1, 2, 3, 4], "X": [1.0, 2.0, 3.0, 4.0]})
>>> result = bootstrap(data, mean_of_column, n=200, seed=1, context="X")
>>> result.n_failed, result.ci["parameter"].tolist()
(0, ['X'])
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .distributed import prepare_output_folder
from .errors import EstimationError, PkmodelError

__all__ = ["BootstrapResult", "bootstrap", "mean_of_column", "resample_cases", "run_bootstrap"]


def mean_of_column(column: str, data: pd.DataFrame) -> dict[str, float]:
    """Example estimator: the mean over subjects of a per-subject ``column`` (first record of each ID).

    Examples
    --------
    >>> mean_of_column("X", pd.DataFrame({"ID": [1, 1, 2], "X": [1.0, 1.0, 3.0]}))
    {'X': 2.0}
    """
    return {column: float(data.groupby("ID", sort=False)[column].first().mean())}


# ------------------------------------------------------------------------------------- resampling


class _Cases:
    """Row positions of each subject, and the strata, computed once."""

    def __init__(self, data: pd.DataFrame, id_col: str, stratify: Sequence[str]):
        if not isinstance(data, pd.DataFrame) or len(data) == 0:
            raise PkmodelError(
                "bootstrap data must be a non-empty DataFrame with one or more rows per subject"
            )
        missing = [c for c in (id_col, *stratify) if c not in data.columns]
        if missing:
            raise PkmodelError(
                f"bootstrap: column(s) {missing} are not in the data (columns: {list(data.columns)}); "
                "name the subject column with id_col= and existing stratification columns"
            )
        if data[id_col].isna().any():
            raise PkmodelError(
                f"bootstrap: column {id_col} has missing values; every record needs a subject ID"
            )
        codes, ids = pd.factorize(data[id_col], sort=False)
        self.positions = [np.flatnonzero(codes == k) for k in range(len(ids))]
        self.ids = list(ids)
        strata: dict[tuple, list[int]] = {}
        for k, rows in enumerate(self.positions):
            key = []
            for column in stratify:
                values = pd.unique(data[column].iloc[rows])
                if len(values) != 1:
                    raise PkmodelError(
                        f"bootstrap: subject {self.ids[k]!r} has {len(values)} values of stratification column "
                        f"{column!r} ({list(values)[:3]}); stratify by a column constant within each subject"
                    )
                key.append(values[0])
            strata.setdefault(tuple(key), []).append(k)
        self.strata = [np.array(members) for members in strata.values()]
        self.stratum_keys = list(strata)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Subject indices (into ``self.ids``) of one replicate, strata in order."""
        return np.concatenate(
            [members[rng.integers(0, members.size, members.size)] for members in self.strata]
        )


def resample_cases(
    data: pd.DataFrame,
    seed: int,
    replicate: int,
    *,
    id_col: str = "ID",
    stratify: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """The dataset of one bootstrap replicate (see the module docstring for the draws).

    Parameters
    ----------
    data : DataFrame
        Records, one or more per subject.
    seed : int
        Root seed.
    replicate : int
        Replicate number (0-based).
    id_col : str
        Subject column.
    stratify : str or sequence of str, optional
        Columns constant within a subject; subjects are drawn within each combination of their values.

    Returns
    -------
    DataFrame
        The drawn subjects' records in draw order, ``id_col`` renumbered 1, 2, ...

    Examples
    --------
    >>> data = pd.DataFrame({"ID": [7, 7, 9], "X": [1.0, 1.5, 2.0]})
    >>> sorted(resample_cases(data, 1, 0)["ID"].unique().tolist())
    [1, 2]
    """
    cases = _Cases(data, id_col, _strata(stratify))
    return _replicate_frame(data, cases, id_col, seed, replicate)


def _strata(stratify: Sequence[str] | str | None) -> list[str]:
    if stratify is None:
        return []
    return [stratify] if isinstance(stratify, str) else list(stratify)


def _replicate_frame(
    data: pd.DataFrame, cases: _Cases, id_col: str, seed: int, replicate: int
) -> pd.DataFrame:
    from .distributed import task_rng

    chosen = cases.draw(task_rng(seed, int(replicate)))
    rows = np.concatenate([cases.positions[k] for k in chosen])
    frame = data.iloc[rows].reset_index(drop=True)
    frame[id_col] = np.repeat(np.arange(1, chosen.size + 1), [cases.positions[k].size for k in chosen])
    return frame


def _bootstrap_task(context: dict[str, Any], replicates: Sequence[int]) -> list[dict[str, Any]]:
    """Task of :func:`bootstrap`: estimates (or the failure) of some replicates."""
    out = []
    c = context
    for r in replicates:
        frame = _replicate_frame(c["data"], c["cases"], c["id_col"], c["seed"], r)
        try:
            estimates = c["estimator"](c["context"], frame)
        except PkmodelError as exc:
            out.append({"replicate": int(r), "status": "failed", "reason": str(exc).splitlines()[0]})
            continue
        out.append(
            {"replicate": int(r), "status": "ok", "reason": "", **{k: float(v) for k, v in estimates.items()}}
        )
    return out


# ------------------------------------------------------------------------------------------ result


@dataclass
class BootstrapResult:
    """Bootstrap replicates and percentile intervals.

    Attributes
    ----------
    replicates : pandas.DataFrame
        One row per replicate: ``replicate``, ``status`` ("ok" or "failed"), ``reason``, then one
        column per estimate (NaN for failed replicates).
    ci : pandas.DataFrame
        One row per estimate: ``parameter``, ``estimate`` (on the original data, when computed),
        ``median``, ``lower``, ``upper`` (percentile interval at ``level``), ``se`` (SD of the
        successful replicates, ddof 1), ``n_ok``.
    n_failed : int
        Failed refits.
    settings : dict
    name : str
    """

    replicates: pd.DataFrame
    ci: pd.DataFrame
    n_failed: int
    settings: dict[str, Any]
    name: str = "bootstrap"

    def summary(self) -> str:
        """A small text table of the intervals and the failed-refit count."""
        s = self.settings
        lines = [
            f"bootstrap of {self.name}: {s['n']} replicates (seed {s['seed']}"
            + (f", stratified by {', '.join(s['stratify'])}" if s["stratify"] else "")
            + f"), {self.n_failed} failed refits",
            f"  {'parameter':<16} {'estimate':>12} {'median':>12} {format(100 * s['level'], 'g') + '% CI':>28}",
        ]
        for _, r in self.ci.iterrows():
            interval = f"[{r['lower']:.5g}, {r['upper']:.5g}]"
            lines.append(f"  {r['parameter']:<16} {r['estimate']:>12.5g} {r['median']:>12.5g} {interval:>28}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Settings, failed count and intervals (for JSON)."""
        return {
            "name": self.name,
            "settings": self.settings,
            "n_failed": self.n_failed,
            "ci": self.ci.to_dict(orient="records"),
            "failures": self.replicates.loc[
                self.replicates["status"] == "failed", ["replicate", "reason"]
            ].to_dict(orient="records"),
        }

    def write(self, out_dir: str | Path, *, force: bool = False) -> Path:
        """Write ``bootstrap_replicates.csv``, ``bootstrap_ci.csv`` and ``bootstrap.json``."""
        target = prepare_output_folder(out_dir, force)
        self.replicates.to_csv(target / "bootstrap_replicates.csv", index=False)
        self.ci.to_csv(target / "bootstrap_ci.csv", index=False)
        (target / "bootstrap.json").write_text(
            json.dumps(self.to_dict(), indent=2, default=float), encoding="utf-8"
        )
        return target


def bootstrap(
    data: pd.DataFrame,
    estimator: Callable[[Any, pd.DataFrame], Mapping[str, float]],
    *,
    n: int,
    seed: int,
    context: Any = None,
    id_col: str = "ID",
    stratify: Sequence[str] | str | None = None,
    level: float = 0.95,
    original: Mapping[str, float] | None = None,
    scheduler: Any = None,
    progress: bool = False,
    replicates_per_task: int = 10,
    name: str = "bootstrap",
) -> BootstrapResult:
    """Case-resampling bootstrap of any estimator.

    Parameters
    ----------
    data : DataFrame
        Records, one or more per subject.
    estimator : callable
        ``estimator(context, replicate_data) -> {name: value}``, a module-level function (picklable,
        for processes and Dask); raise a :class:`~pkmodel.errors.PkmodelError` for a failed refit.
    n : int
        Replicates, >= 1.
    seed : int
        Root seed (replicate r: ``task_seed(seed, r)``).
    context : object, optional
        First argument of the estimator (e.g. a specification path).
    id_col : str
        Subject column.
    stratify : str or sequence of str, optional
        Columns (constant within a subject) to resample within, e.g. the dose group.
    level : float
        Level of the percentile intervals.
    original : mapping, optional
        Estimates on the original data (the ``estimate`` column).
    scheduler, progress
        See :func:`pkmodel.distributed.map_tasks` (progress counts replicates).
    replicates_per_task : int
        Replicates per task.
    name : str
        Label of the summary.

    Returns
    -------
    BootstrapResult

    Raises
    ------
    PkmodelError
        Bad settings or columns, or every replicate failed.

    Examples
    --------
    >>> data = pd.DataFrame({"ID": [1, 2, 3], "X": [0.0, 0.0, 3.0]})
    >>> result = bootstrap(data, mean_of_column, n=50, seed=3, context="X", level=0.9)
    >>> bool(0.0 <= result.ci["lower"][0] <= result.ci["upper"][0] <= 3.0)
    True
    """
    from .distributed import map_tasks, task_seed

    for label, value in (("n", n), ("replicates_per_task", replicates_per_task)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise PkmodelError(f"{label}={value!r} must be a whole number >= 1")
    task_seed(seed, 0)
    if not 0.0 < float(level) < 1.0:
        raise PkmodelError(f"level={level!r} must be between 0 and 1 (e.g. 0.95)")
    strata = _strata(stratify)
    cases = _Cases(data, id_col, strata)
    tasks = [
        list(range(first, min(first + int(replicates_per_task), int(n))))
        for first in range(0, int(n), int(replicates_per_task))
    ]
    context_all = {
        "data": data.reset_index(drop=True),
        "cases": cases,
        "id_col": id_col,
        "seed": seed,
        "estimator": estimator,
        "context": context,
    }
    rows: list[dict[str, Any]] = []
    for part in map_tasks(
        _bootstrap_task,
        tasks,
        context=context_all,
        scheduler=scheduler,
        progress=progress,
        label="replicates",
        weights=[len(t) for t in tasks],
    ):
        rows.extend(part)
    table = pd.DataFrame(rows)
    ok = table[table["status"] == "ok"]
    n_failed = int((table["status"] == "failed").sum())
    if ok.empty:
        reason = table["reason"].iloc[0]
        raise PkmodelError(
            f"all {n} bootstrap replicates failed (first reason: {reason}); check the estimator"
        )
    names = [c for c in table.columns if c not in ("replicate", "status", "reason")]
    alpha = (1.0 - float(level)) / 2.0
    ci_rows = []
    for column in names:
        values = ok[column].to_numpy(dtype=float)
        lo, mid, hi = np.quantile(values, [alpha, 0.5, 1.0 - alpha])
        ci_rows.append(
            {
                "parameter": column,
                "estimate": float(original[column]) if original and column in original else math.nan,
                "median": float(mid),
                "lower": float(lo),
                "upper": float(hi),
                "se": float(np.std(values, ddof=1)) if values.size > 1 else math.nan,
                "n_ok": int(values.size),
            }
        )
    settings = {
        "n": int(n),
        "seed": seed,
        "level": float(level),
        "stratify": strata,
        "n_subjects": len(cases.ids),
        "n_strata": len(cases.strata),
        "replicates_per_task": int(replicates_per_task),
    }
    return BootstrapResult(table, pd.DataFrame(ci_rows), n_failed, settings, name)


# ------------------------------------------------------------------------------------ population fits

_SPECS: dict[str, Any] = {}


def _read_raw(path: Path) -> pd.DataFrame:
    """The dataset file as a table (comment lines dropped; a ``#ID,...`` header kept)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    keep, header_seen = [], False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if not header_seen and "ID" in stripped.upper():
                keep.append(stripped.lstrip("#"))
                header_seen = True
            continue
        keep.append(line)
        header_seen = True
    import io

    return pd.read_csv(io.StringIO("\n".join(keep)), sep=None, engine="python")


def fit_estimates(spec_path: str, data: pd.DataFrame) -> dict[str, float]:
    """Estimator of :func:`run_bootstrap`: refit a population specification to ``data``.

    Returns θ by name, Ω as ``OMEGA(eta_a)`` (variances) and ``OMEGA(eta_a,eta_b)`` (covariances) and
    the residual SDs by name.  The covariance step is skipped.

    Raises
    ------
    EstimationError
        The refit did not converge (a failed refit).
    """
    from .data import validate_dataset
    from .estimation import fit_population
    from .fitting import build_problem, load_fit_spec

    spec = _SPECS.get(spec_path)
    if spec is None:
        spec = _SPECS[spec_path] = load_fit_spec(spec_path)
    checked = validate_dataset(data, compartments=spec.compartments, dose_unit=spec.dose_unit)
    checked.raise_if_problems()
    fp = build_problem(spec, checked.dataset)
    opts = spec.options
    result = fit_population(
        fp.problem,
        method=spec.method,
        covariance=False,
        gtol=opts.gtol,
        max_iterations=opts.max_iterations,
        fo_start=opts.fo_start,
    )
    if not result.converged:
        raise EstimationError(f"refit did not converge: {result.message}")
    return _estimates(result)


def _estimates(result: Any) -> dict[str, float]:
    out = {name: float(v) for name, v in result.theta.items()}
    names = list(result.eta_names)
    for i, a in enumerate(names):
        out[f"OMEGA({a})"] = float(result.omega[i, i])
        for j in range(i):
            if result.omega[i, j] != 0.0:
                out[f"OMEGA({names[j]},{a})"] = float(result.omega[i, j])
    out.update({name: float(v) for name, v in result.sigma.items()})
    return out


def run_bootstrap(
    spec_path: str | Path,
    *,
    n: int = 1000,
    seed: int | None = None,
    stratify: Sequence[str] | str | None = None,
    level: float = 0.95,
    scheduler: Any = None,
    progress: bool = False,
    replicates_per_task: int = 1,
) -> BootstrapResult:
    """Case-resampling bootstrap of a population fit specification (``pkmodel bootstrap SPEC.toml``).

    The original data are fitted once (the ``estimate`` column), then each replicate dataset is refitted
    with the specification's method and options (covariance step skipped) by :func:`fit_estimates`;
    a refit that does not converge or whose data cannot be fitted is counted as failed.

    Parameters
    ----------
    spec_path : path
        A population fit specification (method foce-i, foce or fo).
    n : int
        Replicates.
    seed : int, optional
        Root seed; default the specification's seed.
    stratify : str or sequence of str, optional
        Dataset columns constant within subjects (e.g. the dose group) to resample within.
    level, scheduler, progress, replicates_per_task
        See :func:`bootstrap` (one refit per task by default: refits are long and uneven).

    Returns
    -------
    BootstrapResult

    Raises
    ------
    PkmodelError
        An individual fit, a missing seed, unknown columns, or the original fit failing.

    Examples
    --------
    >>> from pkmodel.model import fits_dir
    >>> result = run_bootstrap(fits_dir() / "theoph_foce.toml", n=20)  # doctest: +SKIP
    >>> result.n_failed  # doctest: +SKIP
    0
    """
    from .fitting import load_fit_spec

    spec = load_fit_spec(spec_path)
    if spec.method == "individual":
        raise PkmodelError(
            f"{spec.path}: a case bootstrap refits a population model; method 'individual' fits each subject "
            "alone (nothing to resample): use foce-i, foce or fo"
        )
    if seed is None:
        seed = spec.seed
        if seed is None:
            raise PkmodelError(f"{spec.path} has no [fit] seed; give seed= (or --seed)")
    data = _read_raw(Path(spec.data_path))
    path = str(Path(spec_path).resolve())
    original = fit_estimates(path, data)
    return bootstrap(
        data,
        fit_estimates,
        n=n,
        seed=seed,
        context=path,
        stratify=stratify,
        level=level,
        original=original,
        scheduler=scheduler,
        progress=progress,
        replicates_per_task=replicates_per_task,
        name=spec.name,
    )
