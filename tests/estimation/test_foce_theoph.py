"""Acceptance test: FOCE-I on R's theophylline data agrees with R nlme (fm2).

Oracle: R nlme 3.1.162 (R 4.2.2), fm2 = ``nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), random =
pdDiag(lKa + lCl ~ 1))`` by maximum likelihood; table in tests/data/theoph/README.md.  nlme's random
effects on lKa and lCl are our exponential etas on KA and CL, so θ here is ``exp`` of nlme's fixed effect.

nlme uses the Lindstrom–Bates algorithm, a close relative of FOCE; the estimates agree to about 2 % on
the natural scale (θ = KE, KA, CL), i.e. |log θ − nlme| < 0.02.  A relative difference of the *log*
parameters would be meaningless (lKa = log(KA/1 h⁻¹) is near 0 and depends on the time unit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pkmodel.estimation import population_objective

NLME_FIXED = {"KE": -2.454704, "KA": 0.465736, "CL": -3.227223}  # lKe, lKa, lCl
NLME_FIXED_SE = {"KE": 0.052490, "KA": 0.198563, "CL": 0.060010}  # SE of lKe, lKa, lCl
NLME_SD = {"eta_KA": 0.643575, "eta_CL": 0.166928}
NLME_RESIDUAL_SD = 0.709254
NLME_LOGLIK = -177.0214


def test_fit_converges_with_successful_covariance_step(theoph_foce_fit, record_property):
    fit = theoph_foce_fit
    assert fit.converged, fit.message
    assert fit.covariance_ok, fit.covariance_message
    assert (fit.n_subjects, fit.n_obs, fit.n_blq, fit.n_parameters) == (12, 132, 0, 6)
    record_property("estimation_seconds", round(fit.estimation_seconds, 3))
    record_property("total_seconds", round(fit.total_seconds, 3))


def test_fixed_effects_agree_with_nlme_within_2_percent(theoph_foce_fit):
    for name, reference in NLME_FIXED.items():
        estimate = math.log(theoph_foce_fit.theta[name])
        assert abs(estimate - reference) < 0.02, (name, estimate, reference)


def test_random_effect_and_residual_sds_agree_with_nlme_within_10_percent(theoph_foce_fit):
    table = theoph_foce_fit.omega_table()
    for eta, reference in NLME_SD.items():
        sd = table.loc[f"omega({eta})", "sd"]
        assert sd == pytest.approx(reference, rel=0.10), eta
    assert theoph_foce_fit.sigma["conc_add"] == pytest.approx(NLME_RESIDUAL_SD, rel=0.10)
    assert theoph_foce_fit.sigma_table().loc["conc_add", "variance"] == pytest.approx(
        theoph_foce_fit.sigma["conc_add"] ** 2, rel=1e-12
    )


def test_standard_errors_agree_with_nlme(theoph_foce_fit):
    # delta method: SE(log θ) = SE(θ)/θ; nlme's SEs are of the log parameters
    table = theoph_foce_fit.theta_table()
    for name, reference in NLME_FIXED_SE.items():
        se_log = table.loc[name, "se"] / table.loc[name, "estimate"]
        assert se_log == pytest.approx(reference, rel=0.10), name


def test_objective_at_nlme_estimates_reproduces_nlme_log_likelihood(theoph):
    # For additive error FOCE's objective is the linearised marginal likelihood that nlme's
    # Lindstrom-Bates step maximises; at nlme's estimates both give −2LL = −2·logLik (to the rounding
    # of the published estimates).
    value = population_objective(
        theoph.problem(),
        "foce-i",
        theta={k: math.exp(v) for k, v in NLME_FIXED.items()},
        omega=np.diag([NLME_SD["eta_KA"] ** 2, NLME_SD["eta_CL"] ** 2]),
        sigma={"conc_add": NLME_RESIDUAL_SD},
    )
    assert value.minus_2_log_likelihood == pytest.approx(-2.0 * NLME_LOGLIK, abs=0.01)
    assert value.minus_2_log_likelihood - value.ofv == pytest.approx(132 * math.log(2 * math.pi), rel=1e-12)


def test_estimates_minimise_the_objective_better_than_nlme(theoph, theoph_foce_fit):
    at_nlme = population_objective(
        theoph.problem(),
        "foce-i",
        theta={k: math.exp(v) for k, v in NLME_FIXED.items()},
        omega=np.diag([NLME_SD["eta_KA"] ** 2, NLME_SD["eta_CL"] ** 2]),
        sigma={"conc_add": NLME_RESIDUAL_SD},
    )
    assert theoph_foce_fit.ofv < at_nlme.ofv
