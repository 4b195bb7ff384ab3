"""Run a fit specification end to end and write its results atomically."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from pkmodel.errors import PkmodelError
from pkmodel.estimation import (
    IndividualResult,
    PopulationResult,
    ResidualError,
    Theta,
    fit_individual,
    fit_population,
)
from pkmodel.fitting._problem import FitProblem, build_problem, typical_values
from pkmodel.fitting._spec import FitSpec, load_fit_spec

__all__ = ["FitRun", "run_fit"]

RESULT_FILES = (
    "results.json",
    "theta.csv",
    "omega.csv",
    "sigma.csv",
    "individual_parameters.csv",
    "predictions.csv",
)
_Z95 = 1.959963984540054  # standard normal 97.5 % quantile


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    import lmfit
    import scipy

    import pkmodel

    return {
        "pkmodel": pkmodel.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "lmfit": lmfit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, eq=False)
class FitRun:
    """The outcome of :func:`run_fit`: the estimation result, its tables and its provenance.

    Attributes
    ----------
    spec : FitSpec
    fit_problem : FitProblem
        Dataset, subjects and the prediction function.
    result : PopulationResult or dict of ID to IndividualResult
        The population result, or one individual result per subject (``method = "individual"``).
    status : {"success", "at-bound", "covariance-failed", "no-covariance", "not-converged"}
        ``"success"`` only when the estimation converged *and* the covariance step succeeded.
    status_message : str
        The status in words, with the reason when it is not a success.
    notes : tuple of str
        What was left out of the fit and how BLQ data were handled.
    elapsed_seconds : float
        Wall time of the estimation including the covariance step.
    timestamp : str
        When the fit finished (UTC, ISO 8601).
    command_line : str or None
        The command that ran the fit, when given (recorded in results.json).
    """

    spec: FitSpec
    fit_problem: FitProblem = field(repr=False)
    result: Any = field(repr=False)
    status: str
    status_message: str
    notes: tuple[str, ...]
    elapsed_seconds: float
    timestamp: str
    command_line: str | None = None

    @property
    def is_population(self) -> bool:
        """True for FOCE-I, FOCE and FO fits."""
        return isinstance(self.result, PopulationResult)

    @property
    def success(self) -> bool:
        """Converged with a successful covariance step."""
        return self.status == "success"

    # ---- tables ----------------------------------------------------------------------------------
    def theta_table(self) -> pd.DataFrame:
        """THETA: estimate, SE, RSE %, 95 % CI (Wald), bounds, fixed (population; per ID for individual)."""
        if self.is_population:
            table = self.result.theta_table()
            table.insert(3, "ci95_lower", table["estimate"] - _Z95 * table["se"])
            table.insert(4, "ci95_upper", table["estimate"] + _Z95 * table["se"])
            return table
        frames = []
        structural = [p.name for p in self.spec.parameters]
        for sid, res in self.result.items():
            t = res.parameter_table().loc[structural].reset_index()
            t.insert(0, "ID", sid)
            frames.append(t)
        table = pd.concat(frames, ignore_index=True)
        table["ci95_lower"] = table["estimate"] - _Z95 * table["se"]
        table["ci95_upper"] = table["estimate"] + _Z95 * table["se"]
        return table

    def omega_table(self) -> pd.DataFrame:
        """Ω elements (population fits; empty for individual fits)."""
        if self.is_population:
            return self.result.omega_table()
        return pd.DataFrame(columns=["name", "estimate", "sd", "correlation", "se", "rse_percent"]).set_index(
            "name"
        )

    def sigma_table(self) -> pd.DataFrame:
        """Residual error SDs and variances (per ID for individual fits)."""
        if self.is_population:
            return self.result.sigma_table()
        frames = []
        structural = {p.name for p in self.spec.parameters}
        for sid, res in self.result.items():
            t = res.parameter_table()
            t = t.loc[[n for n in t.index if n not in structural]].reset_index()
            t.insert(0, "ID", sid)
            frames.append(t)
        return pd.concat(frames, ignore_index=True)

    def individual_parameters(self) -> pd.DataFrame:
        """One row per subject: η̂ (EBE) and individual parameter values (population); estimates (individual)."""
        if self.is_population:
            return self.result.subjects().reset_index()
        rows = []
        for sid, res in self.result.items():
            row = {"ID": sid}
            row.update(res.estimates)
            row["minus_2_log_likelihood"] = res.minus_2_log_likelihood
            row["converged"] = res.converged
            row["covariance_ok"] = res.covariance_ok
            rows.append(row)
        return pd.DataFrame(rows)

    def predictions(self) -> pd.DataFrame:
        """One row per observation: ID, TIME, DVID, DV, PRED, IPRED, CWRES, IWRES, BLQ, OUTPUT, LLOQ, LINE.

        PRED is the prediction at η = 0 and IPRED at η̂; residuals are on the comparison scale (log for
        log-additive outputs) and empty for BLQ records.  Individual fits have no PRED or CWRES.
        """
        subjects = self.fit_problem.subjects
        dvid = np.concatenate([s.data.dvid for s in subjects])
        lines = np.concatenate([s.data.rows for s in subjects])
        outputs = self.fit_problem.outputs
        if self.is_population:
            obs = self.result.observations()
        else:
            frames = []
            for s in subjects:
                o = self.result[s.id].observations()
                o.insert(0, "ID", s.id)
                o["LLOQ"] = s.lloq
                o["PRED"] = np.nan
                o["CWRES"] = np.nan
                frames.append(o)
            obs = pd.concat(frames, ignore_index=True)
        return pd.DataFrame(
            {
                "ID": obs["ID"].to_numpy(),
                "TIME": obs["TIME"].to_numpy(),
                "DVID": dvid,
                "DV": obs["DV"].to_numpy(),
                "PRED": obs["PRED"].to_numpy(),
                "IPRED": obs["IPRED"].to_numpy(),
                "CWRES": obs["CWRES"].to_numpy(),
                "IWRES": obs["IWRES"].to_numpy(),
                "BLQ": obs["BLQ"].to_numpy().astype(int),
                "OUTPUT": [outputs[int(i)] for i in obs["OUTPUT"]],
                "LLOQ": obs["LLOQ"].to_numpy(),
                "LINE": lines,
            }
        )

    def typical_parameters(self) -> pd.DataFrame:
        """One row per subject: typical values (η = 0) of the listed parameters, as the model receives them.

        Population fits only (individual fits have no typical values).
        """
        if not self.is_population:
            raise PkmodelError("individual fits have no typical (population) values; use model_parameters()")
        theta = self.result.theta
        rows = []
        for s in self.fit_problem.subjects:
            row = {"ID": s.id}
            row.update(typical_values(self.spec, theta, s.covariates))
            rows.append(row)
        return pd.DataFrame(rows)

    def model_parameters(self) -> pd.DataFrame:
        """One row per subject: the values of the listed parameters the model was simulated with.

        Population fits: the individual parameters at η̂ (covariate effects included).  Individual fits:
        each subject's estimate times its fixed covariate effects (``CL = θ·WT`` gives L/h, not L/h/kg).
        """
        names = [p.name for p in self.spec.parameters]
        if self.is_population:
            return self.result.subjects().reset_index()[["ID", *names]]
        rows = []
        for s in self.fit_problem.subjects:
            estimates = self.result[s.id].estimates
            factor = _covariate_factors(self.fit_problem, s)
            rows.append({"ID": s.id, **{n: estimates[n] * factor[n] for n in names}})
        return pd.DataFrame(rows)

    # ---- summary -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything ``results.json`` holds (NaN written as null)."""
        spec = self.spec
        fp = self.fit_problem
        report = fp.dataset.report
        common: dict[str, Any] = {
            "format": "pkmodel fit results, version 1",
            "spec": {
                "file": spec.path.name,
                "path": str(spec.path),
                "sha256": spec.sha256,
                "description": spec.description,
            },
            "model": {
                "name": spec.model.name,
                "path": str(spec.model_path),
                "path_from_spec": os.path.relpath(spec.model_path, spec.path.parent),
                "sha256": _sha256(spec.model_path),
            },
            "data": {
                "path": str(spec.data_path),
                "path_from_spec": os.path.relpath(spec.data_path, spec.path.parent),
                "sha256": _sha256(spec.data_path),
                "n_records": report.n_records,
                "n_subjects_in_file": report.n_subjects,
                "n_subjects_fitted": len(fp.subjects),
                "n_observation_records": sum(s.n_obs for s in fp.subjects),
                "n_blq_in_fit": int(sum(s.blq.sum() for s in fp.subjects)),
                "excluded_by_reader": dict(report.excluded),
                "outputs": {
                    o: int(sum((s.output == i).sum() for s in fp.subjects)) for i, o in enumerate(fp.outputs)
                },
            },
            "method": spec.method,
            "blq_method": spec.blq_method,
            "seed": spec.seed,
            "options": {
                "covariance": spec.options.covariance,
                "gtol": spec.options.gtol,
                "max_iterations": spec.options.max_iterations,
                "fo_start": spec.options.fo_start,
                "engine": spec.options.engine,
            },
            "status": self.status,
            "status_message": self.status_message,
            "notes": list(self.notes),
            "elapsed_seconds": self.elapsed_seconds,
            "simulate_calls": fp.n_simulate_calls[0],
            "versions": _versions(),
            "command_line": self.command_line,
            "timestamp": self.timestamp,
        }
        if self.is_population:
            r: PopulationResult = self.result
            theta = self.theta_table()
            omega = r.omega_table()
            sigma = r.sigma_table()
            common.update(
                {
                    "converged": r.converged,
                    "message": r.message,
                    "covariance_ok": r.covariance_ok,
                    "covariance_message": r.covariance_message,
                    "ofv": {
                        "value": r.ofv,
                        "convention": "NONMEM objective function value: -2 log L without the constant "
                        "n*log(2*pi) (n = uncensored observations)",
                        "minus_2_log_likelihood": r.minus_2_log_likelihood,
                        "n_uncensored_observations": r.n_obs,
                    },
                    "aic": r.aic,
                    "bic": r.bic,
                    "n_parameters": r.n_parameters,
                    "condition_number": r.condition_number,
                    "n_iterations": r.n_iterations,
                    "n_evaluations": r.n_evaluations,
                    "estimation_seconds": r.estimation_seconds,
                    "theta": {name: row.to_dict() for name, row in theta.iterrows()},
                    "omega": {
                        "etas": list(r.eta_names),
                        "matrix": r.omega,
                        "elements": {name: row.to_dict() for name, row in omega.iterrows()},
                        "eta_shrinkage": r.shrinkage,
                    },
                    "sigma": {name: row.to_dict() for name, row in sigma.iterrows()},
                    "epsilon_shrinkage": r.epsilon_shrinkage,
                    "covariance_matrix": None
                    if r.covariance_matrix() is None
                    else {
                        "names": list(r.covariance_matrix().index),
                        "matrix": r.covariance_matrix().to_numpy(),
                    },
                }
            )
        else:
            subjects = {}
            for sid, res in self.result.items():
                subjects[str(sid)] = {
                    "converged": res.converged,
                    "message": res.message,
                    "covariance_ok": res.covariance_ok,
                    "minus_2_log_likelihood": res.minus_2_log_likelihood,
                    "aic": res.aic,
                    "bic": res.bic,
                    "parameters": {n: row.to_dict() for n, row in res.parameter_table().iterrows()},
                }
            common.update({"individual": subjects})
        return _clean(common)

    def parameter_table(self) -> str:
        """The NONMEM-style parameter table (see :func:`format_parameter_table`)."""
        from pkmodel.fitting._report import format_parameter_table

        return format_parameter_table(self)

    # ---- writing -----------------------------------------------------------------------------------
    def write(
        self,
        out_dir: str | os.PathLike | None = None,
        force: bool = False,
        *,
        command_line: str | None = None,
        plots: bool = True,
    ) -> Path:
        """Write the results folder atomically.

        The files are written into a temporary sibling folder which is then renamed into place; with
        ``force`` an existing results folder is first moved aside, then deleted once the new one is in
        place.  Files: ``results.json``, ``theta.csv``, ``omega.csv``, ``sigma.csv``,
        ``individual_parameters.csv``, ``predictions.csv`` and the goodness-of-fit PNGs
        (``gof_dv_pred.png``, ``gof_dv_ipred.png``, ``gof_cwres_time.png``, ``gof_cwres_pred.png``,
        ``individual_fits*.png``).

        Parameters
        ----------
        out_dir : path, optional
            The results folder (default ``results/<spec name>/`` next to the spec).
        force : bool
            Replace an existing results folder (only one holding a ``results.json``, or an empty one).
        command_line : str, optional
            Recorded in results.json (overrides the one given to :func:`run_fit`).
        plots : bool
            Write the PNGs.

        Returns
        -------
        Path
            The results folder.

        Raises
        ------
        PkmodelError
            When the folder exists and ``force`` is False, or exists but is not a results folder.
        """
        target = Path(out_dir) if out_dir is not None else self.spec.default_results_dir
        target = target.absolute()
        check_target(target, force)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            payload = self.to_dict()
            if command_line is not None:
                payload["command_line"] = command_line
            payload["files"] = list(RESULT_FILES)
            self.theta_table().to_csv(tmp / "theta.csv")
            self.omega_table().to_csv(tmp / "omega.csv")
            self.sigma_table().to_csv(tmp / "sigma.csv", index=self.is_population)
            self.individual_parameters().to_csv(tmp / "individual_parameters.csv", index=False)
            self.predictions().to_csv(tmp / "predictions.csv", index=False)
            if plots:
                from pkmodel.fitting._report import write_gof_plots

                payload["files"] += write_gof_plots(self, tmp)
            (tmp / "parameters.txt").write_text(self.parameter_table() + "\n", encoding="utf-8")
            payload["files"].append("parameters.txt")
            text = json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False)
            (tmp / "results.json").write_text(text + "\n", encoding="utf-8")
            if target.exists():
                old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except OSError:
                    os.replace(old, target)
                    raise
                shutil.rmtree(old)
            else:
                os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return target


