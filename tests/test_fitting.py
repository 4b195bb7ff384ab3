"""Fits from specification files: predictions, the theophylline fit against R nlme, results folders, status.

Oracles
-------
* Predictions: the Bateman function of a one-compartment oral model (Gabrielsson & Weiner 2016, ch. 2),
  written out here from KA, CL and V; for the ADC model, the textbook bi-exponential of a two-compartment
  bolus for total antibody and the Binomial(8, e^(−KDEC·t)) law of independent linker cleavage for the
  conjugate fraction (Bender 2014), both written out from the parameters.
* Theophylline: R nlme 3.1.162's fm2 estimates (tests/data/theoph/README.md), and the objective of the
  same problem computed with R's SSfol formula in place of the model file and the simulator.
* Individual fits: −2 log L of the Bateman function minimised by scipy (Nelder–Mead, then BFGS), an
  implementation independent of lmfit and of the simulator.
* Results files: hashlib on the files, the constant n·log 2π between the two OFV conventions.
* Recovery (marked slow): the known THETA/Ω/Σ the data were simulated with.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

import pkmodel.fitting as fitting
import pkmodel.fitting._report as report_module
from pkmodel.errors import PkmodelError
from pkmodel.estimation import (
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
    population_objective,
)
from pkmodel.fitting import build_problem, format_parameter_table, load_fit_spec, run_fit

ROOT = Path(__file__).resolve().parents[1]
THEOPH_SPEC = ROOT / "fits" / "theoph_foce.toml"
THEOPH_DATA = ROOT / "tests" / "data" / "theoph" / "Theoph_nonmem.csv"

# R nlme 3.1.162, fm2 (tests/data/theoph/README.md): log-scale fixed effects, SDs of the random effects
NLME_LOG = {"lKe": -2.454704, "lKa": 0.465736, "lCl": -3.227223}
NLME_SD = {"KA": 0.643575, "CL": 0.166928}
NLME_RESIDUAL_SD = 0.709254


def bateman(amount, time, ka, cl, v):
    """Concentration after an oral bolus ``amount`` into the gut: one compartment, first-order absorption.

    ``C(t) = A·KA/(V·(KA − KE))·(e^(−KE·t) − e^(−KA·t))`` with ``KE = CL/V`` (mg, h, L → mg/L).
    """
    ke = cl / v
    return amount * ka / (v * (ka - ke)) * (np.exp(-ke * time) - np.exp(-ka * time))


# ------------------------------------------------------------------------------------------ predictions


@pytest.fixture(scope="module")
def theoph_problem():
    return build_problem(load_fit_spec(THEOPH_SPEC))


def test_predictions_are_the_bateman_function(theoph_problem):
    fp = theoph_problem
    table = pd.read_csv(THEOPH_DATA)
    for subject in fp.subjects[:4]:
        rows = table[table["ID"] == subject.id]
        amount = float(rows.loc[rows["EVID"] == 1, "AMT"].iloc[0])
        weight = float(rows["WT"].iloc[0])
        ka = np.array([0.8, 1.6, 3.0])
        cl = np.array([0.03, 0.04, 0.05]) * weight  # the spec's CL = θ·WT; predict takes individual values
        v = np.array([0.4, 0.5, 0.6]) * weight
        before = fp.n_simulate_calls[0]
        got = fp.predict_batch(subject, {"KA": ka, "CL": cl, "V": v})
        assert fp.n_simulate_calls[0] == before + 1  # the k = 3 sets: one simulate call
        time_obs = rows.loc[rows["EVID"] == 0, "TIME"].to_numpy()
        expected = bateman(amount, time_obs[None, :], ka[:, None], cl[:, None], v[:, None])
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_out_of_bounds_parameter_sets_give_nan_and_others_are_computed(theoph_problem):
    fp = theoph_problem
    subject = fp.subjects[0]
    # one_compartment_oral bounds KA in [0, 1e3]: the second set is outside, the third not finite
    params = {"KA": np.array([1.5, 2000.0, np.nan]), "CL": np.full(3, 2.8), "V": np.full(3, 32.0)}
    got = fp.predict_batch(subject, params)
    amount = 319.992  # ID 1, line 2 of the file
    np.testing.assert_allclose(got[0], bateman(amount, subject.time, 1.5, 2.8, 32.0), rtol=1e-10, atol=1e-12)
    assert np.all(np.isnan(got[1:]))


def test_subject_cache_holds_distinct_times_and_file_lines(theoph_problem):
    subject = theoph_problem.subjects[1]  # ID 2: observations on lines 15-25 of the file
    data = subject.data
    assert data.times.tolist() == sorted(set(subject.time.tolist()))
    assert data.rows.tolist() == list(range(15, 26))
    assert subject.dv[0] == 0.0 and subject.dv[-1] == 0.9  # lines 15 and 25 of Theoph_nonmem.csv


ADC_SPEC = """\
[fit]
model = "adc_dar8_sn38"
data = "adc.csv"
method = "individual"

