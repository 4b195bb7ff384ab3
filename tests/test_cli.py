"""The command line is a thin layer: it prints what the Python API returns, and user errors are one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import pkmodel as pk
from pkmodel.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_lists_shipped_models(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == sorted(n for n, _ in pk.list_models())


def test_show_prints_parameters_and_equations(capsys):
    code, out, _ = run(capsys, "show", "two_compartment_iv")
    assert code == 0
    assert "dCENT/dt" in out and "CL" in out and "L/h" in out and "linear: yes" in out


def test_simulate_writes_the_same_numbers_as_the_api(capsys, tmp_path):
    target = tmp_path / "sim.csv"
    code, out, _ = run(
        capsys,
        "simulate",
        "two_compartment_iv",
        "--regimen",
        "2 mg/kg q3w x2 over 1h",
        "--weight",
        "70",
        "--set",
        "CL=0.3",
        "--times",
        "0:1008:12",
        "--out",
        str(target),
    )
    assert code == 0 and "CP" in out
    frame = pd.read_csv(target)
    api = pk.simulate(
        "two_compartment_iv",
        pk.parse_regimen("2 mg/kg q3w x2 over 1h"),
        np.arange(0, 1009, 12.0),
        parameters={"CL": 0.3},
        weight=70,
    )
    assert np.allclose(frame["CP"].to_numpy(), api.output("CP")[:, 0], rtol=1e-12)
    # never overwrite without --force
    code, _, err = run(
        capsys, "simulate", "two_compartment_iv", "--regimen", "1 mg once", "--out", str(target)
    )
    assert code == 2 and "--force" in err
    assert len(pd.read_csv(target)) == len(frame)


def test_simulate_json_summary(capsys):
    code, out, _ = run(
        capsys, "simulate", "one_compartment_iv", "--regimen", "100 mg once", "--times", "0,1,2", "--json"
    )
    assert code == 0
    summary = json.loads(out)["summary"]
    cp = next(s for s in summary if s["output"] == "CP")
    assert cp["Cmax"] == pytest.approx(10.0) and cp["C_last"] == pytest.approx(10.0 * np.exp(-0.2))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "nope", "--regimen", "1 mg once"], "no model file 'nope'"),
        (["simulate", "one_compartment_iv", "--regimen", "1 mg/kg once"], "body weight"),
        (["simulate", "one_compartment_iv", "--regimen", "1 mg q3w"], "needs a count"),
        (["simulate", "one_compartment_iv", "--regimen", "1 mg once", "--set", "CL"], "NAME=NUMBER"),
        (["simulate", "one_compartment_iv", "--regimen", "1 mg once", "--times", "a:b"], "START:STOP:STEP"),
        (["simulate", "one_compartment_iv", "--regimen", "1 mg once", "--set", "XX=1"], "unknown parameter"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("pkmodel: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_fit_refuses_an_existing_results_folder_before_estimating(capsys, tmp_path, monkeypatch):
    # the folder check comes first: the estimation must not even start (it would take seconds)
    import pkmodel.fitting._run as run_module

    def no_estimation(*args, **kwargs):
        raise AssertionError("the fit started although the results folder exists")

    monkeypatch.setattr(run_module, "fit_population", no_estimation)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{}", encoding="utf-8")
    spec = pk.model.fits_dir() / "theoph_foce.toml"
    code, _, err = run(capsys, "fit", str(spec), "--out", str(tmp_path / "old"))
    assert code == 2
    assert "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "old" / "results.json").read_text(encoding="utf-8") == "{}"
