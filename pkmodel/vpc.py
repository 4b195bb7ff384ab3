"""Simulation-based visual predictive check (VPC) of a population fit.

The dataset's design (each subject's doses, observation times and covariates) is simulated
``n_replicates`` times from the fitted model: per replicate, η ~ N(0, Ω̂) for every subject and ε from
the residual error model (additive ``f + a·ε``, proportional ``f·(1 + b·ε)``, combined
``f + sqrt(a² + b²f²)·ε``, log-additive ``f·exp(a·ε)``).  Observations are grouped into time bins; in
every bin the observed percentiles (default 5th, 50th, 95th) are compared with the distribution,
over replicates, of the same percentiles of the simulated data: the table gives each simulated
percentile's median and its central ``level`` interval (default 90 %).

Prediction correction (Bergstrand et al. 2011, doi:10.1208/s12248-011-9255-z)
    Observed and simulated values are multiplied by ``PRED_bin / PRED``: the median population
    prediction (η = 0) of the bin over the observation's own population prediction, which removes the
    spread due to different doses and covariates within a bin.

Censoring (BLQ)
    Observations below the LLOQ (and simulated values below the same LLOQ) are censored: a percentile
    whose lower order statistic is censored is reported as NaN ("below the LLOQ"), and a separate
    panel compares the fraction of BLQ observations per bin with its simulated interval.

Percentiles follow numpy's default (linear interpolation between order statistics, Hyndman–Fan type 7).
Replicate r draws all its random numbers from ``numpy.random.default_rng(task_seed(seed, r))``
(η: subjects × etas, then ε: observations in data order), so results do not depend on the scheduler or
the number of workers (:mod:`pkmodel.distributed`).

Examples
--------
>>> import numpy as np
>>> bin_edges([0.5, 1, 2, 4, 8, 12, 24], 3).tolist()
[0.5, 2.0, 8.0, 24.0]
>>> censored_percentiles(np.array([[1.0, 2.0, 3.0, 4.0]]), np.zeros((1, 4), bool), [50]).tolist()
[[2.5]]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .distributed import prepare_output_folder
from .errors import PkmodelError

__all__ = ["VPCResult", "bin_edges", "censored_percentiles", "run_vpc", "vpc"]


# ------------------------------------------------------------------------------------------ pieces


def bin_edges(times: Sequence[float] | np.ndarray, bins: int | Sequence[float]) -> np.ndarray:
    """Edges of the time bins of a VPC.

    An int ``k`` gives bins with (about) equal numbers of observations: the edges are the ``j/k``
    quantiles (numpy default) of the observation times, j = 0..k, with repeated edges merged and a bin
    left empty by tied times merged into the next (so there can be fewer than k bins).  With at most k
    distinct times (nominal sampling), each time gets its own bin, edges half-way between the times;
    all times equal give the one bin ``[t, t]``.  A sequence is used as the edges; it must increase strictly and
    cover every time.  Bin ``b`` holds ``edges[b] <= t < edges[b+1]``, the last bin also its right edge.

    Parameters
    ----------
    times : array_like, shape (n_obs,)
        Observation times, h.
    bins : int or sequence of float

    Returns
    -------
    ndarray, shape (n_bins + 1,)

    Raises
    ------
    PkmodelError
        Fewer than 1 bin, edges that do not increase, or times outside the edges.

    Examples
    --------
    >>> bin_edges([1.0, 2.0, 3.0], [0, 2, 4]).tolist()
    [0.0, 2.0, 4.0]
    """
    t = np.asarray(times, dtype=float)
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise PkmodelError("VPC times must be a non-empty array of finite hours")
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise PkmodelError(f"bins={bins!r}: give a number of bins >= 1 or the bin edges in h")
        distinct = np.unique(t)
        if distinct.size == 1:
            return np.repeat(distinct, 2)  # all times equal: one bin [t, t]
        if distinct.size <= bins:  # nominal times: one bin per time, edges half-way between them
            return np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2.0, distinct[-1:]])
        edges = np.unique(np.quantile(t, np.linspace(0.0, 1.0, int(bins) + 1)))
        counts = np.bincount(_assign(t, edges), minlength=edges.size - 1)
        keep = [0, *(b + 1 for b in range(edges.size - 2) if counts[b] > 0), edges.size - 1]
        return edges[sorted(set(keep))]  # an empty bin (ties at an edge) is merged into the next one
    try:
        edges = np.asarray(bins, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise PkmodelError(f"bins={bins!r}: give a number of bins or a list of edges in h") from None
    if edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise PkmodelError(
            f"bin edges {edges.tolist()} must be at least two finite times that increase strictly, e.g. [0, 2, 6, 24]"
        )
    outside = t[(t < edges[0]) | (t > edges[-1])]
    if outside.size:
        raise PkmodelError(
            f"observation time {outside[0]:g} h is outside the bin edges [{edges[0]:g}, {edges[-1]:g}] h; widen "
            "the first or last edge (no observation is dropped silently)"
        )
    return edges


def _assign(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    index = np.searchsorted(edges, times, side="right") - 1
    return np.clip(index, 0, edges.size - 2)  # the right edge belongs to the last bin


def censored_percentiles(
    values: np.ndarray, censored: np.ndarray, percentiles: Sequence[float]
) -> np.ndarray:
    """Percentiles along the last axis with censored values counted as below every observed value.

    Numpy's default definition (rank ``h = p/100·(n − 1)``, linear interpolation between the order
    statistics ``floor(h)`` and ``floor(h) + 1``).  Censored values sort first; a percentile whose lower
    order statistic is censored is NaN.  NaN values (already-censored percentiles) count as censored.

    Parameters
    ----------
    values : ndarray, shape (..., n)
    censored : ndarray of bool, shape (..., n)
    percentiles : sequence of float, in [0, 100]

    Returns
    -------
    ndarray, shape (..., n_percentiles)

    Examples
    --------
    >>> import numpy as np
    >>> censored_percentiles(np.array([9.0, 1.0, 2.0, 3.0]), np.array([True, False, False, False]), [0, 50, 100])
    array([nan, 1.5, 3. ])
    """
    x = np.asarray(values, dtype=float)
    cens = np.asarray(censored, dtype=bool) | np.isnan(x)
    n = x.shape[-1]
    q = np.asarray(percentiles, dtype=float) / 100.0
    if np.any((q < 0) | (q > 1)):
        raise PkmodelError(f"percentiles {list(percentiles)} must lie between 0 and 100")
    if n == 0:
        return np.full((*x.shape[:-1], q.size), np.nan)
    ordered = np.sort(np.where(cens, -np.inf, x), axis=-1)
    m = cens.sum(axis=-1)[..., None]
    h = q * (n - 1)
    lo = np.floor(h).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    a, b = ordered[..., lo], ordered[..., hi]
    with np.errstate(invalid="ignore"):
        out = a + (h - lo) * (b - a)
    out = np.where(h == lo, a, out)
    return np.where(lo < m, np.nan, out)


# ------------------------------------------------------------------------------------------ result


@dataclass
class VPCResult:
    """A visual predictive check: tables, the observations it used, and the settings.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per output, bin and percentile: ``output``, ``bin``, ``bin_lower``, ``bin_upper`` (h),
        ``time`` (median observation time of the bin, h), ``n_obs``, ``percentile``, ``observed``,
        ``sim_lower``, ``sim_median``, ``sim_upper`` (NaN: below the LLOQ).
    blq : pandas.DataFrame
        One row per output and bin: ``observed_fraction`` of BLQ observations and the simulated
        ``sim_lower``, ``sim_median``, ``sim_upper`` fractions.
    observations : pandas.DataFrame
        ``ID``, ``TIME``, ``output``, ``bin``, ``DV`` (prediction-corrected when asked), ``BLQ``, ``PRED``.
    settings : dict
        Replicates, seed, percentiles, level, prediction correction, bin edges per output.
    name : str
    """

    table: pd.DataFrame
    blq: pd.DataFrame
    observations: pd.DataFrame
    settings: dict[str, Any]
    name: str = "vpc"
    has_lloq: dict[str, bool] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines: settings, and the bins whose observed percentile is outside its interval."""
        s = self.settings
        kind = "prediction-corrected VPC" if s["pred_corrected"] else "VPC"
        lines = [
            f"{kind} of {self.name}: {s['n_replicates']} replicates (seed {s['seed']}), percentiles "
            f"{', '.join(f'{p:g}' for p in s['percentiles'])}, {100 * s['level']:g} % intervals"
        ]
        t = self.table
        inside = (t["observed"] >= t["sim_lower"]) & (t["observed"] <= t["sim_upper"])
        known = t["observed"].notna() & t["sim_lower"].notna() & t["sim_upper"].notna()
        lines.append(
            f"  observed percentiles inside the simulated interval: {int((inside & known).sum())} of "
            f"{int(known.sum())} (bins x percentiles with values above the LLOQ)"
        )
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None):
        """Draw the VPC (one column per output; BLQ-fraction panel below where the data have an LLOQ).

        Returns the matplotlib figure; saved to ``path`` (PNG) when given.
        """
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        outputs = list(dict.fromkeys(self.table["output"]))
        rows = 2 if any(self.has_lloq.get(o, False) for o in outputs) else 1
        fig, axes = plt.subplots(
            rows, len(outputs), figsize=(5.0 * len(outputs), 4.0 + 2.2 * (rows - 1)), squeeze=False
        )
        colours = {0: "tab:blue", 1: "tab:red", 2: "tab:blue"}
        for j, output in enumerate(outputs):
            ax = axes[0, j]
            obs = self.observations[self.observations["output"] == output]
            shown = obs[~obs["BLQ"].astype(bool)]
            ax.plot(shown["TIME"], shown["DV"], "o", ms=2.5, color="0.55", alpha=0.7, label="observed")
            part = self.table[self.table["output"] == output]
            for k, (pct, rows_p) in enumerate(part.groupby("percentile", sort=True)):
                colour = colours.get(k if len(part["percentile"].unique()) == 3 else 0, "tab:blue")
                for _, r in rows_p.iterrows():
                    ax.fill_between(
                        [r["bin_lower"], r["bin_upper"]],
                        r["sim_lower"],
                        r["sim_upper"],
                        color=colour,
                        alpha=0.18,
                    )
                ax.plot(
                    rows_p["time"], rows_p["observed"], "-", color=colour, lw=1.6, label=f"observed P{pct:g}"
                )
                ax.plot(rows_p["time"], rows_p["sim_median"], "--", color=colour, lw=1.0)
            ax.set_xlabel("time (h)")
            ax.set_ylabel(f"{output}{' (prediction-corrected)' if self.settings['pred_corrected'] else ''}")
            ax.set_title(f"{self.name}: {output}")
            ax.legend(fontsize=7)
            if rows == 2:
                ax2 = axes[1, j]
                b = self.blq[self.blq["output"] == output]
                for _, r in b.iterrows():
                    ax2.fill_between(
                        [r["bin_lower"], r["bin_upper"]],
                        r["sim_lower"],
                        r["sim_upper"],
                        color="tab:red",
                        alpha=0.2,
                    )
                ax2.plot(b["time"], b["observed_fraction"], "o-", color="tab:red", lw=1.4)
                ax2.set_xlabel("time (h)")
                ax2.set_ylabel("fraction BLQ")
                ax2.set_ylim(-0.02, 1.02)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig

    def write(self, out_dir: str | Path, *, force: bool = False) -> Path:
        """Write ``vpc.csv``, ``vpc_blq.csv``, ``vpc_observations.csv``, ``vpc.json`` and ``vpc.png``."""
        target = prepare_output_folder(out_dir, force)
        self.table.to_csv(target / "vpc.csv", index=False)
        self.blq.to_csv(target / "vpc_blq.csv", index=False)
        self.observations.to_csv(target / "vpc_observations.csv", index=False)
        (target / "vpc.json").write_text(json.dumps(self.settings, indent=2, default=float), encoding="utf-8")
        self.plot(target / "vpc.png")
        return target


