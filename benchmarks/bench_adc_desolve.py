"""ESG401 PK/PD population: pkmodel vs deSolve (LSODA, compiled C right-hand side), issue 6.

Workload: the composed model ``models/adc_esg401_friberg.toml`` (DAR 0-8 central and peripheral, free
SN-38, SN-38G: 21 linear PK states; Friberg neutropenia: 5 nonlinear states), N virtual patients with
log-normal IIV (``_common.OMEGA``, seeded), both regimens (16 mg/kg Q3W x8 and 12 mg/kg D1,8,15 q4w x6,
1-h infusions), 24 weeks, hourly outputs of TAb, ADC, SN38 and ANC.  Every patient gets both regimens,
so one run is 2·N simulations; times are per simulated subject-regimen.

The deSolve model is generated at run time from the same sympy expressions pkmodel simulates
(``_desolve.write_c_model``), compiled with ``R CMD SHLIB`` into a temporary folder and run by
``ode(..., method = "lsoda")`` with the analytic Jacobian, per subject in an R loop, events for the
infusion starts and ends.  Both sides get identical parameters, doses (pkmodel's own conversion of
mg/kg to nmol) and output times, and the same tolerances: rtol 1e-10 and atol 1e-18 (amounts) by
default.  The absolute tolerance must be far below the smallest amounts that matter: in deep
neutropenia the proliferating pool falls to ~1e-11 x10^9/L before it recovers, and with atol 1e-10 both
solvers let it go negative and disagree by 1e-3 on the rebound.  Agreement: for every analyte, subject and
regimen, max over time of |pkmodel − deSolve| / max over time |deSolve| (relative to the subject's own
peak, so that values near 0 do not inflate it) must be <= 1e-5.

pkmodel is timed two ways, both through the public ``pkmodel.simulate`` (hybrid engine): asking for the
four outputs only, ``simulate(..., outputs=[TAb, ADC, SN38, ANC], keep_states=False)``, in chunks of
subjects (the way to run a population), and the default call, which returns all 26 states and all 7
outputs (about 1 MB per subject at hourly resolution).  Single-threaded BLAS on both
sides (OPENBLAS_NUM_THREADS=1, set below) so that per-subject times compare like with like.

Times: CPU time of the timed loops (pkmodel: this process; deSolve: the R process, from proc.time()),
the fairer measure on a shared machine; wall times are printed too.

Run: ``python benchmarks/bench_adc_desolve.py`` (several minutes for N = 1000, most of it deSolve);
``--scaling`` adds the table of time against subjects and output times; ``--memory-n`` sets the
streamed population sizes (default 1000 and 10,000) whose peak memory is measured in fresh interpreters.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import _desolve

from pkmodel import load_model, simulate
from pkmodel._hybrid import _Modes, _Run, _system
from pkmodel.simulation import _broadcast_plan, _plan, _subject_arguments

OUTPUTS = ["TAb", "ADC", "SN38", "ANC"]
MODEL = "adc_esg401_friberg"


def hourly(step: float = 1.0) -> np.ndarray:
    return np.arange(0.0, _common.HORIZON_H + step / 2, step)


def outputs_only(model, regimen, times, params: dict, rtol: float, atol: float) -> dict[str, np.ndarray]:
    """The four outputs by the public simulate, without the state array."""
    res = simulate(
        model, regimen, times, parameters=params, rtol=rtol, atol=atol, outputs=OUTPUTS, keep_states=False
    )
    assert res.engine == "hybrid" and res.ok, (res.engine, res.warnings)
    return res.outputs


def chunked_outputs(model, regimen, times, params: dict, chunk: int, rtol: float, atol: float, keep: bool):
    """simulate(outputs=..., keep_states=False) over chunks of subjects; the outputs (if keep) and metrics."""
    n = len(next(iter(params.values())))
    kept = {o: np.empty((len(times), n)) for o in OUTPUTS} if keep else None
    metrics = {f"{o}_max": np.empty(n) for o in OUTPUTS[:3]}
    metrics.update({f"{o}_auc": np.empty(n) for o in OUTPUTS[:3]})
    metrics.update({"ANC_nadir": np.empty(n), "ANC_nadir_time": np.empty(n)})
    dt = np.diff(times)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        part = {k: v[sl] for k, v in params.items()}
        out = outputs_only(model, regimen, times, part, rtol, atol)
        if keep:
            for o in OUTPUTS:
                kept[o][:, sl] = out[o]
        for o in OUTPUTS[:3]:
            metrics[f"{o}_max"][sl] = out[o].max(axis=0)
            metrics[f"{o}_auc"][sl] = 0.5 * (dt[:, None] * (out[o][1:] + out[o][:-1])).sum(axis=0)
        metrics["ANC_nadir"][sl] = out["ANC"].min(axis=0)
        metrics["ANC_nadir_time"][sl] = times[out["ANC"].argmin(axis=0)]
    return kept, metrics


def run_pkmodel_lean(model, params, times, chunk, rtol, atol, keep=True, only=None):
    """Both regimens (or regimen number ``only``) by simulate(outputs=...): (wall s, CPU s, results)."""
    results, wall, cpu = {}, 0.0, 0.0
    for k, (name, reg) in enumerate(_common.regimens().items()):
        if only is not None and k != only:
            continue
        w, c = time.perf_counter(), time.process_time()
        results[name] = chunked_outputs(model, reg, times, params, chunk, rtol, atol, keep)
        wall, cpu = wall + time.perf_counter() - w, cpu + time.process_time() - c
    return wall, cpu, results


def run_pkmodel_public(model, params, times, rtol, atol):
    """Both regimens by pkmodel.simulate: (wall s, CPU s, the four outputs)."""
    results, wall, cpu = {}, 0.0, 0.0
    for name, reg in _common.regimens().items():
        w, c = time.perf_counter(), time.process_time()
        res = simulate(model, reg, times, parameters=params, rtol=rtol, atol=atol)
        wall, cpu = wall + time.perf_counter() - w, cpu + time.process_time() - c
        assert res.engine == "hybrid"
        results[name] = {o: res.output(o).copy() for o in OUTPUTS}
        del res
    return wall, cpu, results


def run_desolve(model, params, times, n_desolve: int, rtol: float, atol: float, jacobian: bool = True):
    """deSolve on the first ``n_desolve`` subjects of each regimen: (wall s, CPU s, outputs, peak RSS MiB)."""
    folder = Path(tempfile.mkdtemp(prefix="pkmodel-desolve-"))
    c_file = _desolve.write_c_model(
        model, OUTPUTS, folder, infused=[model.default_dose_compartment], jacobian=True
    )
    lib = _desolve.compile_c(c_file)
    n = len(model.state_names)
    rate_state = n  # the one infusion-rate state, after the model's states
    sub = {k: v[:n_desolve] for k, v in params.items()}
    p, _, wt = _subject_arguments(model, sub, None)
    wall, cpu, outputs, rss = 0.0, 0.0, {}, 0.0
    for name, reg in _common.regimens().items():
        plan = _broadcast_plan(_plan(model, reg, wt), n_desolve)
        events = []
        for s in range(n_desolve):
            ev = [(t, i, a[s], "add") for t, i, a in plan.boluses]
            for start, end, _, r in plan.infusions:
                ev += [(start, rate_state, r[s], "add"), (end, rate_state, -r[s], "add")]
            events.append(sorted(ev, key=lambda e: e[0]))
        y0 = np.zeros((n_desolve, n + 1))
        y0[:, :n] = model.numeric.initial(p).T
        _desolve.write_inputs(folder, p.T, events, times, n + 1, y0)
        elapsed, used, _, out, hwm = _desolve.run_r(
            folder, lib, rtol=rtol, atol=atol, nout=len(OUTPUTS), jacobian=jacobian
        )
        wall, cpu = wall + elapsed, cpu + used
        rss = max(rss, hwm / 1024)
        outputs[name] = {o: out[:, k, :] for k, o in enumerate(OUTPUTS)}
    return wall, cpu, outputs, rss


def max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    """max over times and subjects of |a − ref| / max_t |ref| (per subject)."""
    return float(np.max(np.abs(a - ref) / np.max(np.abs(ref), axis=0)))


def floor_and_breakdown(model, params, times, rtol, atol) -> dict[str, float]:
    """Where the CPU time of the lean path goes (one chunk of all N, Q3W), and the write floor."""
    reg = next(iter(_common.regimens().values()))
    n = len(next(iter(params.values())))
    t0 = time.process_time()
    p, _, wt = _subject_arguments(model, params, None)
    plan = _broadcast_plan(_plan(model, reg, wt), n)
    system = _system(model)
    run = _Run(
        model, system, _Modes(system.rate_matrix(p)), plan.boluses, plan.infusions, p, times, rtol, atol
    )
    t1 = time.process_time()
    run.integrate(system.output_plan(model, tuple(OUTPUTS)).nonlinear_rows)
    t2 = time.process_time()
    run.outputs(OUTPUTS)
    t3 = time.process_time()
    steps, rejected = run.steps, run.rejected
    # floor: allocate and write the four (n_times, N) output arrays (the result itself), best of 3
    _, write, _ = _common.best_of(lambda: [np.full((len(times), n), 1.0) for _ in OUTPUTS], 3)
    # and one vectorised pass of the PD right-hand side per output time (an integrator that never
    # evaluated more than once per output could not go below this)
    y = run.y0.copy()
    xj = np.zeros((1, n))
    f = np.empty_like(y)
    t4 = time.process_time()
    for tk in times:
        run._f(tk, y, xj, f)
    rhs_per_output = time.process_time() - t4
    # one right-hand-side evaluation per stage of every step actually taken (12 per step, 3 more where
    # the step holds output times): the cost of the evaluations alone, without the Runge-Kutta algebra
    t5 = time.process_time()
    for _ in range(15 * steps):
        run._f(0.0, y, xj, f)
    rhs_per_stage = time.process_time() - t5
    return {
        "subjects": n,
        "setup_s": t1 - t0,
        "integrate_s": t2 - t1,
        "outputs_s": t3 - t2,
        "steps": steps,
        "rejected": rejected,
        "modes_seen_by_PD": int(run.order.shape[1]),
        "write_floor_s": write,
        "rhs_once_per_output_s": rhs_per_output,
        "rhs_15_per_step_s": rhs_per_stage,
    }


def individual_steps(model, params, times, n: int, rtol, atol) -> dict[str, dict[str, float]]:
    """Steps each of the first ``n`` subjects needs alone vs the shared step of all of them, per regimen."""
    out = {}
    for name, reg in _common.regimens().items():
        p, _, wt = _subject_arguments(model, params, None)
        ns = p.shape[1]
        plan = _broadcast_plan(_plan(model, reg, wt), ns)
        system = _system(model)

        def steps(idx, p=p, plan=plan, system=system):
            run = _Run(
                model,
                system,
                _Modes(system.rate_matrix(p[:, idx])),
                [(t, i, a[idx]) for t, i, a in plan.boluses],
                [(s, e, i, r[idx]) for s, e, i, r in plan.infusions],
                p[:, idx],
                times,
                rtol,
                atol,
            )
            run.integrate(system.output_plan(model, ("ANC",)).nonlinear_rows)
            return run.steps

        alone = np.array([steps(np.array([k])) for k in range(n)])
        out[name] = {
            "shared_steps_all": steps(np.arange(ns)),
            "alone_mean": float(alone.mean()),
            "alone_max": int(alone.max()),
            "alone_min": int(alone.min()),
        }
    return out


def worker(args: list[str]) -> None:
    """Subprocess entry: ``lean|public N CHUNK STEP RTOL ATOL``: one population run, prints times and peak RSS."""
    kind, n, chunk, step = args[0], int(args[1]), int(args[2]), float(args[3])
    model = load_model(MODEL)
    times = hourly(step)
    params = _common.population(model, n)
    outputs_only(
        model, _common.regimens()["16 mg/kg Q3W x8"], times[:50], {"CL": [0.015], "WT": [70.0]}, 1e-8, 1e-10
    )
    rtol, atol = float(args[4]), float(args[5])
    only = int(args[6]) if len(args) > 6 else None
    if kind == "lean":
        wall, cpu, results = run_pkmodel_lean(model, params, times, chunk, rtol, atol, keep=False, only=only)
        grade3 = {k: float(np.mean(m[1]["ANC_nadir"] < 1.0)) for k, m in results.items()}
    else:
        wall, cpu, _ = run_pkmodel_public(model, params, times, rtol, atol)
        grade3 = {}
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_rss_mib": _common.peak_rss_mib(), "grade3": grade3}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="virtual patients (each gets both regimens)")
    ap.add_argument("--desolve-n", type=int, default=None, help="patients run by deSolve (default: all)")
    ap.add_argument("--chunk", type=int, default=1000, help="subjects per simulate call")
    ap.add_argument("--rtol", type=float, default=1e-10)
    ap.add_argument("--atol", type=float, default=1e-18, help="absolute tolerance (amount units)")
    ap.add_argument("--repeats", type=int, default=2, help="pkmodel timings: best of this many")
    ap.add_argument("--no-public", action="store_true", help="skip timing pkmodel.simulate (full states)")
    ap.add_argument("--scaling", action="store_true", help="also time N = 100/1000/10000 and 3 output grids")
    ap.add_argument("--memory-n", default="1000,10000", help="population sizes for the peak-memory runs")
    ap.add_argument("--individual", type=int, default=20, help="subjects whose steps alone are counted")
    ap.add_argument("--two-cores", action="store_true", help="also time the regimens in 2 processes at once")
    ap.add_argument(
        "--sweep",
        default="1e-8",
        help="looser rtols at which both tools are timed again on --sweep-n patients (empty: skip)",
    )
    ap.add_argument("--sweep-n", type=int, default=1000, help="patients of the tolerance sweep")
    ap.add_argument("--json", type=Path, help="write all numbers to this file")
    a = ap.parse_args()
    record: dict = {"machine": _common.machine()}
    print("machine:", json.dumps(record["machine"]))
    record["R"] = _desolve.ensure_r()
    print("deSolve | R:", record["R"])
    model = load_model(MODEL)
    times = hourly()
    params = _common.population(model, a.n)
    nd = a.desolve_n or a.n
    sims_pk, sims_ds = 2 * a.n, 2 * nd
    print(
        f"model {MODEL}: {len(model.state_names)} states; {a.n} patients x 2 regimens, {len(times)} hourly outputs"
    )

    # warm-up (lambdify, first touch of memory), then the timed runs; CPU time is the primary measure
    outputs_only(
        model, _common.regimens()["16 mg/kg Q3W x8"], times[:50], {"CL": [0.015], "WT": [70.0]}, 1e-8, 1e-10
    )
    simulate(
        model, _common.regimens()["16 mg/kg Q3W x8"], times[:50], parameters={"CL": [0.015], "WT": [70.0]}
    )
    timed: dict[str, tuple[float, float, int]] = {}  # name -> (wall s, CPU s, simulated subject-regimens)
    lean_w, lean_c, lean = _common.best_of(
        lambda: run_pkmodel_lean(model, params, times, a.chunk, a.rtol, a.atol)[2], a.repeats
    )
    timed["pkmodel simulate(outputs=4, no states)"] = (lean_w, lean_c, sims_pk)
    if not a.no_public:
        pub_w, pub_c, pub = run_pkmodel_public(model, params, times, a.rtol, a.atol)
        timed["pkmodel simulate (all states)"] = (pub_w, pub_c, sims_pk)
    ds_w, ds_c, ds, ds_rss = run_desolve(model, params, times, nd, a.rtol, a.atol)
    timed["deSolve lsoda (compiled C + Jacobian)"] = (ds_w, ds_c, sims_ds)
    record["timed"] = timed
    record["desolve_peak_rss_mib"] = ds_rss
    print(f"\n{'':40s} {'wall s':>8s} {'CPU s':>8s} {'CPU ms per subject-regimen':>27s}")
    for name, (w, c, k) in timed.items():
        print(f"{name:40s} {w:8.2f} {c:8.2f} {c / k * 1e3:27.3f}")

    print("\nagreement (max over subjects and times of |diff| / subject's max of the deSolve profile):")
    worst = 0.0
    record["agreement"] = {}
    for name in ds:
        for o in OUTPUTS:
            d_lean = max_rel(lean[name][0][o][:, :nd], ds[name][o])
            worst = max(worst, d_lean)
            line = f"  {name:26s} {o:5s} simulate(outputs) {d_lean:.2e}"
            if not a.no_public:
                line += f"   simulate {max_rel(pub[name][o][:, :nd], ds[name][o]):.2e}"
            print(line)
            record["agreement"][f"{name} {o}"] = d_lean
    print(f"  worst {worst:.2e}: {'OK (<= 1e-5)' if worst <= 1e-5 else 'FAILS the 1e-5 requirement'}")
    per_ds_c, per_ds_w = ds_c / sims_ds, ds_w / sims_ds
    for name, (w, c, k) in timed.items():
        if name.startswith("pkmodel"):
            print(
                f"ratio deSolve / {name}: {per_ds_c / (c / k):.1f}x (CPU time), {per_ds_w / (w / k):.1f}x (wall time)"
            )

    # peak memory, streamed populations (fresh interpreters), streaming metrics only
    record["memory"] = {}
    for n in [int(x) for x in a.memory_n.split(",") if x]:
        r = _common.in_subprocess(
            Path(__file__), "lean", str(n), str(a.chunk), "1.0", repr(a.rtol), repr(a.atol)
        )
        record["memory"][n] = r
        print(
            f"streamed population N={n} x 2 regimens: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s "
            f"({r['cpu'] / (2 * n) * 1e3:.3f} ms per subject-regimen), peak RSS {r['peak_rss_mib']:.0f} MiB, "
            f"grade>=3 fraction {r['grade3']}"
        )
    print(f"deSolve peak RSS (R process, {nd} patients): {ds_rss:.0f} MiB")

    b = floor_and_breakdown(model, {k: v[:1000] for k, v in params.items()}, times, a.rtol, a.atol)
    record["breakdown"] = b
    print(
        f"\nbreakdown (CPU s), Q3W, {b['subjects']} subjects, hourly:",
        json.dumps({k: round(v, 4) for k, v in b.items()}),
    )

    if a.individual:
        record["individual_steps"] = ind = individual_steps(
            model, {k: v[:1000] for k, v in params.items()}, times, a.individual, a.rtol, a.atol
        )
        print(f"steps alone ({a.individual} subjects) vs shared (1000):", json.dumps(ind))

    if a.two_cores:
        record["two_cores"] = two_cores(a)

    if a.sweep:
        record["sweep"] = sweep(model, params, times, ds, a)

    if a.scaling:
        record["scaling"] = scaling(model, a.chunk, a.rtol, a.atol)
    if a.json:
        a.json.write_text(json.dumps(record, indent=2, default=str))


def sweep(model, params, times, reference: dict, a) -> list[dict]:
    """Work against accuracy: both tools at looser rtol (same atol) on the first ``a.sweep_n`` patients.

    The error of each run is measured against the tight deSolve run of the main comparison (rtol
    ``a.rtol``), as max over analytes, regimens, subjects and times of |diff| / subject's max.
    """
    n = a.sweep_n
    sub = {k: v[:n] for k, v in params.items()}
    rows = []
    for rtol in [float(x) for x in a.sweep.split(",") if x]:
        _, pk_cpu, pk = _common.best_of(
            lambda rtol=rtol: run_pkmodel_lean(model, sub, times, a.chunk, rtol, a.atol)[2], a.repeats
        )
        _, ds_cpu, ds, _ = run_desolve(model, sub, times, n, rtol, a.atol)
        err_pk = max(max_rel(pk[r][0][o], reference[r][o][:, :n]) for r in ds for o in OUTPUTS)
        err_ds = max(max_rel(ds[r][o], reference[r][o][:, :n]) for r in ds for o in OUTPUTS)
        row = {
            "rtol": rtol,
            "pkmodel_cpu_ms": pk_cpu / (2 * n) * 1e3,
            "desolve_cpu_ms": ds_cpu / (2 * n) * 1e3,
            "pkmodel_error": err_pk,
            "desolve_error": err_ds,
        }
        rows.append(row)
        print(
            f"sweep rtol {rtol:g} ({n} patients): pkmodel {row['pkmodel_cpu_ms']:.3f} ms, error {err_pk:.1e}; "
            f"deSolve {row['desolve_cpu_ms']:.3f} ms, error {err_ds:.1e} (vs deSolve at rtol {a.rtol:g})"
        )
    return rows


def two_cores(a) -> dict:
    """Wall time of the two regimens run one after the other vs at once in two processes (fresh interpreters)."""
    import subprocess

    args = [str(a.n), str(a.chunk), "1.0", repr(a.rtol), repr(a.atol)]
    script = str(Path(__file__))
    w = time.perf_counter()
    one = [_common.in_subprocess(Path(__file__), "lean", *args, str(k)) for k in (0, 1)]
    sequential = time.perf_counter() - w
    w = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, script, "--worker", "lean", *args, str(k)], stdout=subprocess.PIPE, text=True
        )
        for k in (0, 1)
    ]
    both = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    parallel = time.perf_counter() - w
    result = {
        "sequential_wall_s": sequential,
        "parallel_wall_s": parallel,
        "sequential_timed_wall_s": sum(r["wall"] for r in one),
        "parallel_timed_wall_s": max(r["wall"] for r in both),
        "parallel_cpu_s": sum(r["cpu"] for r in both),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    print("two regimens, one process after the other vs two at once:", json.dumps(result))
    return result


def scaling(model, chunk: int, rtol: float, atol: float) -> list[dict]:
    """Lean path, Q3W only: CPU time vs subjects (hourly) and vs output grid (1000 subjects)."""
    rows = []
    reg = _common.regimens()["16 mg/kg Q3W x8"]
    for n, step in [(100, 1.0), (1000, 1.0), (10000, 1.0), (1000, 24.0), (1000, 6.0), (1000, 0.25)]:
        times = hourly(step)
        params = _common.population(model, n)
        _, cpu, _ = _common.best_of(
            lambda times=times, params=params: chunked_outputs(
                model, reg, times, params, chunk, rtol, atol, False
            ),
            2 if n <= 1000 else 1,
        )
        rows.append(
            {"subjects": n, "output_times": len(times), "cpu_s": cpu, "ms_per_subject": cpu / n * 1e3}
        )
        print(
            f"scaling: {n:6d} subjects x {len(times):6d} output times: CPU {cpu:.2f} s, {cpu / n * 1e3:.3f} ms/subject"
        )
    return rows


if __name__ == "__main__":
    main()
