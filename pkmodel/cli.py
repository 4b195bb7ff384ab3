"""The ``pkmodel`` command line: a thin layer over the public Python API.

Every command calls documented functions and prints or writes what they return.  User errors
(:class:`pkmodel.errors.PkmodelError`) print one line and exit with status 2; anything else is a bug
and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import PkmodelError

EXIT_USER_ERROR = 2


def _parse_times(text: str | None, end: float) -> np.ndarray:
    """``START:STOP:STEP`` (h), a comma-separated list, or None → 0 to ``end`` hourly."""
    if text is None:
        return np.arange(0.0, end + 1e-9, 1.0)
    try:
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            return start + step * np.arange(n)
        return np.array([float(x) for x in text.split(",")])
    except ValueError:
        raise PkmodelError(
            f"--times {text!r}: write START:STOP:STEP in hours (e.g. 0:504:1) or a list (e.g. 0,1,2,24)"
        ) from None


def _parse_sets(items: Sequence[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            values[name.strip()] = float(value)
        except ValueError:
            raise PkmodelError(f"--set {item!r}: write NAME=NUMBER, e.g. --set CL=0.2") from None
    return values


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .dosing import parse_regimen
    from .model import load_model
    from .simulation import simulate

    model = load_model(args.model)
    regimen = parse_regimen(args.regimen)
    params = _parse_sets(args.set or [])
    end = regimen.end_time() + 21 * 24.0
    times = _parse_times(args.times, end)
    result = simulate(
        model, regimen, times, parameters=params or None, weight=args.weight, engine=args.engine
    )
    frame = result.wide()
    if args.out:
        _write_csv(frame, args.out, args.force)
    summary = []
    for name in result.outputs:
        values = result.output(name)[:, 0]
        k = int(np.nanargmax(values)) if np.any(np.isfinite(values)) else 0
        summary.append(
            {
                "output": name,
                "unit": result.units[name],
                "Cmax": float(values[k]),
                "Tmax_h": float(times[k]),
                "C_last": float(values[-1]),
                "T_last_h": float(times[-1]),
            }
        )
    if args.json:
        print(
            json.dumps(
                {
                    "model": model.name,
                    "regimen": args.regimen,
                    "engine": result.engine,
                    "summary": summary,
                    "out": args.out,
                },
                indent=2,
            )
        )
    else:
        print(
            f"model {model.name} ({result.engine} engine), regimen {args.regimen!r}, "
            f"{len(times)} times from {times[0]:g} to {times[-1]:g} h"
        )
        width = max(len(s["output"]) for s in summary) if summary else 6
        print(f"{'output':<{width}}  {'unit':<8} {'Cmax':>12} {'Tmax (h)':>9} {'C at end':>12}")
        for s in summary:
            print(
                f"{s['output']:<{width}}  {s['unit']:<8} {s['Cmax']:>12.5g} {s['Tmax_h']:>9.4g} {s['C_last']:>12.5g}"
            )
        if args.out:
            print(f"wrote {args.out}")
    return 0


def _write_csv(frame, path: str, force: bool) -> None:
    import os
    import tempfile
    from pathlib import Path

    target = Path(path)
    if target.exists() and not force:
        raise PkmodelError(
            f"{path} exists; pkmodel never overwrites results: choose another --out or add --force"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cmd_models(args: argparse.Namespace) -> int:
    from .model import list_models

    rows = list_models()
    width = max((len(n) for n, _ in rows), default=4)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .model import load_model

    print(describe_model(load_model(args.model)))
    return 0


def describe_model(model) -> str:
    """A plain-text description of a model: parameters, compartments, equations, outputs.

    Parameters
    ----------
    model : Model

    Returns
    -------
    str
    """
    lines = [
        f"{model.name}: {model.description}",
        f"file: {model.file}",
        f"linear: {'yes (exact engine)' if model.is_linear else 'no (ODE engine)'}",
    ]
    for reason in model.linearity.reasons:
        lines.append(f"  nonlinear because {reason}")
    lines.append("\nparameters:")
    for p in model.parameters.values():
        bounds = f"[{p.lower:g}, {p.upper:g}]"
        lines.append(
            f"  {p.name:<10} = {p.value:<12g} {p.unit:<10} {bounds:<16} {p.description}"
            + (f" (source: {p.source})" if p.source else "")
        )
    if model.covariates:
        lines.append("\ncovariates (reference values):")
        for c in model.covariates.values():
            lines.append(f"  {c.name:<10} = {c.value:<12g} {c.unit:<10} {c.description}")
    if model.inputs:
        lines.append("\ninputs:")
        for i in model.inputs.values():
            lines.append(f"  {i.name:<10} {i.unit:<10} default {i.default:g}  {i.description}")
    lines.append("\ncompartments:")
    for c in model.compartments.values():
        extra = (" dosable" if c.dose else "") + (
            f" molar mass {c.molar_mass:g} g/mol" if c.molar_mass else ""
        )
        lines.append(f"  {c.name:<10} {c.unit:<8}{extra}  {c.description}")
    if model.derived:
        lines.append("\nderived:")
        for q in model.derived.values():
            lines.append(f"  {q.name} = {q.expr}  [{q.unit}]")
    lines.append("\nequations (d/dt, per h):")
    for name, expr in model.rhs_exprs.items():
        lines.append(f"  d{name}/dt = {expr}")
    lines.append("\noutputs:")
    for q in model.outputs.values():
        lines.append(f"  {q.name} = {q.expr}  [{q.unit}]")
    return "\n".join(lines)


def _cmd_docs(args: argparse.Namespace) -> int:
    from .docgen import write_model_docs

    paths = write_model_docs(args.out)
    print(f"wrote {len(paths)} model pages to {args.out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .data import validate_dataset

    kwargs = {}
    if args.model:
        from .model import load_model

        model = load_model(args.model)
        kwargs = {"outputs": list(model.outputs), "compartments": list(model.compartments)}
    report = validate_dataset(args.dataset, **kwargs)
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_fit(args: argparse.Namespace) -> int:
    from .fitting import format_parameter_table, load_fit_spec, run_fit

    # the results folder is checked before the (possibly long) estimation starts
    out = Path(args.out) if args.out else load_fit_spec(args.spec).default_results_dir
    run = run_fit(args.spec, out, force=args.force, command_line=" ".join(sys.argv))
    if args.json:
        print(json.dumps(run.to_dict(), indent=2, default=float))
    else:
        print(format_parameter_table(run.result))
        print(f"results written to {out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import comparison_json, run_comparison, scenario_summary

    if args.scheduler is not None:
        return _compare_virtual_trial(args)
    comparison = run_comparison(args.scenario, n=args.n, progress=not args.json)
    out = args.out or f"pkmodel-compare-{comparison.scenario.path.stem}"
    page = comparison.write(out, force=args.force)
    if args.json:
        print(comparison_json(comparison))
    else:
        print(scenario_summary(comparison))
        print(f"report: {page}")
    return 0


def _compare_virtual_trial(args: argparse.Namespace) -> int:
    """``pkmodel compare --scheduler ...``: summaries of a large virtual trial (no HTML report)."""
    from .compare import run_virtual_trial, trial_summary

    trial = run_virtual_trial(args.scenario, n=args.n, scheduler=args.scheduler, progress=not args.json)
    out = trial.write(args.out or f"pkmodel-trial-{trial.scenario.path.stem}", force=args.force)
    if args.json:
        print(
            json.dumps(
                {
                    "title": trial.scenario.title,
                    "n_subjects": trial.provenance["n_subjects"],
                    "incidence": trial.tables["neutropenia_incidence"].to_dict(orient="records"),
                    "out": str(out),
                },
                default=float,
                indent=2,
            )
        )
    else:
        print(trial_summary(trial))
        print(f"tables: {out}")
    return 0


def _cmd_vpc(args: argparse.Namespace) -> int:
    from .vpc import run_vpc

    result = run_vpc(
        args.spec,
        n_replicates=args.n,
        seed=args.seed,
        bins=args.bins,
        pred_corrected=args.pred_corrected,
        scheduler=args.scheduler,
        progress=not args.json,
    )
    out = result.write(args.out or f"pkmodel-vpc-{result.name}", force=args.force)
    if args.json:
        print(json.dumps({"out": str(out), "table": result.table.to_dict(orient="records")}, default=float))
    else:
        print(result.summary())
        print(f"figure and tables: {out}")
    return 0


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from .bootstrap import run_bootstrap

    result = run_bootstrap(
        args.spec,
        n=args.n,
        seed=args.seed,
        stratify=args.stratify,
        level=args.level,
        scheduler=args.scheduler,
        progress=not args.json,
    )
    out = result.write(args.out or f"pkmodel-bootstrap-{result.name}", force=args.force)
    if args.json:
        print(json.dumps(result.to_dict(), default=float, indent=2))
    else:
        print(result.summary())
        print(f"tables: {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    page = run_demo(args.out, force=args.force, n=args.n)
    print(f"report: {page}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pkmodel`` command."""
    parser = argparse.ArgumentParser(
        prog="pkmodel", description="PK/PD modelling of antibody–drug conjugates"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate a model under a regimen")
    p.add_argument("model", help="shipped model name or path to a model file")
    p.add_argument("--regimen", required=True, help="e.g. '16 mg/kg q3w x6 over 1h'")
    p.add_argument("--weight", type=float, help="body weight, kg (for mg/kg doses)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="parameter or covariate value")
    p.add_argument(
        "--times",
        help="START:STOP:STEP in h, or a comma list (default hourly to 3 weeks after the last dose)",
    )
    p.add_argument("--engine", default="auto", choices=["auto", "exact", "ode"])
    p.add_argument("--out", help="write the profiles to this CSV file")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("models", help="list the shipped models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("show", help="show a model: parameters, compartments, equations")
    p.add_argument("model")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("docs", help="write one documentation page per shipped model")
    p.add_argument("--out", default="docs/models")
    p.set_defaults(func=_cmd_docs)

    p = sub.add_parser("validate", help="check a NONMEM-style dataset")
    p.add_argument("dataset")
    p.add_argument("--model", help="check CMT and DVID against this model")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("fit", help="fit a model to data as a fit specification says")
    p.add_argument("spec")
    p.add_argument("--out", help="results folder (default: fits/results/<spec name>)")
    p.add_argument("--force", action="store_true", help="replace existing results")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("compare", help="compare regimens as a scenario file says; writes an HTML report")
    p.add_argument("scenario")
    p.add_argument("--out", help="report folder (default pkmodel-compare-<scenario name>)")
    p.add_argument("--n", type=int, help="number of virtual subjects (overrides the scenario)")
    p.add_argument("--force", action="store_true", help="replace an existing report folder")
    p.add_argument("--json", action="store_true", help="print the main tables as JSON")
    p.add_argument(
        "--scheduler",
        help="run a large virtual trial (summary tables, no HTML report) on: serial, processes[:N], or a Dask "
        "scheduler address tcp://HOST:PORT",
    )
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "vpc", help="fit a specification and draw its simulation-based visual predictive check"
    )
    p.add_argument("spec")
    p.add_argument("--n", type=int, default=200, help="simulated replicates of the dataset (default 200)")
    p.add_argument("--seed", type=int, help="root seed (default: the spec's seed)")
    p.add_argument("--bins", type=int, default=8, help="time bins, equal counts of observations (default 8)")
    p.add_argument("--pred-corrected", action="store_true", help="prediction-corrected VPC")
    p.add_argument("--scheduler", help="serial (default), processes[:N], or tcp://HOST:PORT")
    p.add_argument("--out", help="output folder (default pkmodel-vpc-<spec name>)")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.add_argument("--json", action="store_true", help="print the VPC table as JSON")
    p.set_defaults(func=_cmd_vpc)

    p = sub.add_parser("bootstrap", help="case-resampling bootstrap of a population fit specification")
    p.add_argument("spec")
    p.add_argument("--n", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, help="root seed (default: the spec's seed)")
    p.add_argument("--stratify", action="append", metavar="COLUMN", help="resample within levels of a column")
    p.add_argument(
        "--level", type=float, default=0.95, help="level of the percentile intervals (default 0.95)"
    )
    p.add_argument("--scheduler", help="serial (default), processes[:N], or tcp://HOST:PORT")
    p.add_argument("--out", help="output folder (default pkmodel-bootstrap-<spec name>)")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_bootstrap)

    p = sub.add_parser("demo", help="fit the shipped example and write the regimen-comparison report")
    p.add_argument("--out", default="pkmodel-demo", help="report folder (default pkmodel-demo)")
    p.add_argument("--n", type=int, help="number of virtual subjects (default: the scenario's)")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pkmodel`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 success, 1 a check found problems, 2 a user error.
    """
    from threadpoolctl import threadpool_limits

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # pkmodel's matrices are small (tens of states): one BLAS thread is fastest, and a multi-threaded
        # BLAS spinning on a loaded machine made fits about 100x slower (docs/performance.md)
        with threadpool_limits(limits=1, user_api="blas"):
            return int(args.func(args))
    except PkmodelError as exc:
        message = str(exc).replace("\n", " | ") if not getattr(args, "json", False) else str(exc)
        print(f"pkmodel: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
