"""Tests of pkmodel.population: virtual populations and chunked metric runs.

Oracles
-------
* Sampling theory for the moments of n independent draws (tolerance 4 standard errors, a false-alarm
  probability below 1e-4 per check; the draws are seeded, so each test is deterministic):
  SE(mean) = ω/√n; SE(variance) = ω²·√(2/(n−1)) (normal data); SE(covariance) = √((ω₁²ω₂² + ω₁₂²)/n);
  SE(median of log) = √(π/2)·σ/√n.
* Identity of repeated runs (same seed, different chunk sizes).
* The exact exposure route (tests/test_exposure.py) for the chunked exposure table.
"""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pandas as pd
import pytest

from pkmodel import load_model, parse_regimen, simulate
from pkmodel.errors import SimulationError
from pkmodel.exposure import exposure_from_result, exposure_metrics, exposure_times
from pkmodel.population import sample_population, simulate_metrics


@pytest.fixture(scope="module")
def two_cmt():
    return load_model("two_compartment_iv")


@pytest.fixture(scope="module")
def adc():
    return load_model("adc_esg401")


def test_eta_moments_match_omega(adc):
    n = 20000
    omega = {"CL": 0.09, "V1": 0.04, ("CL", "V1"): 0.03, "KDEC": 0.16}
    pop = sample_population(adc, n, seed=11, omega=omega)
    assert list(pop.columns) == ["ID", "CL", "V1", "KDEC"]
    eta = np.log(
        pop[["CL", "V1", "KDEC"]].to_numpy() / [adc.parameters[k].value for k in ("CL", "V1", "KDEC")]
    )
    variances = np.array([0.09, 0.04, 0.16])
    assert np.all(np.abs(eta.mean(axis=0)) < 4 * np.sqrt(variances / n))
    sample_var = eta.var(axis=0, ddof=1)
    assert np.all(np.abs(sample_var - variances) < 4 * variances * math.sqrt(2 / (n - 1)))
    cov = np.cov(eta[:, 0], eta[:, 1])[0, 1]
    assert abs(cov - 0.03) < 4 * math.sqrt((0.09 * 0.04 + 0.03**2) / n)
    cov_independent = np.cov(eta[:, 0], eta[:, 2])[0, 1]  # Ω has no CL-KDEC covariance
    assert abs(cov_independent) < 4 * math.sqrt(0.09 * 0.16 / n)


def test_same_seed_same_population_other_seed_other(two_cmt):
    spec = {"omega": {"CL": 0.09, "V1": 0.04}, "covariates": {"WT": {"dist": "normal", "mean": 70, "sd": 10}}}
    a = sample_population(two_cmt, 50, seed=5, **spec)
    b = sample_population(two_cmt, 50, seed=5, **spec)
    pd.testing.assert_frame_equal(a, b)
    c = sample_population(two_cmt, 50, seed=6, **spec)
    assert not np.allclose(a["CL"], c["CL"])


def test_covariates_resampled_as_whole_rows(adc):
    source = pd.DataFrame({"ID": [1, 2, 3], "WT": [50.0, 70.0, 90.0], "ALB": [30.0, 38.0, 45.0]})
    pop = sample_population(adc, 3000, seed=2, covariates=source)
    pairs = set(zip(source.WT, source.ALB, strict=True))
    assert set(zip(pop.WT, pop.ALB, strict=True)) == pairs  # each draw is one of the source rows, kept whole
    # each row has probability 1/3: count SE = √(n·(1/3)(2/3)) = 25.8
    counts = pop.WT.value_counts()
    assert np.all(np.abs(counts.to_numpy() - 1000) < 4 * math.sqrt(3000 * (1 / 3) * (2 / 3)))


def test_covariate_distributions_and_truncation(adc):
    n = 10000
    spec = {
        "WT": {"dist": "lognormal", "median": 60.0, "sd_log": 0.2, "lower": 45.0, "upper": 80.0},
        "ALB": {"dist": "normal", "mean": 38.0, "sd": 4.0},
    }
    pop = sample_population(adc, n, seed=9, covariates=spec)
    assert pop.WT.min() >= 45.0 and pop.WT.max() <= 80.0
    # truncation at log(45/60)/0.2 = −1.44 and log(80/60)/0.2 = +1.44 SD is symmetric: the median stays 60
    assert abs(np.median(np.log(pop.WT)) - math.log(60.0)) < 4 * math.sqrt(math.pi / 2) * 0.2 / math.sqrt(n)
    assert abs(pop.ALB.mean() - 38.0) < 4 * 4.0 / math.sqrt(n)
    assert abs(pop.ALB.std(ddof=1) ** 2 - 16.0) < 4 * 16.0 * math.sqrt(2 / (n - 1))


