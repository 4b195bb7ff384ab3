"""Visual predictive checks (pkmodel.vpc).

Oracles: np.percentile (uncensored percentiles); bin edges and censored percentiles by hand; with zero
IIV and zero residual error every simulated percentile equals the closed-form prediction
100/V·exp(−CL/V·t) of the one-compartment IV bolus; with a constant prediction B and additive normal
error of SD a, the simulated percentiles are those of N(B, a²) (B + a·Φ⁻¹(p)) and the BLQ fraction at
LLOQ = B is 1/2; the fit's own PRED column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from pkmodel.errors import PkmodelError
from pkmodel.estimation import (
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
)
from pkmodel.vpc import _example_predict, bin_edges, censored_percentiles, run_vpc, vpc

ROOT = Path(__file__).resolve().parents[1]
SMALL_SPEC = ROOT / "tests" / "data" / "bootstrap_small" / "spec.toml"


def _individual_spec(folder: Path) -> Path:
    """The small problem as an individual (per-subject) fit."""
    spec = folder / "individual.toml"
    spec.write_text(
        f'''[fit]
model = "one_compartment_iv"
data = "{SMALL_SPEC.parent / "data.csv"}"
method = "individual"
seed = 11

[data]
dose_unit = "mg"

[parameters.CL]
theta = 1.0
bounds = [0.01, 100]

[parameters.V]
theta = 10.0
bounds = [0.1, 1000]

[residual.CP]
model = "proportional"
proportional = 0.1
'''
    )
    return spec


@pytest.fixture(scope="module")
def small_run():
    from pkmodel.fitting import run_fit

    return run_fit(SMALL_SPEC)


def _constant_problem(n_subjects: int, times: list[float], lloq: float | None = None, eta: bool = False):
    """B·t predictions (``_example_predict``): at t = 1 the prediction is the constant B."""
    subjects = [
        Subject(
            i,
            dv=np.full(len(times), 1.0 if lloq is None else lloq + 1.0),
            time=times,
            lloq=None if lloq is None else np.full(len(times), lloq),
        )
        for i in range(n_subjects)
    ]
    parameter = IndividualParameter("B", theta="B", eta="eta_B" if eta else None)
    return PopulationProblem(
        subjects,
        [Theta("B", 1.0)],
        [parameter],
        [OmegaBlock(["eta_B"], [0.1])] if eta else [],
        [ResidualError("additive", additive=1.0)],
        predict_batch=_example_predict,
    )


# -------------------------------------------------------------------------------------------- pieces


def test_bin_edges_by_hand():
    times = [0.5, 1, 1, 2, 4, 8, 12, 24]
    # quantiles of 8 times at 0, 1/2, 1 (numpy default, rank h = q·7): h=3.5 -> (2 + 4)/2 = 3
    assert bin_edges(times, 2).tolist() == [0.5, 3.0, 24.0]
    # at most k distinct times: one bin per time, edges half-way between them
    assert bin_edges([0.5, 1, 1, 2], 3).tolist() == [0.5, 0.75, 1.5, 2.0]
    # ties at an edge: quantiles of (1, 2, 2, 2, 2, 2, 9, 10) at 0, 1/3, 2/3, 1
    # (h = 0, 7/3, 14/3, 7) are 1, 2, 2 + 2/3·0 = 2, 10 -> edges 1, 2, 10 after merging the repeated 2
    assert bin_edges([1, 2, 2, 2, 2, 2, 9, 10], 3).tolist() == [1.0, 2.0, 10.0]
    # quantile edges that leave a bin empty: times (1, 2, 2, 2, 3, 4, 5, 6), 4 bins: h = 0, 1.75, 3.5,
    # 5.25, 7 -> edges 1, 2, 2.5, 4.25, 6; [1, 2) holds 1 only, [2, 2.5) the 2s; no bin is empty
    edges = bin_edges([1, 2, 2, 2, 3, 4, 5, 6], 4)
    assert edges.tolist() == [1.0, 2.0, 2.5, 4.25, 6.0]
    # (0, 0, 0, 0, 0, 1, 2, 3, 4, 5), 3 bins: h = 0, 3, 6, 9 -> edges 0, 0, 2, 5 -> repeated 0 merged
    assert bin_edges([0, 0, 0, 0, 0, 1, 2, 3, 4, 5], 3).tolist() == [0.0, 2.0, 5.0]
    # (0, 0, 0, 1, 1, 1, 1, 5, 6, 7), 4 bins: h = 0, 2.25, 4.5, 6.75, 9 -> edges 0, 0.25, 1, 4, 7;
    # [0.25, 1) holds no time, so its upper edge 1 is dropped: [0, 0.25) 0s, [0.25, 4) 1s, [4, 7] the rest
    assert bin_edges([0, 0, 0, 1, 1, 1, 1, 5, 6, 7], 4).tolist() == [0.0, 0.25, 4.0, 7.0]
    assert bin_edges([1, 1, 1, 1], 3).tolist() == [1.0, 1.0]  # one bin holding every time
    assert bin_edges(times, [0, 2, 30]).tolist() == [0.0, 2.0, 30.0]


def test_bin_edges_errors_name_the_rule():
    with pytest.raises(PkmodelError, match=r"observation time 24 h is outside the bin edges \[0, 12\] h"):
        bin_edges([1.0, 24.0], [0, 12])
    with pytest.raises(PkmodelError, match=r"must be at least two finite times that increase strictly"):
        bin_edges([1.0], [0, 0, 3])
    with pytest.raises(PkmodelError, match=r"bins=0: give a number of bins >= 1"):
        bin_edges([1.0], 0)


def test_censored_percentiles_equal_numpy_without_censoring():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 37))
    pct = [0, 5, 33.3, 50, 95, 100]
    assert np.allclose(censored_percentiles(x, np.zeros_like(x, bool), pct), np.percentile(x, pct, axis=-1).T)


def test_censored_percentiles_by_hand():
    # values 1..9 (9 values) with the two smallest censored: sorted (c, c, 3, 4, ..., 9), rank h = p·8
    x = np.arange(1.0, 10.0)
    cens = x <= 2
    got = censored_percentiles(x, cens, [10, 25, 50, 100])
    # p=10: h=0.8, lower order statistic 0 is censored -> NaN; p=25: h=2 -> 3rd value = 3;
    # p=50: h=4 -> 5; p=100: 9
    assert np.isnan(got[0])
    assert got[1:].tolist() == [3.0, 5.0, 9.0]


# ------------------------------------------------------------------------------------------ oracles


def test_zero_variability_reproduces_the_closed_form_prediction(small_run):
    theta = small_run.result.theta
    problem = small_run.fit_problem.problem
    result = vpc(
        problem, theta, np.zeros((1, 1)), {"CP_prop": 0.0}, n_replicates=7, seed=2, bins=[0, 1, 3, 8, 12]
    )
    obs = result.observations
    closed = 100.0 / theta["V"] * np.exp(-theta["CL"] / theta["V"] * obs["TIME"].to_numpy())
    assert np.allclose(obs["PRED"], closed, rtol=1e-12)
    # the fit's own PRED column is the same prediction
    assert np.allclose(obs["PRED"], small_run.predictions()["PRED"], rtol=1e-12)
    for _, row in result.table.iterrows():
        in_bin = closed[obs["bin"].to_numpy() == row["bin"]]
        expected = np.percentile(in_bin, row["percentile"])
        assert row["sim_lower"] == pytest.approx(expected, rel=1e-12)
        assert row["sim_median"] == pytest.approx(expected, rel=1e-12)
        assert row["sim_upper"] == pytest.approx(expected, rel=1e-12)
    assert result.table["bin"].max() == 4 and set(result.table["n_obs"]) == {8}


def test_prediction_correction_collapses_a_deterministic_model_to_the_bin_median(small_run):
    theta = small_run.result.theta
    result = vpc(
        small_run.fit_problem.problem,
        theta,
        np.zeros((1, 1)),
        {"CP_prop": 0.0},
        n_replicates=3,
        seed=2,
        bins=[0, 1, 3, 8, 12],
        pred_corrected=True,
    )
    obs = result.observations
    for b, group in obs.groupby("bin"):
        median_pred = np.median(group["PRED"])
        rows = result.table[result.table["bin"] == b]
        # y·median(PRED)/PRED with y = PRED is median(PRED) for every observation
        assert np.allclose(rows[["sim_lower", "sim_median", "sim_upper"]].to_numpy(), median_pred, rtol=1e-12)
        # observed: DV·median(PRED)/PRED, by hand from the data
        dv = small_run.predictions().loc[group.index, "DV"].to_numpy()
        assert np.allclose(group["DV"], dv * median_pred / group["PRED"], rtol=1e-12)


def test_percentiles_of_a_known_normal_distribution():
    # 100 subjects x 2 observations at t = 1: prediction B = 2, additive SD a = 0.5 -> N(2, 0.25)
    problem = _constant_problem(100, [1.0, 1.0])
    result = vpc(problem, {"B": 2.0}, np.zeros((0, 0)), {"y0_add": 0.5}, n_replicates=200, seed=9, bins=1)
    for _, row in result.table.iterrows():
        exact = 2.0 + 0.5 * norm.ppf(row["percentile"] / 100)
        # Monte Carlo: a sample percentile of 200 values has SD <= ~0.07 here; the median of 200 replicates ~0.005
        assert row["sim_median"] == pytest.approx(exact, abs=0.02)
        assert row["sim_lower"] < exact < row["sim_upper"]
    # the 90 % interval of the sample median: ±1.645·sqrt(π/2)·a/sqrt(200) = ±0.0729
    median_row = result.table[result.table["percentile"] == 50].iloc[0]
    assert median_row["sim_upper"] - median_row["sim_lower"] == pytest.approx(2 * 0.0729, rel=0.15)


def test_blq_fraction_and_censored_percentiles():
    # LLOQ = B = 2: half of the simulated values fall below it
    problem = _constant_problem(100, [1.0, 1.0], lloq=2.0)
    result = vpc(problem, {"B": 2.0}, np.zeros((0, 0)), {"y0_add": 0.5}, n_replicates=100, seed=4, bins=1)
    blq = result.blq.iloc[0]
    assert blq["sim_median"] == pytest.approx(0.5, abs=0.02)
    assert blq["observed_fraction"] == 0.0  # every observed DV is 3 > LLOQ
    table = result.table.set_index("percentile")
    assert np.isnan(table.loc[5.0, "sim_median"])  # the 5th percentile is below the LLOQ
    assert table.loc[95.0, "sim_median"] == pytest.approx(2.0 + 0.5 * norm.ppf(0.95), abs=0.03)


def test_results_depend_on_the_seed_not_on_the_task_size():
    problem = _constant_problem(10, [1.0, 2.0, 3.0], eta=True)
    settings = {"n_replicates": 30, "seed": 5, "bins": 3}
    a = vpc(problem, {"B": 2.0}, np.eye(1) * 0.1, {"y0_add": 0.3}, replicates_per_task=7, **settings)
    b = vpc(problem, {"B": 2.0}, np.eye(1) * 0.1, {"y0_add": 0.3}, replicates_per_task=30, **settings)
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=True)
    c = vpc(problem, {"B": 2.0}, np.eye(1) * 0.1, {"y0_add": 0.3}, n_replicates=30, seed=6, bins=3)
    assert not np.array_equal(a.table["sim_median"], c.table["sim_median"])


def test_bad_estimates_are_named():
    problem = _constant_problem(2, [1.0])
    with pytest.raises(PkmodelError, match=r"sigma has no value for 'y0_add'"):
        vpc(problem, {"B": 1.0}, np.zeros((0, 0)), {}, seed=1)
    with pytest.raises(PkmodelError, match=r"theta has no value for \['B'\]"):
        vpc(problem, {}, np.zeros((0, 0)), {"y0_add": 1.0}, seed=1)
    with pytest.raises(PkmodelError, match=r"omega has shape \(1, 1\); the problem has 0 etas"):
        vpc(problem, {"B": 1.0}, np.eye(1), {"y0_add": 1.0}, seed=1)
    with pytest.raises(PkmodelError, match=r"bin 2 \[5, 10\] h holds no observation"):
        vpc(problem, {"B": 1.0}, np.zeros((0, 0)), {"y0_add": 1.0}, seed=1, bins=[0, 5, 10])


def test_prediction_correction_refuses_a_zero_prediction(small_run):
    problem = _constant_problem(3, [0.0, 1.0])  # B·t = 0 at t = 0
    with pytest.raises(PkmodelError, match=r"a population prediction in bin 1 is <= 0 \(e.g. at 0 h"):
        vpc(problem, {"B": 1.0}, np.zeros((0, 0)), {"y0_add": 1.0}, seed=1, bins=1, pred_corrected=True)


def test_cli_vpc_writes_figure_and_tables(tmp_path, capsys):
    from pkmodel.cli import main

    out = tmp_path / "vpc"
    assert main(["vpc", str(SMALL_SPEC), "--n", "20", "--bins", "3", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"vpc.csv", "vpc_blq.csv", "vpc.png", "vpc.json"}
    table = pd.read_csv(out / "vpc.csv")
    assert len(table) == 3 * 3 and table["n_obs"].sum() == 3 * 32  # 3 bins x 3 percentiles; 32 observations
    assert "VPC of spec: 20 replicates (seed 11)" in capsys.readouterr().out
    # existing folder without --force: one line, exit 2
    assert main(["vpc", str(SMALL_SPEC), "--n", "2", "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_run_vpc_needs_a_population_fit(tmp_path):
    spec = _individual_spec(tmp_path)
    with pytest.raises(PkmodelError, match=r"a VPC needs a population fit \(method foce-i, foce or fo\)"):
        run_vpc(spec, n_replicates=2)


@pytest.mark.parametrize(
    ("form", "factor"),
    [
        ("power", 0.5**0.75),  # (35/70)^0.75
        ("linear", 1.0 + 0.75 * (35.0 - 70.0)),  # 1 + θ(cov − ref) = −25.25 (no bounds here)
        ("exponential", np.exp(0.75 * (35.0 - 70.0))),
    ],
)
def test_covariate_effects_enter_the_typical_prediction(form, factor):
    from pkmodel.estimation import CovariateEffect

    subjects = [Subject(1, dv=[1.0], time=[1.0], covariates={"WT": 35.0})]
    parameter = IndividualParameter("B", theta="B", covariates=[CovariateEffect("WT", "B_WT", 70.0, form)])
    problem = PopulationProblem(
        subjects,
        [Theta("B", 2.0), Theta("B_WT", 0.75)],
        [parameter],
        [],
        [ResidualError("additive", additive=1.0)],
        predict_batch=_example_predict,
    )
    result = vpc(problem, {"B": 2.0, "B_WT": 0.75}, np.zeros((0, 0)), {"y0_add": 0.0}, n_replicates=2, seed=1)
    # prediction B·t at t = 1 with B = 2·factor
    assert result.observations["PRED"].iloc[0] == pytest.approx(2.0 * factor, rel=1e-12)
    assert result.table["sim_median"].iloc[0] == pytest.approx(2.0 * factor, rel=1e-12)
