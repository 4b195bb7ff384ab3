"""Batched evaluation of the population objective against point-by-point evaluation.

Oracles:
* the objective, η̂ and per-subject OFV of each parameter point evaluated on its own (a fresh engine,
  cold-started η̂), for the model-based theophylline problem (``predict_many``, modal predictions) and
  the closed-form one (``predict_batch``);
* the predictions of a subject that appears in several rows of one call: ``predict_batch`` (the exact
  engine of :func:`pkmodel.simulate`) row by row;
* the Hessian of a polynomial in closed form (the vectorised finite-difference stencil);
* the η̂ sensitivities used as warm starts: central differences of cold-started η̂.
"""

from __future__ import annotations

import numpy as np
import pytest

from pkmodel.estimation import foce
from pkmodel.estimation.covariance import central_hessian
from pkmodel.estimation.foce import PopulationObjective, _Outer
from pkmodel.fitting import build_problem, load_fit_spec
from pkmodel.model import fits_dir


@pytest.fixture(scope="module")
def theoph_model_problem():
    return build_problem(load_fit_spec(fits_dir() / "theoph_foce.toml")).problem


def _points(engine: PopulationObjective) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The initial point, three moved ones, and two that are not valid (Ω not PD, σ = 0)."""
    theta, omega, sigma = engine.space.initial()
    moved_theta = theta * np.where(engine.space.theta_fixed, 1.0, 1.1)
    points = [
        (theta, omega, sigma),
        (moved_theta, omega, sigma),
        (theta, omega * 0.7, sigma),
        (moved_theta, omega * 1.3, sigma * 0.8),
        (theta, -omega, sigma),
        (theta, omega, sigma * 0.0),
    ]
    return points


@pytest.mark.parametrize("which", ["model", "closed_form"])
def test_evaluate_many_equals_point_by_point_evaluation(which, theoph, theoph_model_problem, monkeypatch):
    problem = theoph_model_problem if which == "model" else theoph.problem()
    engine = PopulationObjective(problem, "foce-i")
    points = _points(engine)
    stacked = [np.array(v) for v in zip(*points, strict=True)]  # θ (B, n_theta), Ω (B, q, q), σ (B, n_sigma)
    values = engine.evaluate_many(*stacked)
    assert engine.n_evaluations == len(points)
    for point, value in zip(points, values, strict=True):
        alone, _, _ = PopulationObjective(problem, "foce-i").evaluate(*point)
        if not np.isfinite(alone.ofv):
            assert value.ofv == np.inf and value.inner_failures == len(problem.subjects)
            continue
        assert value.ofv == pytest.approx(alone.ofv, rel=1e-12, abs=1e-10)
        np.testing.assert_allclose(value.subject_ofv, alone.subject_ofv, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(value.eta, alone.eta, rtol=0, atol=1e-9)
        assert value.inner_failures == 0
    # in batches of two points (a per-call size limit) the same values
    monkeypatch.setattr(foce, "_BATCH_PREDICTIONS", 2 * len(problem.subjects) * 6 * engine.data.nmax)
    for whole, part in zip(values, engine.evaluate_many(*stacked), strict=True):
        assert part.ofv == pytest.approx(whole.ofv, rel=1e-12, abs=1e-10) or whole.ofv == part.ofv == np.inf
    monkeypatch.undo()
    # a warm start per point (here: η̂ of another point) converges to the same η̂ (to the tolerance of
    # the η̂ search: the objective agrees to ~1e-9, well inside its finite-difference smoothness of 1e-7)
    starts = np.array([values[3].eta if np.isfinite(v.ofv) else values[0].eta for v in values])
    warm = engine.evaluate_many(*stacked, starts)
    for cold, hot in zip(values, warm, strict=True):
        assert hot.ofv == pytest.approx(cold.ofv, rel=0, abs=1e-8) or cold.ofv == hot.ofv == np.inf
        np.testing.assert_allclose(hot.eta, cold.eta, rtol=0, atol=1e-8)


def test_a_subject_in_several_rows_is_predicted_as_on_its_own(theoph_model_problem):
    problem = theoph_model_problem
    engine = PopulationObjective(problem, "foce-i")
    rows = np.array([3, 0, 3, 7, 3])
    rng = np.random.default_rng(5)
    typical = engine.typical(engine.space.initial()[0])[rows]
    phi = engine.individual(typical[:, None, :], rng.normal(0.0, 0.3, (rows.size, 4, engine.n_eta)))
    ours = engine.predict_rows(rows, phi)
    for m, i in enumerate(rows):
        subject = problem.subjects[i]
        params = {name: phi[m, :, p] for p, name in enumerate(engine.param_names)}
        exact = problem.predict_batch(subject, params)  # the exact engine of simulate, one row at a time
        np.testing.assert_allclose(ours[m, :, : subject.n_obs], exact, rtol=1e-9, atol=1e-12)


def test_vectorised_central_hessian_is_the_closed_form():
    def fun(v):
        return v[..., 0] ** 3 * v[..., 1] + np.exp(v[..., 1] - v[..., 2]) + 2.0 * v[..., 2] ** 2

    x = np.array([1.2, 0.3, -0.4])
    a, b, c = x
    e = np.exp(b - c)
    exact = np.array([[6 * a * b, 3 * a**2, 0.0], [3 * a**2, e, -e], [0.0, -e, e + 4.0]])
    steps = np.full(3, 1e-4)
    vectorised = central_hessian(fun, x, steps, vectorized=True)
    np.testing.assert_allclose(vectorised, exact, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(vectorised, central_hessian(fun, x, steps))
    # a point where the function is not finite makes its entries NaN
    broken = central_hessian(lambda p: np.where(p[:, 0] > x[0], np.nan, fun(p)), x, steps, vectorized=True)
    assert np.isnan(broken[0]).all() and np.isfinite(broken[1:, 1:]).all()


def test_eta_sensitivities_of_the_gradient_stencil_are_central_differences(theoph_model_problem):
    engine = PopulationObjective(theoph_model_problem, "foce-i")
    space = engine.space
    outer = _Outer(engine, 1e-3)
    x = space.to_x(*space.initial())
    outer.evaluate(x)
    outer.jac(x)
    # oracle: η̂ solved from η = 0 at x ± δ e_k with another step
    delta = 3e-4
    for k in range(x.size):
        shift = np.zeros(x.size)
        shift[k] = delta
        plus, _, _ = PopulationObjective(theoph_model_problem, "foce-i").evaluate(*space.from_x(x + shift))
        minus, _, _ = PopulationObjective(theoph_model_problem, "foce-i").evaluate(*space.from_x(x - shift))
        oracle = (plus.eta - minus.eta) / (2.0 * delta)
        np.testing.assert_allclose(outer.sensitivity[:, :, k], oracle, rtol=1e-3, atol=1e-4)
    # the moved warm start is closer to η̂ at a new point than η̂ of the base point
    step = 0.05 * np.ones(x.size)
    target, _, _ = PopulationObjective(theoph_model_problem, "foce-i").evaluate(*space.from_x(x + step))
    moved = np.abs(outer.eta_start(x + step) - target.eta).max()
    assert moved < 0.1 * np.abs(outer.eta - target.eta).max()


def test_parameter_space_maps_of_many_points_are_those_of_each(theoph_model_problem):
    space = PopulationObjective(theoph_model_problem, "foce-i").space
    x0 = space.to_x(*space.initial())
    many = x0 + np.random.default_rng(2).normal(0.0, 0.5, (7, x0.size))
    theta, omega, sigma = space.from_x(many)
    for b, x in enumerate(many):
        th, om, sg = space.from_x(x)
        np.testing.assert_array_equal(theta[b], th)
        np.testing.assert_array_equal(omega[b], om)
        np.testing.assert_array_equal(sigma[b], sg)
        assert space.theta_in_bounds(th)
    np.testing.assert_allclose(space.to_x(theta, omega, sigma), many, rtol=1e-12, atol=1e-12)  # round trip
    # covariance space: θ, the Ω elements and σ themselves
    p = np.array([space.to_p(th, om, sg) for th, om, sg in zip(theta, omega, sigma, strict=True)])
    back = space.from_p(p)
    for a, b in zip(back, (theta, omega, sigma), strict=True):
        np.testing.assert_array_equal(a, b)
    # a theta on its bound is outside
    theta[3, 0] = space.theta_lower[0]
    assert space.theta_in_bounds(theta).tolist() == [True, True, True, False, True, True, True]


def test_outer_gradient_is_the_central_difference_of_separate_evaluations(theoph_model_problem):
    engine = PopulationObjective(theoph_model_problem, "foce-i")
    space = engine.space
    x = space.to_x(*space.initial()) + 0.05
    h = 1e-3 * np.maximum(1.0, np.abs(x))

    def ofv(point):  # oracle: a fresh engine, η̂ from 0
        return PopulationObjective(theoph_model_problem, "foce-i").evaluate(*space.from_x(point))[0].ofv

    oracle = np.array(
        [(ofv(x + h[k] * e) - ofv(x - h[k] * e)) / (2 * h[k]) for k, e in enumerate(np.eye(x.size))]
    )
    outer = _Outer(engine, 1e-3)
    assert outer.fun(x) == pytest.approx(ofv(x), abs=1e-8)
    np.testing.assert_allclose(outer.jac(x), oracle, rtol=1e-5, atol=1e-5)  # computed along with the value
    # values asked for without their gradients (a fallback line search): the gradient is computed when asked
    other = x - 0.02
    outer.fun(x + 0.01)
    assert outer.fun(other) == pytest.approx(ofv(other), abs=1e-8)
    assert not np.array_equal(outer._gradient[0], other)  # value alone
    fresh = _Outer(PopulationObjective(theoph_model_problem, "foce-i"), 1e-3)
    np.testing.assert_allclose(outer.jac(other), fresh.jac(other), rtol=1e-6, atol=1e-6)


def test_remembered_predictions_are_reused_and_change_nothing(theoph_model_problem, monkeypatch):
    # only an engine that evaluates one point at a time remembers predictions (in batches every warm
    # start moves, so nothing is predicted twice)
    assert PopulationObjective(theoph_model_problem, "foce-i")._cache is None
    monkeypatch.setattr(foce, "_BATCH_PREDICTIONS", 1)
    # the same point twice: the second η̂ search starts at the first's η̂, whose parameter sets were
    # predicted last, so its first Newton iteration is served from memory; the value is the same to the
    # last digit (oracle: an engine evaluating the point once)
    engine = PopulationObjective(theoph_model_problem, "foce-i")
    point = engine.space.initial()
    first, _, _ = engine.evaluate(*point)
    calls = engine.n_predict_calls
    second, _, _ = engine.evaluate(*point, eta_start=first.eta)
    fresh, _, _ = PopulationObjective(theoph_model_problem, "foce-i").evaluate(*point, eta_start=first.eta)
    assert engine.n_predict_calls - calls < fresh_calls(theoph_model_problem, point, first.eta)
    assert second.ofv == fresh.ofv
    np.testing.assert_array_equal(second.eta, fresh.eta)


def fresh_calls(problem, point, eta) -> int:
    """Prediction calls of one evaluation by an engine that has predicted nothing yet."""
    engine = PopulationObjective(problem, "foce-i")
    engine.evaluate(*point, eta_start=eta)
    return engine.n_predict_calls


def test_only_theta_moves_the_warm_start_when_points_are_evaluated_one_at_a_time(
    theoph_model_problem, monkeypatch
):
    # a large problem (one point per batch): a step in Ω or σ alone keeps the last η̂ as the start (its
    # predictions are remembered); a small one (several points per batch) moves every start
    for batch, moved in ((30_000, "all"), (1, "theta")):
        monkeypatch.setattr(foce, "_BATCH_PREDICTIONS", batch)
        engine = PopulationObjective(theoph_model_problem, "foce-i")
        outer = _Outer(engine, foce._OUTER_STEP)
        x0 = engine.space.to_x(*engine.space.initial())
        outer.evaluate(x0)
        n_theta = int(np.sum(~engine.space.theta_fixed))
        for k in range(x0.size):
            x = x0.copy()
            x[k] += 0.01
            start = outer.eta_start(x)
            expected = (
                outer.eta + 0.01 * outer.sensitivity[:, :, k]
                if (moved == "all" or k < n_theta)
                else outer.eta
            )
            np.testing.assert_allclose(start, expected, rtol=0, atol=1e-15)
            if moved == "theta" and k >= n_theta:
                assert np.array_equal(start, outer.eta)


def test_whole_batches_are_predicted_as_any_other_order_of_rows(theoph_model_problem):
    # rows that are every subject once per point, point-major, are grouped by reshaping alone; the same
    # rows in another order go through the general grouping (oracle) and must give the same predictions
    engine = PopulationObjective(theoph_model_problem, "foce-i")
    n = len(theoph_model_problem.subjects)
    rows = np.tile(np.arange(n), 3)
    assert np.array_equal(rows, engine._tiled(3))
    rng = np.random.default_rng(11)
    typical = engine.typical(engine.space.initial()[0][None])[0]  # (N, P)
    phi = engine.individual(typical[rows][:, None, :], rng.normal(0.0, 0.3, (rows.size, 4, engine.n_eta)))
    tiled = engine._predict(rows, phi)
    order = rng.permutation(rows.size)
    general = np.empty_like(tiled)
    general[order] = engine._predict(rows[order], phi[order])
    np.testing.assert_array_equal(tiled, general)


def test_the_first_gradient_is_computed_once(theoph_model_problem):
    # minimize takes the gradient at x0 to start BFGS's inverse Hessian; BFGS then asks for the value and
    # the gradient at x0 again: both must come from that stencil, not from a second one
    engine = PopulationObjective(theoph_model_problem, "foce-i")
    outer = _Outer(engine, foce._OUTER_STEP)
    x0 = engine.space.to_x(*engine.space.initial())
    outer.jac(x0)
    after_stencil = engine.n_evaluations
    assert after_stencil == 1 + 2 * x0.size
    outer.fun(x0)
    outer.jac(x0)
    assert engine.n_evaluations == after_stencil


def test_central_hessian_takes_two_points_per_pair():
    # n(n + 1) + 1 evaluations (Abramowitz & Stegun 25.3.27), exact for a quadratic up to rounding
    calls = []
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 4))
    hessian = a @ a.T + 4.0 * np.eye(4)

    def fun(points):
        calls.append(len(points))
        return 0.5 * np.einsum("ki,ij,kj->k", points, hessian, points) + points @ np.arange(4.0)

    estimate = central_hessian(fun, rng.normal(size=4), np.full(4, 1e-3), vectorized=True)
    assert calls == [4 * 5 + 1]
    np.testing.assert_allclose(estimate, hessian, rtol=1e-6, atol=1e-6)