[data]
dvid = {{ 1 = "TAb", 2 = "ADC" }}
covariate_values = {{ ALB = 38.0 }}

[parameters.CL]
theta = {cl}
[parameters.KDEC]
theta = {kdec}

[residual.TAb]
model = "proportional"
proportional = 0.1
[residual.ADC]
model = "proportional"
proportional = 0.1
"""


def test_several_outputs_at_the_same_times(tmp_path):
    # Two analytes sampled at the same times: each observation must get its own output's value.
    # Oracle: bolus into DAR8_C with ALPHA = 0; total antibody is a two-compartment bi-exponential and
    # the conjugated fraction 1 − (1 − e^(−KDEC t))^8 (Binomial law, Bender 2014).
    dose_mg, cl, kdec, v1, q, v2 = 700.0, 0.02, 0.05, 2.8152, 0.0092, 1.104  # V1, Q, V2 of the model file
    rows = [dict(ID=1, TIME=0.0, AMT=dose_mg, EVID=1, MDV=1, CMT="DAR8_C", DV=".", DVID=".", WT=70.0)]
    times = [24.0, 1.0, 72.0, 1.0, 24.0, 72.0]
    dvids = [1, 1, 1, 2, 2, 2]
    order = np.argsort(times, kind="stable")
    for k in order:
        rows.append(
            dict(ID=1, TIME=times[k], AMT=".", EVID=0, MDV=0, CMT=".", DV=1.0, DVID=dvids[k], WT=70.0)
        )
    pd.DataFrame(rows).to_csv(tmp_path / "adc.csv", index=False)
    (tmp_path / "spec.toml").write_text(ADC_SPEC.format(cl=cl, kdec=kdec), encoding="utf-8")
    fp = build_problem(load_fit_spec(tmp_path / "spec.toml"))
    (subject,) = fp.subjects
    assert subject.data.times.tolist() == [1.0, 24.0, 72.0]
    got = fp.predict(subject, {"CL": cl, "KDEC": kdec})

    k10, k12, k21 = cl / v1, q / v1, q / v2
    s, p = k10 + k12 + k21, k10 * k21
    alpha, beta = (s + math.sqrt(s * s - 4 * p)) / 2, (s - math.sqrt(s * s - 4 * p)) / 2
    t = np.array([times[k] for k in order])
    dose_nmol = dose_mg * 1e-3 / 160000.0 * 1e9  # molar mass of DAR8_C doses, 160 kDa
    central = (
        dose_nmol * ((alpha - k21) * np.exp(-alpha * t) + (k21 - beta) * np.exp(-beta * t)) / (alpha - beta)
    )
    tab = central / v1 * 148000.0 * 1e-6  # nmol/L × g/mol → µg/mL (antibody mass, 148 kDa)
    conjugated = 1.0 - (1.0 - np.exp(-kdec * t)) ** 8
    expected = np.where(np.array([dvids[k] for k in order]) == 1, tab, tab * conjugated)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_two_output_individual_fit_writes_one_figure_per_output(tmp_path):
    # TAb and ADC of one subject: the bi-exponential and Binomial oracle of the test above at CL 0.02 L/h,
    # KDEC 0.05 1/h (TAb 227.6, 180.7, 117.2, 58.8 µg/mL at 1, 24, 72, 168 h; ADC 227.6, 170.5, 23.3)
    # times 1 ± 3 %; the ADC at 72 h is reported below its LLOQ of 30 µg/mL.  The fit runs, BLQ is
    # kept as censored, and the results folder has one individual-fits figure per output.
    rows = [dict(ID=1, TIME=0.0, AMT=700.0, EVID=1, MDV=1, CMT="DAR8_C", DV=".", DVID=".", LLOQ=".", WT=70.0)]
    observed = [
        (1.0, 1, 227.6 * 1.03),
        (1.0, 2, 227.6 * 0.97),
        (24.0, 1, 180.7 * 0.98),
        (24.0, 2, 170.5 * 1.02),
    ]
    observed += [(72.0, 1, 117.2 * 1.01), (72.0, 2, None), (168.0, 1, 58.8 * 0.99)]
    for t, dvid, dv in observed:
        lloq = 30.0 if dvid == 2 else 1.0
        rows.append(
            dict(ID=1, TIME=t, AMT=".", EVID=0, MDV=0, CMT=".", DV="." if dv is None else dv, DVID=dvid,
                 LLOQ=lloq, BLQ=int(dv is None), WT=70.0)
        )  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "adc.csv", index=False)
    (tmp_path / "spec.toml").write_text(ADC_SPEC.format(cl=0.015, kdec=0.04), encoding="utf-8")
    run = run_fit(tmp_path / "spec.toml", out_dir=tmp_path / "res")
    assert run.status == "success", run.status_message
    estimates = run.result[1].estimates
    assert estimates["CL"] == pytest.approx(0.02, rel=0.15) and estimates["KDEC"] == pytest.approx(
        0.05, rel=0.15
    )
    pred = pd.read_csv(tmp_path / "res" / "predictions.csv")
    assert pred["OUTPUT"].tolist() == ["TAb", "ADC", "TAb", "ADC", "TAb", "ADC", "TAb"]
    assert pred["BLQ"].tolist() == [0, 0, 0, 0, 0, 1, 0] and np.isnan(pred["IWRES"].iloc[5])
    names = {p.name for p in (tmp_path / "res").iterdir()}
    assert {"individual_fits_TAb.png", "individual_fits_ADC.png", "gof_dv_ipred.png"} <= names
    assert "gof_dv_pred.png" not in names  # no population prediction in individual fits


# -------------------------------------------------------------------------- theophylline against nlme


@pytest.fixture(scope="module")
def theoph_run():
    """The shipped spec fitted by FOCE-I through the whole chain (spec → dataset → model → simulate)."""
    return run_fit(THEOPH_SPEC)


@pytest.mark.slow
def test_theoph_fit_converges_with_covariance(theoph_run, record_property):
    run = theoph_run
    assert run.status == "success", run.status_message
    r = run.result
    assert (r.n_subjects, r.n_obs, r.n_blq, r.n_parameters) == (12, 132, 0, 6)
    record_property("elapsed_seconds", round(run.elapsed_seconds, 2))
    record_property("simulate_calls", run.fit_problem.n_simulate_calls[0])


@pytest.mark.slow
def test_theoph_fixed_effects_agree_with_nlme_within_2_percent(theoph_run, record_property):
    theta = theoph_run.result.theta
    ours = {"lKa": theta["KA"], "lCl": theta["CL"], "lKe": theta["CL"] / theta["V"]}  # natural scale
    for name, log_value in NLME_LOG.items():
        reference = math.exp(log_value)
        assert ours[name] == pytest.approx(reference, rel=0.02), name
        record_property(f"{name}_relative_difference", round(ours[name] / reference - 1.0, 5))
        record_property(f"{name}_log_difference", round(math.log(ours[name]) - log_value, 5))


@pytest.mark.slow
def test_theoph_random_effect_sds_agree_with_nlme_within_10_percent(theoph_run):
    omega = theoph_run.result.omega_table()
    for name, reference in NLME_SD.items():
        assert math.sqrt(omega.loc[f"omega(eta_{name})", "estimate"]) == pytest.approx(reference, rel=0.10)
    assert theoph_run.result.sigma["CP_add"] == pytest.approx(NLME_RESIDUAL_SD, rel=0.10)


def _ssfol_problem(subjects):
    """The nlme fm2 problem with R's SSfol formula (dose in mg/kg) instead of the model file."""
    table = pd.read_csv(THEOPH_DATA)
    dose = {i: float(g["DOSE_MGKG"].iloc[0]) for i, g in table.groupby("ID")}

    def predict_batch(subject, p):
        # SSfol: Dose·exp(lKe + lKa − lCl)·(e^(−Ke t) − e^(−Ka t))/(Ka − Ke), Ke/Cl = 1/V (per kg)
        return bateman(
            dose[subject.id], subject.time[None, :], p["KA"][:, None], p["CL"][:, None], p["V"][:, None]
        )

    plain = [Subject(s.id, dv=s.dv, time=s.time) for s in subjects]
    return PopulationProblem(
        plain,
        thetas=[Theta("KA", 1.5, lower=0), Theta("CL", 0.04, lower=0), Theta("V", 0.45, lower=0)],
        parameters=[
            IndividualParameter("KA", theta="KA", eta="eta_KA"),
            IndividualParameter("CL", theta="CL", eta="eta_CL"),
            IndividualParameter("V", theta="V", eta="eta_CL"),
        ],
        omega=[OmegaBlock(["eta_KA", "eta_CL"], [0.4, 0.03])],
        residual=[ResidualError("additive", additive=0.7, name="CP")],
        predict_batch=predict_batch,
    )


