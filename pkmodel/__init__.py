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
from .model import Model, list_models, load_model
from .simulation import SimulationResult, simulate

__version__ = "0.1.0"

__all__ = [
    "Bolus",
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
    "list_models",
    "load_model",
    "parse_regimen",
    "q3w",
    "simulate",
]
