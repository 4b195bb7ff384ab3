"""The extrapolated last Newton step of the η̂ searches in the outer stencils (``solve_eta``).

Oracles:
* ``∂ log det H/∂η``, which the extrapolation uses, against central differences of ``log det H``
  itself over η, for every way the curvature weights can depend on the prediction (additive error:
  they do not; proportional error with interaction; a log-additive output; censored records, M3;
  FOCE without interaction);
* the objective and η̂ of a fully converged η̂ search (``extrapolate=False``) at the same points.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pkmodel.estimation import ResidualError, Subject, foce
from pkmodel.estimation.foce import PopulationObjective, _omega_terms

CASES = {
    "additive": (ResidualError("additive", additive=0.7, name="conc"), "foce-i", False),
    "proportional": (ResidualError("proportional", proportional=0.2, name="conc"), "foce-i", False),
    "combined, FOCE": (ResidualError("combined", additive=0.3, proportional=0.1, name="conc"), "foce", False),
    "log-additive": (ResidualError("log-additive", additive=0.25, name="conc"), "foce-i", False),
    "combined, M3": (ResidualError("combined", additive=0.3, proportional=0.1, name="conc"), "foce-i", True),
}


def _problem(theoph, residual, censored):
    subjects = theoph.subjects()
    # the log-additive model needs DV > 0 (the t = 0 samples are 0 or tiny: drop them)
    subjects = [
        Subject(s.id, dv=s.dv[1:], time=s.time[1:], covariates=s.covariates, data=s.data) for s in subjects
    ]
    if censored:  # an LLOQ of 3 mg/L: the late samples of most subjects are censored
        subjects = [
            Subject(
                s.id, dv=s.dv, time=s.time, covariates=s.covariates, data=s.data, lloq=np.full(s.n_obs, 3.0)
            )
            for s in subjects
        ]
        assert sum(int(np.sum(s.blq)) for s in subjects) > 10
    return dataclasses.replace(theoph.problem(subjects), residual=(residual,))


def _context(engine, extrapolate=True):
    theta, omega, sigma = (np.asarray(v)[None] for v in engine.space.initial())
    omega_inv, logdet, _ = _omega_terms(omega)
    ctx = engine.context(theta, omega, sigma, omega_inv, logdet)
    ctx.extrapolate = np.full(ctx.subject.size, foce._EXTRAPOLATE_DECREMENT) if extrapolate else None
    return ctx


@pytest.mark.parametrize("case", list(CASES))
def test_log_determinant_derivative_matches_finite_differences(theoph, case):
    residual, method, censored = CASES[case]
    engine = PopulationObjective(_problem(theoph, residual, censored), method)
    ctx = _context(engine)
    rows = np.arange(len(engine.subjects))
    eta = np.random.default_rng(4).normal(0.0, 0.2, (rows.size, engine.n_eta))
    st = engine.state(ctx, rows, eta)
    assert st.dlogdet is not None and np.all(np.isfinite(st.dlogdet))
    plain = _context(engine, extrapolate=False)

    def logdet(e):
        return np.linalg.slogdet(0.5 * engine.state(plain, rows, e).hess)[1]

    eps = 1e-4
    for k in range(engine.n_eta):
        shift = np.zeros(engine.n_eta)
        shift[k] = eps
        numeric = (logdet(eta + shift) - logdet(eta - shift)) / (2.0 * eps)
        np.testing.assert_allclose(st.dlogdet[:, k], numeric, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("case", ["additive", "combined, M3"])
def test_extrapolated_values_agree_with_converged_eta_searches(theoph, case):
    # points of an outer gradient stencil (steps 1e-3) around the initial estimates, warm-started at the
    # base point's η̂: the extrapolated searches save Newton states and agree with the converged ones to
    # far below the outer finite differences' resolution (~1e-7 in OFV)
    residual, method, censored = CASES[case]
    problem = _problem(theoph, residual, censored)
    exact_engine = PopulationObjective(problem, method)
    fast_engine = PopulationObjective(problem, method)
    space = exact_engine.space
    x0 = space.to_x(*space.initial())
    base, _, _ = exact_engine.evaluate(*space.initial())
    points = np.vstack([x0 + 1e-3 * np.eye(x0.size)[k] * sign for k in range(x0.size) for sign in (1, -1)])
    exact = exact_engine.evaluate_many(*space.from_x(points), base.eta)
    fast = fast_engine.evaluate_many(*space.from_x(points), base.eta, extrapolate=foce._EXTRAPOLATE_DECREMENT)
    assert fast_engine.n_predict_calls < exact_engine.n_predict_calls - base.eta.shape[0]
    for a, b in zip(fast, exact, strict=True):
        assert a.ofv == pytest.approx(b.ofv, rel=0, abs=1e-8)
        np.testing.assert_allclose(a.eta, b.eta, rtol=0, atol=1e-6)
        assert a.inner_failures == b.inner_failures == 0


def test_inverses_of_singular_or_invalid_curvatures_are_nan():
    # the log-determinant derivative is then NaN, and solve_eta extrapolates only rows where it is finite
    from pkmodel.estimation._linear import _inverse

    a = np.array([[[2.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]], [[np.nan, 0.0], [0.0, 1.0]]])
    out = _inverse(a)[0]
    np.testing.assert_allclose(out[0], np.diag([0.5, 0.25]))
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
