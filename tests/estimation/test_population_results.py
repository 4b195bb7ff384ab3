"""Result tables of a population fit against closed forms, and problem validation messages.

Oracle for the tables: a model linear in η with additive error, where the empirical Bayes estimates are
the posterior means ``η̂ = ΩZᵀV⁻¹(y − Xθ)`` and CWRES is exactly ``chol(V)⁻¹(y − Xθ)``,
``V = ZΩZᵀ + σ²I``; shrinkage, AIC and BIC by their definitions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pkmodel.errors import EstimationError
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


def linear_problem():
    rng = np.random.default_rng(5)
    subjects = []
    for i in range(16):
        t = np.array([0.0, 2.0, 4.0, 8.0][: 2 + i % 3])
        b, s = 5.0 + rng.normal(0, 1.0), 0.8 + rng.normal(0, 0.3)
        subjects.append(Subject(f"S{i}", dv=b + s * t + rng.normal(0, 0.5, t.size), time=t))
    return PopulationProblem(
        subjects,
        [Theta("B", 4.0), Theta("S", 0.5)],
        [
            IndividualParameter("B", theta="B", eta="eta_B", eta_form="additive"),
            IndividualParameter("S", theta="S", eta="eta_S", eta_form="additive"),
        ],
        [OmegaBlock(["eta_B", "eta_S"], [0.5, 0.05])],
        [ResidualError("additive", additive=1.0)],
        predict=lambda s, p: p["B"] + p["S"] * s.time,
    )


@pytest.fixture(scope="module")
def linear_fit():
    problem = linear_problem()
    return problem, fit_population(problem)


def test_ebes_cwres_iwres_pred_ipred_closed_forms(linear_fit):
    problem, fit = linear_fit
    b, s, sd = fit.theta["B"], fit.theta["S"], fit.sigma["y0_add"]
    obs = fit.observations()
    ebes = fit.subjects()
    for subj in problem.subjects:
        z = np.column_stack([np.ones(subj.n_obs), subj.time])
        v = z @ fit.omega @ z.T + sd**2 * np.eye(subj.n_obs)
        resid = subj.dv - b - s * subj.time
        eta = fit.omega @ z.T @ np.linalg.solve(v, resid)
        np.testing.assert_allclose(ebes.loc[subj.id, ["eta_B", "eta_S"]].to_numpy(float), eta, atol=1e-7)
        np.testing.assert_allclose(
            ebes.loc[subj.id, ["B", "S"]].to_numpy(float), [b + eta[0], s + eta[1]], atol=1e-7
        )
        rows = obs[obs["ID"] == subj.id]
        cwres = np.linalg.solve(np.linalg.cholesky(v), resid)
        np.testing.assert_allclose(rows["CWRES"], cwres, atol=1e-6)
        np.testing.assert_allclose(rows["PRED"], b + s * subj.time, rtol=1e-12)
        ipred = b + eta[0] + (s + eta[1]) * subj.time
        np.testing.assert_allclose(rows["IPRED"], ipred, atol=1e-7)
        np.testing.assert_allclose(rows["IWRES"], (subj.dv - ipred) / sd, atol=1e-6)


def test_shrinkage_aic_bic_by_definition(linear_fit):
    _, fit = linear_fit
    ebes = fit.subjects()
    for k, eta in enumerate(["eta_B", "eta_S"]):
        expected = 1.0 - np.std(ebes[eta], ddof=1) / math.sqrt(fit.omega[k, k])
        assert fit.shrinkage[eta] == pytest.approx(expected, rel=1e-12)
        assert fit.omega_table().loc[f"omega({eta})", "shrinkage_percent"] == pytest.approx(100 * expected)
    iwres = fit.observations()["IWRES"]
    assert fit.epsilon_shrinkage == pytest.approx(1.0 - np.std(iwres, ddof=1), rel=1e-12)
    n_records = len(fit.observations())
    assert fit.n_parameters == 5  # B, S, two variances, σ
    assert fit.aic == pytest.approx(fit.minus_2_log_likelihood + 2 * 5, rel=1e-12)
    assert fit.bic == pytest.approx(fit.minus_2_log_likelihood + 5 * math.log(n_records), rel=1e-12)
    assert fit.minus_2_log_likelihood - fit.ofv == pytest.approx(n_records * math.log(2 * math.pi), rel=1e-12)
    assert fit.subjects()["OFV"].sum() == pytest.approx(fit.ofv, rel=1e-12)


def test_correlation_matrix_and_condition_number(linear_fit):
    _, fit = linear_fit
    corr = fit.correlation_matrix()
    cov = fit.covariance_matrix()
    se = np.sqrt(np.diag(cov.to_numpy()))
    np.testing.assert_allclose(corr.to_numpy(), cov.to_numpy() / np.outer(se, se), rtol=1e-12)
    eig = np.linalg.eigvalsh(corr.to_numpy())
    assert fit.condition_number == pytest.approx(eig[-1] / eig[0], rel=1e-10)


def test_typical_values_from_covariate_forms_and_callables():
    # f = the individual parameter itself, so PRED shows the typical values; all parameters fixed
    wt, age = [50.0, 70.0, 100.0], [20.0, 40.0, 60.0]
    subjects = [Subject(i, dv=[1.0], covariates={"WT": wt[i], "AGE": age[i]}) for i in range(3)]
    thetas = [
        Theta("CL", 2.0, fixed=True),
        Theta("CL_WT", 0.75, fixed=True),
        Theta("CL_AGE", -0.01, fixed=True),
        Theta("V_AGE", 0.02, fixed=True),
    ]
    parameters = [
        IndividualParameter(
            "CL",
            theta="CL",
            covariates=[
                CovariateEffect("WT", "CL_WT", 70.0),
                CovariateEffect("AGE", "CL_AGE", 40.0, form="linear"),
            ],
        ),
        IndividualParameter("V", typical=lambda th, cov: 30.0 * math.exp(th["V_AGE"] * (cov["AGE"] - 40.0))),
    ]

    def predict(s, p):
        return np.array([p["CL"] * 1000.0 + p["V"]])

    problem = PopulationProblem(
        subjects,
        thetas,
        parameters,
        [],
        [ResidualError("additive", additive=1.0, fix_additive=True)],
        predict=predict,
    )
    fit = fit_population(problem, covariance=False)
    assert fit.n_parameters == 0
    pred = fit.observations()["PRED"].to_numpy()
    for i in range(3):
        cl = 2.0 * (wt[i] / 70.0) ** 0.75 * (1.0 - 0.01 * (age[i] - 40.0))
        v = 30.0 * math.exp(0.02 * (age[i] - 40.0))
        assert pred[i] == pytest.approx(cl * 1000.0 + v, rel=1e-12)
    assert fit.subjects().loc[2, "CL"] == pytest.approx(2.0 * (100 / 70) ** 0.75 * 0.8, rel=1e-12)


# ---- validation messages ------------------------------------------------------------------------


def _parts():
    subjects = [Subject(1, dv=[1.0, 2.0], covariates={"WT": 70.0})]
    thetas = [Theta("CL", 1.0, lower=0.0)]
    parameters = [IndividualParameter("CL", theta="CL", eta="eta_CL")]
    omega = [OmegaBlock(["eta_CL"], [0.1])]
    residual = [ResidualError("additive", additive=1.0)]
    return subjects, thetas, parameters, omega, residual


def _predict(s, p):
    return np.full(s.n_obs, p["CL"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"thetas": [Theta("CL", 1.0), Theta("CL", 2.0)]}, "theta name 'CL' is declared twice"),
        (
            {"parameters": [IndividualParameter("CL", theta="KA", eta="eta_CL")]},
            r"parameter 'CL': theta 'KA' is not declared; declared thetas: \['CL'\]",
        ),
        (
            {"omega": [OmegaBlock(["eta_CL", "eta_V"], [0.1, 0.1])]},
            r"eta\(s\) \['eta_V'\] are declared in omega but no parameter uses them",
        ),
        (
            {"parameters": [IndividualParameter("CL", theta="CL", eta="eta_X")]},
            r"parameter 'CL': eta 'eta_X' is not in any OmegaBlock",
        ),
        (
            {
                "parameters": [
                    IndividualParameter(
                        "CL", theta="CL", eta="eta_CL", covariates=[CovariateEffect("AGE", "CL", 40.0)]
                    )
                ]
            },
            r"covariate 'AGE' is missing for subject\(s\) \[1\]; add it to Subject.covariates",
        ),
        (
            {"residual": [ResidualError("additive", additive=1.0, output=1)]},
            r"subject 1: output\(s\) \[0\] have no ResidualError; add one per output",
        ),
    ],
)
def test_problem_validation_messages(change, message):
    subjects, thetas, parameters, omega, residual = _parts()
    kwargs = {
        "subjects": subjects,
        "thetas": thetas,
        "parameters": parameters,
        "omega": omega,
        "residual": residual,
    }
    kwargs.update(change)
    with pytest.raises(EstimationError, match=message):
        PopulationProblem(**kwargs, predict=_predict)


def test_problem_needs_a_prediction_function():
    with pytest.raises(EstimationError, match="no prediction function; give predict or predict_batch"):
        PopulationProblem(*_parts())


def test_wrong_prediction_shape_names_the_subject():
    problem = PopulationProblem(*_parts(), predict_batch=lambda s, p: np.ones((len(p["CL"]), 5)))
    with pytest.raises(
        EstimationError, match=r"subject 1: predict_batch returned shape \(\d+, 5\), expected"
    ):
        fit_population(problem)


def test_log_additive_needs_positive_observations():
    _, thetas, parameters, omega, _ = _parts()
    bad = [Subject(1, dv=[1.0, 0.0])]
    with pytest.raises(
        EstimationError, match=r"subject 1: observation\(s\) \[1\] .* are <= 0 .* log-additive"
    ):
        PopulationProblem(
            bad, thetas, parameters, omega, [ResidualError("log-additive", additive=0.2)], predict=_predict
        )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Subject(1, dv=[1.0, np.nan]),
            r"subject 1: observation\(s\) \[1\] .* non-finite dv and are not BLQ",
        ),
        (lambda: Subject(1, dv=[1.0], covariates={"WT": "heavy"}), r"covariate 'WT'='heavy' is not a number"),
        (
            lambda: OmegaBlock(["a", "b"], [[0.1, 0.05], [0.05, 0.1]], diagonal=True),
            "diagonal=True but the initial matrix has non-zero covariances",
        ),
        (lambda: ResidualError("combined", additive=0.1), "needs an initial proportional SD"),
        (lambda: ResidualError("additive", additive=0.1, proportional=0.2), "has no proportional component"),
        (lambda: ResidualError("additive", additive=-0.1), "additive SD must be finite and > 0"),
        (
            lambda: IndividualParameter("CL", theta="CL", typical=lambda th, cov: 1.0),
            "give exactly one of theta .* or typical",
        ),
        (lambda: CovariateEffect("WT", "CL_WT", 0.0), "must be finite .and > 0 for a power model."),
    ],
)
def test_value_object_validation_messages(build, message):
    with pytest.raises(EstimationError, match=message):
        build()


def test_objective_not_finite_at_start_is_reported():
    subjects, thetas, parameters, omega, residual = _parts()
    problem = PopulationProblem(
        subjects, thetas, parameters, omega, residual, predict=lambda s, p: np.full(s.n_obs, np.nan)
    )
    with pytest.raises(EstimationError, match=r"not finite at the initial estimates \(subjects \[1\]\)"):
        fit_population(problem)


def test_cwres_of_all_subjects_at_once_equal_subject_by_subject():
    # _cwres pads every subject's observations to a common width and factors all V together; oracle: the
    # definition subject by subject (Cholesky of V = GΩGᵀ + diag(s²) over the uncensored observations).
    # A subject whose V is singular gets NaN and the others are unaffected.
    from types import SimpleNamespace

    from pkmodel.estimation.results import _cwres

    rng = np.random.default_rng(12)
    n, width, q = 4, 5, 2
    mask = np.ones((n, width), dtype=bool)
    mask[1, 3:] = False  # subject 1 has 3 observations
    censored = np.zeros((n, width), dtype=bool)
    censored[2, 1] = True
    data = SimpleNamespace(mask=mask, censored=censored, is_log=np.zeros((n, width), dtype=bool))
    data.y = rng.normal(5.0, 1.0, (n, width))
    ipred = rng.uniform(3.0, 6.0, (n, width))
    g = rng.normal(0.0, 1.0, (n, q, width))
    sd = rng.uniform(0.3, 0.8, (n, width))
    eta = rng.normal(0.0, 0.2, (n, q))
    omega = np.array([[0.2, 0.05], [0.05, 0.1]])

    def by_definition(i):
        keep = np.flatnonzero(mask[i] & ~censored[i])
        G = g[i][:, keep].T
        v = G @ omega @ G.T + np.diag(sd[i, keep] ** 2)
        out = np.full(width, np.nan)
        out[keep] = np.linalg.solve(np.linalg.cholesky(v), data.y[i, keep] - ipred[i, keep] + G @ eta[i])
        return out

    np.testing.assert_allclose(
        _cwres(data, g, ipred, sd, eta, omega), [by_definition(i) for i in range(n)], rtol=1e-12
    )
    g[3], sd[3] = 0.0, 0.0  # V = 0 for subject 3: not positive definite
    cwres = _cwres(data, g, ipred, sd, eta, omega)
    assert np.isnan(cwres[3]).all()
    np.testing.assert_allclose(cwres[:3], [by_definition(i) for i in range(3)], rtol=1e-12)
