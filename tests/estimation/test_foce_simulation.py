"""End-to-end: simulate a parent–metabolite population and recover it with FOCE-I.

Oracle: the parameter values the data were simulated from (seeded).  Everything at once: two outputs
with their own error models (combined on the parent, log-additive on the metabolite), a full Ω block,
a power covariate, BLQ records (M3).  Each estimate must lie within 3 standard errors of the truth.
Marked slow: about 5–8 s (30 subjects, 11 parameters, covariance step).
"""

from __future__ import annotations

import numpy as np
import pytest

from pkmodel.estimation import (
    CovariateEffect,
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
    fit_population,
)

TRUE_THETA = {"KA": 1.2, "CL": 3.0, "V": 30.0, "FM": 0.4, "KM": 0.2}
TRUE_OMEGA = np.array([[0.09, 0.03], [0.03, 0.04]])  # η on CL, V
TRUE_SIGMA = {"parent_add": 0.05, "parent_prop": 0.15, "metab_add": 0.1}
DOSE = 100.0
TIMES = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0])


def concentrations(ka, cl, v, fm, km, time):
    """Parent: oral one-compartment; metabolite formed at fm·ke·A_parent and eliminated with km.

    Metabolite: c1·Σ exp(−λ t)/Π(other λ − λ) over λ ∈ {ka, ke, km} (convolution of three exponentials).
    """
    ke = cl / v
    parent = DOSE * ka / (v * (ka - ke)) * (np.exp(-ke * time) - np.exp(-ka * time))
    c1 = DOSE * ka * ke * fm / v
    metabolite = c1 * (
        np.exp(-ka * time) / ((ke - ka) * (km - ka))
        + np.exp(-ke * time) / ((ka - ke) * (km - ke))
        + np.exp(-km * time) / ((ka - km) * (ke - km))
    )
    return parent, metabolite


def simulate(n_subjects=30, seed=42):
    rng = np.random.default_rng(seed)
    subjects = []
    time = np.r_[TIMES, TIMES]
    output = np.r_[np.zeros(TIMES.size, int), np.ones(TIMES.size, int)]
    lloq = np.r_[np.full(TIMES.size, 0.1), np.full(TIMES.size, 0.05)]
    for i in range(n_subjects):
        wt = rng.uniform(50, 100)
        eta = rng.multivariate_normal([0.0, 0.0], TRUE_OMEGA)
        cl = TRUE_THETA["CL"] * (wt / 70) ** 0.75 * np.exp(eta[0])
        v = TRUE_THETA["V"] * (wt / 70) * np.exp(eta[1])
        parent, metabolite = concentrations(
            TRUE_THETA["KA"], cl, v, TRUE_THETA["FM"], TRUE_THETA["KM"], TIMES
        )
        sd_parent = np.sqrt(TRUE_SIGMA["parent_add"] ** 2 + (TRUE_SIGMA["parent_prop"] * parent) ** 2)
        y_parent = parent + sd_parent * rng.normal(size=TIMES.size)
        y_metab = metabolite * np.exp(TRUE_SIGMA["metab_add"] * rng.normal(size=TIMES.size))
        dv = np.r_[y_parent, y_metab]
        dv = np.where(dv < lloq, np.nan, dv)  # a BLQ value is not reported
        blq = np.isnan(dv)
        subjects.append(
            Subject(i, dv=dv, time=time, output=output, lloq=lloq, blq=blq, covariates={"WT": wt})
        )
    return subjects


def predict_batch(subject, p):
    parent, metabolite = concentrations(
        p["KA"][:, None],
        p["CL"][:, None],
        p["V"][:, None],
        p["FM"][:, None],
        p["KM"][:, None],
        subject.time[None, :],
    )
    return np.where(subject.output[None, :] == 0, parent, metabolite)


@pytest.fixture(scope="module")
def simulation_fit():
    subjects = simulate()
    problem = PopulationProblem(
        subjects,
        [
            Theta("KA", 1.0, lower=0.0),
            Theta("CL", 2.0, lower=0.0),
            Theta("V", 20.0, lower=0.0),
            Theta("FM", 0.5, lower=0.0, upper=1.0),
            Theta("KM", 0.3, lower=0.0),
            Theta("CL_WT", 0.75, fixed=True),
            Theta("V_WT", 1.0, fixed=True),
        ],
        [
            IndividualParameter("KA", theta="KA"),
            IndividualParameter(
                "CL", theta="CL", eta="eta_CL", covariates=[CovariateEffect("WT", "CL_WT", 70.0)]
            ),
            IndividualParameter(
                "V", theta="V", eta="eta_V", covariates=[CovariateEffect("WT", "V_WT", 70.0)]
            ),
            IndividualParameter("FM", theta="FM"),
            IndividualParameter("KM", theta="KM"),
        ],
        [OmegaBlock(["eta_CL", "eta_V"], [[0.1, 0.0], [0.0, 0.1]], diagonal=False)],
        [
            ResidualError("combined", additive=0.1, proportional=0.1, output=0, name="parent"),
            ResidualError("log-additive", additive=0.2, output=1, name="metab"),
        ],
        predict_batch=predict_batch,
    )
    return fit_population(problem)


@pytest.mark.slow
def test_simulation_has_blq_records(simulation_fit):
    assert simulation_fit.n_blq > 0
    assert simulation_fit.n_obs + simulation_fit.n_blq == 30 * 14


@pytest.mark.slow
def test_truth_within_three_standard_errors(simulation_fit):
    fit = simulation_fit
    assert fit.converged, fit.message
    assert fit.covariance_ok, fit.covariance_message
    thetas = fit.theta_table()
    for name, value in TRUE_THETA.items():
        assert abs(thetas.loc[name, "estimate"] - value) < 3 * thetas.loc[name, "se"], name
    omegas = fit.omega_table()
    for name, value in [
        ("omega(eta_CL)", TRUE_OMEGA[0, 0]),
        ("omega(eta_V,eta_CL)", TRUE_OMEGA[1, 0]),
        ("omega(eta_V)", TRUE_OMEGA[1, 1]),
    ]:
        assert abs(omegas.loc[name, "estimate"] - value) < 3 * omegas.loc[name, "se"], name
    sigmas = fit.sigma_table()
    for name, value in TRUE_SIGMA.items():
        assert abs(sigmas.loc[name, "sd"] - value) < 3 * sigmas.loc[name, "se_sd"], name
