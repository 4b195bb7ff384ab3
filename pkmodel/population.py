"""Virtual populations: individual parameters drawn from a model or a fit, run in chunks keeping only metrics.

:func:`sample_population` draws N subjects:

* random effects ``η ~ N(0, Ω)``, log-normal parameters ``P_i = θ_P·exp(η_i)`` (the form of pkmodel's
  fits and of the model library's variability);
* covariates resampled (whole rows, so their correlation is kept) from a table such as a fitted
  dataset, or drawn from distributions (normal, log-normal, uniform; optionally truncated, drawn exactly
  by inverse CDF);
* optionally parameter uncertainty: ``θ ~ N(θ̂, Σ)`` drawn once per *replicate* population (column
  REP), so that the spread of a statistic across replicates reflects the uncertainty of θ.

All random numbers are drawn up front from one generator ``numpy.random.default_rng(seed)``, in this
order: the θ draws (replicates × parameters), the covariates (one column after another, in the order
given), then the standard normals of η (subjects × etas, row-major).  The population is therefore fixed by
the seed alone; running it in chunks of any size (:func:`simulate_metrics`) gives the same numbers.

:func:`simulate_metrics` runs a population through a regimen in chunks of ``chunk_size`` subjects and
keeps only the metrics of each chunk (not the profiles), so memory stays bounded for any N; a text
progress bar goes to standard error on long runs.

Examples
--------
>>> from pkmodel import load_model
>>> pop = sample_population(load_model("two_compartment_iv"), 4, seed=1, omega={"CL": 0.09})
>>> list(pop.columns), len(pop)
(['ID', 'CL'], 4)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from .distributed import Progress
from .dosing import Regimen
from .errors import SimulationError
from .model import Model

__all__ = ["sample_population", "simulate_metrics"]

_DISTRIBUTIONS = {
    "normal": ("mean", "sd"),
    "lognormal": ("median", "sd_log"),
    "uniform": ("lower", "upper"),
}


# ------------------------------------------------------------------------------------------ sources


class _Source:
    """What a population is drawn from: typical values, Ω, θ covariance, and covariate rules."""

    def __init__(self, model_or_fit: Any):
        from .model import load_model

        self.fit = None
        if isinstance(model_or_fit, str):
            model_or_fit = load_model(model_or_fit)
        if isinstance(model_or_fit, Model):
            self.model = model_or_fit
            self.theta = {k: p.value for k, p in self.model.parameters.items()}
            self.omega_names: list[str] = []
            self.omega = np.zeros((0, 0))
            self.data_covariates: pd.DataFrame | None = None
            self.shared: dict[str, str] = {}
            return
        spec = getattr(model_or_fit, "spec", None)
        result = getattr(model_or_fit, "result", None)
        if spec is None or result is None or not hasattr(result, "omega"):
            raise SimulationError(
                f"model_or_fit must be a Model, a model name, or a population FitRun (from run_fit); got "
                f"{type(model_or_fit).__name__}"
            )
        self.fit = model_or_fit
        self.model = spec.model
        self.theta = dict(result.theta)
        owners = {p.eta_name: p.eta for p in spec.parameters if p.eta is not None}
        self.omega_names = [owners[e] for e in result.eta_names]
        # parameters that carry another parameter's η (e.g. V with eta = "CL")
        self.shared = {p.name: p.eta for p in spec.parameters if p.eta is not None and p.eta != p.name}
        self.omega = np.asarray(result.omega, dtype=float)
        # covariates of the fitted subjects: those of the spec's covariate effects and the model's own
        # (e.g. WT and ALB of the ADC models, passed to the simulation), as the fit used them
        rows = []
        for s in model_or_fit.fit_problem.subjects:
            row = {"ID": s.id, **s.covariates}
            constants = getattr(s.data, "constants", {})
            row.update({c: constants[c] for c in self.model.covariates if c in constants})
            weight = getattr(s.data, "weight", None)
            if weight is not None and "WT" not in row:
                row["WT"] = weight
            rows.append(row)
        self.data_covariates = pd.DataFrame(rows)

    # -- parameter names -------------------------------------------------------------------------
    @property
    def structural(self) -> list[str]:
        """Parameters a population column may hold (typical values come from θ)."""
        if self.fit is None:
            return list(self.model.parameters)
        return [p.name for p in self.fit.spec.parameters]

    @property
    def covariate_names(self) -> list[str]:
        names = list(self.model.covariates)
        if "WT" not in names:
            names.append("WT")
        if self.fit is not None:
            for p in self.fit.spec.parameters:
                names += [c.covariate for c in p.covariates if c.covariate not in names]
        return names

    def typical(self, theta: Mapping[str, float], covariates: pd.DataFrame, n: int) -> dict[str, np.ndarray]:
        """Typical value of every structural parameter per subject (covariate effects of a fit applied)."""
        if self.fit is None:
            return {k: np.full(n, float(theta[k])) for k in self.structural}
        from .fitting import typical_values

        spec = self.fit.spec
        constants = dict(spec.covariate_values)
        rows = covariates.to_dict("records") if len(covariates.columns) else [{}] * n
        values = [typical_values(spec, theta, {**constants, **row}) for row in rows]
        return {k: np.array([v[k] for v in values], dtype=float) for k in self.structural}

    def bounds(self, name: str) -> tuple[float, float]:
        if name in self.model.parameters:
            p = self.model.parameters[name]
            return p.lower, p.upper
        return -math.inf, math.inf


# ------------------------------------------------------------------------------------------ inputs


def _square(spec: Any, what: str, allowed: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """A symmetric matrix from a mapping (variances by name, covariances by (a, b)) or a DataFrame."""
    if isinstance(spec, pd.DataFrame):
        names = [str(c) for c in spec.columns]
        if [str(i) for i in spec.index] != names:
            raise SimulationError(
                f"{what} as a DataFrame needs the same names, in the same order, as index and columns; got "
                f"index {list(spec.index)} and columns {names}"
            )
        matrix = spec.to_numpy(dtype=float)
    elif isinstance(spec, Mapping):
        names = []
        for key in spec:
            for name in key if isinstance(key, tuple) else (key,):
                if name not in names:
                    names.append(name)
        matrix = np.zeros((len(names), len(names)))
        for key, value in spec.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise SimulationError(f"{what}[{key!r}] = {value!r} is not a number") from None
            if isinstance(key, tuple):
                if len(key) != 2:
                    raise SimulationError(
                        f"{what} key {key!r}: a covariance needs two names, e.g. ('CL', 'V1')"
                    )
                i, j = names.index(key[0]), names.index(key[1])
                matrix[i, j] = matrix[j, i] = number
            else:
                i = names.index(key)
                matrix[i, i] = number
    else:
        raise SimulationError(
            f"{what} must be a mapping of variances by name (covariances by a pair of names) or a square "
            f"DataFrame; got {type(spec).__name__}"
        )
    if not names:
        return [], np.zeros((0, 0))
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SimulationError(
            f"{what} names {unknown}, which are not parameters here; parameters: {', '.join(allowed)}"
        )
    if not np.all(np.isfinite(matrix)):
        raise SimulationError(f"{what} has non-finite entries; give finite variances and covariances")
    if not np.allclose(matrix, matrix.T, rtol=0, atol=1e-12 * max(1.0, np.abs(matrix).max())):
        raise SimulationError(f"{what} is not symmetric; give each covariance once or equal on both sides")
    diagonal = np.diag(matrix)
    if np.any(diagonal < 0):
        bad = names[int(np.argmin(diagonal))]
        raise SimulationError(
            f"{what}: the variance of {bad} is {diagonal.min():g} < 0; variances must be >= 0"
        )
    eig = np.linalg.eigvalsh(matrix) if len(names) else np.zeros(0)
    if eig.size and eig.min() < -1e-10 * max(1.0, eig.max()):
        raise SimulationError(
            f"{what} is not positive semi-definite (smallest eigenvalue {eig.min():.3g}): a covariance is larger "
            "than the variances allow (|correlation| > 1); reduce it"
        )
    return names, matrix


def _factor(matrix: np.ndarray) -> np.ndarray:
    """L with L·Lᵀ = matrix (Cholesky; eigen-decomposition for singular PSD matrices)."""
    if matrix.size == 0:
        return matrix
    try:
        return np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(matrix)
        return v * np.sqrt(np.clip(w, 0.0, None))


def _check_seed(seed: Any) -> Any:
    if (
        seed is None
        or isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer, np.random.SeedSequence))
    ):
        raise SimulationError(
            f"seed={seed!r}: a virtual population needs a fixed seed (an int >= 0) so that it can be reproduced"
        )
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise SimulationError(f"seed={seed!r} must be >= 0")
    return seed


def _draw_covariate(rng: np.random.Generator, name: str, spec: Any, n: int) -> np.ndarray:
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        return np.full(n, float(spec))
    if not isinstance(spec, Mapping) or "dist" not in spec:
        raise SimulationError(
            f"covariates[{name!r}] = {spec!r}: give a number, or a distribution such as "
            "{'dist': 'lognormal', 'median': 60, 'sd_log': 0.2, 'lower': 40, 'upper': 120}"
        )
    dist = spec["dist"]
    if dist not in _DISTRIBUTIONS:
        raise SimulationError(
            f"covariates[{name!r}]: distribution {dist!r} is unknown; use one of {', '.join(_DISTRIBUTIONS)}"
        )
    needed = _DISTRIBUTIONS[dist]
    allowed = {"dist", *needed, "lower", "upper"}
    extra = sorted(set(spec) - allowed)
    missing = [k for k in needed if k not in spec]
    if extra or missing:
        raise SimulationError(
            f"covariates[{name!r}]: a {dist} distribution takes {', '.join(needed)} (and optional lower, upper); "
            + (f"unknown {extra}" if extra else f"missing {missing}")
        )
    try:
        values = {k: float(v) for k, v in spec.items() if k != "dist"}
    except (TypeError, ValueError):
        raise SimulationError(f"covariates[{name!r}]: every value of {spec!r} must be a number") from None
    lower = values.get("lower", -math.inf)
    upper = values.get("upper", math.inf)
    if dist == "uniform":
        if not lower < upper:
            raise SimulationError(
                f"covariates[{name!r}]: uniform needs lower < upper, got {lower:g}, {upper:g}"
            )
        return rng.uniform(lower, upper, n)
    if dist == "normal":
        loc, scale = values["mean"], values["sd"]
        lo, hi = lower, upper
    else:
        if values["median"] <= 0:
            raise SimulationError(f"covariates[{name!r}]: a log-normal median must be > 0")
        loc, scale = math.log(values["median"]), values["sd_log"]
        lo = math.log(lower) if lower > 0 else -math.inf
        hi = math.log(upper) if upper > 0 else -math.inf
    if not scale > 0:
        raise SimulationError(f"covariates[{name!r}]: the spread ({needed[1]}) must be > 0")
    if not lo < hi:
        raise SimulationError(f"covariates[{name!r}]: lower {lower:g} must be below upper {upper:g}")
    p_lo, p_hi = ndtr((lo - loc) / scale), ndtr((hi - loc) / scale)
    if not p_hi > p_lo:
        raise SimulationError(
            f"covariates[{name!r}]: [{lower:g}, {upper:g}] has no probability under this distribution; widen it"
        )
    x = loc + scale * ndtri(rng.uniform(p_lo, p_hi, n))
    return np.exp(x) if dist == "lognormal" else x


def _covariates(rng, source: _Source, covariates: Any, n: int) -> pd.DataFrame:
    allowed = source.covariate_names
    if covariates is None:
        if source.data_covariates is None:
            return pd.DataFrame(index=range(n))
        covariates = source.data_covariates
    if isinstance(covariates, pd.DataFrame):
        table = covariates.drop(columns=[c for c in ("ID", "REP") if c in covariates.columns])
        unknown = [c for c in table.columns if c not in allowed]
        if unknown:
            raise SimulationError(
                f"covariate column(s) {unknown} are not covariates of {source.model.name} "
                f"({', '.join(allowed)}); select the covariate columns before sampling"
            )
        if len(table) == 0:
            raise SimulationError("the covariate table has no rows to resample")
        if table.isna().any().any():
            column = table.columns[table.isna().any()][0]
            raise SimulationError(
                f"covariate column {column!r} has missing values; impute or drop those rows before resampling"
            )
        rows = rng.integers(0, len(table), size=n)
        return table.iloc[rows].reset_index(drop=True)
    if not isinstance(covariates, Mapping):
        raise SimulationError(
            "covariates must be None, a DataFrame to resample rows from, or a mapping name -> number or "
            f"distribution; got {type(covariates).__name__}"
        )
    out = {}
    for name, spec in covariates.items():
        if name not in allowed:
            raise SimulationError(
                f"covariates[{name!r}]: not a covariate of {source.model.name} ({', '.join(allowed)})"
            )
        out[name] = _draw_covariate(rng, name, spec, n)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------- API


def sample_population(
    model_or_fit: Model | str | Any,
    n: int,
    *,
    seed: int | np.random.SeedSequence,
    omega: Mapping[Any, float] | pd.DataFrame | None = None,
    covariates: pd.DataFrame | Mapping[str, Any] | None = None,
    uncertainty: Mapping[Any, float] | pd.DataFrame | bool | None = None,
    replicates: int = 1,
) -> pd.DataFrame:
    """Draw a virtual population of individual parameters.

    Parameters
    ----------
    model_or_fit : Model, str or FitRun
        A model (typical values are its parameter values) or a population fit from
        :func:`pkmodel.fitting.run_fit` (typical values θ̂ with the fit's covariate effects, Ω̂, and its
        covariates).
    n : int
        Subjects per replicate.
    seed : int
        Seed of the one random generator (see the module docstring for the order of the draws).
    omega : mapping or DataFrame, optional
        Ω, variances of the log-normal random effects by parameter name, covariances by a pair of
        names (``{"CL": 0.09, "V1": 0.04, ("CL", "V1"): 0.03}``), or a square DataFrame.  Default: none
        for a model, the fit's Ω̂ for a fit.
    covariates : DataFrame or mapping, optional
        A table whose rows are resampled with replacement (columns: covariates; ID ignored), or a mapping
        name -> number (constant) or distribution ``{"dist": "normal", "mean": .., "sd": ..}``,
        ``{"dist": "lognormal", "median": .., "sd_log": ..}``, ``{"dist": "uniform", "lower": ..,
        "upper": ..}``, with optional ``lower``/``upper`` truncation.  Default: none for a model (its
        reference values apply), the fitted subjects' covariates for a fit.
    uncertainty : mapping, DataFrame or True, optional
        Σ, the covariance of θ (same forms as ``omega``; True takes a fit's covariance matrix).  θ is drawn
        from N(θ̂, Σ) once per replicate.
    replicates : int
        Number of replicate populations of ``n`` subjects (column REP when > 1).

    Returns
    -------
    pandas.DataFrame
        ``n·replicates`` rows: ID (1, 2, ...), REP (when ``replicates > 1``), the covariates, then every
        parameter that varies (individual values, the model's unit).  Pass it to
        ``simulate(parameters=...)`` (drop REP first) or to :func:`simulate_metrics`.

    Raises
    ------
    SimulationError
        Unknown names, a matrix that is not a covariance matrix, a missing seed, bad distributions, or a
        drawn value outside a parameter's bounds (pkmodel does not clamp).

    Examples
    --------
    >>> from pkmodel import load_model
    >>> pop = sample_population(load_model("adc_esg401"), 3, seed=7, omega={"CL": 0.09, "KDEC": 0.1},
    ...                         covariates={"WT": {"dist": "lognormal", "median": 60, "sd_log": 0.2}})
    >>> list(pop.columns)
    ['ID', 'WT', 'CL', 'KDEC']
    """
    seed = _check_seed(seed)
    for name, value in (("n", n), ("replicates", replicates)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SimulationError(f"{name}={value!r} must be a whole number >= 1")
    source = _Source(model_or_fit)
    total = int(n) * int(replicates)
    allowed = source.structural
    if omega is None:
        eta_names, omega_matrix = source.omega_names, source.omega
    else:
        eta_names, omega_matrix = _square(omega, "omega", allowed)
    theta_names: list[str] = []
    sigma = np.zeros((0, 0))
    if uncertainty is True:
        if source.fit is None:
            raise SimulationError(
                "uncertainty=True needs a fit; for a model give the covariance of θ by name"
            )
        table = source.fit.result.covariance_matrix()
        if table is None:
            raise SimulationError(
                "the fit has no covariance matrix (its covariance step failed or was not run); give uncertainty "
                "as a covariance of θ, or None"
            )
        keep = [k for k in table.index if k in source.theta]
        theta_names, sigma = keep, table.loc[keep, keep].to_numpy(dtype=float)
    elif uncertainty is not None and uncertainty is not False:
        theta_names, sigma = _square(uncertainty, "uncertainty", list(source.theta))

    rng = np.random.default_rng(seed)
    # 1. θ per replicate
    thetas = [dict(source.theta) for _ in range(int(replicates))]
    if theta_names:
        centre = np.array([source.theta[k] for k in theta_names])
        draws = centre + rng.standard_normal((int(replicates), len(theta_names))) @ _factor(sigma).T
        for r, row in enumerate(draws):
            for name, value in zip(theta_names, row, strict=True):
                lo, hi = source.bounds(name)
                if not lo <= value <= hi:
                    raise SimulationError(
                        f"uncertainty draw {r + 1}: {name} = {value:g} falls outside its bounds [{lo:g}, {hi:g}]; "
                        "pkmodel does not clamp: the covariance is too wide for a normal draw of this θ"
                    )
                thetas[r][name] = float(value)
    # 2. covariates
    cov = _covariates(rng, source, covariates, total)
    # 3. η
    z = rng.standard_normal((total, len(eta_names))) if eta_names else np.zeros((total, 0))
    eta = z @ _factor(omega_matrix).T

    frame = pd.DataFrame({"ID": np.arange(1, total + 1)})
    rep = np.repeat(np.arange(1, int(replicates) + 1), int(n))
    if replicates > 1:
        frame["REP"] = rep
    for column in cov.columns:
        frame[column] = cov[column].to_numpy()
    varying = [
        k
        for k in allowed
        if source.shared.get(k, k) in eta_names or k in theta_names or source.fit is not None
    ]
    typical = np.empty((total, len(varying)))
    for r in range(int(replicates)):
        rows = slice(r * int(n), (r + 1) * int(n))
        values = source.typical(thetas[r], cov.iloc[rows], int(n))
        typical[rows] = np.column_stack([values[k] for k in varying]) if varying else typical[rows]
    for j, name in enumerate(varying):
        value = typical[:, j]
        owner = source.shared.get(name, name)
        if owner in eta_names:
            value = value * np.exp(eta[:, eta_names.index(owner)])
        lo, hi = source.bounds(name)
        bad = (value < lo) | (value > hi)
        if bad.any():
            raise SimulationError(
                f"{int(bad.sum())} of {total} draws of {name} fall outside its bounds [{lo:g}, {hi:g}] (e.g. "
                f"{value[bad][0]:g}); pkmodel does not clamp: lower its variance or widen the bounds in the model"
            )
        frame[name] = value
    return frame


def simulate_metrics(
    model: Model | str,
    regimen: Regimen,
    population: pd.DataFrame,
    metrics_fn: Callable[[Any], pd.DataFrame] | None = None,
    *,
    times: Sequence[float] | np.ndarray | None = None,
    chunk_size: int = 500,
    progress: bool | None = None,
    metric_options: Mapping[str, Any] | None = None,
    **simulate_options: Any,
) -> pd.DataFrame:
    """Run a population through a regimen in chunks and keep only the metrics.

    Parameters
    ----------
    model : Model or str
    regimen : Regimen
        One regimen for every subject.
    population : DataFrame
        One row per subject, e.g. from :func:`sample_population` (ID, optional REP, parameter and
        covariate columns).
    metrics_fn : callable, optional
        ``metrics_fn(result)`` → DataFrame with an ID column, called with the
        :class:`~pkmodel.SimulationResult` of each chunk on ``times``.  Default: the exposure table —
        :func:`pkmodel.exposure.exposure_metrics` (exact, no simulation grid) for a linear model,
        :func:`pkmodel.exposure.exposure_from_result` on ``times`` otherwise (the chunks then simulate only
        the analytes, without the state array, unless ``outputs`` or ``keep_states`` are given).
    times : array_like, optional
        Simulation grid (h); default :func:`pkmodel.exposure.exposure_times` of the regimen.
    chunk_size : int
        Subjects per chunk; memory grows with it, results do not depend on it.
    progress : bool, optional
        Text progress bar on standard error; default on when stderr is a terminal and there is more than
        one chunk.
    metric_options : mapping, optional
        Keyword arguments of the default exposure functions (analytes, cycles, threshold, until,
        cycle_length); an array ``until`` with one value per subject is split with the chunks.
    **simulate_options
        Passed to :func:`pkmodel.simulate` (engine, method, rtol, atol, ...).

    Returns
    -------
    pandas.DataFrame
        The metrics of all chunks, grouped by subject in population order (within a subject in the order
        the metrics function gives them), with REP after ID when the population has it.

    Raises
    ------
    SimulationError
        A population without rows or with repeated IDs, a bad chunk size, or metrics without an ID column.

    Examples
    --------
    >>> from pkmodel import load_model, parse_regimen
    >>> m = load_model("two_compartment_iv")
    >>> pop = sample_population(m, 6, seed=3, omega={"CL": 0.09})
    >>> out = simulate_metrics(m, parse_regimen("100 mg q24h x2"), pop, chunk_size=4,
    ...                        metric_options={"cycles": [1], "analytes": "CP"})
    >>> out.ID.nunique(), sorted(out.cycle.unique())
    (6, ['1', 'all'])
    """
    from .exposure import exposure_from_result, exposure_metrics, exposure_times
    from .simulation import simulate

    if isinstance(model, str):
        from .model import load_model

        model = load_model(model)
    if not isinstance(population, pd.DataFrame) or len(population) == 0:
        raise SimulationError(
            "population must be a DataFrame with one row per subject (see sample_population)"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise SimulationError(f"chunk_size={chunk_size!r} must be a whole number >= 1")
    frame = population.reset_index(drop=True)
    if "ID" not in frame.columns:
        frame.insert(0, "ID", np.arange(1, len(frame) + 1))
    if frame["ID"].duplicated().any():
        dup = frame.loc[frame["ID"].duplicated(), "ID"].iloc[0]
        dup = dup.item() if isinstance(dup, np.generic) else dup
        raise SimulationError(f"population has repeated ID {dup!r}; give every subject its own ID")
    replicate = frame.pop("REP") if "REP" in frame.columns else None
    options = dict(metric_options or {})
    per_subject = {
        k: np.asarray(v) for k, v in options.items() if isinstance(v, np.ndarray) and v.shape == (len(frame),)
    }
    exact = metrics_fn is None and model.is_linear and simulate_options.get("engine", "auto") != "ode"
    grid = None
    if not exact:
        grid = exposure_times(regimen, cycle_length=options.get("cycle_length")) if times is None else times
    # the default metrics read only the analytes: simulate those alone, without the state array (for a
    # PK/PD model on a fine grid the states are most of a chunk's memory and of its time)
    lean: dict[str, Any] = {}
    if metrics_fn is None and not {"outputs", "keep_states"} & set(simulate_options):
        analytes = options.get("analytes")
        names = [analytes] if isinstance(analytes, str) else list(analytes or model.outputs)
        lean = {"outputs": names, "keep_states": False}
    n = len(frame)
    bar = Progress(
        n, sys.stderr.isatty() and n > chunk_size if progress is None else bool(progress), label="subjects"
    )
    pieces = []
    for first in range(0, n, int(chunk_size)):
        chunk = frame.iloc[first : first + int(chunk_size)]
        chunk_options = {**options, **{k: v[first : first + int(chunk_size)] for k, v in per_subject.items()}}
        if exact:
            table = exposure_metrics(model, regimen, parameters=chunk, **chunk_options)
        else:
            result = simulate(model, regimen, grid, parameters=chunk, **simulate_options, **lean)
            if metrics_fn is None:
                table = exposure_from_result(result, regimen, **chunk_options)
            else:
                table = metrics_fn(result)
                if not isinstance(table, pd.DataFrame) or "ID" not in table.columns:
                    raise SimulationError(
                        "metrics_fn must return a DataFrame with an ID column (one or more rows per subject)"
                    )
            del result
        pieces.append(table)
        bar.update(min(first + int(chunk_size), n))
    out = pd.concat(pieces, ignore_index=True)
    position = out["ID"].map(dict(zip(frame["ID"], range(n), strict=True))).to_numpy()
    out = out.iloc[np.argsort(position, kind="stable")].reset_index(drop=True)
    if replicate is not None:
        out.insert(1, "REP", out["ID"].map(dict(zip(frame["ID"], replicate, strict=True))))
    return out
