"""The execution layer (pkmodel.distributed) and the virtual trial, serial and on a real Dask cluster.

Oracles: numpy's own SeedSequence.spawn and np.quantile; the exact identity of results computed serially
and on a LocalCluster (2 worker processes, 1 thread each, TCP on loopback), also when a worker is killed
mid-run; the virtual trial against the independent per-subject paths (neutropenia_incidence with the BDF
engine, exposure_metrics with np.quantile) on the same subjects.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pkmodel.compare import RegimenSpec, load_scenario, run_virtual_trial, trial_population
from pkmodel.distributed import QuantileSketch, map_tasks, run_tasks, task_rng, task_seed
from pkmodel.dosing import parse_regimen
from pkmodel.errors import PkmodelError

ROOT = Path(__file__).resolve().parents[1]
SMALL_SPEC = ROOT / "tests" / "data" / "bootstrap_small" / "spec.toml"
RESOLUTION = 10 ** (1 / 1000) - 1  # relative bin width of QuantileSketch (1000 bins per decade)


def _offset(context, task):
    return context + task


def _fail_on_three(context, task):
    if task == 3:
        raise PkmodelError("task 3 is bad")
    return task


# ------------------------------------------------------------------------------------------- seeds


def test_task_seed_is_numpys_spawned_child_whatever_the_number_spawned():
    # SeedSequence(root).spawn(n)[k] is the k-th child for every n > k: the key, not the count, decides
    for n_children in (4, 9):
        child = np.random.SeedSequence(2026).spawn(n_children)[3]
        assert np.array_equal(
            np.random.default_rng(child).random(5), np.random.default_rng(task_seed(2026, 3)).random(5)
        )
    assert task_rng(5, (1, 2)).random() != task_rng(5, (2, 1)).random()


def test_task_seed_rejects_bad_seeds():
    with pytest.raises(PkmodelError, match=r"seed=-1: give a whole number >= 0"):
        task_seed(-1, 0)
    with pytest.raises(PkmodelError, match=r"task key \(1, -2\): give whole numbers >= 0"):
        task_seed(1, (1, -2))


# ------------------------------------------------------------------------------------------ map_tasks


def test_map_tasks_serial_and_processes_give_results_in_task_order():
    expected = [100 + t for t in range(12)]  # context + task, by hand
    assert run_tasks(_offset, range(12), context=100) == expected
    assert run_tasks(_offset, range(12), context=100, scheduler="processes:2", max_in_flight=3) == expected


def test_map_tasks_reraises_a_task_error_and_rejects_unknown_schedulers():
    with pytest.raises(PkmodelError, match="task 3 is bad"):
        run_tasks(_fail_on_three, range(5))
    with pytest.raises(
        PkmodelError, match=r"scheduler='threads' is not known: use None or 'serial', 'processes'"
    ):
        run_tasks(_offset, [1], scheduler="threads")
    with pytest.raises(PkmodelError, match=r"'processes:0': write 'processes' or 'processes:N' with N >= 1"):
        run_tasks(_offset, [1], scheduler="processes:0")
    with pytest.raises(PkmodelError, match="weights has 1 entries for 2 tasks"):
        run_tasks(_offset, [1, 2], weights=[1])


def test_progress_bar_counts_units(capsys):
    list(map_tasks(_offset, [1, 2], context=0, progress=True, label="subjects", weights=[3, 4]))
    err = capsys.readouterr().err
    assert "3/7 subjects" in err and "7/7 subjects" in err


# ------------------------------------------------------------------------------------- quantile sketch


def test_quantile_sketch_is_within_its_resolution_of_numpy_and_merges_exactly():
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.lognormal(2.0, 1.5, 5000), np.zeros(40)])
    whole, parts = QuantileSketch(), QuantileSketch()
    whole.add(values)
    for piece in np.array_split(values, 7):  # merged from pieces, in any grouping
        part = QuantileSketch()
        part.add(piece)
        parts += QuantileSketch.from_compact(part.compact())
    assert np.array_equal(whole.counts, parts.counts) and whole.n == parts.n == values.size
    for q in (0.0, 0.004, 0.05, 0.5, 0.95, 1.0):
        exact = np.quantile(values, q)
        assert whole.quantile(q) == parts.quantile(q)
        if exact == 0:
            assert whole.quantile(q) == 0.0
        else:
            assert abs(whole.quantile(q) / exact - 1) <= RESOLUTION, q
    # the extremes are exact
    assert whole.quantile(1.0) == values.max() and whole.quantile(0.0) == 0.0


def test_quantile_sketch_rejects_values_it_cannot_count():
    sketch = QuantileSketch()
    with pytest.raises(PkmodelError, match=r"finite values >= 0, got -1.0"):
        sketch.add([1.0, -1.0])
    with pytest.raises(PkmodelError, match=r"quantile q=1.5 must be between 0 and 1"):
        sketch.quantile(1.5)


# ------------------------------------------------------------------------------------- virtual trial


@pytest.fixture(scope="module")
def short_scenario():
    """The ESG401 scenario with two short regimens (2 cycles each), to keep the tests fast."""
    sc = load_scenario(ROOT / "fits" / "esg401_regimens.toml")
    regimens = tuple(
        RegimenSpec(label, text, parse_regimen(text))
        for label, text in (
            ("Q3W x2", "16 mg/kg q3w x2 over 1h"),
            ("D1,8,15 x2", "12 mg/kg d1,8,15 q4w x2 over 1h"),
        )
    )
    return dataclasses.replace(sc, regimens=regimens, matched=())


@pytest.fixture(scope="module")
def serial_trial(short_scenario):
    return run_virtual_trial(short_scenario, n=120, chunk_size=40)


def test_virtual_trial_incidence_equals_the_per_subject_bdf_path(short_scenario, serial_trial):
    from pkmodel.response import neutropenia_incidence

    sc = short_scenario
    pop = pd.concat([trial_population(sc, c, 40, chunk_size=40) for c in range(3)], ignore_index=True)
    assert pop["ID"].tolist() == list(range(1, 121))
    columns = [c for c in pop.columns if c in sc.pkpd_model.argument_names or c in ("ID", "WT")]
    oracle = neutropenia_incidence(
        sc.pkpd_model, {r.label: r.regimen for r in sc.regimens}, pop[columns], grades=(2, 3, 4)
    ).set_index("regimen")
    got = serial_trial.tables["neutropenia_incidence"].set_index("regimen")
    for label in oracle.index:
        assert got.loc[label, "n"] == 120
        for g in (1, 2, 3, 4):
            assert got.loc[label, f"events_ge{g}"] == oracle.loc[label, f"events_ge{g}"], (label, g)
        # nadir percentiles: sketch resolution (0.23 %) plus hybrid-vs-BDF engine difference
        for ours, theirs in (("nadir_median", "nadir_median"), ("nadir_lower", "nadir_lower")):
            assert got.loc[label, ours] == pytest.approx(oracle.loc[label, theirs], rel=5e-3)


def test_virtual_trial_exposure_percentiles_match_numpy_on_the_same_subjects(short_scenario, serial_trial):
    from pkmodel.exposure import exposure_metrics

    sc = short_scenario
    pop = pd.concat([trial_population(sc, c, 40, chunk_size=40) for c in range(3)], ignore_index=True)
    columns = [c for c in pop.columns if c in sc.pk_model.argument_names or c in ("ID", "WT")]
    spec = sc.regimens[0]
    frame = exposure_metrics(
        sc.pk_model,
        spec.regimen,
        parameters=pop[columns],
        analytes=list(sc.analytes),
        cycles=(1, "ss"),
        threshold=sc.thresholds,
    )
    table = serial_trial.tables["exposure_summary"]
    checked = 0
    for (analyte, cycle, metric), group in frame.groupby(["analyte", "cycle", "metric"], observed=True):
        if metric == "dose_intensity":
            continue
        row = table[
            (table.regimen == spec.label)
            & (table.analyte == analyte)
            & (table.cycle == str(cycle))
            & (table.metric == metric)
        ].iloc[0]
        exact = np.quantile(group["value"].to_numpy(), [0.05, 0.5, 0.95])
        for got, want in zip(row[["P5", "median", "P95"]], exact, strict=True):
            assert got == pytest.approx(want, rel=RESOLUTION, abs=1e-12), (analyte, cycle, metric)
        assert row["n"] == 120
        checked += 1
    assert checked >= 30


def test_virtual_trial_rejects_a_bad_size(short_scenario):
    from pkmodel.errors import SpecError

    with pytest.raises(SpecError, match=r"n=0: the number of virtual subjects must be a whole number >= 1"):
        run_virtual_trial(short_scenario, n=0)


# --------------------------------------------------------------------------------------- Dask cluster


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        protocol="tcp",
        dashboard_address=":0",  # a free port: never collide with another cluster
        silence_logs=50,
    ) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster):
    from distributed import Client

    with Client(cluster.scheduler_address) as c:
        yield c


def test_cluster_is_two_tcp_worker_processes(cluster, client):
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    pids = client.run(os.getpid)
    assert len(pids) == 2 and os.getpid() not in pids.values()
    assert all(w["nthreads"] == 1 for w in client.scheduler_info()["workers"].values())


def test_virtual_trial_on_dask_equals_serial(short_scenario, serial_trial, cluster):
    # through an address, as `pkmodel compare --scheduler tcp://...` does
    dask_trial = run_virtual_trial(short_scenario, n=120, chunk_size=40, scheduler=cluster.scheduler_address)
    for name in ("neutropenia_incidence", "exposure_summary"):
        pd.testing.assert_frame_equal(dask_trial.tables[name], serial_trial.tables[name], check_exact=True)


def test_vpc_on_dask_equals_serial(client):
    from pkmodel.fitting import run_fit
    from pkmodel.vpc import run_vpc

    run = run_fit(SMALL_SPEC)
    serial = run_vpc(run, n_replicates=60, bins=4)
    dask = run_vpc(run, n_replicates=60, bins=4, scheduler=client)
    pd.testing.assert_frame_equal(dask.table, serial.table, check_exact=True)
    pd.testing.assert_frame_equal(dask.blq, serial.blq, check_exact=True)


@pytest.fixture(scope="module")
def serial_bootstrap():
    from pkmodel.bootstrap import run_bootstrap

    return run_bootstrap(SMALL_SPEC, n=6, stratify="GROUP")


def test_bootstrap_on_dask_equals_serial(serial_bootstrap, client):
    from pkmodel.bootstrap import run_bootstrap

    dask = run_bootstrap(SMALL_SPEC, n=6, stratify="GROUP", scheduler=client)
    pd.testing.assert_frame_equal(dask.replicates, serial_bootstrap.replicates, check_exact=True)
    pd.testing.assert_frame_equal(dask.ci, serial_bootstrap.ci, check_exact=True)
    assert dask.n_failed == serial_bootstrap.n_failed


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(serial_bootstrap, client):
    from pkmodel.bootstrap import run_bootstrap

    before = client.run(os.getpid)
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = run_bootstrap(SMALL_SPEC, n=6, stratify="GROUP", scheduler=client)
        except Exception as exc:  # re-raised in the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    # wait until both workers are busy with refits, then kill one worker process outright
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        processing = client.processing()
        if sum(len(v) for v in processing.values()) >= 2:
            break
        time.sleep(0.05)
    victim_pid = next(iter(before.values()))
    os.kill(victim_pid, signal.SIGKILL)
    killed_while_running = thread.is_alive()
    thread.join(timeout=240)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    assert killed_while_running
    result = outcome["result"]
    # every replicate exactly once, and the same numbers as the serial run
    assert sorted(result.replicates["replicate"]) == list(range(6))
    pd.testing.assert_frame_equal(result.replicates, serial_bootstrap.replicates, check_exact=True)
    pd.testing.assert_frame_equal(result.ci, serial_bootstrap.ci, check_exact=True)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert victim_pid not in client.run(os.getpid).values()


def test_cli_compare_with_a_scheduler_writes_the_trial_tables(tmp_path, capsys):
    import json

    from pkmodel.cli import main

    scenario = ROOT / "fits" / "esg401_regimens.toml"
    out = tmp_path / "trial"
    code = main(["compare", str(scenario), "--n", "3", "--scheduler", "serial", "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    # 4 regimens of the scenario + 1 matched-intensity regimen, 3 subjects each
    assert [row["n"] for row in printed["incidence"]] == [3] * 5
    assert {p.name for p in out.iterdir()} == {
        "neutropenia_incidence.csv",
        "exposure_summary.csv",
        "dose_intensity.csv",
        "provenance.json",
    }
    assert (
        main(["compare", str(scenario), "--n", "3", "--scheduler", "threads", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "scheduler='threads' is not known" in capsys.readouterr().err


def test_a_subject_the_hybrid_engine_fails_is_resimulated_with_bdf(short_scenario, monkeypatch):
    import pkmodel._hybrid as hybrid
    from pkmodel.response import neutropenia_incidence

    original = hybrid.simulate_outputs

    def broken(*args, **kwargs):  # the second subject of every chunk gets a non-finite ANC
        out = original(*args, **kwargs)
        out["ANC"][5, 1] = np.nan
        return out

    monkeypatch.setattr(hybrid, "simulate_outputs", broken)
    trial = run_virtual_trial(short_scenario, n=30, chunk_size=30)
    got = trial.tables["neutropenia_incidence"].set_index("regimen")
    assert got["n_bdf_fallback"].tolist() == [1, 1] and got["bdf_fallback_ids"].tolist() == ["2", "2"]
    pop = trial_population(short_scenario, 0, 30, chunk_size=30)
    columns = [c for c in pop.columns if c in short_scenario.pkpd_model.argument_names or c in ("ID", "WT")]
    oracle = neutropenia_incidence(
        short_scenario.pkpd_model, {r.label: r.regimen for r in short_scenario.regimens}, pop[columns]
    ).set_index("regimen")
    for label in oracle.index:
        for g in (1, 3, 4):
            assert got.loc[label, f"events_ge{g}"] == oracle.loc[label, f"events_ge{g}"]


def test_a_subject_no_engine_can_simulate_is_counted_and_listed_not_graded(short_scenario, monkeypatch):
    import pkmodel._hybrid as hybrid
    import pkmodel.simulation as simulation
    from pkmodel.errors import SimulationError

    original_hybrid, original_simulate = hybrid.simulate_outputs, simulation.simulate

    def broken_hybrid(*args, **kwargs):  # the third subject of the chunk diverges in the hybrid engine
        out = original_hybrid(*args, **kwargs)
        out["ANC"][7, 2] = -1e170
        return out

    def broken_bdf(*args, **kwargs):  # ... and in the BDF engine
        if kwargs.get("engine") == "ode":
            raise SimulationError("the ODE solver failed (test)")
        return original_simulate(*args, **kwargs)

    monkeypatch.setattr(hybrid, "simulate_outputs", broken_hybrid)
    monkeypatch.setattr(simulation, "simulate", broken_bdf)
    trial = run_virtual_trial(short_scenario, n=10, chunk_size=10)
    table = trial.tables["neutropenia_incidence"]
    assert table["n"].tolist() == [9, 9]  # 10 drawn, subject 3 not graded
    assert table["n_simulation_failed"].tolist() == [1, 1]
    assert table["simulation_failed_ids"].tolist() == ["3", "3"]
    assert table["n_bdf_fallback"].tolist() == [0, 0]
    from pkmodel.compare import trial_summary

    assert "the ANC of 1 subject(s) could not be simulated (IDs 3); they are not graded" in trial_summary(
        trial
    )


def test_a_chunk_whose_stacked_solve_fails_is_split_not_lost(short_scenario, monkeypatch):
    # Found by the 100,000-patient benchmark: the hybrid engine handed a whole chunk to BDF, one extreme
    # patient made the stacked BDF solve raise, and the trial died.  Here every stacked solve of more than
    # 4 subjects raises; the chunk must be split (halves, recursively) and every subject graded as the
    # oracle, neutropenia_incidence on the same subjects, grades them.
    import pkmodel._hybrid as hybrid
    from pkmodel.errors import SimulationError
    from pkmodel.response import neutropenia_incidence

    original = hybrid.simulate_outputs
    sizes = []

    def fragile(*args, parameters, **kwargs):
        sizes.append(len(parameters))
        if len(parameters) > 4:
            raise SimulationError("the ODE solver failed (test: Factor is exactly singular)")
        return original(*args, parameters=parameters, **kwargs)

    monkeypatch.setattr(hybrid, "simulate_outputs", fragile)
    trial = run_virtual_trial(short_scenario, n=12, chunk_size=12)
    got = trial.tables["neutropenia_incidence"].set_index("regimen")
    assert got["n"].tolist() == [12, 12] and got["n_simulation_failed"].tolist() == [0, 0]
    assert sizes[:3] == [12, 6, 3]  # split in halves until the solves succeed
    monkeypatch.setattr(hybrid, "simulate_outputs", original)
    pop = trial_population(short_scenario, 0, 12, chunk_size=12)
    columns = [c for c in pop.columns if c in short_scenario.pkpd_model.argument_names or c in ("ID", "WT")]
    oracle = neutropenia_incidence(
        short_scenario.pkpd_model, {r.label: r.regimen for r in short_scenario.regimens}, pop[columns]
    ).set_index("regimen")
    for label in oracle.index:
        for g in (1, 3, 4):
            assert got.loc[label, f"events_ge{g}"] == oracle.loc[label, f"events_ge{g}"]