def test_uncertainty_drawn_once_per_replicate(two_cmt):
    sigma = {"CL": 0.0004, "V1": 0.01}  # SE 0.02 L/h and 0.1 L around θ = 0.2 L/h and 3 L
    pop = sample_population(two_cmt, 3, seed=4, uncertainty=sigma, replicates=4000)
    assert len(pop) == 12000 and list(pop.columns[:2]) == ["ID", "REP"]
    per_rep = pop.groupby("REP")[["CL", "V1"]]
    assert (per_rep.nunique() == 1).all().all()  # no Ω: every subject of a replicate shares its θ
    theta = per_rep.first()
    for name, centre, var in (("CL", 0.2, 0.0004), ("V1", 3.0, 0.01)):
        assert abs(theta[name].mean() - centre) < 4 * math.sqrt(var / 4000)
        assert abs(theta[name].var(ddof=1) - var) < 4 * var * math.sqrt(2 / 3999)


def test_chunk_size_does_not_change_the_results(two_cmt):
    pop = sample_population(two_cmt, 23, seed=8, omega={"CL": 0.09, "V1": 0.04}, replicates=2)
    reg = parse_regimen("100 mg q24h x3 over 1h")
    options = {"cycles": [1, "ss"], "threshold": {"CP": 10.0}}
    a = simulate_metrics(two_cmt, reg, pop, chunk_size=7, metric_options=options, progress=False)
    b = simulate_metrics(two_cmt, reg, pop, chunk_size=1000, metric_options=options, progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["ID", "REP", "analyte", "cycle", "metric", "value", "unit"]
    # and the chunked table equals one exact call for all subjects
    whole = exposure_metrics(two_cmt, reg, parameters=pop.drop(columns="REP"), **options)
    whole = whole.sort_values("ID", kind="stable")
    np.testing.assert_array_equal(a["value"].to_numpy(), whole["value"].to_numpy())

    # through simulations and a custom metrics function (the grid route), too
    def cmax(result):
        return pd.DataFrame({"ID": result.ids, "cmax": result.output("CP").max(axis=0)})

    c = simulate_metrics(two_cmt, reg, pop, cmax, chunk_size=5, progress=False)
    d = simulate_metrics(two_cmt, reg, pop, cmax, chunk_size=50, progress=False)
    pd.testing.assert_frame_equal(c, d)


def test_ten_thousand_subjects_keep_only_metrics(two_cmt):
    n = 10000
    pop = sample_population(two_cmt, n, seed=3, omega={"CL": 0.09})
    reg = parse_regimen("100 mg q24h x3 over 1h")
    seen: list[weakref.ref] = []
    sizes: list[int] = []

    def metrics(result):
        seen.append(weakref.ref(result))
        sizes.append(len(result.ids))
        return exposure_from_result(result, reg, cycles=[1])

    out = simulate_metrics(two_cmt, reg, pop, metrics, chunk_size=500, progress=False)
    gc.collect()
    assert max(sizes) == 500 and sum(sizes) == n
    assert all(ref() is None for ref in seen)  # no simulation result (profile) outlives its chunk
    # the table holds metrics only: per subject 5 cycle-1 metrics + 3 whole-treatment + dose intensity
    assert len(out) == n * 9 and out.ID.nunique() == n
    assert set(out.metric) == {"Cmax", "Ctrough", "AUC", "AUC_week", "Cavg", "dose_intensity"}
    assert out.memory_usage(deep=True).sum() < 40 * len(out)  # bytes: categorical labels, no profiles


def test_progress_bar_on_stderr(two_cmt, capsys):
    pop = sample_population(two_cmt, 6, seed=1, omega={"CL": 0.09})
    simulate_metrics(
        two_cmt,
        parse_regimen("100 mg q24h x2"),
        pop,
        chunk_size=2,
        progress=True,
        metric_options={"cycles": [1]},
    )
    err = capsys.readouterr().err
    assert "2/6 subjects" in err and "100% 6/6 subjects" in err and err.endswith("\n")


def test_population_runs_through_simulate(adc):
    pop = sample_population(adc, 5, seed=2, omega={"CL": 0.09}, covariates={"WT": 60.0, "ALB": 35.0})
    result = simulate(adc, parse_regimen("1000 mg once over 1h"), [0.0, 1.0, 24.0], parameters=pop)
    assert result.output("TAb").shape == (3, 5) and list(result.ids) == [1, 2, 3, 4, 5]


def test_errors_state_rule_and_fix(adc, two_cmt):
    with pytest.raises(SimulationError, match=r"seed=None: a virtual population needs a fixed seed"):
        sample_population(adc, 5, seed=None)
    with pytest.raises(SimulationError, match=r"omega names \['CLX'\], which are not parameters here"):
        sample_population(adc, 5, seed=1, omega={"CLX": 0.1})
    with pytest.raises(SimulationError, match=r"omega is not positive semi-definite.*\|correlation\| > 1"):
        sample_population(adc, 5, seed=1, omega={"CL": 0.01, "V1": 0.01, ("CL", "V1"): 0.05})
    with pytest.raises(
        SimulationError, match=r"draws of FGLUC fall outside its bounds \[0, 1\].*does not clamp"
    ):
        sample_population(adc, 200, seed=1, omega={"FGLUC": 1.0})
    with pytest.raises(
        SimulationError, match=r"covariates\['HT'\]: not a covariate of adc_esg401 \(WT, ALB\)"
    ):
        sample_population(adc, 5, seed=1, covariates={"HT": 170.0})
    with pytest.raises(
        SimulationError, match=r"a lognormal distribution takes median, sd_log.*missing \['sd_log'\]"
    ):
        sample_population(adc, 5, seed=1, covariates={"WT": {"dist": "lognormal", "median": 60}})
    with pytest.raises(
        SimulationError, match=r"uncertainty draw \d+: CL = -?[\d.e-]+ falls outside its bounds"
    ):
        sample_population(two_cmt, 1, seed=1, uncertainty={"CL": 1.0}, replicates=50)
    with pytest.raises(SimulationError, match=r"n=0 must be a whole number >= 1"):
        sample_population(adc, 0, seed=1)
    pop = sample_population(two_cmt, 4, seed=1)
    reg = parse_regimen("100 mg q24h x2")
    with pytest.raises(SimulationError, match=r"metrics_fn must return a DataFrame with an ID column"):
        simulate_metrics(two_cmt, reg, pop, lambda r: pd.DataFrame({"x": [1.0]}), progress=False)
    with pytest.raises(SimulationError, match=r"chunk_size=0 must be a whole number >= 1"):
        simulate_metrics(two_cmt, reg, pop, chunk_size=0)
    with pytest.raises(SimulationError, match=r"population has repeated ID 1"):
        simulate_metrics(two_cmt, reg, pd.DataFrame({"ID": [1, 1], "CL": [0.2, 0.3]}))


@pytest.fixture(scope="module")
def theoph_fit():
    from pathlib import Path

    from pkmodel.fitting import run_fit

    return run_fit(Path(__file__).resolve().parents[1] / "fits" / "theoph_foce.toml")


@pytest.mark.slow
def test_population_from_a_fit(theoph_fit):
    # the theophylline spec: KA with its own η, CL = θ_CL·WT·exp(η_CL), V = θ_V·WT·exp(η_CL) (shared η)
    run = theoph_fit
    theta, omega = run.result.theta, run.result.omega
    n = 20000
    pop = sample_population(run, n, seed=21)
    assert list(pop.columns) == ["ID", "WT", "KA", "CL", "V"]
    fitted_weights = {s.covariates["WT"] for s in run.fit_problem.subjects}
    assert set(pop.WT) <= fitted_weights  # covariates resampled from the fitted subjects
    eta_ka = np.log(pop.KA / theta["KA"])
    eta_cl = np.log(pop.CL / (theta["CL"] * pop.WT))
    eta_v = np.log(pop.V / (theta["V"] * pop.WT))
    np.testing.assert_allclose(eta_v, eta_cl, rtol=0, atol=1e-12)  # V carries CL's η
    for eta, var in ((eta_ka, omega[0, 0]), (eta_cl, omega[1, 1])):
        assert abs(eta.mean()) < 4 * math.sqrt(var / n)
        assert abs(eta.var(ddof=1) - var) < 4 * var * math.sqrt(2 / (n - 1))
    # parameter uncertainty from the fit's covariance matrix, one θ per replicate
    reps = 3000
    drawn = sample_population(run, 1, seed=22, omega={}, uncertainty=True, replicates=reps)
    cov = run.result.covariance_matrix()
    ka = drawn.KA.to_numpy()
    assert abs(ka.mean() - theta["KA"]) < 4 * math.sqrt(cov.loc["KA", "KA"] / reps)
    assert abs(ka.var(ddof=1) - cov.loc["KA", "KA"]) < 4 * cov.loc["KA", "KA"] * math.sqrt(2 / (reps - 1))


def test_grid_route_simulates_only_the_analytes_without_states(monkeypatch):
    # a nonlinear model goes through simulate on a grid; the default metrics need only the analytes, so
    # the chunks are simulated with outputs=[...] and no state array.  Oracle: the exposure table of
    # one full simulation (all states and outputs) of the same population.
    import pkmodel.simulation as simulation

    model = load_model("one_compartment_iv_mm")
    pop = sample_population(model, 9, seed=4, omega={"VMAX": 0.09})
    reg = parse_regimen("100 mg q24h x3 over 1h")
    options = {"cycles": [1, "last"], "analytes": "CP"}
    calls: list[dict] = []
    original = simulation.simulate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(simulation, "simulate", spy)
    simulate_metrics(model, reg, pop, chunk_size=4, metric_options=options, progress=False)
    assert [(c["outputs"], c["keep_states"]) for c in calls] == [(["CP"], False)] * 3
    # one chunk, so that the stacked ODE solve is the same as the oracle's
    lean = simulate_metrics(model, reg, pop, chunk_size=9, metric_options=options, progress=False)
    full = original(model, reg, exposure_times(reg), parameters=pop)
    expected = exposure_from_result(full, reg, **options).sort_values(
        "ID", kind="stable"
    )  # grouped by subject
    pd.testing.assert_frame_equal(lean, expected.reset_index(drop=True), check_exact=False, rtol=1e-12)
