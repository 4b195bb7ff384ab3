"""The main job: fit the shipped example dataset, then compare the regimens and write the report.

``pkmodel demo`` runs :func:`run_demo`: it fits the (simulated) ESG401-like phase 1 example with the
specification ``fits/esg401_example_foce.toml`` and writes the fit results, then runs the scenario
``fits/esg401_regimens.toml`` and writes the regimen-comparison report, all inside one folder.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .errors import PkmodelError
from .model import fits_dir

__all__ = ["run_demo"]

FIT_SPEC = "esg401_example_foce.toml"
SCENARIO = "esg401_regimens.toml"


def run_demo(
    out: str | Path = "pkmodel-demo", *, force: bool = False, n: int | None = None, fit: bool = True
) -> Path:
    """Fit the example dataset and write the regimen-comparison report into ``out``.

    Parameters
    ----------
    out : str or Path
        Folder for ``fit/`` (fit results) and ``report/`` (the HTML report and its CSVs).
    force : bool
        Replace an existing folder.
    n : int, optional
        Virtual subjects per regimen (default: the scenario's).
    fit : bool
        Run the population fit first; its estimates (θ̂, Ω̂) then drive the PK of the comparison (the
        Friberg parameters and their variability come from the scenario).  False: the scenario's models
        and variability alone.

    Returns
    -------
    Path
        The path of ``report.html``.
    """
    from .compare import run_comparison

    target = Path(out)
    if target.exists() and not force:
        raise PkmodelError(
            f"{target} exists; pkmodel never overwrites results: choose another --out or add --force"
        )
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        run = None
        if fit:
            from .fitting import format_parameter_table, run_fit

            print("[pkmodel] fitting the example dataset (FOCE-I) ...", file=sys.stderr, flush=True)
            run = run_fit(fits_dir() / FIT_SPEC)
            run.write(staging / "fit", force=True)
            print(format_parameter_table(run.result), file=sys.stderr)
        comparison = run_comparison(fits_dir() / SCENARIO, n=n, progress=True, fit=run)
        comparison.write(staging / "report", force=True)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "report" / "report.html"
