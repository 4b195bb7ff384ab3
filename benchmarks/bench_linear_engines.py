"""Linear model, many subjects: exact engine vs ODE engine vs per-subject scipy solve_ivp (issue 2).

Workload: the DAR-resolved ESG401 pharmacokinetic model ``models/adc_esg401.toml`` (21 linear states:
DAR 0-8 central and peripheral, free SN-38 central and peripheral, SN-38G), N subjects with log-normal
IIV on CL, V1, KDEC, CLS and body weight (``_common.OMEGA``, seeded), 16 mg/kg Q3W x6 (1-h infusions),
hourly outputs over the 6 cycles (18 weeks, 3025 times).

- exact: ``pkmodel.simulate(..., engine="exact")``: batched matrix exponentials, all subjects at once;
- ode: ``pkmodel.simulate(..., engine="ode")``: the stacked stiff solver (BDF, analytic sparse Jacobian);
- solve_ivp: a plain Python loop over subjects, each solved by ``scipy.integrate.solve_ivp`` (BDF, with
  the model's analytic Jacobian, restarted at every infusion boundary), as one would write it by hand.

The ODE engine and the solve_ivp loop are timed on the first ``--n-ode`` / ``--n-ivp`` subjects (the loop
is linear in the number of subjects); times are CPU times of this process (fairer than wall time on a
shared machine); all three must agree (max over subjects and times of |diff| /
subject's max, per output) to 1e-6.  Single-threaded BLAS (OPENBLAS_NUM_THREADS=1, set below).

Run: ``python benchmarks/bench_linear_engines.py`` (about a minute).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

from pkmodel import load_model, q3w, simulate
from pkmodel.simulation import _broadcast_plan, _plan, _subject_arguments

OUTPUTS = ["TAb", "ADC", "SN38"]


def per_subject_solve_ivp(
    model, p: np.ndarray, plan, times: np.ndarray, rtol: float, atol: float
) -> np.ndarray:
    """Outputs (n_times, n_outputs) of one subject by solve_ivp, segment by segment between dose events."""
    num = model.numeric
    n = num.n_states
    rate = np.zeros(n)
    edges = sorted(
        {0.0, float(times[-1]), *(s for s, _, _, _ in plan.infusions), *(e for _, e, _, _ in plan.infusions)}
    )
    y = num.initial(p[:, None])[:, 0]
    states = np.empty((len(times), n))
    args = [p[k] for k in range(len(p))]

    def fun(t, x):
        return num._rhs(t, *x, *args) + rate

    def jac(t, x):
        return num.jacobian(t, x, p)

    for a, b in itertools.pairwise(edges):
        for s, e, i, r in plan.infusions:
            if s == a:
                rate[i] += r[0]
            if e == a:
                rate[i] -= r[0]
        inside = (times >= a) & (times <= b) if a == 0.0 else (times > a) & (times <= b)
        t_eval = np.union1d(times[inside], [b])
        sol = solve_ivp(fun, (a, b), y, method="BDF", jac=jac, rtol=rtol, atol=atol, t_eval=t_eval)
        states[inside] = sol.y.T[np.isin(t_eval, times[inside])]
        y = sol.y[:, -1]
    values = num.outputs(times[:, None], states.T[:, :, None], p[:, None, None])
    return np.stack([values[num.output_names.index(o)][:, 0] for o in OUTPUTS], axis=1)


def max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(a - ref) / np.max(np.abs(ref), axis=0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-ode", type=int, default=1000, help="subjects for the ODE engine")
    ap.add_argument("--n-ivp", type=int, default=100, help="subjects for the solve_ivp loop")
    ap.add_argument("--rtol", type=float, default=1e-8)
    ap.add_argument("--atol", type=float, default=1e-10)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    record: dict = {"machine": _common.machine()}
    print("machine:", json.dumps(record["machine"]))
    model = load_model("adc_esg401")
    pop = _common.population(model, a.n)
    params = {k: v for k, v in pop.items() if k in model.argument_names}
    reg = q3w(16, cycles=6)
    times = np.arange(0.0, 6 * 504.0 + 0.5, 1.0)
    print(
        f"model adc_esg401: {len(model.state_names)} linear states; {a.n} subjects, {len(times)} hourly outputs"
    )
    simulate(model, reg, times[:10], parameters={"CL": [0.015], "WT": [70.0]}, engine="exact")  # warm-up
    simulate(model, reg, times[:10], parameters={"CL": [0.015], "WT": [70.0]}, engine="ode")

    t0 = time.process_time()
    exact = simulate(model, reg, times, parameters=params, engine="exact")
    t_exact = time.process_time() - t0
    ex = {o: exact.output(o).copy() for o in OUTPUTS}
    del exact
    print(f"exact engine:     {t_exact:8.2f} CPU s  {t_exact / a.n * 1e3:9.3f} ms/subject")

    sub = {k: v[: a.n_ode] for k, v in params.items()}
    t0 = time.process_time()
    ode = simulate(model, reg, times, parameters=sub, engine="ode", rtol=a.rtol, atol=a.atol)
    t_ode = time.process_time() - t0
    print(
        f"ODE engine:       {t_ode:8.2f} CPU s  {t_ode / a.n_ode * 1e3:9.3f} ms/subject ({a.n_ode} subjects)"
    )

    p, _, wt = _subject_arguments(model, {k: v[: a.n_ivp] for k, v in params.items()}, None)
    plan = _broadcast_plan(_plan(model, reg, wt), a.n_ivp)
    t0 = time.process_time()
    ivp = np.empty((len(times), len(OUTPUTS), a.n_ivp))
    for s in range(a.n_ivp):
        one = type(plan)([], [(st, e, i, r[s : s + 1]) for st, e, i, r in plan.infusions], [])
        ivp[:, :, s] = per_subject_solve_ivp(model, p[:, s], one, times, a.rtol, a.atol)
    t_ivp = time.process_time() - t0
    print(
        f"solve_ivp loop:   {t_ivp:8.2f} CPU s  {t_ivp / a.n_ivp * 1e3:9.3f} ms/subject ({a.n_ivp} subjects)"
    )

    worst = 0.0
    for k, o in enumerate(OUTPUTS):
        d1 = max_rel(ode.output(o), ex[o][:, : a.n_ode])
        d2 = max_rel(ivp[:, k, :], ex[o][:, : a.n_ivp])
        worst = max(worst, d1, d2)
        print(f"  {o:5s} exact vs ODE engine {d1:.2e}   exact vs solve_ivp {d2:.2e}")
    print(f"  worst {worst:.2e}: {'OK (<= 1e-6)' if worst <= 1e-6 else 'FAILS 1e-6'}")
    per = {"exact": t_exact / a.n, "ode": t_ode / a.n_ode, "solve_ivp": t_ivp / a.n_ivp}
    print(
        f"ratio solve_ivp / exact: {per['solve_ivp'] / per['exact']:.0f}x   ODE / exact: {per['ode'] / per['exact']:.1f}x"
    )
    record.update(per_subject_s=per, agreement=worst, subjects={"exact": a.n, "ode": a.n_ode, "ivp": a.n_ivp})
    if a.json:
        a.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
