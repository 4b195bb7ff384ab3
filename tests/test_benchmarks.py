"""The benchmark scripts keep running: their pkmodel side on tiny inputs, checked against an oracle.

The benchmarks time pkmodel against R (deSolve, nlme), which CI does not install; what is run here is
everything that does not need the peer — the scripts' own warm-up and worker code included, where an
API change once broke them unnoticed (mg/kg doses without a body weight) — with the oracles:

* ``bench_linear_engines.py``: the script itself on 3 subjects; its own agreement check (exact engine
  vs the ODE engine and vs a per-subject ``solve_ivp`` loop, 1e-6) must print OK;
* ``bench_adc_desolve.py``: the streamed worker (fresh interpreter) and the two timed pkmodel calls on 3
  patients; the lean call (outputs in modal form, no states) against the full call (all states);
* ``bench_theoph_nlme.py``: the closed-form SSfol problem it times beside the model-based fit must give
  the same estimates (two independent prediction routes of one model);
* ``bench_dask_virtual_trial.py``: its scenario holds exactly the two protocol regimens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import bench_adc_desolve  # noqa: E402
import bench_dask_virtual_trial  # noqa: E402
import bench_theoph_nlme  # noqa: E402

from pkmodel import load_model  # noqa: E402
from pkmodel.estimation import fit_population  # noqa: E402
from pkmodel.fitting import build_problem, load_fit_spec  # noqa: E402


def test_linear_engine_benchmark_runs_and_its_engines_agree():
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_linear_engines.py"), "--n", "3", "--n-ode", "2", "--n-ivp", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "OK (<= 1e-6)" in done.stdout, done.stdout


def test_adc_benchmark_pkmodel_side_runs_and_lean_equals_full():
    model = load_model(bench_adc_desolve.MODEL)
    times = bench_adc_desolve.hourly(24.0)  # daily outputs over the 24 weeks
    params = _common.population(model, 3)
    _, _, lean = bench_adc_desolve.run_pkmodel_lean(model, params, times, 2, 1e-8, 1e-14)
    _, _, full = bench_adc_desolve.run_pkmodel_public(model, params, times, 1e-8, 1e-14)
    assert set(lean) == set(full) == set(_common.regimens())
    for name in full:
        kept, metrics = lean[name]
        for o in bench_adc_desolve.OUTPUTS:
            assert bench_adc_desolve.max_rel(kept[o], full[name][o]) <= 1e-6, (name, o)
        np.testing.assert_array_equal(metrics["ANC_nadir"], kept["ANC"].min(axis=0))
    # the streamed worker in a fresh interpreter (its own warm-up included)
    record = _common.in_subprocess(BENCH / "bench_adc_desolve.py", "lean", "3", "2", "24.0", "1e-8", "1e-14")
    assert record["cpu"] > 0 and set(record["grade3"]) == set(_common.regimens())


def test_theoph_benchmark_closed_form_problem_gives_the_model_based_estimates():
    closed = fit_population(bench_theoph_nlme.closed_form_problem(), method="foce-i", covariance=False)
    spec = load_fit_spec(bench_theoph_nlme.SPEC)
    model_based = fit_population(build_problem(spec).problem, method=spec.method, covariance=False)
    for name in ("KA", "CL", "V"):
        assert closed.theta[name] == pytest.approx(model_based.theta[name], rel=1e-4), name
    np.testing.assert_allclose(closed.omega, model_based.omega, rtol=1e-3)
    assert closed.ofv == pytest.approx(model_based.ofv, abs=1e-4)


def test_dask_benchmark_scenario_has_the_two_protocol_regimens():
    sc = bench_dask_virtual_trial._scenario()
    assert tuple(r.label for r in sc.regimens) == bench_dask_virtual_trial.REGIMENS
    assert sc.matched == ()
