"""The modal predictor of linear models used by population fits, against the matrix-exponential engine.

Oracle: :func:`pkmodel.simulate` with ``engine="exact"`` (augmented-matrix exponentials, an independent
algorithm: no eigendecomposition, steady state by a linear solve of ``(I − Φ(τ))x = m``), on every
shipped linear model and on a model with a zero-order input and a non-zero initial amount, for boluses,
infusions, ADDL, SS=1 and SS=2 (bolus and infusion), mg and mg/kg doses.  Agreement is asked to
``1e-9`` relative, plus ``1e-12`` of the output's largest value in the profile (both engines make
rounding errors of the order of ε times the largest amount; far down a decay a value 1e-9 of the peak
carries that absolute error).
"""

from __future__ import annotations

import numpy as np
import pytest

from pkmodel import Bolus, Infusion, Regimen, load_model, simulate
from pkmodel.errors import SimulationError
from pkmodel.estimation import population_objective
from pkmodel.estimation._linear import ModalPredictor, _column_norms, _eig, _norm1, subject_design
from pkmodel.fitting import build_problem, load_fit_spec
from pkmodel.model import fits_dir, models_dir

LINEAR_MODELS = [
    "one_compartment_iv",
    "one_compartment_oral",
    "two_compartment_iv",
    "adc_dar8_sn38",
    "adc_esg401",
]
TIMES = np.array([0.0, 0.5, 1.0, 2.0, 5.0, 24.0, 24.5, 48.0, 100.0, 168.0, 170.0, 400.0])

TURNOVER_MODEL = """\
[model]
name = "turnover_two_compartment"
description = "two compartments with zero-order production and a baseline amount (test model)"

[parameters]
KIN = { value = 2.0, unit = "mg/h", bounds = [0, 100], description = "production", source = "test" }
CL = { value = 0.8, unit = "L/h", bounds = [0, 100], description = "clearance", source = "test" }
V = { value = 10.0, unit = "L", bounds = [0.1, 1e3], description = "volume", source = "test" }
Q = { value = 1.5, unit = "L/h", bounds = [0, 100], description = "distribution", source = "test" }
V2 = { value = 20.0, unit = "L", bounds = [0.1, 1e3], description = "peripheral volume", source = "test" }

[compartments]
CENT = { unit = "mg", dose = true, initial = "5", description = "central" }
PERI = { unit = "mg", initial = "1", description = "peripheral" }

[[flows]]
to = "CENT"
rate = "KIN"
description = "production"

[[flows]]
from = "CENT"
rate = "CL/V*CENT"
description = "elimination"

[[flows]]
from = "CENT"
to = "PERI"
rate = "Q/V*CENT"
description = "to peripheral"

[[flows]]
from = "PERI"
to = "CENT"
rate = "Q/V2*PERI"
description = "back"

[outputs]
CP = { expr = "CENT/V", unit = "mg/L", description = "concentration" }
"""


def regimens(model) -> dict[str, Regimen]:
    """Every dose type into the model's default (or first dosable) compartment."""
    cmt = model.default_dose_compartment or next(c.name for c in model.compartments.values() if c.dose)
    return {
        "bolus+addl": Regimen(
            [Bolus(0.0, 10.0, compartment=cmt, ii=24.0, addl=3), Bolus(100.0, 5.0, compartment=cmt)]
        ),
        "infusion+addl": Regimen([Infusion(0.0, 10.0, compartment=cmt, duration=2.0, ii=24.0, addl=2)]),
        "mg/kg infusion": Regimen([Infusion(0.5, 2.0, compartment=cmt, duration=1.0, unit="mg/kg")]),
        "ss1 bolus": Regimen([Bolus(24.0, 10.0, compartment=cmt, ii=12.0, ss=1, addl=2)]),
        "ss1 infusion": Regimen(
            [
                Bolus(0.0, 3.0, compartment=cmt),
                Infusion(24.0, 10.0, compartment=cmt, duration=3.0, ii=24.0, ss=1),
            ]
        ),
        "ss2 infusion": Regimen(
            [
                Bolus(0.0, 3.0, compartment=cmt),
                Infusion(48.0, 8.0, compartment=cmt, duration=4.0, ii=24.0, ss=2),
            ]
        ),
        "infusion across ss1": Regimen(
            [
                Infusion(20.0, 6.0, compartment=cmt, duration=10.0),
                Bolus(24.0, 4.0, compartment=cmt, ii=48.0, ss=1),
            ]
        ),
        "ss2 then ss1": Regimen(
            [
                Bolus(5.0, 4.0, compartment=cmt, ii=24.0, ss=2),
                Bolus(48.0, 2.0, compartment=cmt, ii=12.0, ss=1),
            ]
        ),
    }