def test_theoph_objective_equals_the_ssfol_problem(theoph_problem):
    # The whole chain (dataset in mg, CL and V scaled by WT, simulate) must give the same objective as
    # R's SSfol formula with the dose in mg/kg, at nlme's estimates.
    theta = {"KA": math.exp(NLME_LOG["lKa"]), "CL": math.exp(NLME_LOG["lCl"])}
    theta["V"] = theta["CL"] / math.exp(NLME_LOG["lKe"])
    omega = np.diag([NLME_SD["KA"] ** 2, NLME_SD["CL"] ** 2])
    sigma = {"CP_add": NLME_RESIDUAL_SD}
    ours = population_objective(theoph_problem.problem, "foce-i", theta=theta, omega=omega, sigma=sigma)
    oracle = population_objective(_ssfol_problem(theoph_problem.subjects), "foce-i", theta, omega, sigma)
    # AMT in the file is Dose × Wt rounded to 1e-3 mg: relative differences ~1e-6
    assert ours.ofv == pytest.approx(oracle.ofv, abs=1e-3)
    # and nlme's log-likelihood at its own estimates (−2·logLik = 354.0428), to the rounding of the estimates
    assert ours.minus_2_log_likelihood == pytest.approx(-2.0 * -177.0214, abs=0.01)