def check_target(target: Path, force: bool) -> None:
    """Refuse to overwrite results unless forced; never replace something that is not a results folder."""
    if not target.exists():
        return
    if not target.is_dir():
        raise PkmodelError(f"{target} exists and is not a folder; choose another results folder (--out)")
    if not force:
        raise PkmodelError(
            f"results folder {target} already exists; use --force (force=True) to replace it, or choose "
            "another folder with --out"
        )
    if any(target.iterdir()) and not (target / "results.json").exists():
        raise PkmodelError(
            f"{target} is not empty and holds no results.json, so it is not a pkmodel results folder; --force "
            "only replaces results folders: choose another folder with --out"
        )


_BOUND_RTOL = 1e-4  # an estimate this close to a bound (relative to the bounds' span or scale) is "at" it


def _bound_hit(name: str, value: float, lower: float, upper: float, scale: float) -> str | None:
    """``"CL at its upper bound 0.8"`` when ``value`` sits on a finite bound, else None."""
    if not math.isfinite(value):
        return None
    span = upper - lower if math.isfinite(lower) and math.isfinite(upper) else max(abs(scale), 1e-300)
    for side, bound in (("lower", lower), ("upper", upper)):
        if math.isfinite(bound) and abs(value - bound) <= _BOUND_RTOL * span:
            return f"{name} at its {side} bound {bound:g}"
    return None


