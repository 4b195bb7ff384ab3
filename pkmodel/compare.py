"""Regimen comparison: exposure, dose intensity and neutropenia per regimen, and the report.

A *scenario* file (``fits/*.toml``) names the PK and PK/PD models (or a fit whose estimates replace
the models' typical values and variability), the virtual population, the regimens, the metrics and
the exposure–response analysis.  :func:`run_comparison` simulates every regimen in the *same* virtual
subjects (common random numbers) and returns a :class:`Comparison` holding every table as a
DataFrame; :meth:`Comparison.write` turns it into the HTML report with its CSVs
(:mod:`pkmodel.report`).

Scenario format::

    [scenario]
    title = "..."
    pk_model = "adc_esg401"              # linear PK model: exact exposures
    pkpd_model = "adc_esg401_friberg"    # PK/PD model: ANC and neutropenia
    seed = 20261125
    banner = "..."                       # optional notice at the top of the report
    fit = "esg401_foce.toml"             # optional: use this fit's recorded estimates (θ, Ω)

    [population]
    n = 200
    covariates = "example"               # resample WT, ALB from the example dataset, or
    # covariates = { WT = { median = 60, cv = 0.2 }, ALB = { median = 38, cv = 0.12 } }

    [iiv]                                # ω² of log-normal IIV (used for parameters the fit does not give)
    CL = 0.1

    [[regimens]]
    label = "A: 16 mg/kg Q3W"
    regimen = "16 mg/kg q3w x6 over 1h"

    [metrics]
    analytes = ["TAb", "ADC", "SN38"]
    thresholds = { SN38 = 5.0 }

    [exposure_response]
    candidates = ["SN38:1:Cavg", "SN38:1:Cmax", "ADC:1:Cavg"]   # analyte:cycle:metric

    [[matched]]                          # compare at equal dose intensity (mg/kg/week)
    reference = "A: 16 mg/kg Q3W"
    regimen = "d1,8,15 q4w x4 over 1h"   # its dose is chosen to match the reference's intensity
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .dosing import Regimen, parse_regimen
from .errors import PkmodelError, SpecError
from .model import Model, load_model

__all__ = [
    "Comparison",
    "VirtualTrial",
    "dose_intensity",
    "load_scenario",
    "run_comparison",
    "run_virtual_trial",
    "trial_population",
]

_SCENARIO_KEYS = {
    "scenario",
    "population",
    "iiv",
    "regimens",
    "metrics",
    "exposure_response",
    "matched",
    "grid",
}
_PERCENTILES = (5.0, 50.0, 95.0)


@dataclass(frozen=True)
class RegimenSpec:
    """One regimen of a scenario: a label and the parsed regimen (``text`` is what the file says)."""

    label: str
    text: str
    regimen: Regimen


@dataclass(frozen=True)
class Scenario:
    """A validated scenario file (see the module docstring for the format)."""

    path: Path
    title: str
    pk_model: Model
    pkpd_model: Model
    seed: int
    n: int
    covariates: Any
    iiv: dict[str, float]
    regimens: tuple[RegimenSpec, ...]
    analytes: tuple[str, ...]
    thresholds: dict[str, float]
    candidates: tuple[tuple[str, str, str], ...]
    matched: tuple[tuple[str, str], ...]
    banner: str = ""
    fit: Path | None = None
    grid_step: float = 6.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def _fail(path: Path, key: str, message: str) -> SpecError:
    return SpecError(f"{path}, key '{key}': {message}")


def dose_intensity(regimen: Regimen) -> float:
    """Dose intensity of a regimen in dose units per week (e.g. mg/kg/week).

    Total amount over the span from the first dose to the end of the last cycle, divided by that
    span in weeks; the cycle length is the repeat interval (``ii``) of the records.

    Examples
    --------
    >>> from pkmodel import q3w, d1_8_15_q4w
    >>> round(dose_intensity(q3w(16, cycles=6)), 4)
    5.3333
    >>> dose_intensity(d1_8_15_q4w(12, cycles=6))
    9.0
    """
    doses = regimen.expand()
    if not doses:
        raise PkmodelError("an empty regimen has no dose intensity")
    units = {d.unit for d in doses}
    if len(units) > 1:
        raise PkmodelError(f"dose intensity needs one dose unit, the regimen mixes {sorted(units)}")
    cycle = max((e.ii for e in regimen if e.ii > 0), default=0.0)
    start = min(d.time for d in doses)
    end = max(d.time for d in doses) + cycle if cycle else max(d.time for d in doses) + 7 * 24.0
    cycles = {e.addl + 1 for e in regimen}
    if cycle and len(cycles) == 1:
        end = start + cycle * cycles.pop()
    weeks = (end - start) / (7 * 24.0)
    return sum(d.amount for d in doses) / weeks


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file.

    Raises
    ------
    SpecError
        Naming the file, the key and the fix.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise SpecError(f"scenario file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(raw) - _SCENARIO_KEYS
    if unknown:
        raise _fail(
            path, ",".join(sorted(unknown)), f"unknown section; allowed: {', '.join(sorted(_SCENARIO_KEYS))}"
        )
    head = raw.get("scenario", {})
    for key in ("title", "pk_model", "pkpd_model"):
        if not isinstance(head.get(key), str):
            raise _fail(path, f"scenario.{key}", "required text is missing")

    def model(key: str) -> Model:
        name = head[key]
        local = (path.parent / name) if name.endswith(".toml") else None
        try:
            return load_model(local if local is not None and local.exists() else name)
        except PkmodelError as exc:
            raise _fail(path, f"scenario.{key}", str(exc)) from None

    pk_model, pkpd_model = model("pk_model"), model("pkpd_model")
    if not pk_model.is_linear:
        raise _fail(
            path, "scenario.pk_model", f"{pk_model.name} is nonlinear; exposures use the exact engine"
        )
    seed = head.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _fail(path, "scenario.seed", "give a whole number >= 0: every random draw takes a seed")
    population = raw.get("population", {})
    n = population.get("n", 200)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise _fail(path, "population.n", f"need a whole number of subjects >= 2, got {n!r}")
    covariates = population.get("covariates", "example")
    iiv = raw.get("iiv", {})
    for name, value in iiv.items():
        if name not in pkpd_model.parameters:
            raise _fail(path, f"iiv.{name}", f"{pkpd_model.name} has no parameter {name}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _fail(path, f"iiv.{name}", "ω² must be a number >= 0")
    regimens = []
    for i, item in enumerate(raw.get("regimens", [])):
        try:
            label, text = item["label"], item["regimen"]
            regimens.append(RegimenSpec(label, text, parse_regimen(text)))
        except KeyError as exc:
            raise _fail(path, f"regimens[{i}]", f"missing {exc}; give label and regimen") from None
        except PkmodelError as exc:
            raise _fail(path, f"regimens[{i}].regimen", str(exc)) from None
    if len(regimens) < 2:
        raise _fail(path, "regimens", "a comparison needs at least two [[regimens]]")
    labels = [r.label for r in regimens]
    if len(set(labels)) != len(labels):
        raise _fail(path, "regimens", "labels must be unique")
    metrics = raw.get("metrics", {})
    analytes = tuple(metrics.get("analytes", ("TAb", "ADC", "SN38")))
    for a in analytes:
        if a not in pk_model.outputs:
            raise _fail(path, "metrics.analytes", f"{pk_model.name} has no output {a}")
    thresholds = dict(metrics.get("thresholds", {}))
    candidates = []
    for text in raw.get("exposure_response", {}).get(
        "candidates", ["SN38:1:Cavg", "SN38:1:Cmax", "ADC:1:Cavg"]
    ):
        parts = text.split(":")
        if len(parts) != 3 or parts[0] not in analytes:
            raise _fail(
                path,
                "exposure_response.candidates",
                f"{text!r}: write ANALYTE:CYCLE:METRIC, e.g. SN38:1:Cavg",
            )
        candidates.append((parts[0], parts[1], parts[2]))
    matched = []
    for i, item in enumerate(raw.get("matched", [])):
        if item.get("reference") not in labels:
            raise _fail(path, f"matched[{i}].reference", f"must be one of the regimen labels {labels}")
        matched.append((item["reference"], str(item.get("regimen", ""))))
    fit = head.get("fit")
    step = float(raw.get("grid", {}).get("step_h", 6.0))
    return Scenario(
        path,
        head["title"],
        pk_model,
        pkpd_model,
        seed,
        n,
        covariates,
        {k: float(v) for k, v in iiv.items()},
        tuple(regimens),
        analytes,
        thresholds,
        tuple(candidates),
        tuple(matched),
        str(head.get("banner", "")),
        (path.parent / fit) if fit else None,
        step,
        raw,
    )


def _matched_regimen(reference: RegimenSpec, schedule: str) -> RegimenSpec:
    """The regimen ``schedule`` (text without amount) dosed to the reference's dose intensity."""
    unit = reference.regimen.expand()[0].unit
    probe = parse_regimen(f"1 {unit} {schedule}")
    dose = dose_intensity(reference.regimen) / dose_intensity(probe)
    text = f"{dose:.4g} {unit} {schedule}"
    words = schedule.split()
    short = " ".join(
        w
        for i, w in enumerate(words)
        if not w.startswith("x") and w != "over" and (i == 0 or words[i - 1] != "over")
    )
    return RegimenSpec(f"matched: {dose:.3g} {unit} {short}", text, parse_regimen(text))