# ----------------------------------------------------------------------------------- results folders


@pytest.mark.slow
def test_results_folder(theoph_run, tmp_path):
    out = theoph_run.write(tmp_path / "res", command_line="pkmodel fit fits/theoph_foce.toml")
    names = {p.name for p in out.iterdir()}
    assert {
        "results.json", "theta.csv", "omega.csv", "sigma.csv", "individual_parameters.csv", "predictions.csv",
        "gof_dv_pred.png", "gof_dv_ipred.png", "gof_cwres_time.png", "gof_cwres_pred.png",
        "individual_fits.png", "parameters.txt",
    } == names  # fmt: skip
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".res.*"))  # no temporary folder left behind
    info = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert info["spec"]["sha256"] == hashlib.sha256(THEOPH_SPEC.read_bytes()).hexdigest()
    assert info["data"]["sha256"] == hashlib.sha256(THEOPH_DATA.read_bytes()).hexdigest()
    model_file = ROOT / "models" / "one_compartment_oral.toml"
    assert info["model"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert (info["method"], info["seed"], info["status"]) == ("foce-i", 1, "success")
    assert info["command_line"] == "pkmodel fit fits/theoph_foce.toml"
    assert set(info["versions"]) >= {"pkmodel", "numpy", "scipy", "python"}
    ofv = info["ofv"]
    assert ofv["minus_2_log_likelihood"] - ofv["value"] == pytest.approx(
        132 * math.log(2 * math.pi), rel=1e-12
    )
    assert "without the constant" in ofv["convention"]
    assert set(info["theta"]["KA"]) >= {"estimate", "se", "rse_percent", "ci95_lower", "ci95_upper"}
    assert info["theta"]["CL_WT"]["se"] is None  # fixed: no SE (NaN is written as null)
    assert info["omega"]["etas"] == ["eta_KA", "eta_CL"]

    theta = pd.read_csv(out / "theta.csv", index_col="name")
    for name, value in theoph_run.result.theta.items():
        assert theta.loc[name, "estimate"] == pytest.approx(value, rel=1e-12)
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns[:9]) == ["ID", "TIME", "DVID", "DV", "PRED", "IPRED", "CWRES", "IWRES", "BLQ"]
    assert len(pred) == 132
    ebe = pd.read_csv(out / "individual_parameters.csv")
    assert list(ebe.columns[:3]) == ["ID", "eta_KA", "eta_CL"] and len(ebe) == 12