def _estimates_at_bounds(fp: FitProblem, result: Any) -> list[str]:
    """Estimated (not fixed) parameters that ended on one of their bounds, named with the bound."""
    hits: list[str] = []
    if fp.spec.method == "individual":
        by_parameter: dict[str, list[Any]] = {}
        for sid, res in result.items():
            for p in fp.spec.parameters:
                if p.fixed:
                    continue
                hit = _bound_hit(p.name, float(res.estimates[p.name]), p.lower, p.upper, p.theta)
                if hit is not None:
                    by_parameter.setdefault(hit, []).append(sid)
        return [f"{hit} (ID {', '.join(map(str, ids))})" for hit, ids in by_parameter.items()]
    for t in fp.thetas:
        if t.fixed:
            continue
        hit = _bound_hit(t.name, float(result.theta[t.name]), t.lower, t.upper, t.initial)
        if hit is not None:
            hits.append(hit)
    return hits


def _with_bound_report(status: str, message: str, hits: list[str]) -> tuple[str, str]:
    """Name the estimates on a bound in the status message; such a fit is never a plain success."""
    if not hits:
        return status, message
    if status == "success":
        status = "at-bound"
    return status, (
        f"{message}; estimate(s) on a bound: {'; '.join(hits)} — the data do not support a value inside the "
        "bounds: widen the bound in the spec if it is not a physical limit, fix the parameter, or simplify "
        "the model"
    )