CYCLE_MODEL = """\
[model]
name = "three_compartment_cycle"
description = "irreversible cycle A -> B -> C -> A with elimination from A: complex eigenvalues (test model)"

[parameters]
K1 = { value = 1.0, unit = "1/h", bounds = [0, 100], description = "A to B", source = "test" }
K2 = { value = 1.0, unit = "1/h", bounds = [0, 100], description = "B to C", source = "test" }
K3 = { value = 1.0, unit = "1/h", bounds = [0, 100], description = "C to A", source = "test" }
KE = { value = 0.2, unit = "1/h", bounds = [0, 100], description = "elimination", source = "test" }

[compartments]
A = { unit = "mg", dose = true, description = "first" }
B = { unit = "mg", description = "second" }
C = { unit = "mg", description = "third" }

[[flows]]
from = "A"
to = "B"
rate = "K1*A"
description = "A to B"

[[flows]]
from = "B"
to = "C"
rate = "K2*B"
description = "B to C"

[[flows]]
from = "C"
to = "A"
rate = "K3*C"
description = "C to A"

[[flows]]
from = "A"
rate = "KE*A"
description = "elimination"

[outputs]
AMOUNT_B = { expr = "B", unit = "mg", description = "amount in B" }
"""


def parameter_sets(model, k: int = 4, seed: int = 7) -> dict[str, np.ndarray]:
    """The model's values and k − 1 sets with every parameter scaled by up to ±30 % (seeded)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, par in model.parameters.items():
        scale = np.exp(rng.uniform(-0.3, 0.3, k))
        scale[0] = 1.0
        values = par.value * scale if par.value != 0 else np.zeros(k)
        out[name] = np.clip(values, par.lower, par.upper) if np.isfinite(par.upper) else values
    for name, cov in model.covariates.items():
        out[name] = np.full(k, cov.value)
    return out


def modal(model, regimen, times, params, weight):
    design = subject_design(model, regimen, times, weight, np.zeros(0, int), np.zeros(0, int))
    assert design is not None
    predictor = ModalPredictor(model)
    asm = predictor.assembly(("s",), [design])
    defaults = {
        **{k: p.value for k, p in model.parameters.items()},
        **{k: c.value for k, c in model.covariates.items()},
    }
    k = len(next(iter(params.values())))
    args = np.array(
        [[params.get(n, np.full(k, defaults.get(n, 0.0)))[j] for n in model.argument_names] for j in range(k)]
    )
    values, done = predictor.outputs(asm, args[None])
    return values, done[0]


def assert_agree(model, values, result):
    for o, name in enumerate(model.numeric.output_names):
        exact = result.outputs[name]  # (J, K)
        ours = values[o]
        finite = np.isfinite(exact)
        assert np.array_equal(finite, np.isfinite(ours)), name
        scale = np.max(np.abs(np.where(finite, exact, 0.0)), axis=0, keepdims=True)
        tol = 1e-9 * np.abs(exact) + 1e-12 * scale
        assert np.all(np.abs(ours - exact)[finite] <= tol[finite]), (name, np.max(np.abs(ours - exact)))


@pytest.mark.parametrize("model_name", LINEAR_MODELS)
def test_modal_predictions_equal_the_exact_engine_for_every_dose_type(model_name):
    model = load_model(model_name)
    params = parameter_sets(model)
    weight = 70.0
    for label, regimen in regimens(model).items():
        values, done = modal(model, regimen, TIMES, params, weight)
        assert done.all(), label
        exact = simulate(model, regimen, TIMES, parameters=params, weight=weight, engine="exact")
        assert_agree(model, values, exact)


def test_modal_predictions_with_production_and_initial_amounts(tmp_path):
    path = tmp_path / "turnover.toml"
    path.write_text(TURNOVER_MODEL, encoding="utf-8")
    model = load_model(str(path))
    params = parameter_sets(model)
    for label, regimen in regimens(model).items():
        values, done = modal(model, regimen, TIMES, params, 70.0)
        assert done.all(), label
        exact = simulate(model, regimen, TIMES, parameters=params, weight=70.0, engine="exact")
        assert_agree(model, values, exact)
    # no dose at all: only the initial amounts and the production
    values, done = modal(model, Regimen(), TIMES, params, None)
    assert_agree(model, values, simulate(model, None, TIMES, parameters=params, engine="exact"))


def test_complex_eigenvalues(tmp_path):
    # an irreversible 3-cycle: K has a complex-conjugate pair (−1.5 ± 0.87i for K1 = K2 = K3 = 1, KE = 0)
    path = tmp_path / "cycle.toml"
    path.write_text(CYCLE_MODEL, encoding="utf-8")
    model = load_model(str(path))
    params = parameter_sets(model)
    assert model.argument_names == ("K1", "K2", "K3", "KE")
    lam = np.linalg.eigvals(model.numeric.rate_matrix(np.array([[1.0], [1.0], [1.0], [0.2]]))[0])
    assert np.iscomplexobj(lam) and np.max(np.abs(lam.imag)) > 0.5
    for label, regimen in regimens(model).items():
        values, done = modal(model, regimen, TIMES, params, 70.0)
        assert done.all(), label
        assert_agree(
            model, values, simulate(model, regimen, TIMES, parameters=params, weight=70.0, engine="exact")
        )


@pytest.mark.parametrize("n", [1, 2, 5])
def test_matrix_norms_of_stacked_small_matrices_are_numpys(n):
    rng = np.random.default_rng(n)
    real = rng.normal(size=(3, 4, n, n))
    complex_ = real + 1j * rng.normal(size=(3, 4, n, n))
    for a in (real, complex_):
        np.testing.assert_allclose(_norm1(a), np.linalg.norm(a, 1, axis=(-2, -1)), rtol=1e-14)
        np.testing.assert_allclose(_column_norms(a), np.linalg.norm(a, axis=-2, keepdims=True), rtol=1e-14)
    real[1, 2, 0, 0] = np.nan  # a NaN makes its norm NaN, as numpy's
    assert np.isnan(_norm1(real)[1, 2]) and np.isfinite(np.delete(_norm1(real).ravel(), 6)).all()


@pytest.mark.parametrize("n", [1, 2, 4])
def test_eigenpairs_of_triangular_and_block_triangular_rate_matrices(n):
    # lower triangular K (one compartment with a depot; a chain of transit compartments) by forward
    # substitution, and the same K through the general block path: both reconstruct K = V·diag(λ)·V⁻¹,
    # agree with each other and with LAPACK's eigenvalues; a repeated eigenvalue is flagged unusable
    rng = np.random.default_rng(n)
    K = np.tril(rng.uniform(0.1, 2.0, size=(5, 3, n, n)))
    K[..., range(n), range(n)] *= -1.0
    lam, V, Vinv, ok = _eig(K, [np.array([i]) for i in range(n)])
    assert ok.all()
    np.testing.assert_allclose(V @ (lam[..., :, None] * Vinv), K, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.sort(lam, axis=-1), np.sort(np.linalg.eigvals(K).real, axis=-1), rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(V, axis=-2), 1.0, rtol=1e-14)
    if n > 1:
        blocks = [np.array([0, 1]), *[np.array([i]) for i in range(2, n)]]
        lam_b, V_b, Vinv_b, ok_b = _eig(K, blocks)
        assert ok_b.all()
        np.testing.assert_allclose(V_b @ (lam_b[..., :, None] * Vinv_b), K, rtol=1e-10, atol=1e-10)
        K[0, 0, 1, 1] = K[0, 0, 0, 0]  # λ shared by two states: no eigenvector basis
        assert not _eig(K, [np.array([i]) for i in range(n)])[3][0, 0]


def test_ill_conditioned_sets_are_left_to_the_exact_engine():
    # KA = CL/V: a defective K (double eigenvalue) — no eigenvector basis; the modal path must decline
    model = load_model("one_compartment_oral")
    params = {"KA": np.array([0.1, 0.5]), "CL": np.array([1.0, 1.0]), "V": np.array([10.0, 10.0])}
    _, done = modal(model, Regimen([Bolus(0.0, 100.0, compartment="DEPOT")]), TIMES, params, None)
    assert done.tolist() == [False, True]


@pytest.fixture(scope="module")
def theoph():
    return build_problem(load_fit_spec(fits_dir() / "theoph_foce.toml"))


def test_predict_many_equals_predict_batch_and_falls_back(theoph):
    fp = theoph
    subjects = fp.subjects
    rng = np.random.default_rng(3)
    params = {
        "KA": 1.5 * np.exp(rng.normal(0, 0.3, (len(subjects), 3))),
        "CL": 0.04 * np.exp(rng.normal(0, 0.3, (len(subjects), 3))),
        "V": 0.45 * np.exp(rng.normal(0, 0.3, (len(subjects), 3))),
    }
    # subject 0, set 1: KA = CL·WT/(V·WT) (defective K, computed by simulate); subject 1, set 2 outside the bounds
    params["KA"][0, 1] = params["CL"][0, 1] / params["V"][0, 1]
    params["KA"][1, 2] = -1.0  # below the model's lower bound 0
    calls = fp.n_simulate_calls[0]
    many = fp.predict_many(subjects, params)
    assert fp.n_simulate_calls[0] == calls + 1  # only the defective set went through simulate
    for m, s in enumerate(subjects):
        batch = fp.predict_batch(s, {k: v[m] for k, v in params.items()})
        ours = many[m, :, : s.n_obs]
        assert np.array_equal(np.isnan(ours), np.isnan(batch))
        ok = ~np.isnan(batch)
        scale = np.max(np.where(ok, np.abs(batch), 0.0), axis=1, keepdims=True)
        assert np.all(np.abs(ours - batch)[ok] <= (1e-9 * np.abs(batch) + 1e-12 * scale)[ok])
    assert np.isnan(many[1, 2, : subjects[1].n_obs]).all()


def test_a_failing_set_leaves_the_other_sets_of_its_simulation_predicted(theoph, monkeypatch):
    import pkmodel.fitting._problem as problem_module

    subject = theoph.subjects[2]
    params = {"KA": np.array([1.2, 1.5, 1.9, 2.4, 3.0]), "CL": np.full(5, 0.04), "V": np.full(5, 0.45)}
    # oracle: each set simulated on its own
    alone = np.array(
        [theoph.predict_batch(subject, {k: v[[j]] for k, v in params.items()})[0] for j in range(5)]
    )
    real = problem_module.simulate

    def fails_for_one_set(*args, parameters, **kwargs):
        if np.any(np.asarray(parameters["KA"]) == 1.9):
            raise SimulationError("the ODE solver failed (test)")
        return real(*args, parameters=parameters, **kwargs)

    monkeypatch.setattr(problem_module, "simulate", fails_for_one_set)
    ours = theoph.predict_batch(subject, params)
    assert np.isnan(ours[2]).all()
    others = [0, 1, 3, 4]
    np.testing.assert_allclose(ours[others], alone[others], rtol=1e-12, atol=0)


def test_population_objective_is_the_same_with_and_without_predict_many(theoph):
    problem = theoph.problem
    assert problem.predict_many is not None
    fast = population_objective(problem)
    slow = population_objective(problem.replace(predict_many=None))
    assert fast.ofv == pytest.approx(slow.ofv, rel=1e-10, abs=1e-8)
    np.testing.assert_allclose(fast.eta, slow.eta, rtol=1e-6, atol=1e-9)


def test_an_undefined_unobserved_output_does_not_send_a_set_to_the_exact_engine(tmp_path):
    # FRACTION = CENT/max(0, CENT) is 0/0 before the dose; only CP is observed there, so the set stays modal
    path = tmp_path / "fraction.toml"
    text = (models_dir() / "one_compartment_iv.toml").read_text(encoding="utf-8")
    text = text.replace('name = "one_compartment_iv"', 'name = "one_compartment_fraction"')
    text += (
        'FRACTION = { expr = "CENT/max(0, CENT)", unit = "1", description = "0/0 before the dose (test)" }\n'
    )
    path.write_text(text, encoding="utf-8")
    model = load_model(str(path))
    names = model.numeric.output_names
    times = np.array([0.0, 2.0])
    regimen = Regimen([Bolus(1.0, 100.0)])
    design = subject_design(model, regimen, times, None, np.array([names.index("CP")] * 2), np.array([0, 1]))
    predictor = ModalPredictor(model)
    args = np.array([[1.0, 10.0]])  # CL, V (argument order checked below)
    assert model.argument_names == ("CL", "V")
    with np.errstate(invalid="ignore"):
        values, done = predictor.outputs(predictor.assembly(("s",), [design]), args[None])
    assert done.all()
    assert np.isnan(values[names.index("FRACTION"), 0, 0]) and values[names.index("CP"), 0, 0] == 0.0
    # C(2) = 100/10·e^(−0.1·1) after the bolus at 1 h
    assert values[names.index("CP"), 1, 0] == pytest.approx(10.0 * np.exp(-0.1), rel=1e-12)


def test_subjects_without_a_modal_design_are_simulated_beside_the_others(theoph):
    # one subject stripped of its modal design (as a subject with a reset would be): predict_many must
    # send it alone to simulate and still predict the others by the modal path; oracle: predict_batch
    import dataclasses

    fp = theoph
    subjects = list(fp.subjects[:4])
    subjects[2] = dataclasses.replace(subjects[2], data=dataclasses.replace(subjects[2].data, design=None))
    rng = np.random.default_rng(8)
    params = {
        "KA": 1.5 * np.exp(rng.normal(0, 0.3, (4, 2))),
        "CL": 0.04 * np.exp(rng.normal(0, 0.3, (4, 2))),
        "V": 0.45 * np.exp(rng.normal(0, 0.3, (4, 2))),
    }
    full = fp.predict_many(list(fp.subjects[:4]), params)  # all four modal (remembered as a group)
    calls = fp.n_simulate_calls[0]
    mixed = fp.predict_many(subjects, params)  # same IDs, one subject different: not the remembered group
    assert fp.n_simulate_calls[0] == calls + 1
    for m, s in enumerate(subjects):
        batch = fp.predict_batch(s, {k: v[m] for k, v in params.items()})
        scale = 1e-12 * np.abs(batch).max()  # (a value of 0 at t = 0 is ~1e-13 by the modal path)
        np.testing.assert_allclose(mixed[m, :, : s.n_obs], batch, rtol=1e-9, atol=scale)
        np.testing.assert_allclose(full[m, :, : s.n_obs], batch, rtol=1e-9, atol=scale)


def test_a_valid_linear_problem_is_built_without_simulating():
    # the initial-prediction check goes through the modal path; only a subject it cannot predict is
    # simulated (see tests/test_fitting.py for the errors that simulation then raises)
    fresh = build_problem(load_fit_spec(fits_dir() / "theoph_foce.toml"))
    assert fresh.n_simulate_calls[0] == 0
    assert fresh.n_fast_predictions[0] == len(fresh.subjects)