@pytest.mark.slow
def test_no_overwrite_without_force_and_atomic_replacement(theoph_run, tmp_path, monkeypatch):
    target = tmp_path / "res"
    theoph_run.write(target, plots=False)
    (target / "marker.txt").write_text("old results", encoding="utf-8")
    with pytest.raises(PkmodelError, match=r"res already exists; use --force \(force=True\) to replace it"):
        theoph_run.write(target, plots=False)
    assert (target / "marker.txt").exists()

    # a failure while writing leaves the old folder untouched and no temporary folder behind
    def broken(run, folder):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "write_gof_plots", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        theoph_run.write(target, force=True)
    assert (target / "marker.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    monkeypatch.undo()

    theoph_run.write(target, force=True, plots=False)
    assert not (target / "marker.txt").exists() and (target / "results.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_force_never_replaces_a_folder_that_is_not_a_results_folder(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...", encoding="utf-8")
    with pytest.raises(PkmodelError, match=r"holds no results\.json, so it is not a pkmodel results folder"):
        fitting._run.check_target(precious, force=True)


def test_existing_results_folder_fails_before_the_fit(tmp_path, monkeypatch):
    (tmp_path / "res").mkdir()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the estimation started although the results folder exists")

    monkeypatch.setattr(fitting._run, "fit_population", must_not_run)
    with pytest.raises(PkmodelError, match="already exists; use --force"):
        run_fit(THEOPH_SPEC, out_dir=tmp_path / "res")


# ---------------------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    ("converged", "requested", "ok", "status"),
    [
        (True, True, True, "success"),
        (True, True, False, "covariance-failed"),
        (True, False, False, "no-covariance"),
        (False, True, True, "not-converged"),
        (False, True, False, "not-converged"),
    ],
)
def test_status_is_success_only_with_convergence_and_covariance(converged, requested, ok, status):
    code, message = fitting._run._status(converged, requested, ok, "R matrix singular", "BFGS stopped")
    assert code == status
    assert ("FAILED" in message) == (status == "covariance-failed")
    assert ("did NOT converge" in message) == (status == "not-converged")


@pytest.mark.slow
def test_population_covariance_failure_is_reported(tmp_path):
    # A covariate effect that every subject's covariate makes vanish ((FLAG/1)^θ with FLAG = 1 for all)
    # cannot be estimated: the R matrix has a zero row, so the covariance step must fail and say which
    # parameter is involved, and the status must not be "success".  The initial values are the estimates
    # of the theophylline fit (recorded in fits/results/theoph_foce/) and the gradient tolerance accepts
    # them, so only the covariance step runs: that is what is tested here.
    pd.read_csv(THEOPH_DATA).assign(FLAG=1.0).to_csv(tmp_path / "theoph.csv", index=False)
    text = THEOPH_SPEC.read_text(encoding="utf-8")
    for old, new in [
        ('"example:theoph"', '"theoph.csv"'),
        ("theta = 1.568312 ", "theta = 1.6195 "),
        ("theta = 0.040762 ", "theta = 0.039544 "),
        ("theta = 0.449329 ", "theta = 0.46542 "),
        ("KA = 0.5\nCL = 0.05", "KA = 0.43089\nCL = 0.02806"),
        ("additive = 0.7 ", "additive = 0.70777 "),
        (
            "estimate = false } }\n\n[parameters.V]",
            'estimate = false }, FLAG = { kind = "power", ref = 1, theta = 0.5 } }\n\n[parameters.V]',
        ),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "spec.toml").write_text(text + "\n[options]\ngtol = 1e6\n", encoding="utf-8")
    run = run_fit(tmp_path / "spec.toml", out_dir=tmp_path / "res", plots=False)
    assert run.result.n_iterations == 0 and run.result.converged
    assert run.status == "covariance-failed" and not run.success
    assert "the direction of the smallest eigenvalue involves CL_FLAG" in run.result.covariance_message
    assert json.loads((tmp_path / "res" / "results.json").read_text())["status"] == "covariance-failed"
    table_text = format_parameter_table(run)
    assert "status: covariance-failed" in table_text and "FAILED" in table_text
    assert run.theta_table()["se"].isna().all()  # no standard errors are claimed


