"""pkmodel: compartmental PK/PD modelling of antibody–drug conjugates.

The public API is re-exported here; everything else is private.

Examples
--------
>>> import pkmodel
>>> model = pkmodel.load_model("one_compartment_iv")
>>> result = pkmodel.simulate(model, pkmodel.parse_regimen("100 mg once"), times=[0.0, 1.0])
>>> round(float(result.output("CP")[1, 0]), 4)
9.0484
"""

from .compare import Comparison, dose_intensity, load_scenario, run_comparison
from .data import Dataset, read_dataset, validate_dataset
from .dosing import Bolus, Infusion, Regimen, cycle_regimen, d1_8_15_q4w, parse_regimen, q3w
from .errors import (
    DatasetError,
    DosingError,
    EstimationError,
    ExpressionError,
    ModelFileError,
    PkmodelError,
    SimulationError,
    SpecError,
    UnitError,
)
from .estimation import fit_individual, fit_population
from .grading import grade_anc, grade_wbc, summarize_course, summarize_courses
from .model import Model, list_models, load_model
from .nca import nca, nca_table
from .response import fit_logistic, neutropenia_incidence, select_exposure_metric
from .simulation import SimulationResult, simulate

__version__ = "0.1.0"

#: Public functions of modules that are imported only when first used (they pull in plotting or Dask).
_LAZY = {
    "map_tasks": "distributed",
    "run_bootstrap": "bootstrap",
    "run_virtual_trial": "compare",
    "run_vpc": "vpc",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pkmodel' has no attribute {name!r}")


__all__ = [
    "Bolus",
    "Comparison",
    "Dataset",
    "DatasetError",
    "DosingError",
    "EstimationError",
    "ExpressionError",
    "Infusion",
    "Model",
    "ModelFileError",
    "PkmodelError",
    "Regimen",
    "SimulationError",
    "SimulationResult",
    "SpecError",
    "UnitError",
    "cycle_regimen",
    "d1_8_15_q4w",
    "dose_intensity",
    "fit_individual",
    "fit_logistic",
    "fit_population",
    "grade_anc",
    "grade_wbc",
    "list_models",
    "load_model",
    "load_scenario",
    "map_tasks",
    "nca",
    "nca_table",
    "neutropenia_incidence",
    "parse_regimen",
    "q3w",
    "read_dataset",
    "run_bootstrap",
    "run_comparison",
    "run_virtual_trial",
    "run_vpc",
    "select_exposure_metric",
    "simulate",
    "summarize_course",
    "summarize_courses",
    "validate_dataset",
]
