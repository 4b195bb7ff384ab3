"""Case-resampling bootstrap (pkmodel.bootstrap).

Oracles: the exact bootstrap distribution of a mean of 0/1 values (the number of ones drawn is
Binomial(n, k/n)); the closed-form bootstrap standard error of a mean, sqrt(Σ(x − x̄)²/n²); strata
that are each constant make the stratified mean a constant (n_B/n) by hand; failed refits recounted
from the replicate datasets themselves (resample_cases); the original-data estimate against run_fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from pkmodel.bootstrap import bootstrap, mean_of_column, resample_cases, run_bootstrap
from pkmodel.errors import PkmodelError

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


def _spread_or_fail(column: str, data: pd.DataFrame) -> dict[str, float]:
    """Sample SD of a per-subject value; a resample of one distinct value is a failed 'refit'."""
    values = data.groupby("ID", sort=False)[column].first().to_numpy()
    if np.ptp(values) == 0:
        raise PkmodelError("all drawn subjects have the same value: no spread to estimate")
    return {"sd": float(np.std(values, ddof=1))}


def test_bootstrap_distribution_of_a_mean_of_zeros_and_ones_is_binomial():
    # values (0, 0, 1): the number of ones among 3 draws is Binomial(3, 1/3), the mean is that number / 3
    data = pd.DataFrame({"ID": [1, 2, 3], "X": [0.0, 0.0, 1.0]})
    result = bootstrap(data, mean_of_column, n=1500, seed=12, context="X", replicates_per_task=500)
    means = result.replicates["X"].to_numpy()
    counts = np.array([np.sum(np.isclose(means, k / 3)) for k in range(4)])
    assert counts.sum() == 1500
    p = binom.pmf(np.arange(4), 3, 1 / 3)  # 8/27, 12/27, 6/27, 1/27
    expected, sd = 1500 * p, np.sqrt(1500 * p * (1 - p))
    assert np.all(np.abs(counts - expected) < 4 * sd), counts


def test_bootstrap_standard_error_of_a_mean_matches_the_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 2.0, 25)
    data = pd.DataFrame({"ID": np.arange(25), "X": x})
    result = bootstrap(data, mean_of_column, n=2000, seed=5, context="X", replicates_per_task=1000)
    # Var*(mean of n draws with replacement) = σ̂²/n with σ̂² = Σ(x − x̄)²/n (plug-in variance)
    exact = np.sqrt(np.mean((x - x.mean()) ** 2) / 25)
    row = result.ci.iloc[0]
    # Monte Carlo: the SD of a sample SD from 2000 near-normal draws is about SE/sqrt(2·2000) = 1.6 %
    assert row["se"] == pytest.approx(exact, rel=0.065)
    # percentile interval: 2.5 % and 97.5 % quantiles of the replicates (numpy default)
    assert row["lower"] == np.quantile(result.replicates["X"], 0.025)
    assert row["upper"] == np.quantile(result.replicates["X"], 0.975)


def test_stratified_resampling_keeps_stratum_sizes_and_constant_strata_give_a_constant():
    # stratum A (3 subjects) all 0, stratum B (5 subjects) all 1: every stratified replicate has
    # 3 zeros and 5 ones, mean 5/8 exactly; unstratified replicates vary
    data = pd.DataFrame({"ID": range(1, 9), "ARM": list("AAABBBBB"), "X": [0.0] * 3 + [1.0] * 5})
    strat = bootstrap(data, mean_of_column, n=50, seed=2, context="X", stratify="ARM")
    assert set(strat.replicates["X"]) == {5 / 8}
    assert strat.ci.iloc[0][["lower", "median", "upper"]].tolist() == [5 / 8] * 3
    plain = bootstrap(data, mean_of_column, n=50, seed=2, context="X")
    assert plain.replicates["X"].nunique() > 1
    frame = resample_cases(data, 2, 0, stratify="ARM")
    assert frame["ARM"].tolist() == list("AAABBBBB") and frame["ID"].tolist() == list(range(1, 9))


def test_resampled_subjects_keep_all_their_records_under_new_ids():
    data = pd.DataFrame({"ID": [7, 7, 7, 9, 9], "TIME": [0, 1, 2, 0, 1], "DV": [1.0, 2.0, 3.0, 4.0, 5.0]})
    frame = resample_cases(data, 3, 1)
    for _, records in frame.groupby("ID"):
        # each new subject is a whole copy of one original subject's records
        assert records["DV"].tolist() in ([1.0, 2.0, 3.0], [4.0, 5.0])
    assert sorted(frame["ID"].unique()) == [1, 2]


def test_failed_refits_are_counted_and_left_out():
    data = pd.DataFrame({"ID": [1, 2, 3], "X": [1.0, 2.0, 4.0]})
    result = bootstrap(data, _spread_or_fail, n=270, seed=8, context="X", replicates_per_task=30)
    # recount from the replicate datasets: a replicate fails when it drew one subject three times
    failed = [r for r in range(270) if resample_cases(data, 8, r).groupby("ID")["X"].first().nunique() == 1]
    assert result.n_failed == len(failed)
    assert sorted(result.replicates.loc[result.replicates.status == "failed", "replicate"]) == failed
    assert result.ci.iloc[0]["n_ok"] == 270 - len(failed)
    # P(one subject three times) = 3·(1/3)³ = 1/9: 30 expected, SD sqrt(270·(1/9)·(8/9)) = 5.2
    assert abs(len(failed) - 30) < 4 * 5.2
    assert "all drawn subjects have the same value" in result.replicates.loc[failed[0], "reason"]
    assert f"{len(failed)} failed refits" in result.summary()


def test_bootstrap_errors_name_the_column_and_the_fix():
    data = pd.DataFrame({"ID": [1, 1, 2], "ARM": ["A", "B", "A"], "X": [1.0, 1.0, 2.0]})
    with pytest.raises(PkmodelError, match=r"subject 1 has 2 values of stratification column 'ARM'"):
        bootstrap(data, mean_of_column, n=2, seed=1, context="X", stratify="ARM")
    with pytest.raises(PkmodelError, match=r"column\(s\) \['DOSE'\] are not in the data"):
        bootstrap(data, mean_of_column, n=2, seed=1, context="X", stratify="DOSE")
    with pytest.raises(PkmodelError, match=r"n=0 must be a whole number >= 1"):
        bootstrap(data, mean_of_column, n=0, seed=1, context="X")
    single = pd.DataFrame({"ID": [1], "X": [1.0]})
    with pytest.raises(PkmodelError, match=r"all 3 bootstrap replicates failed \(first reason: all drawn"):
        bootstrap(single, _spread_or_fail, n=3, seed=1, context="X")


def test_run_bootstrap_refits_the_specification(tmp_path, capsys):
    from pkmodel.cli import main
    from pkmodel.fitting import run_fit

    out = tmp_path / "boot"
    assert main(["bootstrap", str(SMALL_SPEC), "--n", "2", "--stratify", "GROUP", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bootstrap of spec: 2 replicates (seed 11, stratified by GROUP), 0 failed refits" in text
    ci = pd.read_csv(out / "bootstrap_ci.csv").set_index("parameter")
    # the estimate column is the fit of the original data, as run_fit finds it
    run = run_fit(SMALL_SPEC)
    assert ci.loc["CL", "estimate"] == pytest.approx(run.result.theta["CL"], rel=1e-8)
    assert ci.loc["OMEGA(eta_CL)", "estimate"] == pytest.approx(run.result.omega[0, 0], rel=1e-6)
    assert ci.loc["CP_prop", "estimate"] == pytest.approx(run.result.sigma["CP_prop"], rel=1e-6)
    assert (ci["n_ok"] == 2).all() and (ci["lower"] <= ci["upper"]).all()


def test_run_bootstrap_needs_a_population_fit(tmp_path):
    spec = _individual_spec(tmp_path)
    with pytest.raises(
        PkmodelError, match=r"a case bootstrap refits a population model; method 'individual'"
    ):
        run_bootstrap(spec, n=2)