INDIVIDUAL_ADC_SPEC = """\
[fit]
model = "adc_dar8_sn38"
data = "adc.csv"
method = "individual"

[data]
covariate_values = { WT = 70.0, ALB = 38.0 }

[parameters.CL]
theta = 0.02
bounds = [0.001, 1]
[parameters.FGLUC]
theta = 0.5
bounds = [0.01, 0.99]

[residual.TAb]
model = "proportional"
proportional = 0.1
"""


def test_individual_covariance_failure_is_reported(tmp_path):
    # FGLUC (the fraction of SN-38 clearance forming SN-38G) does not act on total antibody, so total
    # antibody data cannot estimate it: the covariance step must fail, name FGLUC, and the status must
    # not be "success".
    t = [1.0, 24.0, 72.0, 168.0, 336.0]
    dv = [230.0, 185.0, 135.0, 75.0, 40.0]  # µg/mL, roughly the model's profile after 700 mg
    rows = [dict(ID=1, TIME=0.0, AMT=700.0, EVID=1, MDV=1, DV=".", DVID=".")]
    rows += [
        dict(ID=1, TIME=ti, AMT=".", EVID=0, MDV=0, DV=d, DVID="TAb") for ti, d in zip(t, dv, strict=True)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "adc.csv", index=False)
    (tmp_path / "spec.toml").write_text(INDIVIDUAL_ADC_SPEC, encoding="utf-8")
    run = run_fit(tmp_path / "spec.toml")
    result = run.result[1]
    assert not result.covariance_ok and "FGLUC" in result.covariance.message
    assert run.status == "covariance-failed" and "FAILED" in run.status_message
    assert "covariance FAILED" in format_parameter_table(run)
    assert np.isnan(result.standard_errors["CL"])  # no standard errors are claimed


# ------------------------------------------------------------------------------------- tables, text


@pytest.mark.slow
def test_parameter_table_text(theoph_run):
    text = format_parameter_table(theoph_run)
    r = theoph_run.result
    assert "OFV (NONMEM convention: -2 log L without the constant n*log(2*pi))" in text
    assert f"= {r.ofv:.4f}" in text and f"= {r.minus_2_log_likelihood:.4f}" in text
    lines = {line.split()[1]: line for line in text.splitlines() if line.startswith(("TH", "SG"))}
    assert f"{r.theta['KA']: .4E}" in lines["KA"] and "(fixed)" in lines["CL_WT"]
    assert f"{r.sigma['CP_add']: .4E}" in lines["CP_add"]
    assert "OM1,1" in text and "OM2,2" in text and "status: success" in text


# ------------------------------------------------------------------------------------ individual fits


