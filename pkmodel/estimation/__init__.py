"""Population (FOCE-I, FOCE, FO) and individual (maximum likelihood) estimation on an abstract problem.

The engine is model-agnostic: the caller supplies the subjects' observations and a prediction function
``predict(subject, params) -> ndarray (n_obs,)`` (optionally batched ``predict_batch`` and
``predict_many``); see
:mod:`pkmodel.estimation.problem` for the problem description and :mod:`pkmodel.estimation.foce` for
the objective functions.
"""

from pkmodel.estimation.covariance import CovarianceStep
from pkmodel.estimation.foce import ObjectiveValue, fit_population, population_objective
from pkmodel.estimation.individual import IndividualResult, fit_individual, individual_objective
from pkmodel.estimation.problem import (
    CovariateEffect,
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
)
from pkmodel.estimation.results import PopulationResult

__all__ = [
    "CovarianceStep",
    "CovariateEffect",
    "IndividualParameter",
    "IndividualResult",
    "ObjectiveValue",
    "OmegaBlock",
    "PopulationProblem",
    "PopulationResult",
    "ResidualError",
    "Subject",
    "Theta",
    "fit_individual",
    "fit_population",
    "individual_objective",
    "population_objective",
]
