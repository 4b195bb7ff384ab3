"""Benchmark: the theophylline population fit by pkmodel (FOCE-I) against R nlme (fm2), same data, same run.

pkmodel runs ``fits/theoph_foce.toml`` through the whole chain (dataset file → problem → modal predictions →
FOCE-I with the covariance step; the spec and its model file are loaded once before the timer, as R has
nlme and SSfol loaded), and also from the dataset already read (R's script reads the file with read.csv
before its timer: the like-for-like ratio); R runs ``benchmarks/theoph_nlme.R`` (nlme's Lindstrom–Bates
fit of the same model, which also computes the standard errors) on the same file.  For reference, the same FOCE-I
engine is also timed with the closed-form SSfol prediction in place of the model-based one, which
separates the cost of the estimation algorithm from that of the predictions.  With ``--esg401`` it also
times the FOCE-I fit of ``fits/esg401_example_foce.toml`` (35 subjects, TAb + ADC + SN-38, the 21-state
linear model adc_esg401, with the covariance step), the fit that ``pkmodel demo`` runs.

Usage::

    python benchmarks/bench_theoph_nlme.py [--repeats N] [--esg401]

Installs R and nlme (Debian ``r-base-core r-cran-nlme``) if they are absent.  Prints both timings, the
ratio pkmodel/nlme, and the estimates side by side.  Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import os

# The matrices of a PK model are tiny (4 x 4 here): a multi-threaded BLAS only adds synchronisation, and on
# a loaded machine its spinning threads make every matrix exponential tens of times slower.  One thread,
# unless the caller sets these variables (they must be set before numpy is imported).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pkmodel.data import read_dataset  # noqa: E402
from pkmodel.estimation import (  # noqa: E402
    IndividualParameter,
    OmegaBlock,
    PopulationProblem,
    ResidualError,
    Subject,
    Theta,
    fit_population,
)
from pkmodel.fitting import build_problem, load_fit_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "fits" / "theoph_foce.toml"
ESG401_SPEC = ROOT / "fits" / "esg401_example_foce.toml"
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
    parser.add_argument("--esg401", action="store_true", help="also time the ESG401 example PK fit (once)")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]

    ensure_nlme()
    nlme = run_nlme(10 * args.repeats)

    spec = load_fit_spec(SPEC)
    wall, cpu, build_cpu, estimation, after, calls, fast = [], [], [], [], [], [], []
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        fp = build_problem(spec)
        build_cpu.append(time.process_time() - cpu_started)
        result = fit_population(fp.problem, method=spec.method)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        estimation.append(result.estimation_seconds)
        after.append(result.total_seconds - result.estimation_seconds)
        calls.append(fp.n_simulate_calls[0])
        fast.append(fp.n_fast_predictions[0])

    # like for like with the R script, which reads the CSV file (read.csv) before its timer starts: the
    # dataset read and checked once, then the rest of the chain (spec → problem → FOCE-I → covariance)
    dataset = read_dataset(spec.data_path, compartments=spec.compartments, dose_unit=spec.dose_unit)
    in_memory = []
    for _ in range(args.repeats):
        cpu_started = time.process_time()
        fit_population(build_problem(spec, dataset).problem, method=spec.method)
        in_memory.append(time.process_time() - cpu_started)

    closed_wall, closed_cpu = [], []
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        fit_population(closed_form_problem(), method="foce-i")
        closed_wall.append(time.perf_counter() - started)
        closed_cpu.append(time.process_time() - cpu_started)

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
    print(
        f"R {nlme['r_version'].replace('_', ' ')}, nlme {nlme['nlme_version']}; "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, {os.cpu_count()} CPUs, "
        f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"{'':14}{'pkmodel':>11}{'nlme':>11}")
    for name, a, b in rows:
        print(f"{name:14}{a:11.5f}{b:11.5f}")
    print(f"-2LL: pkmodel FOCE-I {result.minus_2_log_likelihood:.4f}, nlme {-2 * float(nlme['logLik']):.4f}")
    print()
    med = statistics.median
    nlme_wall, nlme_cpu = float(nlme["nlme_seconds"]), float(nlme["nlme_cpu_seconds"])
    print(f"{'CPU s (wall s)':58}")
    print(f"nlme fm2 fit (mean of {10 * args.repeats}):{'':27}{nlme_cpu:8.3f} ({nlme_wall:.3f})")
    print(
        f"pkmodel fit, whole chain (median of {args.repeats}):{'':15}{med(cpu):8.3f} ({med(wall):.3f})   "
        f"build_problem {med(build_cpu):.3f} s CPU, estimation {med(estimation):.3f} s and covariance step "
        f"with the result tables {med(after):.3f} s wall; {result.n_evaluations} objective evaluations, "
        f"{fast[-1]} parameter sets predicted by the modal path, {calls[-1]} simulate calls"
    )
    print(
        f"pkmodel fit from the dataset in memory (as R times nlme; median):{'':0}{med(in_memory):8.3f}   "
        "the dataset read and checked before the timer, as the R script's read.csv"
    )
    print(
        f"pkmodel FOCE-I engine, closed-form SSfol (median):{'':7}{med(closed_cpu):8.3f} ({med(closed_wall):.3f})"
    )
    print(
        f"ratio pkmodel/nlme, whole chain: {med(cpu) / nlme_cpu:.1f} (CPU), {med(wall) / nlme_wall:.1f} (wall)"
    )
    print(f"ratio pkmodel/nlme, from the dataset in memory: {med(in_memory) / nlme_cpu:.1f} (CPU)")
    print(f"ratio pkmodel/nlme, engine with closed-form predictions: {med(closed_cpu) / nlme_cpu:.1f} (CPU)")
    if args.esg401:
        print()
        time_esg401()


def time_esg401() -> None:
    """The ESG401 example PK fit (FOCE-I, M3, covariance step), as ``pkmodel demo`` runs it."""
    load = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    spec = load_fit_spec(ESG401_SPEC)
    fp = build_problem(spec)
    opts = spec.options
    result = fit_population(fp.problem, method=spec.method, covariance=opts.covariance, gtol=opts.gtol)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(
        f"ESG401 example PK fit ({len(fp.subjects)} subjects, {sum(s.n_obs for s in fp.subjects)} "
        f"observations, FOCE-I + M3, covariance step; load average {load:.1f} -> {os.getloadavg()[0]:.1f}):"
    )
    print(
        f"  {cpu:.1f} s CPU ({wall:.1f} s wall); BFGS {result.estimation_seconds:.1f} s wall; "
        f"converged {result.converged}; OFV {result.ofv:.4f}; {fp.n_fast_predictions[0]} parameter sets by "
        f"the modal path, {fp.n_simulate_calls[0]} simulate calls; {result.message}"
    )
    print("  " + ", ".join(f"{k} {v:.6g}" for k, v in result.theta.items()))


if __name__ == "__main__":
    main()