def test_individual_fits_match_scipy_on_the_bateman_function(tmp_path):
    table = pd.read_csv(THEOPH_DATA)
    table[table["ID"] == 2].to_csv(tmp_path / "theoph.csv", index=False)
    text = THEOPH_SPEC.read_text(encoding="utf-8")
    text = text.replace('"example:theoph"', '"theoph.csv"')
    text = text.replace('method = "foce-i"', 'method = "individual"')
    text = text.replace("eta = true\n", "").replace('eta = "CL"', "")
    text = text.split("[omega.init]")[0] + '[residual.CP]\nmodel = "additive"\nadditive = 0.7\n'
    (tmp_path / "spec.toml").write_text(text, encoding="utf-8")
    run = run_fit(tmp_path / "spec.toml")
    assert set(run.result) == {2} and run.status == "success", run.status_message

    for sid, result in run.result.items():
        rows = table[(table["ID"] == sid)]
        amount = float(rows.loc[rows["EVID"] == 1, "AMT"].iloc[0])
        weight = float(rows["WT"].iloc[0])
        obs = rows[rows["EVID"] == 0]
        t, y = obs["TIME"].to_numpy(), obs["DV"].to_numpy()

        def m2ll(x, t=t, y=y, amount=amount, weight=weight):
            ka, cl, v, sd = np.exp(x)
            f = bateman(amount, t, ka, cl * weight, v * weight)
            return float(np.sum(np.log(2 * np.pi * sd**2) + ((y - f) / sd) ** 2))

        start = np.log([1.5, 0.04, 0.45, 0.7])
        x = minimize(
            m2ll,
            start,
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 20000},
        ).x
        x = minimize(m2ll, x, method="BFGS", options={"gtol": 1e-9}).x
        reference = dict(zip(["KA", "CL", "V", "CP_add"], np.exp(x), strict=True))
        assert result.minus_2_log_likelihood == pytest.approx(m2ll(x), abs=1e-6)
        for name, value in reference.items():
            assert result.estimates[name] == pytest.approx(value, rel=1e-3), (sid, name)
    assert list(run.predictions()["ID"].unique()) == [2]
    assert run.predictions()["PRED"].isna().all()  # no population prediction in individual fits
    # the model receives CL = θ_CL·WT and V = θ_V·WT (ID 2 weighs 72.4 kg, line 14 of the file)
    values = run.model_parameters().set_index("ID").loc[2]
    assert values["CL"] == pytest.approx(run.result[2].estimates["CL"] * 72.4, rel=1e-12)
    assert values["V"] == pytest.approx(run.result[2].estimates["V"] * 72.4, rel=1e-12)


# ------------------------------------------------------------------------------------- ADC recovery

ADC_TRUTH = {"CL": 0.015088, "V1": 2.8152, "KDEC": 0.042772, "CLS": 3.5957}  # adc_dar8_sn38 values
ADC_OMEGA = {"CL": 0.09, "KDEC": 0.04}  # variances of η (30 % and 20 % CV)
ADC_SIGMA = {"TAb": 0.10, "ADC": 0.10, "SN38": 0.15}  # proportional SDs
ADC_LLOQ = {"TAb": 0.5, "ADC": 0.5, "SN38": 0.5}  # µg/mL, µg/mL, ng/mL
ADC_RICH = {"TAb": (1, 4, 24, 72, 168, 336), "ADC": (1, 4, 24, 72, 168), "SN38": (1, 4, 24, 72, 168)}
ADC_SPARSE = {"TAb": (1, 24, 168), "ADC": (1, 24, 168), "SN38": (1, 24, 168)}
ADC_DVID = {"TAb": 1, "ADC": 2, "SN38": 3}

ADC_RECOVERY_SPEC = """\
[fit]
model = "adc_dar8_sn38"
data = "adc.csv"
method = "foce-i"
seed = 20241125

[data]
dvid = { 1 = "TAb", 2 = "ADC", 3 = "SN38" }
dose_unit = "mg/kg"

[parameters.CL]
theta = 0.02
bounds = [0.001, 1]
eta = true
[parameters.V1]
theta = 2.3
bounds = [0.1, 50]
[parameters.KDEC]
theta = 0.035
bounds = [0.001, 1]
eta = true
[parameters.CLS]
theta = 4.5
bounds = [0.1, 100]

[omega.init]
CL = 0.15
KDEC = 0.08

[residual.TAb]
model = "proportional"
proportional = 0.15
[residual.ADC]
model = "proportional"
proportional = 0.15
[residual.SN38]
model = "proportional"
proportional = 0.2
"""


