"""Shared pieces of the benchmarks: machine description, peak memory, timing, the ESG401 population."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# log-normal inter-individual variability (SD of log) of the benchmark population.  Assumed for the
# benchmark, of the size reported for ADCs and for the Friberg model: CL, V1 (Sathe 2024-like), KDEC, CLS
# (SN-38 exposure), CIRC0, MTT, SLOPE (Friberg 2002: omega^2 0.107, 0.0296, 0.176), body weight.
OMEGA = {
    "CL": 0.25,
    "V1": 0.15,
    "KDEC": 0.30,
    "CLS": 0.30,
    "CIRC0": 0.107**0.5,
    "MTT": 0.0296**0.5,
    "SLOPE": 0.176**0.5,
    "WT": 0.20,
}
SEED = 20240601
HORIZON_H = 24 * 7 * 24.0  # 24 weeks


def population(model, n: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Individual values (typical value × e^η, η ~ N(0, ω²)) of ``n`` virtual patients, seeded."""
    rng = np.random.default_rng(seed)
    typical = {
        **{k: p.value for k, p in model.parameters.items()},
        **{k: c.value for k, c in model.covariates.items()},
    }
    eta = rng.standard_normal((n, len(OMEGA)))
    return {
        name: typical[name] * np.exp(omega * eta[:, k])
        for k, (name, omega) in enumerate(OMEGA.items())
        if name in typical  # the same draws whatever the model, so PK-only and PK/PD runs share patients
    }


def regimens():
    """The two ESG401 regimens over 24 weeks, 1-h infusions (dose times from pkmodel's helpers)."""
    from pkmodel import d1_8_15_q4w, q3w

    return {"16 mg/kg Q3W x8": q3w(16, cycles=8), "12 mg/kg D1,8,15 q4w x6": d1_8_15_q4w(12, cycles=6)}


def machine() -> dict[str, str]:
    """CPU model, cores, memory, numpy/scipy versions and BLAS, for the record."""
    import numpy
    import scipy

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_text = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # show_config's layout varies between numpy versions
        blas_text = "unknown"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem:.0f} GiB",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "blas": blas_text,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "load average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (VmHWM), MiB.

    Read from /proc/self/status: ``getrusage``'s ru_maxrss of a freshly started interpreter can still
    carry the high-water mark of the (large) process that spawned it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_of(func, repeats: int) -> tuple[float, float, object]:
    """Smallest wall time and smallest CPU time (s) of ``repeats`` calls, and the last result.

    CPU time (this process, all threads) is the fairer measure on a shared machine: waiting for a core
    taken by another process does not count.
    """
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = func()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu, result


def in_subprocess(script: Path, *args: str) -> dict:
    """Run ``script --worker ARGS`` in a fresh interpreter (clean peak memory); returns its JSON line."""
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, str(script), "--worker", *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
