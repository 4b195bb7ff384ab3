"""A 100,000-subject virtual trial of the ESG401 ADC PK/PD model on Dask: 1 and 2 workers (issue 7).

Workload: the scenario ``fits/esg401_regimens.toml`` restricted to its two protocol regimens, 16 mg/kg
Q3W x8 and 12 mg/kg D1,8,15 q4w x6 (1-h infusions; the matched-intensity regimen and the other doses
dropped), N virtual patients drawn chunk by chunk (1000 per chunk, each chunk from its own child of the
scenario's seed: WT and ALB resampled from the example dataset, log-normal IIV on CL, CLS, SLOPE, CIRC0,
MTT), every patient given both regimens.  Per chunk and regimen: exposure metrics of TAb, ADC and free
SN-38 (exact engine, cycle 1 and steady state) and the ANC course of ``adc_esg401_friberg`` (hybrid
engine, 12-h grid) graded by CTCAE; only counts and fixed-size quantile sketches go back to the client
(``pkmodel.compare.run_virtual_trial``).

Each configuration runs in a fresh interpreter (clean peak memory): a ``dask.distributed.LocalCluster``
with W worker processes (1 thread each, TCP on loopback) is started, then the trial is run through the
scheduler's address.  Reported: wall time of the trial, CPU time of the client process and of the
workers (summed, from /proc of the worker processes), peak resident memory of the client (VmHWM, which
includes the scheduler: LocalCluster runs it in the client process), and the grade >= 3 incidence per
regimen, which must be identical for every worker count.

Run: ``python benchmarks/bench_dask_virtual_trial.py`` (default N = 100,000 on 1 and 2 workers, plus
N = 10,000 on 2 workers for the memory comparison; tens of minutes on 2 cores);
``--n 20000 --workers 1 2`` for a shorter run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# pkmodel from this checkout, also in the worker processes the cluster spawns
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")) if p
)

from _common import ROOT, in_subprocess, machine, peak_rss_mib

REGIMENS = ("A: 16 mg/kg Q3W", "B: 12 mg/kg D1,8,15 q4w")


def _scenario():
    from pkmodel.compare import load_scenario

    sc = load_scenario(ROOT / "fits" / "esg401_regimens.toml")
    regimens = tuple(r for r in sc.regimens if r.label in REGIMENS)
    return dataclasses.replace(sc, regimens=regimens, matched=())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(n: int, workers: int) -> dict:
    """One trial on a fresh LocalCluster of ``workers`` processes (in this interpreter)."""
    from distributed import Client, LocalCluster

    from pkmodel.compare import run_virtual_trial

    sc = _scenario()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",  # a free port: never collide with another cluster
            silence_logs=40,
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        # warm the workers (imports, model loading) so that the timing is of the trial, as on a cluster in use
        run_virtual_trial(sc, n=2, chunk_size=1, scheduler=client)
        worker_cpu0 = sum(client.run(lambda: time.process_time()).values())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        trial = run_virtual_trial(sc, n=n, scheduler=cluster.scheduler_address)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        worker_cpu = sum(client.run(lambda: time.process_time()).values()) - worker_cpu0
        assert set(client.run(os.getpid).values()) == set(pids)  # no worker was lost or replaced
    inc = trial.tables["neutropenia_incidence"].set_index("regimen")
    return {
        "n": n,
        "workers": workers,
        "wall_s": round(wall, 2),
        "client_cpu_s": round(cpu, 2),
        "worker_cpu_s": round(worker_cpu, 2),
        "worker_cpu_ms_per_subject_regimen": round(1000 * worker_cpu / (2 * n), 3),
        "client_peak_rss_mib": round(peak_rss_mib(), 1),
        "incidence_ge3": {k: int(inc.loc[k, "events_ge3"]) for k in inc.index},
        "incidence_ge3_percent": {k: round(100 * float(inc.loc[k, "incidence_ge3"]), 3) for k in inc.index},
        "bdf_fallback": {
            k: [int(inc.loc[k, "n_bdf_fallback"]), inc.loc[k, "bdf_fallback_ids"]] for k in inc.index
        },
        "simulation_failed": {
            k: [int(inc.loc[k, "n_simulation_failed"]), inc.loc[k, "simulation_failed_ids"]]
            for k in inc.index
        },
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="virtual patients (default 100,000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument(
        "--memory-n",
        type=int,
        nargs="*",
        default=[10_000],
        help="extra N on the largest worker count (memory)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args.n, args.workers[0])))
        return
    print(json.dumps({"machine": machine()}))
    runs = []
    for workers in args.workers:
        runs.append(in_subprocess(Path(__file__), "--n", str(args.n), "--workers", str(workers)))
        print(json.dumps(runs[-1]), flush=True)
    for n in args.memory_n:
        runs.append(in_subprocess(Path(__file__), "--n", str(n), "--workers", str(max(args.workers))))
        print(json.dumps(runs[-1]), flush=True)
    same_n = [r for r in runs if r["n"] == args.n]
    if len({json.dumps(r["incidence_ge3"], sort_keys=True) for r in same_n}) != 1:
        raise SystemExit("incidences differ between worker counts: results must not depend on the workers")
    base = next(r for r in same_n if r["workers"] == min(args.workers))
    for r in same_n:
        print(
            f"N={r['n']} workers={r['workers']}: wall {r['wall_s']:.1f} s (speed-up {base['wall_s'] / r['wall_s']:.2f}x), "
            f"worker CPU {r['worker_cpu_s']:.1f} s, client CPU {r['client_cpu_s']:.1f} s, "
            f"client peak {r['client_peak_rss_mib']:.0f} MiB, load {r['load_average']}"
        )
    print("identical incidences for every worker count:", base["incidence_ge3"])


if __name__ == "__main__":
    main()
