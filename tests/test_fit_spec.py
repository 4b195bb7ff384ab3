"""Fit specifications (fits/*.toml): what a valid file means, and one message per kind of mistake.

Every malformed spec below is a copy of a small valid spec (the theophylline fit) with one thing broken;
each test asserts that the error names the file, the key and the fix.  Checks that need the dataset
(DVIDs, covariate columns, BLQ records, DV <= 0 on a log scale) go through ``build_problem``, which reads
the data but estimates nothing, so the whole module runs in a few seconds.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pkmodel.errors import SpecError
from pkmodel.fitting import build_problem, load_fit_spec

ROOT = Path(__file__).resolve().parents[1]
THEOPH = ROOT / "tests" / "data" / "theoph" / "Theoph_nonmem.csv"

BASE = """\
[fit]
model = "one_compartment_oral"
data = "theoph.csv"
method = "foce-i"
seed = 3

[data]
compartments = ["DEPOT", "CENT"]

[parameters.KA]
theta = 1.5
bounds = [0.01, 20]
eta = true

[parameters.CL]
theta = 0.04
bounds = [0.001, 1]
eta = true
covariates = { WT = { kind = "power", ref = 1, theta = 1, estimate = false } }

[parameters.V]
theta = 0.45
bounds = [0.01, 10]
eta = "CL"
covariates = { WT = { kind = "power", ref = 1, theta = 1, estimate = false } }

[omega.init]
KA = 0.4
CL = 0.05

[residual.CP]
model = "additive"
additive = 0.7
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(THEOPH, tmp_path / "theoph.csv")
    return tmp_path