def simulate_adc_study(n: int = 40, seed: int = 20241125) -> pd.DataFrame:
    """40 subjects, 10 mg/kg over 1 h; odd subjects rich, even sparse; TAb, ADC, SN-38; BLQ below LLOQ."""
    from pkmodel import Infusion, Regimen, load_model, simulate

    rng = np.random.default_rng(seed)
    weight = np.round(rng.uniform(50.0, 100.0, n), 1)
    albumin = np.round(rng.normal(38.0, 4.0, n), 1)
    eta_cl = rng.normal(0.0, math.sqrt(ADC_OMEGA["CL"]), n)
    eta_kdec = rng.normal(0.0, math.sqrt(ADC_OMEGA["KDEC"]), n)
    times = np.array([1.0, 4.0, 24.0, 72.0, 168.0, 336.0])
    profiles = simulate(
        load_model("adc_dar8_sn38"),
        Regimen([Infusion(0.0, 10.0, duration=1.0, unit="mg/kg")]),
        times,
        parameters={
            "CL": ADC_TRUTH["CL"] * np.exp(eta_cl),
            "KDEC": ADC_TRUTH["KDEC"] * np.exp(eta_kdec),
            "V1": ADC_TRUTH["V1"],
            "CLS": ADC_TRUTH["CLS"],
            "WT": weight,
            "ALB": albumin,
        },
    )
    rows = []
    for i in range(n):
        common = {"ID": i + 1, "WT": weight[i], "ALB": albumin[i]}
        rows.append(
            {
                **common,
                "TIME": 0.0,
                "AMT": 10.0,
                "DUR": 1.0,
                "EVID": 1,
                "MDV": 1,
                "CMT": "DAR8_C",
                "DV": ".",
                "DVID": ".",
                "LLOQ": ".",
                "BLQ": 0,
            }
        )
        design = ADC_RICH if i % 2 == 0 else ADC_SPARSE
        records = []
        for output, sample_times in design.items():
            for t in sample_times:
                f = profiles.outputs[output][int(np.flatnonzero(times == t)[0]), i]
                records.append((t, ADC_DVID[output], output, f * (1.0 + rng.normal(0.0, ADC_SIGMA[output]))))
        for t, dvid, output, dv in sorted(records):
            blq = dv < ADC_LLOQ[output]
            rows.append(
                {
                    **common,
                    "TIME": float(t),
                    "AMT": ".",
                    "DUR": ".",
                    "EVID": 0,
                    "MDV": 0,
                    "CMT": ".",
                    "DV": "." if blq else f"{dv:.6g}",
                    "DVID": dvid,
                    "LLOQ": ADC_LLOQ[output],
                    "BLQ": int(blq),
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_adc_population_parameters_are_recovered(tmp_path, record_property):
    study = simulate_adc_study()
    study.to_csv(tmp_path / "adc.csv", index=False)
    (tmp_path / "spec.toml").write_text(ADC_RECOVERY_SPEC, encoding="utf-8")
    started = time.perf_counter()
    run = run_fit(tmp_path / "spec.toml")
    record_property("runtime_seconds", round(time.perf_counter() - started, 1))
    n_blq = int(study["BLQ"].sum())
    assert 0 < n_blq and run.result.n_blq == n_blq  # some BLQ, all used (M3)
    assert run.status == "success", run.status_message
    table = run.theta_table()
    for name, truth in ADC_TRUTH.items():
        estimate, lower, upper = table.loc[name, ["estimate", "ci95_lower", "ci95_upper"]]
        record_property(f"{name}_relative_error", round(estimate / truth - 1.0, 4))
        assert estimate == pytest.approx(truth, rel=0.15), name
        assert lower < truth < upper, (name, lower, truth, upper)


def test_initial_values_that_cannot_be_simulated_name_the_subject(tmp_path):
    # KA = 2000/h is inside the spec's bounds but outside the model's [0, 1000]: the modal check cannot
    # predict any subject, so they are simulated one by one and the first one's error is raised
    text = THEOPH_SPEC.read_text(encoding="utf-8")
    text = text.replace("theta = 1.568312", "theta = 2000").replace(
        "bounds = [0.01, 50]", "bounds = [0.01, 1e4]"
    )
    text = text.replace('data = "example:theoph"', f'data = "{THEOPH_DATA.as_posix()}"')
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(text, encoding="utf-8")
    with pytest.raises(
        PkmodelError, match=r"cannot be simulated for ID 1 at the initial values: parameter KA = 2000"
    ):
        build_problem(load_fit_spec(spec_path))