# ------------------------------------------------------------------------------------------ running


@dataclass
class Comparison:
    """The tables (and what is needed for the figures) of a regimen comparison.

    Attributes
    ----------
    scenario : Scenario
    tables : dict of str to DataFrame
        ``exposure_summary``, ``dose_intensity``, ``neutropenia_incidence``, ``profiles``,
        ``anc_profiles``, ``exposure_response_selection``, ``exposure_response_curve``,
        ``exposure_by_quartile``, ``matched_dose_intensity``, ``population``, ``exposure_subjects``.
    provenance : dict
    """

    scenario: Scenario
    tables: dict[str, pd.DataFrame]
    provenance: dict[str, Any]
    er_fit: Any = None

    def write(self, out_dir: str | Path, *, force: bool = False, command_line: str | None = None) -> Path:
        """Write the HTML report and its CSVs into ``out_dir``; returns the path of report.html.

        The provenance (versions, scenario and model hashes, seed) is written with the command line:
        ``command_line`` if given, else this process's ``sys.argv``.
        """
        import shlex
        import sys

        from ._compare_report import build_sections
        from .report import write_report

        if command_line is None:
            command_line = shlex.join(sys.argv)
        return write_report(
            out_dir,
            self.scenario.title,
            build_sections(self),
            provenance={**self.provenance, "command_line": command_line},
            banner=self.scenario.banner,
            force=force,
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _percentile_table(frame: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    grouped = frame.groupby(by, sort=False)[value]
    out = grouped.quantile([p / 100 for p in _PERCENTILES]).unstack()
    out.columns = ["P5", "median", "P95"]
    out["n"] = grouped.size()
    return out.reset_index()


def run_comparison(
    scenario: str | Path | Scenario,
    *,
    population: pd.DataFrame | None = None,
    n: int | None = None,
    progress: bool = False,
    fit: Any = None,
) -> Comparison:
    """Simulate every regimen of a scenario in one virtual population and tabulate the comparison.

    Parameters
    ----------
    scenario : str, Path or Scenario
        The scenario file (e.g. ``fits/esg401_regimens.toml``).
    population : DataFrame, optional
        Individual parameters (one row per subject); default drawn as the scenario says.
    n : int, optional
        Number of virtual subjects (overrides the scenario).
    progress : bool
        Print progress to stderr.
    fit : FitRun, optional
        A population fit (:func:`pkmodel.fitting.run_fit`) of the PK model: its estimates θ̂ replace the
        typical values of the parameters it estimates and its Ω̂ their variability (the scenario's ``[iiv]``
        still applies to the other parameters, e.g. the Friberg ones).  Default: the scenario's ``fit``
        spec, which is then run (FOCE-I), or none.

    Returns
    -------
    Comparison
    """
    from .exposure import exposure_metrics
    from .response import fit_logistic, incidence_by_quantile, neutropenia_incidence, select_exposure_metric
    from .simulation import simulate

    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    if fit is None and sc.fit is not None and population is None:
        from .fitting import run_fit

        if progress:
            _say(f"fitting {sc.fit.name} (the scenario's fit)")
        fit = run_fit(sc.fit)
    if fit is not None and not fit.is_population:
        raise SpecError(
            f"{getattr(fit.spec, 'path', 'the fit')}: a regimen comparison needs a population fit (FOCE-I, "
            "FOCE or FO) for its variability; this one is an individual fit"
        )
    pop = population if population is not None else _population(sc, n or sc.n, fit)
    regimens = list(sc.regimens)
    for reference, schedule in sc.matched:
        ref = next(r for r in regimens if r.label == reference)
        regimens.append(_matched_regimen(ref, schedule))
    pk_columns = [c for c in pop.columns if c in sc.pk_model.argument_names or c in ("ID", "WT")]
    pkpd_columns = [c for c in pop.columns if c in sc.pkpd_model.argument_names or c in ("ID", "WT")]
    tables: dict[str, pd.DataFrame] = {"population": pop}

    # exposure (exact engine)
    exposure_blocks, di_rows = [], []
    for spec in regimens:
        if progress:
            _say(f"exposure: {spec.label}")
        frame = exposure_metrics(
            sc.pk_model,
            spec.regimen,
            parameters=pop[pk_columns],
            analytes=list(sc.analytes),
            cycles=(1, "ss"),
            threshold=sc.thresholds or None,
        )
        frame.insert(0, "regimen", spec.label)
        exposure_blocks.append(frame)
        unit = spec.regimen.expand()[0].unit
        di_rows.append(
            {
                "regimen": spec.label,
                "regimen_text": spec.text,
                "dose_intensity": dose_intensity(spec.regimen),
                "unit": f"{unit}/week",
                "doses": len(spec.regimen.expand()),
            }
        )
    exposure = pd.concat(exposure_blocks, ignore_index=True)
    exposure = exposure[exposure["metric"] != "dose_intensity"]
    tables["exposure_subjects"] = exposure
    summary = _percentile_table(exposure, ["regimen", "analyte", "cycle", "metric", "unit"])
    tables["exposure_summary"] = summary
    tables["dose_intensity"] = pd.DataFrame(di_rows)

    # concentration–time medians and 90 % prediction intervals (exact engine on a grid)
    profile_blocks = []
    for spec in regimens[: len(sc.regimens)]:
        end = spec.regimen.end_time() + 21 * 24.0
        grid = np.arange(0.0, end + 1e-9, sc.grid_step)
        res = simulate(
            sc.pk_model,
            spec.regimen,
            grid,
            parameters=pop[pk_columns],
            outputs=list(sc.analytes),
            keep_states=False,
        )
        for analyte in sc.analytes:
            values = res.output(analyte)
            q = np.nanpercentile(values, _PERCENTILES, axis=1)
            profile_blocks.append(
                pd.DataFrame(
                    {
                        "regimen": spec.label,
                        "analyte": analyte,
                        "TIME": grid,
                        "P5": q[0],
                        "median": q[1],
                        "P95": q[2],
                        "unit": res.units[analyte],
                    }
                )
            )
    tables["profiles"] = pd.concat(profile_blocks, ignore_index=True)

    # neutropenia (PK/PD, hybrid engine)
    if progress:
        _say("neutropenia: simulating the PK/PD model")
    incidence = neutropenia_incidence(
        sc.pkpd_model,
        {r.label: r.regimen for r in regimens},
        pop[pkpd_columns],
        level=0.90,
        return_courses=True,
    )
    tables["neutropenia_incidence"] = incidence.summary
    courses = incidence.courses
    value_col = next(c for c in courses.columns if c not in ("regimen", "ID", "TIME", "replicate"))
    anc = courses.groupby(["regimen", "TIME"], sort=False)[value_col].quantile([0.05, 0.5, 0.95]).unstack()
    anc.columns = ["P5", "median", "P95"]
    tables["anc_profiles"] = anc.reset_index()
    subjects = incidence.subjects

    # exposure–response on the virtual population (cycle-1 exposure vs grade >= 3 on treatment)
    wide = exposure.pivot_table(
        index=["regimen", "ID"], columns=["analyte", "cycle", "metric"], values="value"
    )
    wide.columns = [f"{a}:{c}:{m}" for a, c, m in wide.columns]
    outcome = subjects.set_index(["regimen", "ID"])["worst_grade"]
    er = wide.join(outcome, how="inner").reset_index()
    er["grade3plus"] = (er["worst_grade"] >= 3).astype(int)
    candidates = [":".join(c) for c in sc.candidates if ":".join(c) in er.columns]
    selection = select_exposure_metric(er, candidates, "grade3plus")
    tables["exposure_response_selection"] = selection
    best = str(selection.loc[selection["chosen"], "metric"].iloc[0])
    er_fit = fit_logistic(er[best].to_numpy(), er["grade3plus"].to_numpy(), ci="profile", level=0.90)
    grid_x = np.linspace(float(er[best].min()), float(er[best].max()), 60)
    curve = er_fit.predict(grid_x, level=0.90)
    curve.insert(0, "metric", best)
    tables["exposure_response_curve"] = curve
    tables["exposure_response_parameters"] = pd.DataFrame(
        [
            {
                "metric": best,
                "intercept": er_fit.intercept,
                "slope": er_fit.slope,
                "slope_lower_90": er_fit.profile_ci.get("slope", (math.nan, math.nan))[0],
                "slope_upper_90": er_fit.profile_ci.get("slope", (math.nan, math.nan))[1],
                "n": len(er),
                "events": int(er["grade3plus"].sum()),
                "status": er_fit.status,
            }
        ]
    )
    tables["exposure_by_quartile"] = incidence_by_quantile(er, best, "grade3plus", level=0.90)
    tables["exposure_response_data"] = er[["regimen", "ID", *candidates, "worst_grade", "grade3plus"]]

    # matched dose intensity
    if sc.matched:
        rows = []
        inc = incidence.summary.set_index("regimen")
        for spec in regimens:
            sel = summary[
                (summary["regimen"] == spec.label)
                & (summary["cycle"] == "ss")
                & (summary["metric"] == "AUC_week")
            ]
            row = {"regimen": spec.label, "dose_intensity": dose_intensity(spec.regimen)}
            for _, r in sel.iterrows():
                row[f"{r['analyte']} AUC/week median"] = r["median"]
            for col in inc.columns:
                if re.fullmatch(r"incidence_ge\d", col):
                    row[col] = inc.loc[spec.label, col]
            rows.append(row)
        tables["matched_dose_intensity"] = pd.DataFrame(rows)

    provenance = {
        "pkmodel": _version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _module_version("scipy"),
        "pandas": pd.__version__,
        "scenario": str(sc.path),
        "scenario_sha256": _sha256(sc.path) if sc.path.exists() else "",
        "pk_model": sc.pk_model.file,
        "pk_model_sha256": _sha256(Path(sc.pk_model.file)),
        "pkpd_model": sc.pkpd_model.file,
        "pkpd_model_sha256": _sha256(Path(sc.pkpd_model.file)),
        "seed": sc.seed,
        "n_subjects": len(pop),
    }
    if fit is not None:
        provenance.update(
            {
                "fit_spec": str(fit.spec.path),
                "fit_spec_sha256": fit.spec.sha256,
                "fit_status": fit.status,
                "fit_ofv": fit.result.ofv,
            }
        )
        tables["fit_estimates"] = pd.DataFrame(
            [{"parameter": k, "estimate": v, "kind": "theta"} for k, v in fit.result.theta.items()]
            + [
                {"parameter": f"omega2({name})", "estimate": float(fit.result.omega[i, i]), "kind": "omega"}
                for i, name in enumerate(fit.result.eta_names)
            ]
        )
    return Comparison(sc, tables, provenance, er_fit)


def _population(sc: Scenario, n: int, fit: Any = None) -> pd.DataFrame:
    from .population import sample_population

    covariates = sc.covariates
    if covariates == "example":
        from .data import read_dataset
        from .examples import example_dataset_path

        data = read_dataset(example_dataset_path())
        base = data.baseline_covariates()
        covariates = base[[c for c in ("WT", "ALB") if c in base.columns]].reset_index(drop=True)
    elif isinstance(covariates, dict):
        covariates = _covariate_distributions(covariates, n, sc.seed)
    if fit is None:
        return sample_population(sc.pkpd_model, n, seed=sc.seed, omega=sc.iiv, covariates=covariates)
    # PK parameters (and the covariates) from the fit; the others' variability from the scenario, drawn
    # from a second, independent stream of the same seed
    pop = sample_population(fit, n, seed=sc.seed, covariates=covariates)
    fitted = {p.name for p in fit.spec.parameters}
    rest = {k: v for k, v in sc.iiv.items() if k not in fitted}
    if rest:
        other = sample_population(sc.pkpd_model, n, seed=np.random.SeedSequence([sc.seed, 1]), omega=rest)
        for column in other.columns:
            if column not in pop.columns:
                pop[column] = other[column].to_numpy()
    return pop


def _covariate_distributions(spec: dict[str, Any], n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 1])
    out = {}
    for name, dist in spec.items():
        median, cv = float(dist["median"]), float(dist.get("cv", 0.0))
        sd = math.sqrt(math.log(1 + cv * cv))
        out[name] = median * np.exp(sd * rng.standard_normal(n))
    return pd.DataFrame(out)


def _say(text: str) -> None:
    import sys

    print(f"[pkmodel] {text}", file=sys.stderr, flush=True)


def _version() -> str:
    from . import __version__

    return __version__


def _module_version(name: str) -> str:
    import importlib

    return getattr(importlib.import_module(name), "__version__", "?")


def scenario_summary(comparison: Comparison) -> str:
    """A short text summary (for the command line) of incidence and exposure per regimen."""
    inc = comparison.tables["neutropenia_incidence"]
    lines = [comparison.scenario.title]
    for _, row in inc.iterrows():
        parts = [f"{row['regimen']}:"]
        for g in (3, 4):
            col = f"incidence_ge{g}"
            if col in inc.columns:
                parts.append(f"grade >={g} {100 * row[col]:.1f} %")
        lines.append("  " + "  ".join(parts))
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def comparison_json(comparison: Comparison) -> str:
    """The comparison's main tables as JSON (for ``--json``)."""
    return json.dumps(
        {
            "title": comparison.scenario.title,
            "incidence": comparison.tables["neutropenia_incidence"].to_dict(orient="records"),
            "dose_intensity": comparison.tables["dose_intensity"].to_dict(orient="records"),
        },
        default=_json_default,
        indent=2,
    )


# ------------------------------------------------------------------------- virtual trials at scale

#: Subjects per task of :func:`run_virtual_trial`; part of the trial's definition (the population of
#: chunk c is drawn from the seed's child c), so results depend on it but not on the workers.
TRIAL_CHUNK_SIZE = 1000
_TRIAL_GRADES = (1, 2, 3, 4)


@dataclass
class VirtualTrial:
    """Summary tables of a large virtual trial (:func:`run_virtual_trial`); no per-subject data.

    Attributes
    ----------
    scenario : Scenario
    tables : dict of str to DataFrame
        ``neutropenia_incidence`` (one row per regimen: n, events and incidence of worst grade >= g
        for g = 1..4 with 90 % Clopper–Pearson intervals, nadir median and 5th–95th percentiles,
        median time to nadir), ``exposure_summary`` (regimen, analyte, cycle, metric, unit, P5,
        median, P95, n) and ``dose_intensity``.  ``n_bdf_fallback`` counts the subjects whose
        hybrid-engine ANC was not a finite count >= 0 and who were re-simulated with the BDF engine
        (their first IDs in ``bdf_fallback_ids``); ``n_simulation_failed`` those for whom both engines
        failed (e.g. a count driven to ~1e-7 ×10^9/L, where the Friberg feedback makes the system too stiff):
        they are not graded and not in ``n`` (first IDs in ``simulation_failed_ids``).
    provenance : dict
    """

    scenario: Scenario
    tables: dict[str, pd.DataFrame]
    provenance: dict[str, Any]

    def write(self, out_dir: str | Path, *, force: bool = False) -> Path:
        """Write one CSV per table and ``provenance.json`` into ``out_dir``; returns the folder."""
        target = Path(out_dir)
        if target.exists() and any(target.iterdir()) and not force:
            raise PkmodelError(
                f"{target} exists and is not empty; pkmodel never overwrites results: choose another --out "
                "or add --force"
            )
        target.mkdir(parents=True, exist_ok=True)
        for name, table in self.tables.items():
            table.to_csv(target / f"{name}.csv", index=False)
        (target / "provenance.json").write_text(
            json.dumps(self.provenance, default=_json_default, indent=2), encoding="utf-8"
        )
        return target


def _trial_regimens(sc: Scenario) -> list[RegimenSpec]:
    regimens = list(sc.regimens)
    for reference, schedule in sc.matched:
        ref = next(r for r in regimens if r.label == reference)
        regimens.append(_matched_regimen(ref, schedule))
    return regimens


def _example_covariates() -> pd.DataFrame:
    from .data import read_dataset
    from .examples import example_dataset_path

    base = read_dataset(example_dataset_path()).baseline_covariates()
    return base[[c for c in ("WT", "ALB") if c in base.columns]].reset_index(drop=True)


def trial_population(
    sc: Scenario,
    chunk: int,
    size: int,
    covariate_table: pd.DataFrame | None = None,
    chunk_size: int = TRIAL_CHUNK_SIZE,
) -> pd.DataFrame:
    """The virtual subjects of chunk ``chunk`` of a virtual trial (IDs ``chunk·chunk_size + 1, ...``).

    Drawn by :func:`pkmodel.population.sample_population` from the seed's child
    ``SeedSequence(seed, spawn_key=(chunk, 0))`` (covariate distributions from child ``(chunk, 1)``), so
    that any chunk can be drawn alone, on any worker.

    Parameters
    ----------
    sc : Scenario
    chunk : int
        Chunk number, 0-based.
    size : int
        Subjects in the chunk.
    covariate_table : DataFrame, optional
        Rows to resample covariates from (default: as the scenario says).
    chunk_size : int
        Subjects per chunk of the trial (numbers the IDs).

    Returns
    -------
    pandas.DataFrame
        One row per subject, as :func:`pkmodel.population.sample_population` returns.

    Examples
    --------
    >>> sc = load_scenario(Path(__file__).parents[1] / "fits" / "esg401_regimens.toml")
    >>> trial_population(sc, 2, 3)["ID"].tolist()
    [2001, 2002, 2003]
    """
    from .distributed import task_rng, task_seed
    from .population import sample_population

    covariates = sc.covariates
    if covariate_table is not None:
        covariates = covariate_table
    elif covariates == "example":
        covariates = _example_covariates()
    elif isinstance(covariates, dict):
        rng = task_rng(sc.seed, (chunk, 1))
        out = {}
        for name, dist in covariates.items():
            median, cv = float(dist["median"]), float(dist.get("cv", 0.0))
            out[name] = median * np.exp(math.sqrt(math.log(1 + cv * cv)) * rng.standard_normal(size))
        covariates = pd.DataFrame(out)
    pop = sample_population(
        sc.pkpd_model, size, seed=task_seed(sc.seed, (chunk, 0)), omega=sc.iiv, covariates=covariates
    )
    pop["ID"] = pop["ID"] + chunk * chunk_size
    return pop


def _trial_chunk(context: tuple, task: tuple[int, int]) -> dict[str, Any]:
    """Task of :func:`run_virtual_trial`: exposure and neutropenia summaries of one chunk of subjects."""
    from .distributed import QuantileSketch
    from .errors import SimulationError
    from .exposure import exposure_metrics
    from .grading import grade_anc
    from .response import default_times
    from .simulation import simulate

    sc, regimens, covariate_table, chunk_size = context
    chunk, size = task
    pop = trial_population(sc, chunk, size, covariate_table, chunk_size)
    pk_columns = [c for c in pop.columns if c in sc.pk_model.argument_names or c in ("ID", "WT")]
    pkpd_columns = [c for c in pop.columns if c in sc.pkpd_model.argument_names or c == "WT"]
    exposure: dict[tuple, tuple] = {}
    units: dict[tuple, str] = {}
    neutropenia: dict[str, dict[str, Any]] = {}
    for spec in regimens:
        frame = exposure_metrics(
            sc.pk_model,
            spec.regimen,
            parameters=pop[pk_columns],
            analytes=list(sc.analytes),
            cycles=(1, "ss"),
            threshold=sc.thresholds or None,
        )
        frame = frame[frame["metric"] != "dose_intensity"]
        for key, group in frame.groupby(["analyte", "cycle", "metric"], sort=True, observed=True):
            sketch = QuantileSketch()
            values = group["value"].to_numpy(dtype=float)
            sketch.add(values[np.isfinite(values)])
            exposure[(spec.label, *map(str, key))] = (sketch.compact(), int(np.sum(~np.isfinite(values))))
            units[(spec.label, *map(str, key))] = str(group["unit"].iloc[0])
        grid = default_times(spec.regimen)
        anc = _chunk_anc(sc.pkpd_model, spec.regimen, grid, pop[pkpd_columns].reset_index(drop=True))
        # a subject whose hybrid-engine ANC is not a finite count >= 0 is re-simulated alone with the BDF
        # engine (as neutropenia_incidence does); if that fails too, the subject is not graded: counted and
        # listed in the results (simulation_failed_ids), never dropped silently
        bad = np.flatnonzero(~np.all(np.isfinite(anc) & (anc >= 0), axis=0))
        failed = []
        for k in bad:
            try:
                redo = simulate(
                    sc.pkpd_model,
                    spec.regimen,
                    grid,
                    parameters=pop[pkpd_columns].iloc[[k]].reset_index(drop=True),
                    engine="ode",
                    method="BDF",
                    rtol=1e-6,
                    atol=1e-8,
                ).output("ANC")[:, 0]
            except SimulationError:
                redo = None
            if redo is None or not np.all(np.isfinite(redo)) or np.any(redo < 0):
                failed.append(k)
            else:
                anc[:, k] = redo
        ids = pop["ID"].to_numpy()
        fallback_ids = [int(ids[k]) for k in bad if k not in failed]
        failed_ids = [int(ids[k]) for k in failed]
        if failed:
            anc = np.delete(anc, failed, axis=1)
        nadir = anc.min(axis=0)
        worst = grade_anc(nadir)
        nadir_sketch, ttn_sketch = QuantileSketch(), QuantileSketch()
        nadir_sketch.add(nadir)
        ttn_sketch.add(grid[np.argmin(anc, axis=0)])
        neutropenia[spec.label] = {
            "grades": np.bincount(worst, minlength=5),
            "nadir": nadir_sketch.compact(),
            "time_to_nadir": ttn_sketch.compact(),
            "horizon": float(grid[-1]),
            "bdf_ids": fallback_ids,
            "failed_ids": failed_ids,
        }
    return {"n": size, "exposure": exposure, "units": units, "neutropenia": neutropenia}


def _chunk_anc(model: Model, regimen: Regimen, grid: np.ndarray, params: pd.DataFrame) -> np.ndarray:
    """ANC (n_times, n_subjects) of a chunk by the hybrid engine; NaN columns for subjects it cannot do.

    A stacked solve can fail as a whole (a group handed to the BDF engine breaks on one extreme subject):
    the chunk is then split in halves, recursively, so that only the subjects that fail alone are left
    NaN (the caller re-tries those with BDF and reports any that still fail).
    """
    from ._hybrid import simulate_outputs
    from .errors import SimulationError

    try:
        return simulate_outputs(model, regimen, grid, ["ANC"], parameters=params)["ANC"]
    except SimulationError:
        if len(params) == 1:
            return np.full((len(grid), 1), np.nan)
    half = len(params) // 2
    first = _chunk_anc(model, regimen, grid, params.iloc[:half].reset_index(drop=True))
    second = _chunk_anc(model, regimen, grid, params.iloc[half:].reset_index(drop=True))
    return np.concatenate([first, second], axis=1)


def run_virtual_trial(
    scenario: str | Path | Scenario,
    *,
    n: int | None = None,
    scheduler: Any = None,
    progress: bool = False,
    percentiles: tuple[float, float, float] = _PERCENTILES,
    level: float = 0.90,
    chunk_size: int = TRIAL_CHUNK_SIZE,
) -> VirtualTrial:
    """A virtual trial of a scenario's regimens at any size, in chunks, on any scheduler; summaries only.

    The population is drawn chunk by chunk (:func:`trial_population`, ``chunk_size`` = 1000 subjects
    per chunk by default, each from its own child of the scenario's seed), every subject gets every
    regimen (common random numbers), and each chunk returns only its summaries: exact counts of the
    worst CTCAE neutropenia grade, and :class:`pkmodel.distributed.QuantileSketch` histograms of the
    exposure metrics (exact engine, cycle 1 and steady state), of the ANC nadir and of the time to
    nadir (hybrid engine, the grid of :func:`pkmodel.response.default_times`).  The client holds the
    merged sketches — a fixed size whatever N — never the profiles or a per-subject table.  Incidences
    are exact; percentiles are within the sketch's 0.23 % relative resolution of the exact percentiles
    of the same subjects.  Results depend on the seed and N only: serial, local processes and any Dask
    cluster give identical numbers.

    This population is not the one :func:`run_comparison` draws (that one is drawn in one piece);
    use :func:`trial_population` to reproduce any chunk.

    Parameters
    ----------
    scenario : str, Path or Scenario
    n : int, optional
        Number of virtual subjects (default the scenario's).
    scheduler : None, str or distributed.Client
        Where chunks run (see :mod:`pkmodel.distributed`).
    progress : bool
        Progress bar (subjects) on standard error.
    percentiles : tuple of 3 floats
        Percentiles (0–100) reported as ``P5``, ``median``, ``P95`` (names kept whatever the values).
    level : float
        Level of the Clopper–Pearson intervals of the incidences.
    chunk_size : int
        Subjects per task (default ``TRIAL_CHUNK_SIZE``); part of the trial's definition (chunk c draws its
        subjects from the seed's child c), so change it only knowingly.

    Returns
    -------
    VirtualTrial

    Raises
    ------
    SpecError, SimulationError
        A bad scenario, or a population that cannot be drawn.

    Examples
    --------
    >>> sc = load_scenario(Path(__file__).parents[1] / "fits" / "esg401_regimens.toml")
    >>> trial = run_virtual_trial(sc, n=4)  # doctest: +SKIP
    >>> trial.tables["neutropenia_incidence"]["n"].tolist()  # doctest: +SKIP
    [4, 4, 4, 4, 4]
    """
    from .distributed import QuantileSketch, map_tasks, scheduler_label
    from .response import clopper_pearson

    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    total = sc.n if n is None else n
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
        raise SpecError(f"n={total!r}: the number of virtual subjects must be a whole number >= 1")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise SpecError(f"chunk_size={chunk_size!r} must be a whole number >= 1 (default {TRIAL_CHUNK_SIZE})")
    regimens = _trial_regimens(sc)
    table = _example_covariates() if sc.covariates == "example" else None
    tasks = [
        (c, min(int(chunk_size), int(total) - c * int(chunk_size)))
        for c in range(math.ceil(int(total) / int(chunk_size)))
    ]
    exposure: dict[tuple, list] = {}
    units: dict[tuple, str] = {}
    neutropenia: dict[str, dict[str, Any]] = {}
    for result in map_tasks(
        _trial_chunk,
        tasks,
        context=(sc, regimens, table, int(chunk_size)),
        scheduler=scheduler,
        progress=progress,
        label="subjects",
        weights=[size for _, size in tasks],
    ):
        for key, (compact, missing) in result["exposure"].items():
            if key not in exposure:
                exposure[key] = [QuantileSketch.from_compact(compact), missing]
                units[key] = result["units"][key]
            else:
                exposure[key][0] += QuantileSketch.from_compact(compact)
                exposure[key][1] += missing
        for label, part in result["neutropenia"].items():
            if label not in neutropenia:
                neutropenia[label] = {
                    "grades": part["grades"].copy(),
                    "nadir": QuantileSketch.from_compact(part["nadir"]),
                    "time_to_nadir": QuantileSketch.from_compact(part["time_to_nadir"]),
                    "horizon": part["horizon"],
                    "bdf_ids": list(part["bdf_ids"]),
                    "failed_ids": list(part["failed_ids"]),
                }
            else:
                neutropenia[label]["bdf_ids"].extend(part["bdf_ids"])
                neutropenia[label]["failed_ids"].extend(part["failed_ids"])
                neutropenia[label]["grades"] += part["grades"]
                neutropenia[label]["nadir"] += QuantileSketch.from_compact(part["nadir"])
                neutropenia[label]["time_to_nadir"] += QuantileSketch.from_compact(part["time_to_nadir"])
        del result
    q = [p / 100.0 for p in percentiles]
    rows = []
    for (label, analyte, cycle, metric), (sketch, missing) in exposure.items():
        rows.append(
            {
                "regimen": label,
                "analyte": analyte,
                "cycle": cycle,
                "metric": metric,
                "unit": units[(label, analyte, cycle, metric)],
                "P5": sketch.quantile(q[0]),
                "median": sketch.quantile(q[1]),
                "P95": sketch.quantile(q[2]),
                "n": sketch.n,
                "n_missing": missing,
            }
        )
    incidence_rows = []
    for spec in regimens:
        part = neutropenia[spec.label]
        counts = part["grades"]
        n_subjects = int(counts.sum())
        row: dict[str, Any] = {"regimen": spec.label, "n": n_subjects}
        for g in _TRIAL_GRADES:
            k = int(counts[g:].sum())
            lo, hi = clopper_pearson(k, n_subjects, level)
            row[f"events_ge{g}"] = k
            row[f"incidence_ge{g}"] = k / n_subjects
            row[f"incidence_ge{g}_lower"] = lo
            row[f"incidence_ge{g}_upper"] = hi
        row["nadir_median"] = part["nadir"].quantile(0.5)
        row["nadir_lower"] = part["nadir"].quantile((1 - level) / 2)
        row["nadir_upper"] = part["nadir"].quantile(1 - (1 - level) / 2)
        row["time_to_nadir_median_h"] = part["time_to_nadir"].quantile(0.5)
        row["horizon_h"] = part["horizon"]
        row["n_bdf_fallback"] = len(part["bdf_ids"])
        row["bdf_fallback_ids"] = " ".join(map(str, part["bdf_ids"][:20]))
        row["n_simulation_failed"] = len(part["failed_ids"])
        row["simulation_failed_ids"] = " ".join(map(str, part["failed_ids"][:20]))
        incidence_rows.append(row)
    di_rows = [
        {
            "regimen": spec.label,
            "regimen_text": spec.text,
            "dose_intensity": dose_intensity(spec.regimen),
            "unit": f"{spec.regimen.expand()[0].unit}/week",
            "doses": len(spec.regimen.expand()),
        }
        for spec in regimens
    ]
    provenance = {
        "pkmodel": _version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scenario": str(sc.path),
        "scenario_sha256": _sha256(sc.path) if sc.path.exists() else "",
        "seed": sc.seed,
        "n_subjects": int(total),
        "chunk_size": int(chunk_size),
        "scheduler": scheduler_label(scheduler),
        "percentiles": "quantile sketch, 1000 log bins per decade (relative resolution 0.23 %)",
    }
    tables = {
        "neutropenia_incidence": pd.DataFrame(incidence_rows),
        "exposure_summary": pd.DataFrame(rows),
        "dose_intensity": pd.DataFrame(di_rows),
    }
    return VirtualTrial(sc, tables, provenance)


def trial_summary(trial: VirtualTrial) -> str:
    """A short text summary (for the command line) of a :class:`VirtualTrial`."""
    inc = trial.tables["neutropenia_incidence"]
    lines = [f"{trial.scenario.title} — virtual trial of {trial.provenance['n_subjects']} subjects"]
    for _, row in inc.iterrows():
        lines.append(
            f"  {row['regimen']}:  grade >=3 {100 * row['incidence_ge3']:.2f} %  "
            f"grade >=4 {100 * row['incidence_ge4']:.2f} %  nadir median {row['nadir_median']:.3g} 10^9/L"
        )
        if row["n_simulation_failed"]:
            lines.append(
                f"    warning: the ANC of {row['n_simulation_failed']} subject(s) could not be simulated "
                f"(IDs {row['simulation_failed_ids']}); they are not graded"
            )
    return "\n".join(lines)