def _status(converged: bool, covariance: bool, covariance_ok: bool, covariance_message: str, message: str):
    if not converged:
        return "not-converged", (
            f"estimation did NOT converge: {message}; raise options.max_iterations, start nearer the "
            "estimates (initial values in the spec), or check that the data identify every estimated parameter"
        )
    if not covariance:
        return "no-covariance", "converged; covariance step not run (options.covariance = false): no SEs"
    if not covariance_ok:
        return "covariance-failed", f"converged, but the covariance step FAILED: {covariance_message}"
    return "success", "converged; covariance step successful"


def _covariate_factors(fp: FitProblem, subject) -> dict[str, float]:
    """Product of the (fixed) covariate effects of each listed parameter for one subject.

    In individual fits each parameter is the subject's θ times these factors; they are the typical
    values computed with every parameter's θ set to 1.
    """
    unit = {t.name: t.initial for t in fp.thetas} | {p.name: 1.0 for p in fp.spec.parameters}
    return typical_values(fp.spec, unit, subject.covariates)


def _fit_individuals(fp: FitProblem) -> dict[Any, IndividualResult]:
    spec = fp.spec
    results = {}
    for s in fp.subjects:
        factor = _covariate_factors(fp, s)
        thetas = [
            Theta(p.name, p.theta, lower=p.lower, upper=p.upper, fixed=p.fixed) for p in spec.parameters
        ]
        present = sorted(set(s.output.tolist()))
        residual: list[ResidualError] = [r for r in fp.residual if r.output in present]

        def predict(subject, params, factor=factor):
            values = {n: float(params[n]) * factor[n] for n in factor}
            return fp.predict(subject, values)

        results[s.id] = fit_individual(s, predict, thetas, residual, covariance=spec.options.covariance)
    return results


