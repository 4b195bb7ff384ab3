"""Benchmark: the theophylline population fit by pkmodel (FOCE-I) against R nlme (fm2), same data, same run.

pkmodel runs ``fits/theoph_foce.toml`` through the whole chain (spec → dataset → model file → simulate →
FOCE-I with the covariance step); R runs ``benchmarks/theoph_nlme.R`` (nlme's Lindstrom–Bates fit of the
same model, which also computes the standard errors) on the same file.  For reference, the same FOCE-I
engine is also timed with the closed-form SSfol prediction in place of the simulator, which separates the
cost of the estimation algorithm from that of the predictions.

Usage::

    python benchmarks/bench_theoph_nlme.py [--repeats N]

Installs R and nlme (Debian ``r-base-core r-cran-nlme``) if they are absent.  Prints both timings, the
ratio pkmodel/nlme, and the estimates side by side.  Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pkmodel.estimation import (
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
    fit_population,
)
from pkmodel.fitting import build_problem, load_fit_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "fits" / "theoph_foce.toml"
DATA = ROOT / "tests" / "data" / "theoph" / "Theoph_nonmem.csv"
R_SCRIPT = Path(__file__).resolve().with_name("theoph_nlme.R")


def ensure_nlme() -> None:
    """Install R and nlme from Debian if ``Rscript`` or the nlme package is missing."""
    ok = shutil.which("Rscript") is not None and (
        subprocess.run(["Rscript", "-e", "library(nlme)"], capture_output=True, check=False).returncode == 0
    )
    if not ok:
        print("installing r-base-core r-cran-nlme (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "r-base-core", "r-cran-nlme"], check=True)


def run_nlme(repeats: int) -> dict[str, str]:
    out = subprocess.run(
        ["Rscript", str(R_SCRIPT), str(DATA), str(repeats)], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.strip().splitlines())


def closed_form_problem() -> PopulationProblem:
    """The same FOCE-I problem with R's SSfol formula (dose in mg/kg) as a batched prediction."""
    table = pd.read_csv(DATA)
    subjects = []
    for sid, rows in table.groupby("ID", sort=False):
        dose = rows.loc[rows["EVID"] == 1]
        obs = rows.loc[rows["EVID"] == 0]
        subjects.append(
            Subject(
                int(sid),
                dv=obs["DV"].to_numpy(),
                time=obs["TIME"].to_numpy(),
                data=float(dose["AMT"].iloc[0] / dose["WT"].iloc[0]),
            )
        )

    def predict_batch(subject, p):
        ka, cl, v = p["KA"][:, None], p["CL"][:, None], p["V"][:, None]
        ke, t = cl / v, subject.time[None, :]
        return subject.data * ka / (v * (ka - ke)) * (np.exp(-ke * t) - np.exp(-ka * t))

    return PopulationProblem(
        subjects,
        thetas=[
            Theta("KA", 1.568312, 0.01, 50),
            Theta("CL", 0.040762, 1e-4, 10),
            Theta("V", 0.449329, 1e-3, 100),
        ],
        parameters=[
            IndividualParameter("KA", theta="KA", eta="eta_KA"),
            IndividualParameter("CL", theta="CL", eta="eta_CL"),
            IndividualParameter("V", theta="V", eta="eta_CL"),
        ],
        omega=[OmegaBlock(["eta_KA", "eta_CL"], [0.5, 0.05])],
        residual=[ResidualError("additive", additive=0.7, name="CP")],
        predict_batch=predict_batch,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="pkmodel fits to time (median); nlme: 10x")
    args = parser.parse_args()

    ensure_nlme()
    nlme = run_nlme(10 * args.repeats)
    nlme_seconds = float(nlme["nlme_seconds"])

    spec = load_fit_spec(SPEC)
    times, estimation, calls = [], [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        fp = build_problem(spec)
        result = fit_population(fp.problem, method=spec.method)
        times.append(time.perf_counter() - started)
        estimation.append(result.estimation_seconds)
        calls.append(fp.n_simulate_calls[0])
    ours = statistics.median(times)

    closed = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        fit_population(closed_form_problem(), method="foce-i")
        closed.append(time.perf_counter() - started)
    closed_seconds = statistics.median(closed)

    theta = result.theta
    omega = result.omega
    rows = [
        ("lKa", math.log(theta["KA"]), float(nlme["lKa"])),
        ("lCl", math.log(theta["CL"]), float(nlme["lCl"])),
        ("lKe", math.log(theta["CL"] / theta["V"]), float(nlme["lKe"])),
        ("SD(lKa)", math.sqrt(omega[0, 0]), float(nlme["sd_lKa"])),
        ("SD(lCl)", math.sqrt(omega[1, 1]), float(nlme["sd_lCl"])),
        ("residual SD", result.sigma["CP_add"], float(nlme["sd_residual"])),
    ]
    print(f"R {nlme['r_version'].replace('_', ' ')}, nlme {nlme['nlme_version']}")
    print(f"{'':14}{'pkmodel':>11}{'nlme':>11}")
    for name, a, b in rows:
        print(f"{name:14}{a:11.5f}{b:11.5f}")
    print(f"-2LL: pkmodel FOCE-I {result.minus_2_log_likelihood:.4f}, nlme {-2 * float(nlme['logLik']):.4f}")
    print()
    print(f"nlme fm2 fit (mean of {10 * args.repeats}):                 {nlme_seconds:8.3f} s")
    print(
        f"pkmodel fit, whole chain (median of {args.repeats}):        {ours:8.3f} s   "
        f"(estimation {statistics.median(estimation):.3f} s, covariance step included in the rest; "
        f"{calls[-1]} simulate calls, {1e3 * ours / calls[-1]:.2f} ms each)"
    )
    print(f"pkmodel FOCE-I engine with closed-form SSfol (median):  {closed_seconds:8.3f} s")
    print(f"ratio pkmodel/nlme, whole chain: {ours / nlme_seconds:.1f}   (goal <= 2)")
    print(f"ratio pkmodel/nlme, engine with closed-form predictions: {closed_seconds / nlme_seconds:.1f}")


if __name__ == "__main__":
    main()
