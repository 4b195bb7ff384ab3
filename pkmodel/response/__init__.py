"""Exposure–response for neutropenia: logistic regression on an exposure metric, and the mechanistic route.

Empirical route
    :func:`fit_logistic` fits ``logit P(event) = a + b·exposure`` (or ``b·ln exposure``) by maximum
    likelihood with Wald, profile-likelihood and bootstrap intervals and detects separation;
    :func:`select_exposure_metric` ranks candidate metrics (e.g. cycle-1 Cavg or Cmax of free SN-38,
    ADC Cavg) by −2LL/AIC; :func:`incidence_by_quantile` gives the observed proportions by exposure
    quartile with exact :func:`clopper_pearson` intervals; :func:`plot_exposure_response` draws the
    standard figure (matplotlib imported only there).

Mechanistic route
    :func:`neutropenia_incidence` simulates a PK/PD model (e.g. ``adc_esg401_friberg``: free SN-38
    driving the Friberg model) in a virtual population under several regimens and grades the
    simulated ANC by CTCAE v5.0 (:mod:`pkmodel.grading`).

See ``docs/exposure-response.md`` for a guide.

Examples
--------
>>> from pkmodel.response import fit_logistic
>>> fit = fit_logistic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0, 0, 1, 0, 1, 1])
>>> fit.status, round(fit.slope, 4)
('ok', 1.214)
"""

from ._logistic import CI_METHODS, LogisticFit, fit_logistic, select_exposure_metric
from ._mechanistic import NeutropeniaIncidence, default_times, neutropenia_incidence
from ._plot import plot_exposure_response
from ._proportions import clopper_pearson, incidence_by_quantile

__all__ = [
    "CI_METHODS",
    "LogisticFit",
    "NeutropeniaIncidence",
    "clopper_pearson",
    "default_times",
    "fit_logistic",
    "incidence_by_quantile",
    "neutropenia_incidence",
    "plot_exposure_response",
    "select_exposure_metric",
]