def write(folder: Path, text: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def spec_error(path: Path, pattern: str, build: bool = False) -> str:
    """Load (and optionally build) the spec; it must raise SpecError matching ``pattern``, naming the file."""
    with pytest.raises(SpecError, match=pattern) as info:
        spec = load_fit_spec(path)
        if build:
            build_problem(spec)
    message = str(info.value)
    assert str(path) in message, message
    return message


# ------------------------------------------------------------------------------------- valid specs


def test_valid_spec_is_read_as_written(folder):
    spec = load_fit_spec(write(folder, BASE))
    assert spec.method == "foce-i" and spec.seed == 3 and spec.blq_method == "M3"
    assert [p.name for p in spec.parameters] == ["KA", "CL", "V"]
    ka, cl, v = spec.parameters
    assert (ka.theta, ka.lower, ka.upper, ka.eta) == (1.5, 0.01, 20.0, "KA")
    assert v.eta == "CL" and v.eta_name == "eta_CL"  # V shares CL's random effect
    assert cl.covariates[0].covariate == "WT" and cl.covariates[0].estimate is False
    assert spec.omega_init == {("KA",): 0.4, ("CL",): 0.05}
    assert spec.residual[0].output == "CP" and spec.residual[0].additive == 0.7
    assert spec.data_path == (folder / "theoph.csv").resolve()
    assert spec.default_results_dir == folder.resolve() / "results" / "spec"


def test_defaults_come_from_the_model_file(folder):
    # no theta, no bounds: the model's value and bounds (one_compartment_oral: KA 1.5 in [0, 1e3])
    text = edit("theta = 1.5\nbounds = [0.01, 20]\n", "")
    spec = load_fit_spec(write(folder, text))
    ka = spec.parameter("KA")
    assert (ka.theta, ka.lower, ka.upper) == (1.5, 0.0, 1000.0)
    # with a covariate effect θ is per covariate unit: only the model's lower bound 0 is kept
    text = edit("theta = 0.04\nbounds = [0.001, 1]\n", "theta = 0.04\n")
    cl = load_fit_spec(write(folder, text)).parameter("CL")
    assert (cl.lower, cl.upper) == (0.0, math.inf)


def test_problem_maps_parameters_etas_and_covariates(folder):
    fp = build_problem(load_fit_spec(write(folder, BASE)))
    problem = fp.problem
    assert problem.theta_names == ("KA", "CL", "CL_WT", "V", "V_WT")
    assert [t.fixed for t in problem.thetas] == [False, False, True, False, True]
    assert problem.eta_names == ("eta_KA", "eta_CL")
    assert [p.eta for p in problem.parameters] == ["eta_KA", "eta_CL", "eta_CL"]
    assert [s.covariates["WT"] for s in fp.subjects][:2] == [79.6, 72.4]  # from the file, IDs 1 and 2
    assert problem.omega[0].matrix.tolist() == [[0.4]]


def test_omega_block_with_covariance(folder):
    text = BASE.replace("[omega.init]", '[omega]\nblocks = [["KA", "CL"]]\n[omega.init]\n"KA,CL" = 0.02')
    fp = build_problem(load_fit_spec(write(folder, text)))
    (block,) = fp.problem.omega
    assert block.etas == ("eta_KA", "eta_CL") and not block.diagonal
    assert block.matrix.tolist() == [[0.4, 0.02], [0.02, 0.05]]


# ------------------------------------------------------------------------------ malformed: the file


def test_invalid_toml(folder):
    line = BASE.count("\n") + 2  # the unclosed table header appended after a blank line
    spec_error(
        write(folder, BASE + "\n[parameters.Q\n"), rf"not valid TOML \(.*line {line}, .*fix the syntax"
    )


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist; check the path"):
        load_fit_spec(tmp_path / "nope.toml")


def test_unknown_table(folder):
    spec_error(
        write(folder, BASE + "\n[fitt]\nx = 1\n"), r"key 'fitt': unknown key 'fitt'; allowed keys here: blq"
    )


def test_unknown_key_in_a_parameter(folder):
    text = edit("theta = 1.5", "thetaa = 1.5")
    spec_error(
        write(folder, text), r"key 'parameters\.KA\.thetaa': unknown key 'thetaa'; allowed keys .*theta"
    )


def test_missing_required_key(folder):
    text = edit('data = "theoph.csv"\n', "")
    spec_error(write(folder, text), r"key 'fit': missing required key 'data'; add data = \.\.\.")


def test_wrong_type(folder):
    text = edit("theta = 1.5", 'theta = "1.5"')
    spec_error(write(folder, text), r"key 'parameters\.KA\.theta': must be a number, got '1\.5'")
    text = edit("seed = 3", "seed = -3")
    spec_error(write(folder, text), r"key 'fit\.seed': must be a non-negative integer, got -3")
    text = "parameters = 3\n" + BASE.split("[parameters.KA]")[0] + BASE[BASE.index("[residual.CP]") :]
    spec_error(write(folder, text), r"key 'parameters': must be a table, got int 3; write \[parameters\]")
    text = edit('[residual.CP]\nmodel = "additive"\nadditive = 0.7', "[residual]\nCP = 0.7")
    spec_error(write(folder, text), r"key 'residual\.CP': must be a table, got float 0\.7")


def test_unknown_shipped_model(folder):
    text = edit('"one_compartment_oral"', '"one_compartment_orall"')
    message = spec_error(write(folder, text), r"no shipped model named 'one_compartment_orall'")
    assert "one_compartment_oral," in message  # the list of shipped models


def test_missing_model_file(folder):
    text = edit('"one_compartment_oral"', '"models/mine.toml"')
    spec_error(write(folder, text), r"key 'fit\.model': model file 'models/mine\.toml' does not exist")


def test_missing_data_file(folder):
    text = edit('"theoph.csv"', '"theoph2.csv"')
    spec_error(
        write(folder, text), r"key 'fit\.data': dataset 'theoph2\.csv' does not exist .*relative to the spec"
    )


def test_unknown_method(folder):
    text = edit('method = "foce-i"', 'method = "FOCE-I"')
    spec_error(
        write(folder, text),
        r"'FOCE-I' is not one of foce-i, foce, fo, individual \(did you mean 'foce-i'\?\)",
    )


# ----------------------------------------------------------------------- malformed: against the model


def test_unknown_model_parameter(folder):
    text = BASE + "\n[parameters.KE]\ntheta = 0.08\n"
    spec_error(
        write(folder, text),
        r"key 'parameters\.KE': 'KE' is not a parameter of model one_compartment_oral; its parameters are "
        r"KA, CL, V",
    )


def test_model_constant_cannot_be_estimated(folder):
    text = edit('"one_compartment_oral"', '"adc_dar8_sn38"').split("[parameters.KA]")[0]
    text = text.replace('compartments = ["DEPOT", "CENT"]', "")
    text += '[parameters.MW_AB]\ntheta = 150000\n[residual.TAb]\nmodel = "additive"\nadditive = 1\n'
    spec_error(write(folder, text), r"key 'parameters\.MW_AB': MW_AB is a constant of model adc_dar8_sn38")


def test_eta_on_a_fixed_parameter(folder):
    text = edit("bounds = [0.01, 20]\neta = true", "bounds = [0.01, 20]\neta = true\nfixed = true")
    spec_error(
        write(folder, text), r"key 'parameters\.KA\.eta': parameter KA is fixed .*remove eta or set fixed"
    )


def test_reversed_bounds(folder):
    text = edit("bounds = [0.01, 20]", "bounds = [20, 0.01]")
    spec_error(
        write(folder, text), r"key 'parameters\.KA\.bounds': lower bound 20 is not below upper bound 0\.01"
    )


def test_initial_value_outside_bounds(folder):
    text = edit("theta = 1.5", "theta = 30")
    spec_error(
        write(folder, text),
        r"key 'parameters\.KA\.theta': initial value 30\.0 is not strictly inside the bounds \[0\.01, 20\.0\]",
    )


def test_shared_eta_needs_an_owner(folder):
    text = edit('eta = "CL"', 'eta = "KX"')
    spec_error(write(folder, text), r"key 'parameters\.V\.eta': shares the random effect of 'KX'")


def test_unknown_covariate_kind(folder):
    text = edit(
        'kind = "power", ref = 1, theta = 1, estimate = false } }\n\n[parameters.V]',
        'kind = "exp", ref = 1, theta = 1, estimate = false } }\n\n[parameters.V]',
    )
    spec_error(
        write(folder, text),
        r"key 'parameters\.CL\.covariates\.WT\.kind': 'exp' is not one of power, linear, exponential",
    )


def test_population_method_needs_a_random_effect(folder):
    text = BASE.replace("eta = true\n", "").replace('eta = "CL"\n', "").split("[omega.init]")[0]
    text += '[residual.CP]\nmodel = "additive"\nadditive = 0.7\n'
    spec_error(
        write(folder, text), r"key 'parameters': method 'foce-i' is a population method but no parameter"
    )


def test_individual_method_refuses_random_effects(folder):
    text = edit('method = "foce-i"', 'method = "individual"')
    spec_error(
        write(folder, text), r"key 'parameters\.KA\.eta': random effects have no meaning in individual fits"
    )


def test_omega_block_member_without_eta(folder):
    text = BASE.replace("[omega.init]", '[omega]\nblocks = [["KA", "V"]]\n[omega.init]')
    spec_error(write(folder, text), r"key 'omega\.blocks\[0\]': 'V' has no random effect of its own")


def test_omega_covariance_outside_a_block(folder):
    text = BASE.replace("CL = 0.05", 'CL = 0.05\n"KA,CL" = 0.01')
    spec_error(
        write(folder, text),
        r"key 'omega\.init\.KA,CL': a covariance needs two different parameters of the "
        r"same omega block",
    )


def test_residual_for_an_unknown_output(folder):
    text = edit("[residual.CP]", "[residual.CONC]")
    spec_error(
        write(folder, text), r"key 'residual\.CONC': 'CONC' is not an output of model one_compartment_oral"
    )


def test_residual_model_needs_its_sd(folder):
    text = edit('model = "additive"\nadditive = 0.7', 'model = "combined"\nadditive = 0.7')
    spec_error(
        write(folder, text), r"key 'residual\.CP': the combined model needs an initial SD: add proportional"
    )


def test_unknown_blq_method(folder):
    spec_error(
        write(folder, BASE + '\n[blq]\nmethod = "M4"\n'), r"key 'blq\.method': 'M4' is not one of M3, drop"
    )


def test_dvid_mapped_to_unknown_output(folder):
    text = edit('compartments = ["DEPOT", "CENT"]', 'compartments = ["DEPOT", "CENT"]\ndvid = { 1 = "CONC" }')
    spec_error(
        write(folder, text), r"key 'data\.dvid\.1': 'CONC' is not an output of model one_compartment_oral"
    )


# ---------------------------------------------------------------------- malformed: against the data


def _data_with(folder: Path, **columns) -> None:
    table = pd.read_csv(THEOPH)
    for name, values in columns.items():
        table[name] = values(table) if callable(values) else values
    table.to_csv(folder / "theoph.csv", index=False)


def test_dvid_not_mapped(folder):
    # a DVID column naming "conc" (not an output of the model) and no [data] dvid mapping
    _data_with(folder, DVID=lambda t: ["." if e == 1 else "conc" for e in t["EVID"]])
    spec_error(
        write(folder, BASE),
        r"key 'data\.dvid': the dataset's DVID 'conc' \(lines 3, 4, 5, 6, 7, \.\.\.\) is not an output of model "
        r"one_compartment_oral \(CP\) and \[data\] dvid does not map it; add \[data\] dvid = \{ conc = ",
        build=True,
    )
    # with a mapping that forgets it
    text = edit('compartments = ["DEPOT", "CENT"]', 'compartments = ["DEPOT", "CENT"]\ndvid = { cp = "CP" }')
    spec_error(write(folder, text), r"the dataset's DVID 'conc' \(lines 3, .*is not mapped", build=True)


def test_covariate_missing_from_the_data(folder):
    text = edit("covariates = { WT = {", "covariates = { ALB = {")
    spec_error(
        write(folder, text),
        r"key 'parameters\.CL\.covariates\.ALB': the dataset has no covariate column ALB \(its covariates: WT, "
        r"DOSE_MGKG\)",
        build=True,
    )


def test_model_covariate_missing_from_the_data(folder):
    # the ADC model needs WT and ALB; the theophylline data have no ALB
    text = edit('"one_compartment_oral"', '"adc_dar8_sn38"').split("[parameters.KA]")[0]
    text = text.replace('compartments = ["DEPOT", "CENT"]', "")  # CMT numbers: the model's state order
    text += '[parameters.CL]\ntheta = 0.015\n[residual.TAb]\nmodel = "additive"\nadditive = 1\n'
    text = text.replace('method = "foce-i"', 'method = "individual"')
    _data_with(folder, DVID=lambda t: ["." if e == 1 else "TAb" for e in t["EVID"]])
    spec_error(
        write(folder, text),
        r"model adc_dar8_sn38 needs covariate ALB but the dataset has no ALB column .*covariate_values = "
        r"\{ ALB = \.\.\. \}",
        build=True,
    )


def test_time_varying_covariate(folder):
    _data_with(
        folder,
        WT=lambda t: [
            w + (1.0 if (i == 1 and tm > 5) else 0.0)
            for i, tm, w in zip(t["ID"], t["TIME"], t["WT"], strict=True)
        ],
    )
    spec_error(
        write(folder, BASE),
        r"covariate WT changes within ID 1 \(lines 9, 10, 11\); fits use one value per subject",
        build=True,
    )


def test_log_additive_error_needs_positive_dv(folder):
    text = edit('model = "additive"', 'model = "log-additive"')
    # ID 2 has DV 0 at time 0 on line 15 of the file
    spec_error(
        write(folder, text),
        r"key 'residual\.CP\.model': the log-additive error model needs DV > 0, but ID 2 has DV 0 on line 15",
        build=True,
    )


def test_fo_cannot_use_blq_records(folder):
    _data_with(folder, LLOQ=lambda t: [0.5 if e == 0 else float("nan") for e in t["EVID"]])
    text = edit('method = "foce-i"', 'method = "fo"')
    message = spec_error(
        write(folder, text), r"key 'blq\.method': method fo cannot use the \d+ BLQ", build=True
    )
    n_blq = int(re.search(r"the (\d+) BLQ", message).group(1))
    table = pd.read_csv(folder / "theoph.csv")
    assert n_blq == int(((table["EVID"] == 0) & (table["DV"] < 0.5)).sum())  # counted from the file


def test_blq_drop_is_counted(folder):
    _data_with(folder, LLOQ=lambda t: [0.5 if e == 0 else float("nan") for e in t["EVID"]])
    table = pd.read_csv(folder / "theoph.csv")
    expected = int(((table["EVID"] == 0) & (table["DV"] < 0.5)).sum())
    fp = build_problem(load_fit_spec(write(folder, BASE + '\n[blq]\nmethod = "drop"\n')))
    assert sum(s.n_obs for s in fp.subjects) == 132 - expected
    assert fp.notes == (f'{expected} BLQ observation(s) dropped (blq.method = "drop", M1): CP: {expected}',)
    fp = build_problem(load_fit_spec(write(folder, BASE)))  # M3 (default): kept, censored
    assert sum(int(s.blq.sum()) for s in fp.subjects) == expected
    assert fp.notes == (f"{expected} BLQ observation(s) enter the likelihood as censored (Beal M3)",)


def test_exclude_dvid_and_blq_drop_are_counted(folder):
    # every third observation measures "ANC" (left out by [data] exclude_dvid); LLOQ 0.5 makes the low
    # CP samples BLQ, dropped by blq.method = "drop": each count is worked out from the file with pandas
    def dvid(t):
        return ["." if e == 1 else ("ANC" if k % 3 == 0 else "CP") for k, e in enumerate(t["EVID"])]

    _data_with(folder, DVID=dvid, LLOQ=lambda t: [0.5 if e == 0 else float("nan") for e in t["EVID"]])
    table = pd.read_csv(folder / "theoph.csv")
    observation = (table["EVID"] == 0) & (table["MDV"] == 0)
    anc = observation & (table["DVID"] == "ANC")
    blq = observation & (table["DVID"] == "CP") & (table["DV"] < 0.5)
    kept = observation & (table["DVID"] == "CP") & ~blq
    assert anc.sum() > 0 and blq.sum() > 0
    text = edit("[data]\n", '[data]\nexclude_dvid = ["ANC"]\n') + '\n[blq]\nmethod = "drop"\n'
    fp = build_problem(load_fit_spec(write(folder, text)))
    assert fp.notes == (
        f"{anc.sum()} observation(s) of DVID ANC left out of the fit ([data] exclude_dvid)",
        f'{blq.sum()} BLQ observation(s) dropped (blq.method = "drop", M1): CP: {blq.sum()}',
    )
    lines = [int(i) + 2 for i in table.index[kept]]  # file line numbers (the header is line 1)
    assert [r for s in fp.subjects for r in s.data.rows.tolist()] == lines
    assert [d for s in fp.subjects for d in s.dv.tolist()] == table.loc[kept, "DV"].tolist()
    assert all(set(s.data.dvid.tolist()) == {"CP"} for s in fp.subjects)
