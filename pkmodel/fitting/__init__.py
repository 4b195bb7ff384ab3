"""Fits of models to NONMEM-style datasets, driven by specification files (``fits/*.toml``).

The chain is: :func:`load_fit_spec` (validate the TOML file against the model) → :func:`build_problem`
(read the dataset, map DVIDs to outputs, cache each subject's regimen and observation times, and build
the estimation problem whose predictions are :func:`pkmodel.simulate` calls) → FOCE-I/FOCE/FO
(:func:`pkmodel.estimation.fit_population`) or per-subject maximum likelihood
(:func:`pkmodel.estimation.fit_individual`) → a :class:`FitRun` with tables, a NONMEM-style parameter
table (:func:`format_parameter_table`) and an atomic writer of the results folder.  :func:`run_fit` does
all of it; the command line ``pkmodel fit`` is a thin layer over it.  See ``docs/fitting.md``.
"""

from pkmodel.fitting._problem import FitProblem, build_problem, typical_values
from pkmodel.fitting._report import format_parameter_table, write_gof_plots
from pkmodel.fitting._run import FitRun, run_fit
from pkmodel.fitting._spec import FitSpec, load_fit_spec

__all__ = [
    "FitProblem",
    "FitRun",
    "FitSpec",
    "build_problem",
    "format_parameter_table",
    "load_fit_spec",
    "run_fit",
    "typical_values",
    "write_gof_plots",
]