def run_fit(
    spec_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    force: bool = False,
    *,
    command_line: str | None = None,
    plots: bool = True,
) -> FitRun:
    """Run a fit specification: read it, read the dataset, build the problem, estimate, optionally write.

    Parameters
    ----------
    spec_path : path
        The fit specification (``fits/*.toml``).
    out_dir : path, optional
        Write the results there (see :meth:`FitRun.write`); checked *before* the estimation starts, so
        an existing folder without ``force`` fails at once.  None: do not write (call ``write`` later).
    force : bool
        Replace an existing results folder.
    command_line : str, optional
        Recorded in results.json (the CLI passes its own command line).
    plots : bool
        Write the goodness-of-fit PNGs with the results.

    Returns
    -------
    FitRun

    Raises
    ------
    SpecError, DatasetError
        Bad specification or dataset (before any estimation).
    PkmodelError
        The results folder exists and ``force`` is False.
    EstimationError
        The objective is not finite at the initial estimates.

    Examples
    --------
    >>> import pkmodel.fitting as fitting
    >>> from pkmodel.model import fits_dir
    >>> spec = fits_dir() / "theoph_foce.toml"
    >>> run = fitting.run_fit(spec)  # doctest: +SKIP
    >>> run.status, round(run.result.theta["KA"], 2)  # doctest: +SKIP
    ('success', 1.6)
    """
    spec = load_fit_spec(spec_path)
    if out_dir is not None:
        check_target(Path(out_dir).absolute(), force)
    with threadpool_limits(1):  # multi-threaded BLAS only slows these tiny matrices down
        fp = build_problem(spec)
        started = time.perf_counter()
        if spec.method == "individual":
            results = _fit_individuals(fp)
            elapsed = time.perf_counter() - started
            failed = [sid for sid, r in results.items() if not r.converged]
            cov_failed = [sid for sid, r in results.items() if not r.covariance_ok]
            status, message = _status(
                not failed,
                spec.options.covariance,
                not cov_failed,
                f"covariance step failed for ID(s) {', '.join(map(str, cov_failed))}",
                f"ID(s) {', '.join(map(str, failed))} did not converge",
            )
            result: Any = results
        else:
            opts = spec.options
            result = fit_population(
                fp.problem,
                method=spec.method,
                covariance=opts.covariance,
                gtol=opts.gtol,
                max_iterations=opts.max_iterations,
                fo_start=opts.fo_start,
            )
            elapsed = time.perf_counter() - started
            status, message = _status(
                result.converged,
                opts.covariance,
                result.covariance_ok,
                result.covariance_message,
                result.message,
            )
    status, message = _with_bound_report(status, message, _estimates_at_bounds(fp, result))
    run = FitRun(
        spec=spec,
        fit_problem=fp,
        result=result,
        status=status,
        status_message=message,
        notes=fp.notes,
        elapsed_seconds=elapsed,
        timestamp=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command_line=command_line,
    )
    if out_dir is not None:
        run.write(out_dir, force=force, plots=plots)
    return run