# -------------------------------------------------------------------------------------- simulation


def _vpc_task(context: dict[str, Any], replicates: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Task of :func:`vpc`: statistics of the simulated replicates ``replicates``.

    Returns (k, n_groups, n_percentiles) percentiles and (k, n_groups) BLQ fractions.
    """
    from .distributed import task_rng

    c = context
    problem = c["problem"]
    subjects = problem.subjects
    k = len(replicates)
    n_sub, q = c["typical"].shape[0], c["factor"].shape[0]
    etas = np.empty((k, n_sub, q))
    eps = np.empty((k, c["n_obs"]))
    for i, r in enumerate(replicates):
        rng = task_rng(c["seed"], int(r))
        etas[i] = rng.standard_normal((n_sub, q)) @ c["factor"].T if q else np.zeros((n_sub, 0))
        eps[i] = rng.standard_normal(c["n_obs"])
    f = np.empty((k, c["n_obs"]))
    for s, subject in enumerate(subjects):
        phi = np.repeat(c["typical"][s][None, :], k, axis=0)
        for p, (e, exponential) in enumerate(c["param_eta"]):
            if e is not None:
                phi[:, p] = phi[:, p] * np.exp(etas[:, s, e]) if exponential else phi[:, p] + etas[:, s, e]
        params = {name: phi[:, p].copy() for p, name in enumerate(c["param_names"])}
        rows = c["rows"][s]
        f[:, rows] = np.asarray(problem.predict_batch(subject, params), dtype=float)
    y = _add_residual(f, eps, c["add_sd"], c["prop_sd"], c["is_log"])
    below = np.isfinite(c["lloq"]) & (y < c["lloq"])
    y = y * c["pc_factor"]
    stats = np.empty((k, len(c["groups"]), len(c["percentiles"])))
    fractions = np.empty((k, len(c["groups"])))
    for g, columns in enumerate(c["groups"]):
        stats[:, g, :] = censored_percentiles(y[:, columns], below[:, columns], c["percentiles"])
        fractions[:, g] = below[:, columns].mean(axis=1)
    return stats, fractions


def _typical_values(problem: Any, theta: dict[str, float]) -> np.ndarray:
    """Typical values (η = 0) of the problem's parameters per subject, shape (n_subjects, n_parameters).

    As :class:`pkmodel.estimation.IndividualParameter` defines them: θ times the covariate effects
    (power ``(cov/ref)^θ``, linear ``1 + θ(cov − ref)``, exponential ``exp(θ(cov − ref))``), or the
    parameter's ``typical(thetas, covariates)`` callable.
    """
    out = np.empty((len(problem.subjects), len(problem.parameters)))
    for i, subject in enumerate(problem.subjects):
        for j, p in enumerate(problem.parameters):
            if p.typical is not None:
                out[i, j] = float(p.typical(theta, subject.covariates))
                continue
            value = theta[p.theta]
            for effect in p.covariates:
                cov, slope, ref = (
                    float(subject.covariates[effect.covariate]),
                    theta[effect.theta],
                    effect.reference,
                )
                if effect.form == "power":
                    value *= (cov / ref) ** slope
                elif effect.form == "linear":
                    value *= 1.0 + slope * (cov - ref)
                else:
                    value *= math.exp(slope * (cov - ref))
            out[i, j] = value
    return out


def _add_residual(f, eps, add_sd, prop_sd, is_log) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        linear = f + np.sqrt(add_sd**2 + (prop_sd * f) ** 2) * eps
        logged = f * np.exp(add_sd * eps)
    return np.where(is_log, logged, linear)


def _factor(omega: np.ndarray) -> np.ndarray:
    if omega.size == 0:
        return omega
    w, v = np.linalg.eigh(omega)
    if w.min() < -1e-10 * max(1.0, abs(w.max())):
        raise PkmodelError(f"omega is not positive semi-definite (smallest eigenvalue {w.min():.3g})")
    return v * np.sqrt(np.clip(w, 0.0, None))


def vpc(
    problem: Any,
    theta: Mapping[str, float],
    omega: np.ndarray | pd.DataFrame,
    sigma: Mapping[str, float],
    *,
    n_replicates: int = 200,
    seed: int,
    bins: int | Sequence[float] | Mapping[str, Any] = 8,
    percentiles: Sequence[float] = (5.0, 50.0, 95.0),
    level: float = 0.90,
    pred_corrected: bool = False,
    scheduler: Any = None,
    progress: bool = False,
    replicates_per_task: int = 20,
    name: str = "vpc",
) -> VPCResult:
    """Visual predictive check of a population problem at given estimates.

    Parameters
    ----------
    problem : pkmodel.estimation.PopulationProblem
        Subjects (observations, LLOQs, covariates), parameter model, residual models and
        ``predict_batch`` (e.g. ``FitRun.fit_problem.problem``).
    theta : mapping of str to float
        Every theta of the problem by name.
    omega : ndarray, shape (n_eta, n_eta), or DataFrame
        Ω in the order of ``problem.eta_names`` (a DataFrame is reordered by its labels).
    sigma : mapping of str to float
        Residual SDs by parameter name (``ResidualError.parameter_names``, e.g. ``"CP_add"``);
        a missing name is an error, 0 is allowed (no residual error).
    n_replicates : int
        Simulated replicates of the dataset.
    seed : int
        Root seed; replicate r uses ``task_seed(seed, r)``.
    bins : int, sequence of float, or mapping output -> either
        Time bins (see :func:`bin_edges`), for every output or per output name.
    percentiles : sequence of float
        Percentiles (0–100) compared.
    level : float
        Level of the simulated intervals (0 < level < 1).
    pred_corrected : bool
        Prediction-corrected VPC.
    scheduler, progress
        See :func:`pkmodel.distributed.map_tasks`; progress counts replicates.
    replicates_per_task : int
        Replicates simulated together in one task (part of the definition: results do not depend on
        the workers).
    name : str
        Label of figures and summaries.

    Returns
    -------
    VPCResult

    Raises
    ------
    PkmodelError
        Bad settings, unknown or missing estimates, or bins that leave observations out.

    Examples
    --------
    >>> import numpy as np
    >>> from pkmodel.estimation import IndividualParameter, PopulationProblem, ResidualError, Subject, Theta
    >>> subjects = [Subject(i, dv=[1.0, 2.0], time=[1.0, 2.0]) for i in range(3)]
    >>> problem = PopulationProblem(subjects, [Theta("B", 1.5)], [IndividualParameter("B", theta="B")], [],
    ...     [ResidualError("additive", additive=1.0)], predict_batch=_example_predict)
    >>> result = vpc(problem, {"B": 1.5}, np.zeros((0, 0)), {"y0_add": 0.0}, n_replicates=5, seed=1, bins=2)
    >>> result.table["sim_median"].tolist()
    [1.5, 1.5, 1.5, 3.0, 3.0, 3.0]
    """
    from .distributed import map_tasks

    for label, value, low in (
        ("n_replicates", n_replicates, 1),
        ("replicates_per_task", replicates_per_task, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise PkmodelError(f"{label}={value!r} must be a whole number >= {low}")
    if not 0.0 < float(level) < 1.0:
        raise PkmodelError(f"level={level!r} must be between 0 and 1 (e.g. 0.90)")
    pct = [float(p) for p in percentiles]
    if not pct or any(not 0.0 <= p <= 100.0 for p in pct):
        raise PkmodelError(
            f"percentiles {list(percentiles)} must be numbers between 0 and 100, e.g. (5, 50, 95)"
        )
    theta_names = tuple(problem.theta_names)
    missing = [n for n in theta_names if n not in theta]
    if missing:
        raise PkmodelError(
            f"theta has no value for {missing}; give every theta of the problem: {list(theta_names)}"
        )
    eta_names = list(problem.eta_names)
    if isinstance(omega, pd.DataFrame):
        absent = [e for e in eta_names if e not in omega.index or e not in omega.columns]
        if absent:
            raise PkmodelError(f"omega has no row/column {absent}; etas of the problem: {eta_names}")
        omega = omega.loc[eta_names, eta_names].to_numpy(dtype=float)
    omega = np.asarray(omega, dtype=float)
    if omega.shape != (len(eta_names), len(eta_names)):
        raise PkmodelError(
            f"omega has shape {omega.shape}; the problem has {len(eta_names)} etas {eta_names}: give "
            f"a ({len(eta_names)}, {len(eta_names)}) matrix"
        )
    residual = {r.output: r for r in problem.residual}
    for r in problem.residual:
        for pname in r.parameter_names:
            if pname not in sigma:
                raise PkmodelError(
                    f"sigma has no value for {pname!r}; give the residual SDs {list(r.parameter_names)}"
                )
            if not (math.isfinite(float(sigma[pname])) and float(sigma[pname]) >= 0):
                raise PkmodelError(f"sigma[{pname!r}] = {sigma[pname]!r} must be a finite SD >= 0")
    typical = _typical_values(problem, {n: float(theta[n]) for n in theta_names})
    param_names = [p.name for p in problem.parameters]
    param_eta = [
        (eta_names.index(p.eta) if p.eta is not None else None, p.eta_form == "exponential")
        for p in problem.parameters
    ]

    # observations in data order
    subjects = problem.subjects
    rows, start = [], 0
    for s in subjects:
        rows.append(np.arange(start, start + s.n_obs))
        start += s.n_obs
    n_obs = start
    dv = np.concatenate([np.asarray(s.dv, dtype=float) for s in subjects])
    time = np.concatenate([np.asarray(s.time, dtype=float) for s in subjects])
    output = np.concatenate([np.asarray(s.output, dtype=int) for s in subjects])
    lloq = np.concatenate([np.asarray(s.lloq, dtype=float) for s in subjects])
    blq = np.concatenate([np.asarray(s.blq, dtype=bool) for s in subjects])
    ids = np.concatenate([np.full(s.n_obs, s.id, dtype=object) for s in subjects])
    if np.any(~np.isfinite(time)):
        raise PkmodelError(
            "every observation needs a time for a VPC; the problem's subjects have none (time=None)"
        )
    out_names = {r.output: r.name for r in problem.residual}
    add_sd = np.array([float(sigma.get(f"{residual[o].name}_add", 0.0)) for o in output])
    prop_sd = np.array([float(sigma.get(f"{residual[o].name}_prop", 0.0)) for o in output])
    is_log = np.array([residual[o].model == "log-additive" for o in output])
    pred = np.empty(n_obs)
    for s, subject in enumerate(subjects):
        params = {n: np.array([typical[s, p]]) for p, n in enumerate(param_names)}
        pred[rows[s]] = np.asarray(problem.predict_batch(subject, params), dtype=float)[0]

    # bins and groups (output x bin)
    groups, group_rows, pc_factor = [], [], np.ones(n_obs)
    bin_of = np.empty(n_obs, dtype=int)
    edges_by_output = {}
    for o in sorted(set(output.tolist())):
        label = out_names[o]
        spec = bins.get(label, 8) if isinstance(bins, Mapping) else bins
        mask = output == o
        edges = bin_edges(time[mask], spec)
        edges_by_output[label] = edges.tolist()
        index = _assign(time[mask], edges)
        bin_of[mask] = index
        positions = np.flatnonzero(mask)
        for b in range(edges.size - 1):
            columns = positions[index == b]
            if columns.size == 0:
                raise PkmodelError(
                    f"output {label}: bin {b + 1} [{edges[b]:g}, {edges[b + 1]:g}] h holds no observation; "
                    "merge it with a neighbour (give other edges)"
                )
            if pred_corrected:
                median_pred = float(np.median(pred[columns]))
                if np.any(pred[columns] <= 0):
                    raise PkmodelError(
                        f"output {label}: a population prediction in bin {b + 1} is <= 0 "
                        f"(e.g. at {time[columns][pred[columns] <= 0][0]:g} h, before the first dose?); "
                        "prediction correction divides by it: start the first bin after it, or do not correct"
                    )
                pc_factor[columns] = median_pred / pred[columns]
            groups.append(columns)
            group_rows.append(
                (label, b, float(edges[b]), float(edges[b + 1]), float(np.median(time[columns])))
            )

    context = {
        "problem": problem,
        "typical": typical,
        "factor": _factor(omega),
        "param_names": param_names,
        "param_eta": param_eta,
        "rows": rows,
        "n_obs": n_obs,
        "add_sd": add_sd,
        "prop_sd": prop_sd,
        "is_log": is_log,
        "lloq": lloq,
        "pc_factor": pc_factor,
        "groups": groups,
        "percentiles": pct,
        "seed": seed,
    }
    from .distributed import task_seed

    task_seed(seed, 0)  # validates the seed before any work
    tasks = [
        list(range(first, min(first + int(replicates_per_task), int(n_replicates))))
        for first in range(0, int(n_replicates), int(replicates_per_task))
    ]
    stats, fractions = [], []
    for s_part, f_part in map_tasks(
        _vpc_task,
        tasks,
        context=context,
        scheduler=scheduler,
        progress=progress,
        label="replicates",
        weights=[len(t) for t in tasks],
    ):
        stats.append(s_part)
        fractions.append(f_part)
    sim = np.concatenate(stats)  # (R, G, Q)
    frac = np.concatenate(fractions)  # (R, G)
    alpha = (1.0 - float(level)) / 2.0
    band = [100 * alpha, 50.0, 100 * (1 - alpha)]
    observed_y = dv * pc_factor
    table_rows, blq_rows = [], []
    for g, columns in enumerate(groups):
        label, b, lo, hi, t_mid = group_rows[g]
        obs_pct = censored_percentiles(observed_y[columns], blq[columns], pct)
        sim_band = censored_percentiles(sim[:, g, :].T, np.isnan(sim[:, g, :].T), band)  # (Q, 3)
        for k, p in enumerate(pct):
            table_rows.append(
                {
                    "output": label,
                    "bin": b + 1,
                    "bin_lower": lo,
                    "bin_upper": hi,
                    "time": t_mid,
                    "n_obs": int(columns.size),
                    "percentile": p,
                    "observed": obs_pct[k],
                    "sim_lower": sim_band[k, 0],
                    "sim_median": sim_band[k, 1],
                    "sim_upper": sim_band[k, 2],
                }
            )
        fb = np.quantile(frac[:, g], [alpha, 0.5, 1 - alpha])
        blq_rows.append(
            {
                "output": label,
                "bin": b + 1,
                "bin_lower": lo,
                "bin_upper": hi,
                "time": t_mid,
                "n_obs": int(columns.size),
                "observed_fraction": float(blq[columns].mean()),
                "sim_lower": fb[0],
                "sim_median": fb[1],
                "sim_upper": fb[2],
            }
        )
    observations = pd.DataFrame(
        {
            "ID": ids,
            "TIME": time,
            "output": [out_names[o] for o in output],
            "bin": bin_of + 1,
            "DV": np.where(blq, np.nan, observed_y),
            "BLQ": blq.astype(int),
            "PRED": pred,
        }
    )
    settings = {
        "n_replicates": int(n_replicates),
        "seed": seed,
        "percentiles": pct,
        "level": float(level),
        "pred_corrected": bool(pred_corrected),
        "bin_edges": edges_by_output,
        "replicates_per_task": int(replicates_per_task),
    }
    has_lloq = {out_names[o]: bool(np.isfinite(lloq[output == o]).any()) for o in set(output.tolist())}
    return VPCResult(pd.DataFrame(table_rows), pd.DataFrame(blq_rows), observations, settings, name, has_lloq)


def _example_predict(subject: Any, params: Mapping[str, np.ndarray]) -> np.ndarray:
    """Example prediction (doctests): ``B·t`` at each observation time, shape (k, n_obs)."""
    return np.asarray(params["B"])[:, None] * np.asarray(subject.time)[None, :]


def run_vpc(
    spec_or_run: Any,
    *,
    n_replicates: int = 200,
    seed: int | None = None,
    bins: int | Sequence[float] | Mapping[str, Any] = 8,
    percentiles: Sequence[float] = (5.0, 50.0, 95.0),
    level: float = 0.90,
    pred_corrected: bool = False,
    scheduler: Any = None,
    progress: bool = False,
) -> VPCResult:
    """VPC of a population fit: run the fit specification (or take a finished :class:`FitRun`), then :func:`vpc`.

    Parameters
    ----------
    spec_or_run : path or FitRun
        A population fit specification (``fits/*.toml``) or the result of :func:`pkmodel.fitting.run_fit`.
    seed : int, optional
        Root seed; default the specification's ``seed``.
    n_replicates, bins, percentiles, level, pred_corrected, scheduler, progress
        See :func:`vpc`.

    Returns
    -------
    VPCResult

    Raises
    ------
    PkmodelError
        An individual (not population) fit, or a fit without a seed and no ``seed``.

    Examples
    --------
    >>> from pkmodel.model import fits_dir
    >>> result = run_vpc(fits_dir() / "theoph_foce.toml", n_replicates=100)  # doctest: +SKIP
    >>> result.table.columns[:4].tolist()  # doctest: +SKIP
    ['output', 'bin', 'bin_lower', 'bin_upper']
    """
    from .fitting import load_fit_spec, run_fit

    if not hasattr(spec_or_run, "fit_problem"):
        spec = load_fit_spec(spec_or_run)
        if spec.method == "individual":  # checked before the (long) fit
            raise PkmodelError(
                f"{spec.path}: a VPC needs a population fit (method foce-i, foce or fo), not method 'individual'"
            )
    run = spec_or_run if hasattr(spec_or_run, "fit_problem") else run_fit(spec_or_run)
    if not run.is_population:
        raise PkmodelError(
            f"{run.spec.path}: a VPC needs a population fit (method foce-i, foce or fo), not method "
            f"{run.spec.method!r}"
        )
    if seed is None:
        seed = getattr(run.spec, "seed", None)
        if seed is None:
            raise PkmodelError(f"{run.spec.path} has no seed; give seed= (or --seed)")
    result = run.result
    omega = pd.DataFrame(result.omega, index=list(result.eta_names), columns=list(result.eta_names))
    return vpc(
        run.fit_problem.problem,
        result.theta,
        omega,
        result.sigma,
        n_replicates=n_replicates,
        seed=seed,
        bins=bins,
        percentiles=percentiles,
        level=level,
        pred_corrected=pred_corrected,
        scheduler=scheduler,
        progress=progress,
        name=run.spec.name,
    )
